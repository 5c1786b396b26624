"""Tests for the fake OpenAI upstream, driven through the real openai SDK.

Django-free on purpose: run with ``pytest tests/test_fake_upstream.py -p no:django``.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest
from openai.types import Completion, CreateEmbeddingResponse, ModerationCreateResponse
from openai.types.chat import ChatCompletion
from openai.types.responses import Response

from tests.fake_upstream import FakeUpstream

REPO_ROOT = Path(__file__).resolve().parent.parent
USER = [{"role": "user", "content": "hello there"}]


@pytest.fixture
def srv():
    server = FakeUpstream().start()
    yield server
    server.stop()


@pytest.fixture
def client(srv):
    with openai.OpenAI(base_url=srv.base_url, api_key="x", max_retries=0, timeout=10) as c:
        yield c


def http(srv, method, path, payload=None, raw=None):
    """Plain urllib call (sends Connection: close); returns (status, headers, json)."""
    data = raw if raw is not None else (json.dumps(payload).encode() if payload is not None else None)
    req = urllib.request.Request(srv.url + path, data=data, method=method, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.headers, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, json.loads(exc.read())


def wait_until(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


# --------------------------------------------------------------------------- routes


def test_models_list(client):
    models = client.models.list()
    assert [m.id for m in models.data] == ["fake-model", "fake-embed"]
    assert client.models.retrieve("fake-embed").owned_by == "fake"


def test_chat_completion_parses_and_honours_n(client):
    raw = client.chat.completions.with_raw_response.create(
        model="fake-model", n=3, messages=[{"role": "system", "content": "be brief"}, *USER]
    )
    assert raw.headers["x-request-id"].startswith("req_")
    ChatCompletion.model_validate(json.loads(raw.http_response.content))  # strict shape check
    completion = raw.parse()
    assert isinstance(completion, ChatCompletion)
    assert completion.id.startswith("chatcmpl-")
    assert [c.index for c in completion.choices] == [0, 1, 2]
    assert completion.choices[0].message.content == "echo: hello there"
    assert completion.choices[0].finish_reason == "stop"
    usage = completion.usage
    assert usage.prompt_tokens > 0 and usage.completion_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_chat_completion_content_parts(client):
    completion = client.chat.completions.create(
        model="fake-model", messages=[{"role": "user", "content": [{"type": "text", "text": "part one"}]}]
    )
    assert completion.choices[0].message.content == "echo: part one"


def test_completions(client):
    raw = client.completions.with_raw_response.create(model="fake-model", prompt=["a", "b"])
    Completion.model_validate(json.loads(raw.http_response.content))
    completion = raw.parse()
    assert completion.object == "text_completion"
    assert [c.text for c in completion.choices] == ["echo: a", "echo: b"]
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens


@pytest.mark.parametrize(
    "value, count",
    [
        ("one string", 1),
        (["a", "b", "c"], 3),
        ([1, 2, 3], 1),
        ([[1, 2], [3]], 2),
    ],
)
def test_embeddings_input_shapes(client, value, count):
    raw = client.embeddings.with_raw_response.create(model="fake-embed", input=value, encoding_format="float")
    parsed = CreateEmbeddingResponse.model_validate(json.loads(raw.http_response.content))
    assert [d.index for d in parsed.data] == list(range(count))
    assert all(len(d.embedding) == 8 for d in parsed.data)
    assert parsed.usage.prompt_tokens == parsed.usage.total_tokens > 0


def test_embeddings_are_deterministic_and_base64_roundtrips(client):
    floats = client.embeddings.create(model="fake-embed", input="same", encoding_format="float")
    again = client.embeddings.create(model="fake-embed", input="same", encoding_format="float")
    other = client.embeddings.create(model="fake-embed", input="different", encoding_format="float")
    assert floats.data[0].embedding == again.data[0].embedding != other.data[0].embedding
    # Without encoding_format the SDK asks for base64 and decodes it itself.
    decoded = client.embeddings.create(model="fake-embed", input="same")
    assert decoded.data[0].embedding == pytest.approx(floats.data[0].embedding, abs=1e-6)


def test_responses(client):
    raw = client.responses.with_raw_response.create(model="fake-model", input="hi there")
    Response.model_validate(json.loads(raw.http_response.content))
    response = raw.parse()
    assert response.id.startswith("resp_")
    assert response.status == "completed"
    assert response.output_text == "echo: hi there"
    assert response.usage.total_tokens == response.usage.input_tokens + response.usage.output_tokens


def test_responses_message_input(client):
    response = client.responses.create(
        model="fake-model", input=[{"role": "user", "content": [{"type": "input_text", "text": "from parts"}]}]
    )
    assert response.output_text == "echo: from parts"


def test_moderations(client):
    raw = client.moderations.with_raw_response.create(model="fake-model", input=["x", "y"])
    parsed = ModerationCreateResponse.model_validate(json.loads(raw.http_response.content))
    assert parsed.id.startswith("modr-")
    assert len(parsed.results) == 2
    assert parsed.results[0].flagged is False
    assert parsed.results[0].categories.violence is False


# --------------------------------------------------------------------------- errors


def test_unknown_model_is_404(client):
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="nope", messages=USER)
    assert info.value.code == "model_not_found"
    assert info.value.body["message"] == "The model `nope` does not exist"
    assert info.value.response.headers["x-request-id"].startswith("req_")


def test_invalid_json_is_400(srv):
    status, headers, body = http(srv, "POST", "/v1/chat/completions", raw=b"{not json")
    assert status == 400
    assert body["error"]["type"] == "invalid_request_error"
    assert headers["x-request-id"].startswith("req_")


def test_fail_markers(client, srv):
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="fake-model", messages=[{"role": "user", "content": "x FAIL_400 y"}])
    with pytest.raises(openai.InternalServerError):
        client.completions.create(model="fake-model", prompt="FAIL_500")
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model="fake-embed", input=["ok", "FAIL_400"])
    assert srv.stats()["responses_by_status"] == {"400": 2, "500": 1}


def test_429_injection_carries_retry_after(client, srv):
    srv.configure(error_429_rate=1.0, retry_after_s=7)
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model="fake-model", messages=USER)
    assert info.value.response.headers["retry-after"] == "7"
    assert info.value.code == "rate_limit_exceeded"


def test_500_and_503_injection(client, srv):
    srv.configure(error_500_rate=1.0)
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model="fake-model", messages=USER)
    assert info.value.status_code == 500
    srv.configure(error_500_rate=0.0, error_503_rate=1.0)
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model="fake-model", messages=USER)
    assert info.value.status_code == 503


def test_seeded_faults_are_reproducible():
    def run():
        with FakeUpstream(error_500_rate=0.5, seed=42) as server, openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0) as c:
            outcome = []
            for _ in range(20):
                try:
                    c.chat.completions.create(model="fake-model", messages=USER)
                    outcome.append(200)
                except openai.InternalServerError:
                    outcome.append(500)
            return outcome

    first = run()
    assert first == run()
    assert 200 in first and 500 in first


def test_down_mode_drops_connections_but_control_works(client, srv):
    assert http(srv, "POST", "/_control/config", {"down": True})[2]["down"] is True
    with pytest.raises(openai.APIConnectionError):
        client.chat.completions.create(model="fake-model", messages=USER)
    assert http(srv, "GET", "/_control/config")[2]["down"] is True
    assert http(srv, "POST", "/_control/config", {"down": False})[0] == 200
    assert client.chat.completions.create(model="fake-model", messages=USER).choices
    stats = srv.stats()
    assert stats["dropped"] == 1
    assert stats["requests_total"] == 2


def test_timeout_injection_hangs_until_client_gives_up(srv):
    srv.configure(timeout_rate=1.0, hang_s=30)
    with openai.OpenAI(base_url=srv.base_url, api_key="x", max_retries=0, timeout=0.3) as c:
        with pytest.raises(openai.APITimeoutError):
            c.chat.completions.create(model="fake-model", messages=USER)
    assert srv.stats()["hung"] == 1
    # The server notices the client hanging up, so in_flight does not leak.
    assert wait_until(lambda: srv.stats()["in_flight"] == 0)


def test_control_config_roundtrip_and_validation(srv):
    status, _, cfg = http(srv, "POST", "/_control/config", {"latency_ms": 5, "models": ["m1"]})
    assert status == 200 and cfg["latency_ms"] == 5.0 and cfg["models"] == ["m1"]
    assert http(srv, "GET", "/_control/config")[2] == srv.config()
    assert http(srv, "POST", "/_control/config", {"bogus": 1})[0] == 400
    assert http(srv, "POST", "/_control/config", {"error_500_rate": 2})[0] == 400
    with pytest.raises(ValueError):
        srv.configure(bogus=1)
    # Control traffic is not counted as inference traffic.
    assert srv.stats()["requests_total"] == 0


def test_models_are_reconfigurable(client, srv):
    srv.configure(models=["only-this"])
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="fake-model", messages=USER)
    assert client.chat.completions.create(model="only-this", messages=USER).model == "only-this"


# --------------------------------------------------------------------------- stats


def test_stats_counts_and_reset(client, srv):
    for text in ["dup", "dup", "dup", "single"]:
        client.chat.completions.create(model="fake-model", messages=[{"role": "user", "content": text}])
    client.embeddings.create(model="fake-embed", input="vec")
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="missing", messages=USER)

    stats = srv.stats()
    assert stats["requests_total"] == 6
    assert stats["responses_by_status"] == {"200": 5, "404": 1}
    assert stats["by_path"] == {"/v1/chat/completions": 5, "/v1/embeddings": 1}
    assert stats["content_counts"]["dup"] == 3
    assert stats["content_counts"]["single"] == 1
    assert stats["in_flight"] == 0 and stats["max_in_flight"] >= 1
    assert stats["first_request_at"] <= stats["last_request_at"]
    assert http(srv, "GET", "/_control/stats")[2]["requests_total"] == 6
    assert "content_counts" not in http(srv, "GET", "/_control/stats?content=0")[2]
    records = srv.records()
    assert [r[1:] for r in records][-1] == ("/v1/chat/completions", 404)

    assert http(srv, "POST", "/_control/reset")[0] == 200
    stats = srv.stats()
    assert stats["requests_total"] == 0 and stats["content_counts"] == {}
    assert stats["rpm_max"] == 0 and srv.records() == []


def test_custom_marker_counter(client, srv):
    srv.configure(custom_marker="MARK-7")
    client.chat.completions.create(model="fake-model", messages=[{"role": "user", "content": "MARK-7"}])
    client.chat.completions.create(model="fake-model", messages=USER)
    assert srv.stats()["bodies_seen_custom_marker"] == 1


def test_rpm_max_is_a_sliding_window(client, srv):
    srv.rpm_window_s = 0.5  # shrink the 60 s window so the test stays fast
    for _ in range(3):
        client.models.list()
    time.sleep(0.6)
    for _ in range(2):
        client.models.list()
    stats = srv.stats()
    assert stats["requests_total"] == 5
    assert stats["rpm_max"] == 3


def test_rpm_max_default_window(client, srv):
    for _ in range(4):
        client.models.list()
    assert srv.stats()["rpm_max"] == 4


def test_latency_keeps_requests_in_flight(srv):
    srv.configure(latency_ms=300)

    async def burst():
        async with openai.AsyncOpenAI(base_url=srv.base_url, api_key="x", max_retries=0) as c:
            return await asyncio.gather(*(c.chat.completions.create(model="fake-model", messages=USER) for _ in range(20)))

    assert len(asyncio.run(burst())) == 20
    assert srv.stats()["max_in_flight"] >= 10


# --------------------------------------------------------------------------- capacity and load counters


def burst(srv, count, users=None):
    """``count`` chat calls at once (no retries); returns each one's status code and, for 429s, the error."""

    async def one(c, i):
        extra = {"user": users[i]} if users else {}
        try:
            await c.chat.completions.create(model="fake-model", messages=[{"role": "user", "content": f"b{i}"}], **extra)
            return 200, None
        except openai.RateLimitError as exc:
            return 429, exc

    async def run():
        async with openai.AsyncOpenAI(base_url=srv.base_url, api_key="x", max_retries=0, timeout=10) as c:
            return await asyncio.gather(*(one(c, i) for i in range(count)))

    return asyncio.run(run())


def test_capacity_answers_429_above_max_concurrency(srv):
    srv.configure(latency_ms=300, max_concurrency=4, retry_after_s=0.5)
    results = burst(srv, 10)
    assert sorted(status for status, _ in results) == [200] * 4 + [429] * 6
    error = next(exc for status, exc in results if status == 429)
    assert error.code == "concurrency_limit_exceeded"
    assert error.response.headers["retry-after"] == "0.5"
    stats = srv.stats()
    assert stats["rejected_over_capacity"] == 6
    assert stats["responses_by_status"] == {"200": 4, "429": 6}
    # Only admitted requests stay open: the level 4 is held for about the latency.
    assert 0.25 <= stats["in_flight_time_s"]["4"] <= 0.6


def test_capacity_changes_mid_run_through_the_control_route(srv):
    srv.configure(latency_ms=200, max_concurrency=2)
    assert sorted(s for s, _ in burst(srv, 5)) == [200] * 2 + [429] * 3
    status, _, config = http(srv, "POST", "/_control/config", {"max_concurrency": 5})
    assert status == 200 and config["max_concurrency"] == 5
    assert [s for s, _ in burst(srv, 5)] == [200] * 5
    http(srv, "POST", "/_control/config", {"max_concurrency": None})
    assert [s for s, _ in burst(srv, 12)] == [200] * 12
    for bad in (0, -1, True, "8", 2.5):
        assert http(srv, "POST", "/_control/config", {"max_concurrency": bad})[0] == 400


def test_capacity_spares_the_models_route(client, srv):
    srv.configure(latency_ms=300, max_concurrency=1)

    async def run():
        async with openai.AsyncOpenAI(base_url=srv.base_url, api_key="x", max_retries=0) as c:
            chat = asyncio.ensure_future(c.chat.completions.create(model="fake-model", messages=USER))
            await asyncio.sleep(0.1)
            models = await c.models.list()
            await chat
            return [m.id for m in models.data]

    assert asyncio.run(run()) == ["fake-model", "fake-embed"]
    stats = srv.stats()
    assert stats["rejected_over_capacity"] == 0
    assert stats["max_in_flight"] == 1  # listing models is not an inference call in flight


def test_counters_per_model_and_user(client, srv):
    client.chat.completions.create(model="fake-model", messages=USER, user="owner-a")
    client.chat.completions.create(model="fake-model", messages=USER, user="owner-b")
    client.chat.completions.create(model="fake-model", messages=USER, user="owner-a")
    client.embeddings.create(model="fake-embed", input="x")
    stats = srv.stats()
    assert stats["by_model"] == {"fake-model": 3, "fake-embed": 1}
    assert stats["by_user"] == {"owner-a": 2, "owner-b": 1}


def test_timeline_and_in_flight_time_follow_the_load(srv):
    srv.timeline_interval_s = 0.1
    srv.configure(latency_ms=400)
    burst(srv, 6, users=["a", "a", "a", "a", "b", "b"])
    time.sleep(0.15)  # idle time afterwards is neither a slice nor in-flight time above 0
    timeline = srv.timeline()
    assert [slice_["t"] for slice_ in timeline] == pytest.approx([0.1 * i for i in range(len(timeline))])
    assert 4 <= len(timeline) <= 7
    assert sum(slice_["arrivals"] for slice_ in timeline) == 6
    assert sum(slice_["ok"] for slice_ in timeline) == 6
    assert max(slice_["in_flight_max"] for slice_ in timeline) == 6
    middle = timeline[1:3]
    assert all(slice_["in_flight_mean"] == pytest.approx(6, abs=0.01) for slice_ in middle)
    served = {}
    for slice_ in timeline:
        for user, count in slice_["ok_by_user"].items():
            served[user] = served.get(user, 0) + count
    assert served == {"a": 4, "b": 2}
    levels = srv.stats()["in_flight_time_s"]
    assert 0.35 <= levels["6"] <= 0.6
    request_seconds = sum(int(level) * seconds for level, seconds in levels.items())
    assert request_seconds == pytest.approx(sum(slice_["in_flight_mean"] * 0.1 for slice_ in timeline), rel=1e-6)
    assert http(srv, "GET", "/_control/timeline")[2][0]["arrivals"] >= 1
    srv.reset()
    assert srv.timeline() == [] and srv.stats()["in_flight_time_s"] == {}


# --------------------------------------------------------------------------- load & CLI


def test_throughput_smoke_threads(client, srv):
    def call(i):
        return (
            client.chat.completions.create(model="fake-model", messages=[{"role": "user", "content": f"line {i}"}])
            .choices[0]
            .message.content
        )

    with ThreadPoolExecutor(max_workers=32) as pool:
        results = list(pool.map(call, range(500)))
    assert results == [f"echo: line {i}" for i in range(500)]
    stats = srv.stats()
    assert stats["requests_total"] == 500
    assert stats["responses_by_status"] == {"200": 500}
    assert len(stats["content_counts"]) == 500


def test_throughput_smoke_async(srv):
    async def run():
        async with openai.AsyncOpenAI(base_url=srv.base_url, api_key="x", max_retries=0) as c:
            sem = asyncio.Semaphore(64)

            async def one(i):
                async with sem:
                    return await c.completions.create(model="fake-model", prompt=f"p{i}")

            return await asyncio.gather(*(one(i) for i in range(300)))

    assert len(asyncio.run(run())) == 300
    assert srv.stats()["responses_by_status"] == {"200": 300}


def test_cli_prints_url_and_stops_on_sigterm():
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.fake_upstream", "--port", "0", "--models", "a,b", "--latency-ms", "1"],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    try:
        line = proc.stdout.readline().strip()
        assert line.startswith("FAKE_UPSTREAM_URL=http://127.0.0.1:")
        base_url = line.split("=", 1)[1]
        assert base_url.endswith("/v1")
        with openai.OpenAI(base_url=base_url, api_key="x", max_retries=0) as c:
            assert [m.id for m in c.models.list().data] == ["a", "b"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert proc.stdout.read() == ""  # exactly one line of output
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
