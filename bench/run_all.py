"""Runs the six benchmarks one after another (each in a process of its own, with
its defaults), prints the results table and draws docs/bench.png.

    .venv/bin/pip install -e '.[bench]'
    .venv/bin/python bench/run_all.py                 # all six, ~12 minutes on 2 cores
    .venv/bin/python bench/run_all.py --only 1 4      # some of them
    .venv/bin/python bench/run_all.py --plot-only     # table and plot from bench/results/*.json

The figures depend on what else the machine runs: the load average before and
after each benchmark is part of its result.
"""

import argparse
import json
import subprocess
import sys

import common

BENCHMARKS = {
    "1": ("throughput", "bench_throughput.py"),
    "2": ("orchestrator", "bench_orchestrator.py"),
    "3": ("memory", "bench_memory.py"),
    "4": ("api_latency", "bench_api_latency.py"),
    "5": ("scaling", "bench_scaling.py"),
    "6": ("embeddings", "bench_embeddings.py"),
}
PLOT = common.ROOT / "docs" / "bench.png"


def run(numbers):
    for number in numbers:
        name, script = BENCHMARKS[number]
        print(f"\n=== benchmark {number}: {script}", flush=True)
        subprocess.run(
            [sys.executable, str(common.ROOT / "bench" / script), "--json", str(common.RESULTS_DIR / f"{name}.json")],
            cwd=common.ROOT,
            check=True,
        )


def load_results():
    results = {}
    for number, (name, _) in BENCHMARKS.items():
        path = common.RESULTS_DIR / f"{name}.json"
        if path.exists():
            results[number] = json.loads(path.read_text())
    return results


def load_of(entry):
    return f"{entry['load_before']} → {entry['load_after']}"


def summary_rows(results):
    """(benchmark, measured, target, met, load average) per benchmark that has results."""
    rows = []
    if "1" in results:
        r = results["1"]
        best = r["best"]
        rows.append(
            (
                f"1. Throughput, {r['params']['lines']:,} lines, {r['params']['latency_ms']:g} ms upstream, "
                f"concurrency {r['params']['concurrency']}",
                f"{best['lines_per_s']:,.0f} lines/s = {100 * best['share_of_bare_client']:.1f} % of a bare aiohttp client's "
                f"{r['bare_client_lines_per_s']:,.0f} in the same run (ideal {r['ideal_lines_per_s']:,.0f})",
                f"≥ {100 * r['target_share']:.0f} % of the bare client",
                r["met"],
                load_of(best),
            )
        )
    if "2" in results:
        r = results["2"]
        best = r["best"]
        rows.append(
            (
                f"2. Orchestrator cost, {r['params']['lines']:,} lines, 0 ms upstream, upload to completed",
                f"{best['lines_per_s']:,.0f} lines/s ({best['upload_to_completed_s']:.1f} s: validate {best['validate_s']:.1f}, "
                f"run {best['run_s']:.1f}, finalize {best['finalize_s']:.1f}); {best['cpu_s_per_1000_lines']:.2f} CPU-s per 1,000 lines",
                f"≥ {r['target']:,} lines/s, ≤ {r['target_cpu_s_per_1000_lines']} CPU-s per 1,000 lines",
                r["met"],
                load_of(best),
            )
        )
    if "3" in results:
        r = results["3"]
        small, large = r["small"], r["large"]
        rows.append(
            (
                f"3. Worker memory, {r['params']['small']:,} vs {r['params']['lines']:,} lines",
                f"largest process {small['peak_process_mib']:.0f} → {large['peak_process_mib']:.0f} MiB, whole cluster (PSS) "
                f"{small['peak_total_pss_mib']:.0f} → {large['peak_total_pss_mib']:.0f} MiB: ratio {r['ratio']:.2f}",
                f"ratio ≤ {r['target_ratio']}, ≤ {r['target_mib']} MiB",
                r["met"],
                load_of(large),
            )
        )
    if "4" in results:
        r = results["4"]
        rows.append(
            (
                f"4. GET /v1/batches/{{id}} during benchmark 1 ({r['params']['rate']:g}/s)",
                f"p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms ({r['requests']} requests, {r['errors']} errors)",
                f"p99 < {r['target_p99_ms']:g} ms",
                r["met"],
                load_of(r),
            )
        )
    if "5" in results:
        r = results["5"]
        rows.append(
            (
                f"5. 1 vs 2 worker processes, {r['params']['lines']:,} lines, 0 ms upstream, {r['params']['db']}",
                f"{r['one']['lines_per_s']:,.0f} → {r['two']['lines_per_s']:,.0f} lines/s: {r['speedup']:.2f}×",
                f"≥ {r['target_speedup']}×",
                r["met"],
                f"{load_of(r['one'])}; {load_of(r['two'])}",
            )
        )
    if "6" in results:
        r = results["6"]
        best = r["best"]
        rows.append(
            (
                f"6. Embeddings, {r['params']['lines']:,} short inputs, 0 ms upstream, upload to completed",
                f"{best['lines_per_s']:,.0f} lines/s, {best['upstream_calls']:,} upstream calls (bundle size {r['params']['bundle_size']})",
                f"≥ {r['target']:,} lines/s, ≤ {r['target_max_calls']:,.0f} calls",
                r["met"],
                load_of(best),
            )
        )
    return rows


def print_summary(rows):
    headers = ["benchmark", "measured", "target", "met", "load average (before → after)"]
    common.print_table("Results", headers, [(*row[:3], "yes" if row[3] else "no", row[4]) for row in rows])
    print("\nMarkdown:\n")
    print("| " + " | ".join(headers) + " |")
    print("|" + "---|" * len(headers))
    for benchmark, measured, target, met, load in rows:
        print(f"| {benchmark} | {measured} | {target} | {'yes' if met else '**no**'} | {load} |")


def plot(results):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    figure, axes = plt.subplots(2, 3, figsize=(15, 8.5))
    axes = axes.flatten()
    green, red, grey = "#2e7d32", "#c62828", "#9e9e9e"

    def colour(met):
        return green if met else red

    if "1" in results:
        r, ax = results["1"], axes[0]
        values = [r["ideal_lines_per_s"], r["bare_client_lines_per_s"], r["best"]["lines_per_s"]]
        ax.bar(["ideal\n(64 / 50 ms)", "bare client\n(same run)", "batch run\nphase"], values, color=[grey, grey, colour(r["met"])])
        ax.axhline(r["bare_client_lines_per_s"] * r["target_share"], color="black", linestyle="--", label="target: 95 % of the bare client")
        ax.set_title("1. Throughput at 50 ms, concurrency 64")
        ax.set_ylabel("lines/s")
        ax.legend(loc="lower right")
    if "2" in results:
        r, ax = results["2"], axes[1]
        best, bottom = r["best"], 0.0
        for phase, key, shade in (
            ("upload", "upload_s", "#90caf9"),
            ("validate", "validate_s", "#42a5f5"),
            ("run", "run_s", "#1e88e5"),
            ("finalize", "finalize_s", "#0d47a1"),
        ):
            ax.bar(["50,000 lines"], [best[key]], bottom=bottom, label=f"{phase} {best[key]:.1f} s", color=shade)
            bottom += best[key]
        ax.axhline(r["params"]["lines"] / r["target"], color="black", linestyle="--", label=f"target: {r['target']:,} lines/s")
        ax.set_title(f"2. Upload to completed at 0 ms: {best['lines_per_s']:,.0f} lines/s")
        ax.set_ylabel("seconds")
        ax.set_xlim(-0.5, 1.9)
        ax.legend(loc="center right", fontsize=8)
    if "3" in results:
        r, ax = results["3"], axes[2]
        labels = [f"{r['params']['small']:,} lines", f"{r['params']['lines']:,} lines"]
        width = 0.38
        positions = range(len(labels))
        ax.bar(
            [p - width / 2 for p in positions],
            [r["small"]["peak_process_mib"], r["large"]["peak_process_mib"]],
            width,
            label="largest process (VmHWM)",
            color="#42a5f5",
        )
        ax.bar(
            [p + width / 2 for p in positions],
            [r["small"]["peak_total_pss_mib"], r["large"]["peak_total_pss_mib"]],
            width,
            label="whole cluster (PSS)",
            color="#0d47a1",
        )
        ax.set_xticks(list(positions), labels)
        ax.axhline(r["target_mib"], color="black", linestyle="--", label=f"target: {r['target_mib']} MiB")
        ax.set_title(f"3. Worker memory: ratio {r['ratio']:.2f}")
        ax.set_ylabel("MiB")
        ax.legend(loc="lower right", fontsize=8)
    if "4" in results:
        r, ax = results["4"], axes[3]
        latencies = sorted(r["latencies_ms"])
        ax.plot(latencies, [100 * (i + 1) / len(latencies) for i in range(len(latencies))], color=colour(r["met"]))
        ax.axvline(r["target_p99_ms"], color="black", linestyle="--", label="target: p99 < 50 ms")
        ax.axhline(99, color=grey, linestyle=":")
        ax.set_xscale("log")
        ticks = [t for t in (2, 5, 10, 20, 50, 100, 200, 500, 1000) if latencies[0] / 2 <= t <= latencies[-1] * 2]
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_title(f"4. GET /v1/batches/{{id}}: p50 {r['p50_ms']:.1f}, p99 {r['p99_ms']:.1f} ms")
        ax.set_xlabel("ms (log)")
        ax.set_ylabel("% of requests")
        ax.legend(loc="lower right")
    if "5" in results:
        r, ax = results["5"], axes[4]
        ax.bar(["1 process", "2 processes"], [r["one"]["lines_per_s"], r["two"]["lines_per_s"]], color=[grey, colour(r["met"])])
        ax.axhline(r["one"]["lines_per_s"] * r["target_speedup"], color="black", linestyle="--", label="target: 1.7× one process")
        ax.set_title(f"5. Worker processes on one batch ({r['params']['db']}): {r['speedup']:.2f}×")
        ax.set_ylabel("run phase lines/s")
        ax.legend(loc="lower right")
    if "6" in results:
        r, ax = results["6"], axes[5]
        best = r["best"]
        ax.bar(["lines/s"], [best["lines_per_s"]], color=colour(best["lines_per_s"] >= r["target"]))
        ax.axhline(r["target"], color="black", linestyle="--", label=f"target: {r['target']:,} lines/s")
        ax.set_title(f"6. Embeddings at 0 ms: {best['upstream_calls']:,} calls for {r['params']['lines']:,} lines")
        ax.set_ylabel("lines/s, upload to completed")
        ax.legend(loc="lower right")
    for number, ax in zip(sorted(BENCHMARKS), axes):
        if number not in results:
            ax.axis("off")  # not run (yet): no empty frame
    notes = "; ".join(f"{number}. {load}" for number, load in ((n, summary_load(results[n], n)) for n in sorted(results)))
    figure.text(
        0.5,
        0.005,
        f"load average (before → after): {notes} — {common.machine()['cpus']} CPUs, Python {common.machine()['python']}",
        ha="center",
        fontsize=8,
    )
    figure.suptitle("django-openai-batches benchmarks (fake upstream in its own process; bench/run_all.py)")
    figure.tight_layout(rect=(0, 0.02, 1, 1))
    PLOT.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(PLOT, dpi=90)
    return PLOT


def summary_load(result, number):
    if number in ("1", "2", "6"):
        return load_of(result["best"])
    if number == "3":
        return load_of(result["large"])
    if number == "5":
        return f"{load_of(result['one'])}; {load_of(result['two'])}"
    return load_of(result)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=sorted(BENCHMARKS), help="benchmark numbers to run")
    parser.add_argument("--plot-only", action="store_true", help="do not run anything: table and plot from the saved results")
    args = parser.parse_args()
    if not args.plot_only:
        run(args.only or sorted(BENCHMARKS))
    results = load_results()
    print_summary(summary_rows(results))
    (common.RESULTS_DIR / "summary.json").write_text(json.dumps(summary_rows(results), indent=2, ensure_ascii=False) + "\n")
    print("\nplot:", plot(results))


if __name__ == "__main__":
    main()
