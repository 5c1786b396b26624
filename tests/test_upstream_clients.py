"""Both inference clients (``UPSTREAM_CLIENT_CLASS``) send the same requests and turn
the same upstream answers into the same ``Outcome``: one table of answers, served
byte for byte by a scripted HTTP server, runs through each client.
"""

import asyncio
import gzip
import json
import socket
import threading

import pytest

from batches import upstream

API_KEY = "sk-upstream-secret-123"
CHAT = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "model": "m",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "héllo"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
}
CHAT_BYTES = json.dumps(CHAT).encode()
HUGE = {"object": "list", "data": [{"index": i, "text": "x" * 1000} for i in range(8000)]}  # about 8 MB


def answer(status, body=b"", headers=()):
    if isinstance(body, dict):
        body, headers = json.dumps(body).encode(), [("Content-Type", "application/json"), *headers]
    lines = [f"HTTP/1.1 {status} Whatever", f"Content-Length: {len(body)}", *(f"{name}: {value}" for name, value in headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def envelope(message="bad", type_="invalid_request_error", code=None):
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


# name -> what the server writes back (bytes), or a behaviour: "hang", "reset", "close", "refused".
ANSWERS = {
    "ok": answer(200, CHAT, [("x-request-id", "req_123")]),
    "ok-gzip": answer(200, gzip.compress(CHAT_BYTES), [("Content-Encoding", "gzip"), ("Content-Type", "application/json")]),
    "ok-list": answer(200, b"[1, 2]"),
    "ok-huge": answer(200, HUGE),
    "400": answer(400, envelope("'messages' is required", code="missing_required_parameter")),
    "401-quotes-key": answer(401, envelope(f"Incorrect API key provided: {API_KEY}", code="invalid_api_key")),
    "404": answer(404, envelope("The model 'm' does not exist", code="model_not_found")),
    "408": answer(408, envelope("timeout")),
    "409": answer(409, envelope("conflict")),
    "429-retry-after": answer(429, envelope("slow down", "rate_limit_exceeded"), [("Retry-After", "7")]),
    "429-retry-after-ms": answer(429, envelope("slow down", "rate_limit_exceeded"), [("retry-after-ms", "1500")]),
    "429-bare": answer(429, b'{"error": "Too many requests"}'),
    "429-should-not-retry": answer(429, envelope("quota exceeded", "insufficient_quota"), [("x-should-retry", "false")]),
    "400-should-retry": answer(400, envelope("try again"), [("x-should-retry", "true"), ("Retry-After", "2")]),
    "500": answer(500, envelope("boom", "server_error")),
    "503-html": answer(503, b"<html>Service Unavailable</html>", [("Content-Type", "text/html")]),
    "200-html": answer(200, b"<html>captive portal</html>", [("Content-Type", "text/html")]),
    "200-truncated-json": answer(200, CHAT_BYTES[:25], [("Content-Type", "application/json")]),
    "200-empty": answer(200),
    "200-html-quotes-key": answer(200, f"<p>{API_KEY}</p>".encode()),
    "302": answer(302, headers=[("Location", "https://elsewhere.example/v1/chat/completions")]),
    "307": answer(307, headers=[("Location", "/ok/chat/completions")]),
    "hang": "hang",
    "reset-mid-body": "reset",
    "close-before-answer": "close",
    "refused": "refused",
}

unreachable = {"kind": "retry", "status_code": None, "code": "upstream_unreachable", "connection_error": True}
# name -> the outcome both clients must give (kind, status, error code, Retry-After, connection error).
EXPECTED = {
    "ok": {"kind": "succeeded", "status_code": 200, "body": CHAT, "request_id": "req_123"},
    "ok-gzip": {"kind": "succeeded", "status_code": 200, "body": CHAT},
    "ok-list": {"kind": "succeeded", "status_code": 200, "body": {"data": [1, 2]}},
    "ok-huge": {"kind": "succeeded", "status_code": 200, "body": HUGE},
    "400": {"kind": "failed", "status_code": 400, "code": "missing_required_parameter"},
    "401-quotes-key": {"kind": "failed", "status_code": 401, "code": "invalid_api_key"},
    "404": {"kind": "failed", "status_code": 404, "code": "model_not_found"},
    "408": {"kind": "retry", "status_code": 408, "code": "invalid_request_error"},
    "409": {"kind": "retry", "status_code": 409, "code": "invalid_request_error"},
    "429-retry-after": {"kind": "retry", "status_code": 429, "code": "rate_limit_exceeded", "retry_after": 7.0},
    "429-retry-after-ms": {"kind": "retry", "status_code": 429, "code": "rate_limit_exceeded", "retry_after": 1.5},
    "429-bare": {"kind": "retry", "status_code": 429, "code": "429"},
    "429-should-not-retry": {"kind": "failed", "status_code": 429, "code": "insufficient_quota"},
    "400-should-retry": {"kind": "retry", "status_code": 400, "code": "invalid_request_error", "retry_after": 2.0},
    "500": {"kind": "retry", "status_code": 500, "code": "server_error"},
    "503-html": {"kind": "retry", "status_code": 503, "code": "upstream_error"},
    "200-html": {"kind": "failed", "status_code": 200, "code": "invalid_upstream_response"},
    "200-truncated-json": {"kind": "failed", "status_code": 200, "code": "invalid_upstream_response"},
    "200-empty": {"kind": "failed", "status_code": 200, "code": "invalid_upstream_response"},
    "200-html-quotes-key": {"kind": "failed", "status_code": 200, "code": "invalid_upstream_response"},
    "302": {"kind": "failed", "status_code": 302, "code": "upstream_redirect"},
    "307": {"kind": "failed", "status_code": 307, "code": "upstream_redirect"},
    "hang": {"kind": "retry", "status_code": None, "code": "upstream_timeout", "connection_error": True},
    "reset-mid-body": unreachable,
    "close-before-answer": unreachable,
    "refused": unreachable,
}

CLIENTS = [upstream.AiohttpClient, upstream.OpenAIClient]
REQUEST = {"model": "m", "messages": [{"role": "user", "content": "héllo ✓"}], "max_tokens": 3}


class ScriptedUpstream:
    """Answers ``POST /<case>/...`` with ``ANSWERS[case]``, and records each request."""

    def __init__(self):
        self.requests = []
        self.loop = asyncio.new_event_loop()
        self.server = self.loop.run_until_complete(asyncio.start_server(self.handle, "127.0.0.1", 0))
        self.port = self.server.sockets[0].getsockname()[1]
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    async def handle(self, reader, writer):
        try:
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
                method, path, _ = head[0].split(" ")
                headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in head[1:] if line)}
                body = await reader.readexactly(int(headers.get("content-length", 0)))
                self.requests.append({"method": method, "path": path, "headers": headers, "body": body})
                script = ANSWERS[path.split("/")[1]]
                if script == "hang":
                    await asyncio.sleep(30)
                    return
                if script == "close":
                    return
                if script == "reset":
                    writer.write(answer(200, CHAT)[:-10])
                    await writer.drain()
                    writer.transport.abort()
                    return
                writer.write(script)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def base_url(self, case):
        if ANSWERS[case] == "refused":
            with socket.socket() as probe:  # a port nobody listens on
                probe.bind(("127.0.0.1", 0))
                return f"http://127.0.0.1:{probe.getsockname()[1]}/v1"
        return f"http://127.0.0.1:{self.port}/{case}"

    def stop(self):
        async def shut():
            self.server.close()
            handlers = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
            for task in handlers:
                task.cancel()
            await asyncio.gather(*handlers, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shut(), self.loop).result(timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


@pytest.fixture(scope="module")
def scripted():
    server = ScriptedUpstream()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def short_timeout(settings):
    settings.OPENAI_BATCHES = {**getattr(settings, "OPENAI_BATCHES", {}), "UPSTREAM_TIMEOUT": 0.5}


def outcome_via(client_class, base_url):
    async def call():
        client = client_class(upstream.Route(base_url, API_KEY), max_connections=4)
        try:
            return await upstream.send(client, "/v1/chat/completions", REQUEST)
        finally:
            await client.close()

    return asyncio.run(call())


def test_the_table_covers_every_answer():
    assert set(EXPECTED) == set(ANSWERS)


@pytest.mark.parametrize("case", list(ANSWERS))
def test_both_clients_give_the_same_outcome(scripted, case):
    fast, sdk = (outcome_via(client_class, scripted.base_url(case)) for client_class in CLIENTS)
    assert fast == sdk
    expected = EXPECTED[case]
    assert fast.kind == expected["kind"]
    assert fast.status_code == expected["status_code"]
    assert (fast.error or {}).get("code") == expected.get("code")
    assert fast.retry_after == expected.get("retry_after")
    assert fast.connection_error == expected.get("connection_error", False)
    assert fast.request_id == expected.get("request_id", "")
    if "body" in expected:
        assert fast.body == expected["body"]
    if fast.status_code is None:
        assert fast.body is None  # no answer: nothing to show as the response
    else:
        assert isinstance(fast.body, dict)
    assert API_KEY not in json.dumps([fast.body, fast.error])


def test_a_body_that_is_not_json_is_kept_as_text(scripted):
    outcome = outcome_via(upstream.AiohttpClient, scripted.base_url("503-html"))
    assert outcome.body == {"error": {"message": "<html>Service Unavailable</html>", "type": "upstream_error"}}
    assert outcome.error["message"] == "<html>Service Unavailable</html>"


def test_a_redirect_names_where_it_points(scripted):
    outcome = outcome_via(upstream.AiohttpClient, scripted.base_url("302"))
    assert "https://elsewhere.example/v1/chat/completions" in outcome.error["message"]


def test_both_clients_send_the_same_request(scripted):
    sent = []
    for client_class in CLIENTS:
        scripted.requests.clear()
        assert outcome_via(client_class, scripted.base_url("ok")).kind == "succeeded"
        [request] = scripted.requests
        sent.append(request)
    for request in sent:
        assert request["method"] == "POST"
        assert request["path"] == "/ok/chat/completions"
        assert request["headers"]["authorization"] == f"Bearer {API_KEY}"
        assert request["headers"]["content-type"] == "application/json"
        assert json.loads(request["body"]) == REQUEST


def test_the_fast_client_is_the_default(settings):
    settings.OPENAI_BATCHES = {"UPSTREAM_BASE_URL": "http://127.0.0.1:9/v1"}
    client = upstream.async_client(upstream.route_for("m"), max_connections=2)
    assert isinstance(client, upstream.AiohttpClient)
