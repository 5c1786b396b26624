"""Benchmark 3: memory of the worker processes (the qcluster and its children) for a
small and a large batch. Memory must not grow with the batch: validation streams
the input, rows are written in chunks, results in bulk, finalization streams the
rows into the output files. Targets: peak(50,000 lines) / peak(1,000 lines) <= 1.3,
and <= 300 MiB.

    .venv/bin/python bench/bench_memory.py [--small 1000] [--lines 50000] [--db postgres]

Each size runs on a fresh stack. Two figures: the largest process's peak
resident memory (the kernel's VmHWM; that is the worker that ran the batch) and
the peak of the whole cluster's proportional set size (PSS: pages the forked
processes share are counted once). Both must meet both targets.
"""

import common

TARGET_RATIO = 1.3
TARGET_MIB = 300


def measure(args):
    sizes = {}
    with common.UpstreamProcess(latency_ms=args.latency_ms) as upstream:
        for lines in (args.small, args.lines):
            with common.live_stack(upstream.base_url, db=args.db, redis=args.redis, concurrency=args.concurrency) as stack:
                load_before = common.load_average()
                memory = common.WorkerMemory(stack)
                memory.sample()
                idle = memory.result()
                with memory:
                    run = common.run_batch(stack, lines)
                sizes[lines] = {
                    **memory.result(),
                    "idle_peak_process_mib": idle["peak_process_mib"],
                    "run": run,
                    "load_before": load_before,
                    "load_after": common.load_average(),
                }
    small, large = sizes[args.small], sizes[args.lines]
    ratio = max(large["peak_process_mib"] / small["peak_process_mib"], large["peak_total_pss_mib"] / small["peak_total_pss_mib"])
    peak = max(large["peak_process_mib"], large["peak_total_pss_mib"])
    return {
        "params": {"small": args.small, "lines": args.lines, "latency_ms": args.latency_ms, "db": args.db, "redis": bool(args.redis)},
        "small": small,
        "large": large,
        "ratio": ratio,
        "target_ratio": TARGET_RATIO,
        "target_mib": TARGET_MIB,
        "peak_mib": peak,
        "met": ratio <= TARGET_RATIO and peak <= TARGET_MIB,
    }


def report(result):
    params = result["params"]
    rows = []
    for key in ("small", "large"):
        size = result[key]
        rows.append(
            (
                f"{size['run']['lines']:,}",
                f"{size['idle_peak_process_mib']:.0f}",
                f"{size['peak_process_mib']:.0f}",
                f"{size['peak_total_pss_mib']:.0f}",
                size["processes"],
                f"{size['load_before']} -> {size['load_after']}",
            )
        )
    common.print_table(
        f"Benchmark 3: worker memory ({params['db']}, {params['latency_ms']:g} ms upstream)",
        ["lines", "idle process MiB", "peak process MiB (VmHWM)", "peak cluster MiB (PSS)", "processes", "load"],
        rows,
    )
    print(
        f"ratio {result['ratio']:.2f} (target <= {result['target_ratio']}), peak {result['peak_mib']:.0f} MiB "
        f"(target <= {result['target_mib']}) {'MET' if result['met'] else 'NOT MET'}"
    )


if __name__ == "__main__":
    args = common.parse_args(__doc__.splitlines()[0], extra=[("--small", {"type": int, "default": 1000})], lines=50_000, latency_ms=0.0)
    result = measure(args)
    report(result)
    print("results:", common.save("memory", result, args.json))
