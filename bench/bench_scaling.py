"""Benchmark 5: one vs two worker processes sharing one batch on PostgreSQL, at
0 ms upstream latency (the orchestrator's own cost is all there is). With two,
the batch gets two dispatchers (DISPATCHERS=2) that claim chunks of it side
by side under one upstream budget. Target: two processes >= 1.7x the lines/s of one.

    .venv/bin/python bench/bench_scaling.py [--lines 20000] [--db sqlite] [--redis redis://127.0.0.1:6379/9]

The figure compared is the run phase (in_progress -> finalizing), the part that
several processes share; validation and finalization are one task each. Upload
to completed is reported too.
"""

import common

TARGET_SPEEDUP = 1.7


def measure(args):
    by_processes = {}
    with common.UpstreamProcess(latency_ms=args.latency_ms) as upstream:
        for processes in (1, 2):
            runs = []
            for _ in range(args.repeat):
                with common.live_stack(
                    upstream.base_url, db=args.db, redis=args.redis, concurrency=args.concurrency, workers=processes, run_tasks=processes
                ) as stack:
                    load_before = common.load_average()
                    with common.CpuUse(stack) as cpu:
                        run = common.run_batch(stack, args.lines)
                    run.update(cpu.result)
                    run["lines_per_s"] = args.lines / run["run_s"]
                    run["end_to_end_lines_per_s"] = args.lines / run["upload_to_completed_s"]
                    run["load_before"], run["load_after"] = load_before, common.load_average()
                    runs.append(run)
            by_processes[processes] = max(runs, key=lambda run: run["lines_per_s"])
    speedup = by_processes[2]["lines_per_s"] / by_processes[1]["lines_per_s"]
    return {
        "params": common.run_params(args),
        "one": by_processes[1],
        "two": by_processes[2],
        "speedup": speedup,
        "end_to_end_speedup": by_processes[2]["end_to_end_lines_per_s"] / by_processes[1]["end_to_end_lines_per_s"],
        "target_speedup": TARGET_SPEEDUP,
        "met": speedup >= TARGET_SPEEDUP,
    }


def report(result):
    params = result["params"]
    common.print_table(
        f"Benchmark 5: worker processes on one batch, {params['lines']:,} lines at {params['latency_ms']:g} ms ({params['db']}"
        f"{' + Redis' if params['redis'] else ''})",
        ["worker processes", "run phase lines/s", "upload to completed lines/s", "service CPU ms/line", "machine busy", "load"],
        [
            (
                n,
                f"{result[key]['lines_per_s']:,.0f}",
                f"{result[key]['end_to_end_lines_per_s']:,.0f}",
                f"{1000 * result[key]['service_cpu_s'] / params['lines']:.2f}",
                f"{100 * result[key]['machine_busy_share']:.0f} %",
                f"{result[key]['load_before']} -> {result[key]['load_after']}",
            )
            for n, key in ((1, "one"), (2, "two"))
        ],
    )
    print(
        f"speedup {result['speedup']:.2f}x (target >= {result['target_speedup']}x) {'MET' if result['met'] else 'NOT MET'}; "
        f"upload to completed {result['end_to_end_speedup']:.2f}x"
    )


if __name__ == "__main__":
    args = common.parse_args(__doc__.splitlines()[0], lines=20_000, latency_ms=0.0, db="postgres")
    result = measure(args)
    report(result)
    print("results:", common.save("scaling", result, args.json))
