"""Benchmark 6: an embeddings batch of short inputs against an upstream that answers
at once (0 ms): 50,000 lines from upload to completed. Lines that share the model and
parameters go upstream in bundles of EMBEDDINGS_BUNDLE_SIZE inputs (default 32).
Targets: >= 5,000 lines/s, and at most 50,000 / 16 upstream calls.

    .venv/bin/python bench/bench_embeddings.py [--lines 50000] [--bundle-size 32] [--db postgres]
"""

import common

TARGET_LINES_PER_S = 5000
TARGET_LINES_PER_CALL = 16


def measure(args):
    runs = []
    env = {"BATCHES_EMBEDDINGS_BUNDLE_SIZE": str(args.bundle_size)} if args.bundle_size else {}
    with common.UpstreamProcess(latency_ms=args.latency_ms) as upstream:
        for _ in range(args.repeat):
            with common.live_stack(upstream.base_url, db=args.db, redis=args.redis, concurrency=args.concurrency, env=env) as stack:
                upstream.reset()
                load_before = common.load_average()
                with common.CpuUse(stack) as cpu:
                    run = common.run_batch(stack, args.lines, endpoint=common.EMBEDDINGS)
                run.update(cpu.result)
                run["lines_per_s"] = args.lines / run["upload_to_completed_s"]
                run["upstream_calls"] = upstream.stats()["by_path"].get(common.EMBEDDINGS, 0)
                run["cpu_s_per_1000_lines"] = 1000 * run["service_cpu_s"] / args.lines
                run["load_before"], run["load_after"] = load_before, common.load_average()
                runs.append(run)
    best = max(runs, key=lambda run: run["lines_per_s"])
    max_calls = args.lines / TARGET_LINES_PER_CALL
    return {
        "params": common.run_params(args, bundle_size=args.bundle_size or "default"),
        "runs": runs,
        "best": best,
        "target": TARGET_LINES_PER_S,
        "target_max_calls": max_calls,
        "met": best["lines_per_s"] >= TARGET_LINES_PER_S and best["upstream_calls"] <= max_calls,
    }


def report(result):
    best, params = result["best"], result["params"]
    common.print_table(
        f"Benchmark 6: embeddings, {params['lines']:,} short inputs at {params['latency_ms']:g} ms, bundle size {params['bundle_size']} "
        f"({params['db']})",
        ["measure", "value"],
        [
            ("upload to completed lines/s", f"{best['lines_per_s']:,.0f}"),
            ("upstream calls", f"{best['upstream_calls']:,} (target <= {result['target_max_calls']:,.0f})"),
            ("validate / run / finalize s", f"{best['validate_s']:.2f} / {best['run_s']:.2f} / {best['finalize_s']:.2f}"),
            ("CPU-seconds per 1,000 lines (workers, web, database)", f"{best['cpu_s_per_1000_lines']:.2f}"),
            ("machine busy", f"{100 * best['machine_busy_share']:.0f} %"),
        ],
    )
    print(
        f"lines/s upload to completed: {best['lines_per_s']:,.0f} (target >= {result['target']:,}), upstream calls "
        f"{best['upstream_calls']:,}: {'MET' if result['met'] else 'NOT MET'}; load average {best['load_before']} -> {best['load_after']}"
    )


if __name__ == "__main__":
    args = common.parse_args(
        __doc__.splitlines()[0],
        extra=[("--bundle-size", {"type": int, "default": None, "help": "EMBEDDINGS_BUNDLE_SIZE (default: the setting's default)"})],
        lines=50_000,
        latency_ms=0.0,
    )
    result = measure(args)
    report(result)
    print("results:", common.save("embeddings", result, args.json))
