"""Benchmark 2: the orchestrator's own cost. With an upstream that answers at once
(0 ms), what is left is ours: upload, validation, claiming, sending, writing
results, finalization. Targets: 50,000 lines from upload to completed at
>= 3,000 lines/s on a 2-core machine, and <= 0.6 CPU-seconds per 1,000 lines
across the service's processes (web, workers, database).

    .venv/bin/python bench/bench_orchestrator.py [--lines 50000] [--db postgres]
"""

import common

TARGET_LINES_PER_S = 3000
TARGET_CPU_S_PER_1000 = 0.6


def measure(args):
    runs = []
    with common.UpstreamProcess(latency_ms=args.latency_ms) as upstream:
        for _ in range(args.repeat):
            with common.live_stack(upstream.base_url, db=args.db, redis=args.redis, concurrency=args.concurrency) as stack:
                load_before = common.load_average()
                with common.CpuUse(stack) as cpu:
                    run = common.run_batch(stack, args.lines)
                run.update(cpu.result)
                run["lines_per_s"] = args.lines / run["upload_to_completed_s"]
                run["cpu_s_per_1000_lines"] = 1000 * run["service_cpu_s"] / args.lines
                run["load_before"], run["load_after"] = load_before, common.load_average()
                runs.append(run)
    best = max(runs, key=lambda run: run["lines_per_s"])
    return {
        "params": common.run_params(args),
        "runs": runs,
        "best": best,
        "target": TARGET_LINES_PER_S,
        "target_cpu_s_per_1000_lines": TARGET_CPU_S_PER_1000,
        "met": best["lines_per_s"] >= TARGET_LINES_PER_S and best["cpu_s_per_1000_lines"] <= TARGET_CPU_S_PER_1000,
    }


def report(result):
    best, params = result["best"], result["params"]
    common.print_table(
        f"Benchmark 2: orchestrator cost, {params['lines']:,} lines at {params['latency_ms']:g} ms ({params['db']})",
        ["phase", "seconds", "lines/s"],
        [
            (phase, f"{best[key]:.2f}", f"{result['params']['lines'] / best[key]:,.0f}" if best[key] else "-")
            for phase, key in (
                ("upload", "upload_s"),
                ("validate", "validate_s"),
                ("run", "run_s"),
                ("finalize", "finalize_s"),
                ("upload to completed", "upload_to_completed_s"),
            )
        ],
    )
    print(
        f"CPU-seconds per 1,000 lines: {best['cpu_s_per_1000_lines']:.2f} (target <= {result['target_cpu_s_per_1000_lines']}; "
        f"workers {best['workers_cpu_s']:.1f} s, web {best['web_cpu_s']:.1f} s, database server {best['database_cpu_s']:.1f} s); "
        f"machine busy {100 * best['machine_busy_share']:.0f} %"
    )
    print(
        f"lines/s upload to completed: {best['lines_per_s']:,.0f} (target >= {result['target']:,}) "
        f"{'MET' if result['met'] else 'NOT MET'}; load average {best['load_before']} -> {best['load_after']}"
    )


if __name__ == "__main__":
    args = common.parse_args(__doc__.splitlines()[0], lines=50_000, latency_ms=0.0)
    result = measure(args)
    report(result)
    print("results:", common.save("orchestrator", result, args.json))
