"""Profiles the worker processes with py-spy while one batch runs, and prints the
functions that cost the most (own time, and time including callees).

    .venv/bin/pip install py-spy
    .venv/bin/python bench/profile_worker.py [--lines 20000] [--latency-ms 0] [--db postgres] [--gil | --idle]

py-spy samples every qcluster process and its children (it needs ptrace: root,
or kernel.yama.ptrace_scope=0). The raw stacks are kept in bench/results/ for
flame graphs (https://www.speedscope.app reads them).
"""

import argparse
import collections
import shutil
import signal
import subprocess
import time

import common


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=20_000)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--db", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--redis", default=None)
    parser.add_argument("--idle", action="store_true", help="count waiting threads too (where time goes, not only CPU)")
    parser.add_argument("--gil", action="store_true", help="only the thread holding the GIL (what the Python code costs)")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    py_spy = shutil.which("py-spy") or str(common.ROOT / ".venv" / "bin" / "py-spy")
    raw = common.RESULTS_DIR / f"profile-{args.db}-{args.latency_ms:g}ms.txt"
    raw.parent.mkdir(parents=True, exist_ok=True)
    with common.UpstreamProcess(latency_ms=args.latency_ms) as upstream:
        with common.live_stack(upstream.base_url, db=args.db, redis=args.redis, concurrency=args.concurrency) as stack:
            command = [
                py_spy,
                "record",
                "--subprocesses",
                "--format",
                "raw",
                "--rate",
                "200",
                "--output",
                str(raw),
                "--pid",
                str(stack.workers[0].pid),
            ]
            if args.idle:
                command.append("--idle")
            if args.gil:
                command.append("--gil")
            recorder = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            time.sleep(1)
            run = common.run_batch(stack, args.lines)
            recorder.send_signal(signal.SIGINT)  # py-spy writes its output on Ctrl-C
            _, errors = recorder.communicate(timeout=120)
    if not raw.exists():
        raise SystemExit(f"py-spy wrote nothing: {errors.decode(errors='replace')[-2000:]}")
    print({key: round(value, 2) if isinstance(value, float) else value for key, value in run.items()})
    report(raw, args.top)
    print("raw stacks:", raw)


def report(raw, top):
    own, total, samples = collections.Counter(), collections.Counter(), 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        count = int(count)
        frames = [frame for frame in stack.split(";") if not frame.startswith("process ")]
        samples += count
        if frames:
            own[_short(frames[-1])] += count
        for frame in {_short(f) for f in frames}:
            total[frame] += count
    common.print_table(
        f"Own time ({samples} samples)", ["%", "function"], [(f"{100 * n / samples:.1f}", f) for f, n in own.most_common(top)]
    )
    common.print_table("Time including callees", ["%", "function"], [(f"{100 * n / samples:.1f}", f) for f, n in total.most_common(top)])


def _short(frame):
    # "func (path/to/module.py:123)" -> "func (module.py)"
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    parts = path.split("/")
    return f"{name} ({'/'.join(parts[-2:])})"


if __name__ == "__main__":
    main()
