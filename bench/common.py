"""What every benchmark shares: the fake upstream in a process of its own, a live
stack (gunicorn + qcluster on a fresh database), one batch run end to end, the
workers' memory, the machine's load, and the results table.

Run the scripts from the repository root with the project's Python, e.g.
``.venv/bin/python bench/bench_throughput.py``; ``bench/run_all.py`` runs them all.
"""

import argparse
import io
import json
import os
import platform
import subprocess
import sys
import threading
import time
import urllib.request
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.live import LiveStack, wait_until  # noqa: E402

RESULTS_DIR = ROOT / "bench" / "results"
PG_DEFAULT_URL = "postgres://postgres@127.0.0.1:5432/postgres"
MODEL = "fake-model"
EMBED_MODEL = "fake-embed"
CHAT = "/v1/chat/completions"
EMBEDDINGS = "/v1/embeddings"
MIB = 1024 * 1024


def parse_args(description, extra=(), **defaults):
    """The options every benchmark takes, plus ``extra`` ``(flag, kwargs)`` pairs;
    ``defaults`` overrides their defaults."""
    parser = argparse.ArgumentParser(description=description)
    for flag, options in extra:
        parser.add_argument(flag, **options)
    parser.add_argument("--lines", type=int, default=defaults.get("lines", 10_000))
    parser.add_argument("--latency-ms", type=float, default=defaults.get("latency_ms", 0.0))
    parser.add_argument("--concurrency", type=int, default=defaults.get("concurrency", 64), help="MAX_CONCURRENT_REQUESTS_PER_BATCH")
    parser.add_argument(
        "--db",
        choices=("sqlite", "postgres"),
        default=defaults.get("db", "sqlite"),
        help=f"postgres creates a fresh database through TEST_DATABASE_URL (default {PG_DEFAULT_URL})",
    )
    parser.add_argument("--redis", default=defaults.get("redis"), help="BATCHES_REDIS_URL: the Redis broker and cache")
    parser.add_argument(
        "--run-tasks", type=int, default=defaults.get("run_tasks", 1), help="DISPATCHERS (worker processes sending requests)"
    )
    parser.add_argument("--repeat", type=int, default=defaults.get("repeat", 1), help="runs; the best one is reported")
    parser.add_argument("--json", default=None, help="where to write the results (default bench/results/<name>.json)")
    return parser.parse_args()


# --- the fake upstream, in its own process so its CPU is not counted in the workers ---


class UpstreamProcess:
    def __init__(self, latency_ms=0.0):
        self.latency_ms = latency_ms
        self.proc = None
        self.base_url = None

    def __enter__(self):
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.fake_upstream",
                "--port",
                "0",
                "--latency-ms",
                str(self.latency_ms),
                "--models",
                f"{MODEL},{EMBED_MODEL}",
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        line = self.proc.stdout.readline().strip()
        if not line.startswith("FAKE_UPSTREAM_URL="):
            self.proc.kill()
            raise RuntimeError(f"fake upstream did not start: {line!r}")
        self.base_url = line.split("=", 1)[1]
        return self

    def _control(self, path, body=None):
        url = self.base_url.removesuffix("/v1") + path
        data = json.dumps(body).encode() if body is not None else None
        with urllib.request.urlopen(
            urllib.request.Request(url, data=data, method="POST" if data is not None or path.endswith("reset") else "GET"), timeout=30
        ) as response:
            return json.loads(response.read() or b"null")

    def stats(self):
        return self._control("/_control/stats?content=0")

    def configure(self, **config):
        """Change the fake upstream's configuration (e.g. ``max_concurrency``) while it runs."""
        return self._control("/_control/config", config)

    def timeline(self):
        """In-flight and answers per slice of time (see tests/fake_upstream.py)."""
        return self._control("/_control/timeline")

    def reset(self):
        self._control("/_control/reset")

    def __exit__(self, *exc):
        self.proc.terminate()
        self.proc.wait(timeout=10)


@contextmanager
def live_stack(upstream_url, *, db="sqlite", redis=None, concurrency=64, workers=2, worker_processes=1, run_tasks=1, env=None):
    """A LiveStack tuned for one benchmark; PostgreSQL and Redis are chosen here, not by the caller's environment."""
    saved = {key: os.environ.pop(key, None) for key in ("TEST_DATABASE_URL", "BATCHES_REDIS_URL", "DATABASE_URL")}
    if db == "postgres":
        os.environ["TEST_DATABASE_URL"] = saved["TEST_DATABASE_URL"] or PG_DEFAULT_URL
    stack_env = {
        "BATCHES_MAX_CONCURRENT_REQUESTS_PER_BATCH": str(concurrency),
        "BATCHES_DISPATCHERS": str(run_tasks),
        "BATCHES_LOG_LEVEL": "WARNING",
        **(env or {}),
    }
    if redis:
        stack_env["BATCHES_REDIS_URL"] = redis
    stack = LiveStack(upstream_url, workers=workers, worker_processes=worker_processes, env=stack_env)
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()
        for key, value in saved.items():
            os.environ.pop(key, None)
            if value is not None:
                os.environ[key] = value


# --- one batch, end to end ----------------------------------------------------------


def request_body(endpoint, i):
    if endpoint == EMBEDDINGS:  # short inputs: a sentence each
        return {"model": EMBED_MODEL, "input": f"Embed sentence number {i}."}
    return {"model": MODEL, "messages": [{"role": "user", "content": f"Say hello to number {i}."}], "max_tokens": 16}


def run_params(args, **extra):
    """The parameters a benchmark's result records: its size, the upstream latency, the stack."""
    return {
        "lines": args.lines,
        "latency_ms": args.latency_ms,
        "concurrency": args.concurrency,
        **extra,
        "db": args.db,
        "redis": bool(args.redis),
    }


def batch_input(lines, endpoint=CHAT):
    out = io.BytesIO()
    for i in range(lines):
        record = {"custom_id": f"req-{i}", "method": "POST", "url": endpoint, "body": request_body(endpoint, i)}
        out.write(json.dumps(record, separators=(",", ":")).encode() + b"\n")
    return out.getvalue()


def run_batch(stack, lines, *, endpoint=CHAT, poll=0.5, timeout=1800, during=None):
    """Upload ``lines`` requests, create a batch and wait until it is completed.

    Returns the phases' durations in seconds, from the database's own timestamps
    (the API's are whole seconds) and this process's clock for the upload. Polling is
    slow on purpose: the web server shares the cores with the workers."""
    client = stack.client(timeout=600)
    payload = batch_input(lines, endpoint)
    started = time.time()
    upload = client.files.create(file=("bench.jsonl", io.BytesIO(payload), "application/jsonl"), purpose="batch")
    batch = client.batches.create(input_file_id=upload.id, endpoint=endpoint, completion_window="24h")
    created = time.time()
    if during:  # e.g. benchmark 4's poller: start(stack, batch_id), stop()
        during.start(stack, batch.id)

    def finished():
        current = client.batches.retrieve(batch.id)
        return current if current.status in ("completed", "failed", "cancelled", "expired") else None

    try:
        final = wait_until(finished, timeout, interval=poll, what=f"batch {batch.id}")
    finally:
        if during:
            during.stop()
    seen_done = time.time()
    if final.status != "completed" or final.request_counts.completed != lines:
        raise RuntimeError(f"batch ended {final.status} with {final.request_counts}; errors={final.errors}")
    stamps = batch_timestamps(stack, batch.id)
    return {
        "batch_id": batch.id,
        "lines": lines,
        "input_bytes": len(payload),
        "upload_s": created - started,
        "validate_s": stamps["in_progress_at"] - stamps["created_at"],
        "run_s": stamps["finalizing_at"] - stamps["in_progress_at"],
        "finalize_s": stamps["completed_at"] - stamps["finalizing_at"],
        "upload_to_completed_s": stamps["completed_at"] - started,
        "upload_to_seen_completed_s": seen_done - started,
    }


def batch_timestamps(stack, batch_id):
    """The batch's lifecycle timestamps (Unix seconds, microsecond precision)."""
    columns = ("created_at", "in_progress_at", "finalizing_at", "completed_at")
    query = f"SELECT {', '.join(columns)} FROM batches_batch WHERE id = %s"
    if stack.db.pg_name:
        import psycopg

        with psycopg.connect(stack.db.url) as conn:
            row = conn.execute(query, (batch_id,)).fetchone()
        return {name: value.timestamp() for name, value in zip(columns, row)}
    import sqlite3

    with sqlite3.connect(stack.db.url.removeprefix("sqlite:///")) as conn:
        row = conn.execute(query.replace("%s", "?"), (batch_id,)).fetchone()
    return {name: datetime.fromisoformat(value).replace(tzinfo=UTC).timestamp() for name, value in zip(columns, row)}


# --- sampling while a benchmark runs ----------------------------------------------------


class Sampler:
    """Calls ``sample()`` every ``every`` seconds on a background thread inside a
    ``with`` block; ``stop()`` from ``sample()`` ends it early."""

    def __init__(self, every):
        self.every = every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def stop(self):
        self._stop.set()

    def _run(self):
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.every)

    def sample(self):
        raise NotImplementedError


class WorkerMemory(Sampler):
    """Samples the memory of every qcluster process and its children.

    Per process, the kernel's own high-water mark of resident memory (VmHWM) is
    kept, so a peak between two samples is not missed. For the whole cluster the
    proportional set size (PSS) is summed: pages the forked processes share are
    counted once, where a sum of RSS would count them once per process."""

    def __init__(self, stack, every=0.1):
        import psutil

        super().__init__(every)
        self.psutil = psutil
        self.roots = [psutil.Process(proc.pid) for proc in stack.workers]
        self.peak_by_pid = {}
        self.peak_pss = 0

    def _processes(self):
        for root in self.roots:
            try:
                yield root
                yield from root.children(recursive=True)
            except self.psutil.NoSuchProcess:
                continue

    def sample(self):
        pss = 0
        for proc in self._processes():
            try:
                pss += proc.memory_full_info().pss
                peak = _vm_hwm(proc.pid) or proc.memory_info().rss
            except (self.psutil.NoSuchProcess, self.psutil.AccessDenied):
                continue
            self.peak_by_pid[proc.pid] = max(self.peak_by_pid.get(proc.pid, 0), peak)
        self.peak_pss = max(self.peak_pss, pss)

    def result(self):
        return {
            "peak_process_mib": max(self.peak_by_pid.values()) / MIB,
            "peak_total_pss_mib": self.peak_pss / MIB,
            "processes": len(self.peak_by_pid),
        }


def _vm_hwm(pid):
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


# --- the machine, and reporting -----------------------------------------------------


def load_average():
    return round(os.getloadavg()[0], 2)


def machine():
    return {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}


def print_table(title, headers, rows):
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(headers)]
    print(f"\n{title}")
    print("  ".join(str(h).ljust(w) for h, w in zip(headers, widths)))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)))


def save(name, result, path=None):
    path = Path(path) if path else RESULTS_DIR / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    result = {"benchmark": name, "measured_at": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine(), **result}
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path


# --- what the machine allows without us -------------------------------------------------


def bare_client_rate(base_url, concurrency, requests, endpoint=CHAT):
    """Requests a second a bare aiohttp client gets from the fake upstream with
    ``concurrency`` calls in flight: the ceiling of this machine, whatever the
    orchestrator does (its fake upstream and the client share the same cores)."""
    import asyncio

    import aiohttp

    body = json.dumps(request_body(endpoint, 0)).encode()
    path = endpoint.removeprefix("/v1/")

    async def run():
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
            slots = asyncio.Semaphore(concurrency)

            async def call():
                async with (
                    slots,
                    session.post(f"{base_url}/{path}", data=body, headers={"Content-Type": "application/json"}) as response,
                ):
                    await response.read()

            await asyncio.gather(*(call() for _ in range(concurrency)))  # connections open before timing
            started = time.perf_counter()
            await asyncio.gather(*(call() for _ in range(requests)))
            return requests / (time.perf_counter() - started)

    return asyncio.run(run())


class CpuUse:
    """CPU seconds the service used between ``__enter__`` and ``__exit__`` (the worker
    processes, the web server, and a PostgreSQL server's backends; SQLite runs inside
    the first two), and how busy the whole machine was: tells a benchmark that is
    bound by the machine's cores from one bound by waiting."""

    def __init__(self, stack):
        import psutil

        self.psutil = psutil
        self.stack = stack

    def _tree_seconds(self, roots):
        total = 0.0
        for proc in roots:
            try:
                root = self.psutil.Process(proc.pid)
                for member in [root, *root.children(recursive=True)]:
                    times = member.cpu_times()
                    total += times.user + times.system
            except self.psutil.NoSuchProcess:
                continue
        return total

    def _database_seconds(self):
        """PostgreSQL backends' CPU (other sessions' work on the same server counts too)."""
        if not self.stack.db.pg_name:
            return 0.0
        total = 0.0
        for proc in self.psutil.process_iter(["name", "cpu_times"]):
            if proc.info["name"] in ("postgres", "postmaster") and proc.info["cpu_times"]:
                total += proc.info["cpu_times"].user + proc.info["cpu_times"].system
        return total

    def _seconds(self):
        return {
            "workers_cpu_s": self._tree_seconds(self.stack.workers),
            "web_cpu_s": self._tree_seconds([self.stack.web]),
            "database_cpu_s": self._database_seconds(),
        }

    def __enter__(self):
        self.started = time.perf_counter()
        self.machine_before = self.psutil.cpu_times()
        self.before = self._seconds()
        return self

    def __exit__(self, *exc):
        elapsed = time.perf_counter() - self.started
        after = self.psutil.cpu_times()
        busy = sum(getattr(after, f) - getattr(self.machine_before, f) for f in ("user", "nice", "system", "irq", "softirq", "steal"))
        used = {key: value - self.before[key] for key, value in self._seconds().items()}
        self.result = {
            **used,
            "service_cpu_s": sum(used.values()),
            "machine_busy_share": busy / (elapsed * (os.cpu_count() or 1)),
            "elapsed_s": elapsed,
        }
