"""Benchmark 4: latency of GET /v1/batches/{id} while benchmark 1's batch runs
(50 ms upstream, concurrency 64, 10,000 lines). A client polls the batch over one
keep-alive connection, as a dashboard or the SDK's polling loop would, from the
moment the batch is created until it completes. Target: p99 < 50 ms.

    .venv/bin/python bench/bench_api_latency.py [--rate 20] [--db postgres]
"""

import http.client
import threading
import time
import urllib.parse

import bench_throughput
import common

TARGET_P99_MS = 50.0


class Poller:
    """GETs the batch ``rate`` times a second (one connection, as a client would)."""

    def __init__(self, base_url, api_key, rate):
        self.url = urllib.parse.urlsplit(base_url)
        self.headers = {"Authorization": f"Bearer {api_key}"}
        self.interval = 1 / rate
        self.latencies_ms = []
        self.errors = 0
        self._stop = threading.Event()

    def start(self, batch_id):
        self.path = f"{self.url.path}/batches/{batch_id}"
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stop(self):
        self._stop.set()
        self._thread.join()

    def _run(self):
        connection = http.client.HTTPConnection(self.url.hostname, self.url.port, timeout=30)
        next_at = time.perf_counter()
        while not self._stop.is_set():
            started = time.perf_counter()
            try:
                connection.request("GET", self.path, headers=self.headers)
                response = connection.getresponse()
                response.read()
                if response.status == 200:
                    self.latencies_ms.append(1000 * (time.perf_counter() - started))
                else:
                    self.errors += 1
            except (OSError, http.client.HTTPException):
                self.errors += 1
                connection.close()
            next_at += self.interval
            self._stop.wait(max(0.0, next_at - time.perf_counter()))
        connection.close()


def percentile(values, share):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


class Polling:
    """Starts a poller on each batch benchmark 1 runs."""

    def __init__(self, rate):
        self.rate = rate
        self.pollers = []

    def start(self, stack, batch_id):
        poller = Poller(stack.base_url, stack.api_key, self.rate)
        self.pollers.append(poller)
        poller.start(batch_id)

    def stop(self):
        self.pollers[-1].stop()


def measure(args):
    polling = Polling(args.rate)
    throughput = bench_throughput.measure(args, during=polling)
    poller = polling.pollers[-1]
    latencies = poller.latencies_ms
    p50, p99 = percentile(latencies, 0.50), percentile(latencies, 0.99)
    return {
        "params": {**throughput["params"], "rate": args.rate},
        "requests": len(latencies),
        "errors": poller.errors,
        "p50_ms": p50,
        "p90_ms": percentile(latencies, 0.90),
        "p99_ms": p99,
        "max_ms": max(latencies),
        "latencies_ms": latencies,
        "throughput_share_of_ideal": throughput["best"]["share_of_ideal"],
        "load_before": throughput["best"]["load_before"],
        "load_after": throughput["best"]["load_after"],
        "target_p99_ms": TARGET_P99_MS,
        "met": p99 < TARGET_P99_MS and not poller.errors,
    }


def report(result):
    common.print_table(
        f"Benchmark 4: GET /v1/batches/{{id}} during benchmark 1 ({result['params']['rate']:g}/s, {result['params']['db']})",
        ["requests", "errors", "p50 ms", "p90 ms", "p99 ms", "max ms", "batch throughput"],
        [
            (
                result["requests"],
                result["errors"],
                f"{result['p50_ms']:.1f}",
                f"{result['p90_ms']:.1f}",
                f"{result['p99_ms']:.1f}",
                f"{result['max_ms']:.1f}",
                f"{100 * result['throughput_share_of_ideal']:.1f} % of ideal",
            )
        ],
    )
    print(
        f"p99 {result['p99_ms']:.1f} ms (target < {result['target_p99_ms']:g} ms) {'MET' if result['met'] else 'NOT MET'}; "
        f"load average {result['load_before']} -> {result['load_after']}"
    )


if __name__ == "__main__":
    args = common.parse_args(
        __doc__.splitlines()[0],
        extra=[("--rate", {"type": float, "default": 20.0, "help": "GETs a second"})],
        lines=10_000,
        latency_ms=50.0,
    )
    result = measure(args)
    report(result)
    print("results:", common.save("api_latency", result, args.json))
