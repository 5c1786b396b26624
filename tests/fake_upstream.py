"""A fast, fault-injectable, OpenAI-compatible fake upstream for tests and benchmarks.

Standard library only. The HTTP/1.1 server is hand-written on top of
``asyncio.start_server`` because generic frameworks cost far more per request
than the thing we want to measure (the batch service in front of it).

In-process use (the server runs in a daemon thread with its own event loop)::

    srv = FakeUpstream(latency_ms=0, models=["fake-model"]).start()
    client = openai.OpenAI(base_url=srv.base_url, api_key="x")
    srv.configure(error_500_rate=0.2)     # thread-safe, same keys as /_control/config
    srv.stats(); srv.records(); srv.reset()
    srv.stop()

CLI (prints exactly one ``FAKE_UPSTREAM_URL=...`` line once listening)::

    python -m tests.fake_upstream --port 0 --latency-ms 50 [--host H] [--models a,b]

Control routes (never faulted, also served while ``down``):
    GET  /_control/config    current configuration
    POST /_control/config    JSON merge of configuration keys, returns the new config
    GET  /_control/stats     counters (``?content=0`` omits ``content_counts``)
    GET  /_control/records   per-request ``[timestamp, path, status]`` list
    GET  /_control/timeline  in-flight and answers per ``timeline_interval_s`` slice of time
    POST /_control/reset     clear stats, records and timeline (configuration is kept)

Capacity: with ``max_concurrency`` N, a request that arrives while N are already
open is answered 429 at once (code ``concurrency_limit_exceeded``, the same
``retry-after`` as injected 429s), like a server with a fixed number of slots.
Change it mid-run with ``POST /_control/config {"max_concurrency": 64}`` (null:
unlimited); requests already admitted are not affected.

Test magic: an inference body containing ``FAIL_400`` / ``FAIL_500`` anywhere
is answered with that status and an OpenAI error envelope.

Stats semantics: every ``/v1/*`` request counts in ``requests_total`` and
``by_path`` (including ``/v1/models`` and faulted ones); ``responses_by_status``
only counts requests that got an HTTP answer, ``dropped`` (``down``) and
``hung`` (``timeout_rate``) count those that did not; ``rejected_over_capacity``
counts the 429s of ``max_concurrency``. ``in_flight`` counts every open inference
request (not ``/v1/models``), rejected ones included while they are answered; ``in_flight_time_s`` maps
each in-flight level to the seconds spent at it (exact, time-weighted), and the
timeline gives, per slice, the time-weighted mean and the max of in-flight, arrivals,
200s, capacity 429s and 200s per ``user`` (the body's ``user`` field, which a
benchmark sets to tell owners apart). ``by_model`` and ``by_user`` count inference
requests. ``content_counts`` is keyed
by the last user message (chat, or responses with message input), the prompt
(completions) or the input (embeddings, moderations, responses), with non-string
values JSON-encoded. ``rpm_max`` is the exact maximum number of arrivals in any
sliding 60 s window. Fault order per request: down, capacity, timeout,
500/503/429 (one random draw), latency, then JSON/marker/model validation.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import contextlib
import hashlib
import json
import math
import random
import signal
import struct
import sys
import threading
import time
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs

try:  # Optional speed-up; not a dependency.
    import uvloop  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - depends on the environment
    uvloop = None

__all__ = ["FakeUpstream", "DEFAULT_CONFIG", "main"]

DEFAULT_MODELS = ["fake-model", "fake-embed"]

DEFAULT_CONFIG: dict[str, Any] = {
    "latency_ms": 0.0,
    "latency_jitter_ms": 0.0,  # latency is uniform in [latency - jitter, latency + jitter], floored at 0
    "error_500_rate": 0.0,
    "error_503_rate": 0.0,
    "error_429_rate": 0.0,
    "retry_after_s": 1.0,
    "timeout_rate": 0.0,
    "hang_s": 300.0,
    "down": False,
    "models": DEFAULT_MODELS,
    "seed": None,
    # Stats count inference bodies containing this string (bodies_seen_custom_marker).
    "custom_marker": None,
    # Most inference requests served at once; above it, 429 at once. None: unlimited.
    "max_concurrency": None,
}

_FLOAT_KEYS = ("latency_ms", "latency_jitter_ms", "retry_after_s", "hang_s")
_RATE_KEYS = ("error_500_rate", "error_503_rate", "error_429_rate", "timeout_rate")

MODERATION_CATEGORIES = (
    "harassment",
    "harassment/threatening",
    "hate",
    "hate/threatening",
    "illicit",
    "illicit/violent",
    "self-harm",
    "self-harm/instructions",
    "self-harm/intent",
    "sexual",
    "sexual/minors",
    "violence",
    "violence/graphic",
)

EMBEDDING_DIM = 8
ECHO_MAX_CHARS = 200
RPM_WINDOW_S = 60.0
TIMELINE_INTERVAL_S = 0.5
MAX_HEADER_BYTES = 1 << 20

_REASONS = {s.value: s.phrase for s in HTTPStatus}


class ConfigError(ValueError):
    pass


class HTTPError(Exception):
    """Raised by handlers to answer with an OpenAI error envelope."""

    def __init__(
        self,
        status: int,
        message: str,
        type_: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body = error_body(message, type_, param, code)
        self.headers = headers or {}


def error_body(message: str, type_: str = "invalid_request_error", param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def validate_config(updates: dict[str, Any]) -> dict[str, Any]:
    """Return a normalised copy of ``updates``; raise ConfigError on bad keys/values."""
    out: dict[str, Any] = {}
    for key, value in updates.items():
        if key not in DEFAULT_CONFIG:
            raise ConfigError(f"unknown config key {key!r}")
        if key in _FLOAT_KEYS or key in _RATE_KEYS:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ConfigError(f"{key} must be a non-negative number")
            if key in _RATE_KEYS and value > 1:
                raise ConfigError(f"{key} must be within 0..1")
            out[key] = float(value)
        elif key == "down":
            if not isinstance(value, bool):
                raise ConfigError("down must be a boolean")
            out[key] = value
        elif key == "models":
            if isinstance(value, str):
                value = [m for m in value.split(",") if m]
            if not isinstance(value, (list, tuple)) or not all(isinstance(m, str) for m in value):
                raise ConfigError("models must be a list of strings")
            out[key] = list(value)
        elif key == "seed":
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise ConfigError("seed must be an integer or null")
            out[key] = value
        elif key == "custom_marker":
            if value is not None and not isinstance(value, str):
                raise ConfigError("custom_marker must be a string or null")
            out[key] = value or None
        elif key == "max_concurrency":
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ConfigError("max_concurrency must be a positive integer or null")
            out[key] = value
    return out


# --------------------------------------------------------------------------- content helpers


def _text_of(content: Any) -> str:
    """Flatten a message ``content`` (string or list of parts) to text."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, dict):
                text = part.get("text")
                if isinstance(text, str):
                    parts.append(text)
        return "\n".join(parts)
    return "" if content is None else json.dumps(content, sort_keys=True)


def _messages_text(messages: Any) -> tuple[str, str]:
    """(all text, last user text) of a chat-style message list."""
    if not isinstance(messages, list):
        return "", ""
    all_parts, last_user = [], None
    for msg in messages:
        if not isinstance(msg, dict):
            continue
        text = _text_of(msg.get("content"))
        all_parts.append(text)
        if msg.get("role", "user") == "user":
            last_user = text
    if last_user is None:
        last_user = all_parts[-1] if all_parts else ""
    return "\n".join(all_parts), last_user


def _input_items(value: Any) -> list[Any]:
    """Split an embeddings/completions input into its items (str | list[int])."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        if value and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            return [value]  # a single token array
        return list(value)
    return [value]


def _item_text(item: Any) -> str:
    if isinstance(item, str):
        return item
    return json.dumps(item, separators=(",", ":"))


def _tokens(text: str) -> int:
    # Roughly 4 characters per token, never zero for a present input.
    return max(1, math.ceil(len(text) / 4))


def _item_tokens(item: Any) -> int:
    if isinstance(item, list) and all(isinstance(v, int) for v in item):
        return max(1, len(item))
    return _tokens(_item_text(item))


def _echo(text: str) -> str:
    return "echo: " + text[:ECHO_MAX_CHARS]


def _embedding(item: Any) -> list[float]:
    digest = hashlib.blake2b(_item_text(item).encode(), digest_size=2 * EMBEDDING_DIM).digest()
    return [round(v / 32767.5 - 1.0, 6) for v in struct.unpack(f"<{EMBEDDING_DIM}H", digest)]


def is_models_route(path: str) -> bool:
    return path == "/v1/models" or path.startswith("/v1/models/")


def content_key(path: str, body: dict) -> str | None:
    """The text used for ``content_counts`` (duplicate-call detection)."""
    if path == "/v1/chat/completions":
        return _messages_text(body.get("messages"))[1]
    if path == "/v1/completions":
        prompt = body.get("prompt")
        return prompt if isinstance(prompt, str) else _item_text(prompt)
    if path == "/v1/responses":
        value = body.get("input")
        if isinstance(value, list) and any(isinstance(v, dict) for v in value):
            return _messages_text(value)[1]
        return value if isinstance(value, str) else _item_text(value)
    if path in ("/v1/images/generations", "/v1/images/edits"):
        prompt = body.get("prompt")
        return prompt if isinstance(prompt, str) else None
    if path in ("/v1/embeddings", "/v1/moderations"):
        value = body.get("input")
        return value if isinstance(value, str) else _item_text(value)
    return None


# --------------------------------------------------------------------------- the server


class FakeUpstream:
    """OpenAI-compatible fake server. See the module docstring for usage."""

    # Width of the sliding window behind ``rpm_max``; tests may shrink it per instance.
    rpm_window_s = RPM_WINDOW_S
    # Width of one timeline slice; set it per instance before the first request.
    timeline_interval_s = TIMELINE_INTERVAL_S

    def __init__(self, host: str = "127.0.0.1", port: int = 0, **config: Any) -> None:
        self.host = host
        self.port = port
        self._config = {**DEFAULT_CONFIG, **validate_config(config)}
        self._models = frozenset(self._config["models"])
        self._rng = random.Random(self._config["seed"])
        self._ids = random.Random()  # separate stream so ids never perturb the fault sequence
        # Stats are mutated on the loop thread and read from test threads.
        self._lock = threading.Lock()
        self._in_flight = 0
        self._reset_stats()
        self._server: asyncio.base_events.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._conn_tasks: set[asyncio.Task] = set()

    # ----------------------------------------------------------------- public API

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def config(self) -> dict[str, Any]:
        cfg = dict(self._config)
        cfg["models"] = list(cfg["models"])
        return cfg

    def configure(self, **updates: Any) -> dict[str, Any]:
        """Merge configuration keys (thread-safe); returns the new configuration."""
        clean = validate_config(updates)
        with self._lock:
            # Replace rather than mutate so request code can read one consistent snapshot.
            self._config = {**self._config, **clean}
            self._models = frozenset(self._config["models"])
            if "seed" in clean:
                self._rng = random.Random(clean["seed"])
        return self.config()

    def reset(self) -> None:
        with self._lock:
            self._reset_stats()

    def stats(self, include_content: bool = True) -> dict[str, Any]:
        with self._lock:
            out = {
                "requests_total": self._requests_total,
                "responses_by_status": dict(self._by_status),
                "by_path": dict(self._by_path),
                "dropped": self._dropped,
                "hung": self._hung,
                "in_flight": self._in_flight,
                "max_in_flight": self._max_in_flight,
                "in_flight_time_s": {str(level): seconds for level, seconds in sorted(self._advance(time.monotonic()).items())},
                "rejected_over_capacity": self._rejected,
                "by_model": dict(self._by_model),
                "by_user": dict(self._by_user),
                "rpm_max": self._rpm_max,
                "first_request_at": self._first_at,
                "last_request_at": self._last_at,
                "bodies_seen_custom_marker": self._custom_marker_seen,
            }
            if include_content:
                out["content_counts"] = dict(self._content_counts)
        return out

    def timeline(self) -> list[dict[str, Any]]:
        """Per slice of ``timeline_interval_s`` since the first request: ``t`` (seconds from
        the first request to the slice's start), ``in_flight_mean`` (time-weighted),
        ``in_flight_max``, ``arrivals``, ``ok`` (200s), ``rejected`` (capacity 429s) and
        ``ok_by_user``. Slices with nothing open and nothing arriving are left out."""
        with self._lock:
            now = time.monotonic()
            self._advance(now)
            step = self.timeline_interval_s
            out = []
            for index, bucket in sorted(self._timeline.items()):
                start = self._timeline_origin + index * step
                span = min(step, now - start)
                out.append(
                    {
                        "t": round(index * step, 6),
                        "in_flight_mean": bucket["level_s"] / span if span > 0 else float(bucket["in_flight_max"]),
                        "in_flight_max": bucket["in_flight_max"],
                        "arrivals": bucket["arrivals"],
                        "ok": bucket["ok"],
                        "rejected": bucket["rejected"],
                        "ok_by_user": dict(bucket["ok_by_user"]),
                    }
                )
            return out

    def records(self) -> list[tuple[float, str, int]]:
        """Per inference request ``(unix time received, path, status)``; status 0 = no answer."""
        with self._lock:
            return [tuple(r) for r in self._records]

    def start(self) -> FakeUpstream:
        """Start serving in a daemon thread; returns once the port is bound."""
        if self._thread is not None:
            raise RuntimeError("already started")
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = uvloop.new_event_loop() if uvloop else asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            self._loop = loop
            try:
                loop.run_until_complete(self.start_async())
            except BaseException as exc:  # surface bind errors to the caller
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(self.aclose())
                loop.close()

        self._thread = threading.Thread(target=run, name=f"fake-upstream-{id(self):x}", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            self._thread = None
            raise failure[0]
        return self

    def stop(self) -> None:
        if self._thread is None or self._loop is None:
            return
        with contextlib.suppress(RuntimeError):  # loop already closed
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._thread = None

    def __enter__(self) -> FakeUpstream:
        return self.start() if self._thread is None else self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    async def start_async(self) -> FakeUpstream:
        """Bind inside the running loop (for asyncio callers and the CLI)."""
        self._loop = asyncio.get_running_loop()
        self._server = await asyncio.start_server(
            self._handle_connection,
            self.host,
            self.port,
            backlog=4096,
            limit=MAX_HEADER_BYTES,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
        # Python 3.11's Server.close() leaves accepted connections open; end them ourselves.
        tasks = list(self._conn_tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    # ----------------------------------------------------------------- stats internals

    def _reset_stats(self) -> None:
        self._requests_total = 0
        self._by_status: collections.Counter[str] = collections.Counter()
        self._by_path: collections.Counter[str] = collections.Counter()
        self._content_counts: collections.Counter[str] = collections.Counter()
        self._dropped = 0
        self._hung = 0
        # in_flight is not reset: those requests are still open.
        self._max_in_flight = self._in_flight
        self._window: collections.deque[float] = collections.deque()
        self._rpm_max = 0
        self._first_at: float | None = None
        self._last_at: float | None = None
        self._custom_marker_seen = 0
        self._records: list[list] = []
        self._rejected = 0
        self._by_model: collections.Counter[str] = collections.Counter()
        self._by_user: collections.Counter[str] = collections.Counter()
        # Time-weighted in-flight accounting: the level held since _level_since.
        self._level_since: float | None = None
        self._level_time: collections.Counter[int] = collections.Counter()
        self._timeline_origin: float | None = None
        self._timeline: dict[int, dict[str, Any]] = {}

    def _slice_index(self, mono: float) -> int:
        return int((mono - self._timeline_origin) // self.timeline_interval_s)

    def _bucket(self, index: int) -> dict[str, Any]:
        bucket = self._timeline.get(index)
        if bucket is None:
            bucket = {"level_s": 0.0, "in_flight_max": 0, "arrivals": 0, "ok": 0, "rejected": 0, "ok_by_user": collections.Counter()}
            self._timeline[index] = bucket
        return bucket

    def _advance(self, mono: float) -> collections.Counter[int]:
        """Account the current in-flight level up to ``mono`` (caller holds the lock)."""
        since, level = self._level_since, self._in_flight
        self._level_since = mono
        if since is None or mono <= since or self._timeline_origin is None:
            return self._level_time  # counted from the first request on
        self._level_time[level] += mono - since
        if level and self._timeline_origin is not None:
            t = max(since, self._timeline_origin)
            index = self._slice_index(t)
            while t < mono:  # split the span across the slices it covers
                end = min(mono, self._timeline_origin + (index + 1) * self.timeline_interval_s)
                if end > t:  # (float rounding can put t on the next slice's boundary)
                    bucket = self._bucket(index)
                    bucket["level_s"] += level * (end - t)
                    bucket["in_flight_max"] = max(bucket["in_flight_max"], level)
                    t = end
                index += 1
        return self._level_time

    def _record_arrival(self, path: str, raw: bytes, body: Any, cfg: dict) -> tuple[list, bool]:
        """Count an arriving request; returns its record and whether it is over capacity."""
        now = time.time()
        mono = time.monotonic()
        marker = cfg["custom_marker"]
        key = content_key(path, body) if isinstance(body, dict) else None
        model = body.get("model") if isinstance(body, dict) else None
        user = body.get("user") if isinstance(body, dict) else None
        capacity = cfg["max_concurrency"]
        with self._lock:
            inference = not is_models_route(path)  # listing models is not a call a budget limits
            over_capacity = capacity is not None and inference and self._in_flight >= capacity
            self._requests_total += 1
            self._by_path[path] += 1
            if key is not None:
                self._content_counts[key] += 1
            if isinstance(model, str):
                self._by_model[model] += 1
            if isinstance(user, str):
                self._by_user[user] += 1
            if marker and marker.encode() in raw:
                self._custom_marker_seen += 1
            if self._timeline_origin is None:
                self._timeline_origin = mono
            self._advance(mono)
            if inference:
                self._in_flight += 1
            if self._in_flight > self._max_in_flight:
                self._max_in_flight = self._in_flight
            bucket = self._bucket(self._slice_index(mono))
            bucket["arrivals"] += 1
            bucket["in_flight_max"] = max(bucket["in_flight_max"], self._in_flight)
            if over_capacity:
                self._rejected += 1
                bucket["rejected"] += 1
            # Exact sliding window: the max is always reached at some arrival instant.
            window = self._window
            window.append(mono)
            while window[0] <= mono - self.rpm_window_s:
                window.popleft()
            if len(window) > self._rpm_max:
                self._rpm_max = len(window)
            if self._first_at is None:
                self._first_at = now
            self._last_at = now
            record = [now, path, 0]
            self._records.append(record)
        return record, over_capacity

    def _record_done(self, record: list, status: int, user: Any = None) -> None:
        with self._lock:
            mono = time.monotonic()
            self._advance(mono)
            if not is_models_route(record[1]):
                self._in_flight -= 1
            record[2] = status
            if status:
                self._by_status[str(status)] += 1
            if status == 200 and self._timeline_origin is not None:
                bucket = self._bucket(self._slice_index(mono))
                bucket["ok"] += 1
                if isinstance(user, str):
                    bucket["ok_by_user"][user] += 1

    # ----------------------------------------------------------------- HTTP layer

    async def _handle_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._conn_tasks.add(task)
        try:
            while True:
                request = await self._read_request(reader, writer)
                if request is None:
                    break
                method, target, headers, body, keep_alive = request
                path, _, query = target.partition("?")
                if len(path) > 1:
                    path = path.rstrip("/")
                if path.startswith("/_control/"):
                    status, payload, extra = self._control(method, path, query, body)
                    self._write(writer, status, payload, extra, keep_alive)
                else:
                    keep_alive = await self._inference(reader, writer, method, path, body, keep_alive)
                if not keep_alive:
                    break
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            pass  # client went away or sent garbage: just drop the connection
        except asyncio.CancelledError:
            pass  # shutdown; see below
        finally:
            writer.close()
            # Python 3.11's start_server callback calls task.exception(), which raises
            # for a cancelled task, so this task must never finish cancelled.
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await writer.wait_closed()
            # Discard only now: aclose() must still see (and await) a closing task.
            self._conn_tasks.discard(task)

    async def _read_request(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        """Parse one request; None on clean EOF between requests."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return None
        lines = head[:-4].decode("latin-1").split("\r\n")
        try:
            method, target, version = lines[0].split(" ", 2)
        except ValueError:
            raise ConnectionError("malformed request line") from None
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        conn = headers.get("connection", "").lower()
        keep_alive = "close" not in conn if version == "HTTP/1.1" else "keep-alive" in conn
        if headers.get("expect", "").lower() == "100-continue":
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        if "chunked" in headers.get("transfer-encoding", "").lower():
            body = await self._read_chunked(reader)
        else:
            length = int(headers.get("content-length") or 0)
            body = await reader.readexactly(length) if length else b""
        return method, target, headers, body, keep_alive

    @staticmethod
    async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
        chunks = []
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";", 1)[0].strip(), 16)
            if size == 0:
                # Skip optional trailers up to the blank line.
                while (await reader.readuntil(b"\r\n")) != b"\r\n":
                    pass
                return b"".join(chunks)
            chunks.append(await reader.readexactly(size))
            await reader.readexactly(2)

    def _write(
        self, writer: asyncio.StreamWriter, status: int, payload: Any, extra_headers: dict[str, str] | None, keep_alive: bool
    ) -> None:
        body = payload if isinstance(payload, bytes) else json.dumps(payload, separators=(",", ":")).encode()
        head = [
            f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}",
            "content-type: application/json",
            f"content-length: {len(body)}",
            f"x-request-id: req_{self._ids.getrandbits(96):024x}",
            "connection: keep-alive" if keep_alive else "connection: close",
        ]
        if extra_headers:
            head.extend(f"{k}: {v}" for k, v in extra_headers.items())
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)

    # ----------------------------------------------------------------- control routes

    def _control(self, method: str, path: str, query: str, body: bytes):
        try:
            if path == "/_control/config":
                if method == "GET":
                    return 200, self.config(), None
                if method == "POST":
                    updates = json.loads(body or b"{}")
                    if not isinstance(updates, dict):
                        raise ConfigError("body must be a JSON object")
                    return 200, self.configure(**updates), None
            elif path == "/_control/stats" and method == "GET":
                content = parse_qs(query).get("content", ["1"])[0] not in ("0", "false")
                return 200, self.stats(include_content=content), None
            elif path == "/_control/records" and method == "GET":
                return 200, self.records(), None
            elif path == "/_control/timeline" and method == "GET":
                return 200, self.timeline(), None
            elif path == "/_control/reset" and method == "POST":
                self.reset()
                return 200, {"ok": True}, None
            else:
                return 404, error_body(f"Unknown control route {method} {path}"), None
            return 405, error_body(f"Method {method} not allowed on {path}"), None
        except (ConfigError, ValueError) as exc:
            return 400, error_body(str(exc)), None

    # ----------------------------------------------------------------- inference routes

    async def _inference(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, method: str, path: str, raw: bytes, keep_alive: bool
    ) -> bool:
        """Serve one /v1 request; returns whether the connection stays open."""
        cfg = self._config  # one consistent snapshot per request
        body: Any = None
        parse_error = None
        if raw:
            try:
                body = json.loads(raw)
            except ValueError as exc:
                parse_error = exc
        record, over_capacity = self._record_arrival(path, raw, body, cfg)
        user = body.get("user") if isinstance(body, dict) else None
        recorded = False
        try:
            if cfg["down"]:
                # Simulated outage: the client sees the connection close with no response.
                with self._lock:
                    self._dropped += 1
                return False
            if over_capacity:
                self._record_done(record, 429)
                recorded = True
                payload = error_body(
                    f"Too many concurrent requests: this server serves {cfg['max_concurrency']} at once.",
                    "requests",
                    code="concurrency_limit_exceeded",
                )
                self._write(writer, 429, payload, {"retry-after": f"{cfg['retry_after_s']:g}"}, keep_alive)
                return keep_alive

            fault = None
            roll = self._rng.random()
            for name in _RATE_KEYS:
                rate = cfg[name]
                if roll < rate:
                    fault = name
                    break
                roll -= rate

            if fault == "timeout_rate":
                with self._lock:
                    self._hung += 1
                # Hang, but notice if the client gives up so in_flight stays honest.
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(reader.read(1), cfg["hang_s"])
                return False

            delay = cfg["latency_ms"]
            jitter = cfg["latency_jitter_ms"]
            if jitter:
                delay = max(0.0, delay + self._rng.uniform(-jitter, jitter))
            if delay > 0:
                await asyncio.sleep(delay / 1000.0)

            extra: dict[str, str] | None = None
            try:
                if fault == "error_500_rate":
                    raise HTTPError(
                        500, "The server had an error while processing your request. Sorry about that! (injected)", "server_error"
                    )
                if fault == "error_503_rate":
                    raise HTTPError(503, "The engine is currently overloaded, please try again later. (injected)", "server_error")
                if fault == "error_429_rate":
                    raise HTTPError(
                        429,
                        "Rate limit reached for requests (injected).",
                        "requests",
                        code="rate_limit_exceeded",
                        headers={"retry-after": f"{cfg['retry_after_s']:g}"},
                    )
                if parse_error is not None:
                    raise HTTPError(400, f"We could not parse the JSON body of your request. ({parse_error})")
                status, payload = 200, self._route(method, path, body, raw)
            except HTTPError as exc:
                status, payload, extra = exc.status, exc.body, exc.headers
            except Exception as exc:  # odd input shapes must not kill the connection silently
                status, payload = 500, error_body(f"fake upstream failed: {exc!r}", "server_error")
            # Record before writing: a client may read stats the instant it has the response.
            self._record_done(record, status, user)
            recorded = True
            self._write(writer, status, payload, extra, keep_alive)
            return keep_alive
        finally:
            if not recorded:  # dropped, hung or cancelled: no HTTP status was sent
                self._record_done(record, 0)

    def _route(self, method: str, path: str, body: Any, raw: bytes) -> dict:
        if path == "/v1/models" or path.startswith("/v1/models/"):
            if method != "GET":
                raise HTTPError(405, f"Method {method} not allowed on {path}")
            if path == "/v1/models":
                return {"object": "list", "data": [_model_obj(m) for m in self._config["models"]]}
            model = path[len("/v1/models/") :]
            if model not in self._models:
                raise HTTPError(404, f"The model `{model}` does not exist", param="model", code="model_not_found")
            return _model_obj(model)
        handler = self._HANDLERS.get(path)
        if handler is None:
            raise HTTPError(404, f"Invalid URL ({method} {path})", code="unknown_url")
        if method != "POST":
            raise HTTPError(405, f"Method {method} not allowed on {path}")
        if not isinstance(body, dict):
            raise HTTPError(400, "The request body must be a JSON object.")
        if b"FAIL_400" in raw:
            raise HTTPError(400, "Deliberate failure requested by FAIL_400 marker.", code="fake_fail_400")
        if b"FAIL_500" in raw:
            raise HTTPError(500, "Deliberate failure requested by FAIL_500 marker.", "server_error")
        model = body.get("model")
        if model is None and path == "/v1/moderations":
            model = "omni-moderation-latest"
        elif not isinstance(model, str) or not model:
            raise HTTPError(400, "you must provide a model parameter", param="model")
        elif model not in self._models:
            raise HTTPError(404, f"The model `{model}` does not exist", param="model", code="model_not_found")
        if body.get("stream"):
            raise HTTPError(400, "stream=true is not supported by the fake upstream", param="stream")
        return handler(self, model, body)

    def _id(self, prefix: str) -> str:
        return f"{prefix}{self._ids.getrandbits(96):024x}"

    def _chat(self, model: str, body: dict) -> dict:
        if not isinstance(body.get("messages"), list) or not body["messages"]:
            raise HTTPError(400, "'messages' must be a non-empty array", param="messages")
        all_text, last_user = _messages_text(body["messages"])
        n = _positive_int(body.get("n", 1), "n")
        text = _echo(last_user)
        prompt_tokens, completion_tokens = _tokens(all_text), _tokens(text) * n
        return {
            "id": self._id("chatcmpl-"),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": i,
                    "message": {"role": "assistant", "content": text, "refusal": None, "annotations": []},
                    "finish_reason": "stop",
                    "logprobs": None,
                }
                for i in range(n)
            ],
            "usage": _usage(prompt_tokens, completion_tokens),
            "service_tier": "default",
            "system_fingerprint": "fp_fake",
        }

    def _completion(self, model: str, body: dict) -> dict:
        if "prompt" not in body:
            raise HTTPError(400, "'prompt' is required", param="prompt")
        prompts = _input_items(body["prompt"])
        n = _positive_int(body.get("n", 1), "n")
        choices, prompt_tokens, completion_tokens = [], 0, 0
        for prompt in prompts:
            prompt_tokens += _item_tokens(prompt)
            text = _echo(_item_text(prompt))
            for _ in range(n):
                choices.append({"index": len(choices), "text": text, "finish_reason": "stop", "logprobs": None})
                completion_tokens += _tokens(text)
        return {
            "id": self._id("cmpl-"),
            "object": "text_completion",
            "created": int(time.time()),
            "model": model,
            "choices": choices,
            "usage": _usage(prompt_tokens, completion_tokens),
            "system_fingerprint": "fp_fake",
        }

    def _embeddings(self, model: str, body: dict) -> dict:
        if "input" not in body:
            raise HTTPError(400, "'input' is required", param="input")
        items = _input_items(body["input"])
        if not items or any(item == "" for item in items):
            raise HTTPError(400, "'input' cannot be empty", param="input")
        as_base64 = body.get("encoding_format") == "base64"
        data = []
        for i, item in enumerate(items):
            vector: Any = _embedding(item)
            if as_base64:
                vector = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
            data.append({"object": "embedding", "index": i, "embedding": vector})
        tokens = sum(_item_tokens(item) for item in items)
        return {"object": "list", "data": data, "model": model, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}

    def _responses(self, model: str, body: dict) -> dict:
        value = body.get("input")
        if isinstance(value, list) and any(isinstance(v, dict) for v in value):
            all_text, last_user = _messages_text(value)
        else:
            all_text = last_user = value if isinstance(value, str) else _item_text(value)
        instructions = body.get("instructions")
        if isinstance(instructions, str):
            all_text = instructions + "\n" + all_text
        text = _echo(last_user)
        input_tokens, output_tokens = _tokens(all_text), _tokens(text)
        now = int(time.time())
        return {
            "id": self._id("resp_"),
            "object": "response",
            "created_at": now,
            "completed_at": now,
            "model": model,
            "status": "completed",
            "error": None,
            "incomplete_details": None,
            "instructions": instructions,
            "max_output_tokens": body.get("max_output_tokens"),
            "metadata": body.get("metadata") or {},
            "output": [
                {
                    "type": "message",
                    "id": self._id("msg_"),
                    "status": "completed",
                    "role": "assistant",
                    "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}],
                }
            ],
            "parallel_tool_calls": True,
            "previous_response_id": body.get("previous_response_id"),
            "temperature": body.get("temperature", 1.0),
            "top_p": body.get("top_p", 1.0),
            "tool_choice": "auto",
            "tools": [],
            "text": {"format": {"type": "text"}},
            "truncation": "disabled",
            "usage": {
                "input_tokens": input_tokens,
                "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
                "output_tokens": output_tokens,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": input_tokens + output_tokens,
            },
            "user": body.get("user"),
        }

    def _moderations(self, model: str, body: dict) -> dict:
        if "input" not in body:
            raise HTTPError(400, "'input' is required", param="input")
        value = body["input"]
        # Multi-modal input (list of parts) is one item; a list of strings is many.
        if isinstance(value, list) and any(isinstance(v, dict) for v in value):
            count = 1
        else:
            count = len(value) if isinstance(value, list) else 1
        result = {
            "flagged": False,
            "categories": {c: False for c in MODERATION_CATEGORIES},
            "category_scores": {c: 0.0 for c in MODERATION_CATEGORIES},
            "category_applied_input_types": {c: ["text"] for c in MODERATION_CATEGORIES},
        }
        return {"id": self._id("modr-"), "model": model, "results": [result] * count}

    def _images(self, model: str, body: dict) -> dict:
        """gpt-image-1's answer shape: base64 images and token usage."""
        prompt = body.get("prompt")
        if not isinstance(prompt, str) or not prompt:
            raise HTTPError(400, "'prompt' is required", param="prompt")
        count = body.get("n", 1) if isinstance(body.get("n"), int) else 1
        image = base64.b64encode(hashlib.blake2b(prompt.encode(), digest_size=16).digest()).decode()
        tokens = _tokens(prompt)
        return {
            "created": int(time.time()),
            "data": [{"b64_json": image, "revised_prompt": prompt}] * count,
            "usage": {
                "input_tokens": tokens,
                "input_tokens_details": {"text_tokens": tokens, "image_tokens": 0},
                "output_tokens": 272 * count,
                "total_tokens": tokens + 272 * count,
            },
        }

    _HANDLERS = {
        "/v1/chat/completions": _chat,
        "/v1/completions": _completion,
        "/v1/embeddings": _embeddings,
        "/v1/responses": _responses,
        "/v1/moderations": _moderations,
        "/v1/images/generations": _images,
        "/v1/images/edits": _images,
    }


def _model_obj(model: str) -> dict:
    return {"id": model, "object": "model", "created": 0, "owned_by": "fake"}


def _usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens}


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1 or value > 128:
        raise HTTPError(400, f"'{name}' must be an integer between 1 and 128", param=name)
    return value


# --------------------------------------------------------------------------- CLI


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tests.fake_upstream", description=__doc__.split("\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 picks a free port")
    p.add_argument("--models", default=",".join(DEFAULT_MODELS), help="comma-separated model ids")
    p.add_argument("--latency-ms", type=float, default=0.0)
    p.add_argument("--latency-jitter-ms", type=float, default=0.0)
    p.add_argument("--error-500-rate", type=float, default=0.0)
    p.add_argument("--error-503-rate", type=float, default=0.0)
    p.add_argument("--error-429-rate", type=float, default=0.0)
    p.add_argument("--retry-after-s", type=float, default=1.0)
    p.add_argument("--timeout-rate", type=float, default=0.0)
    p.add_argument("--hang-s", type=float, default=300.0)
    p.add_argument("--down", action="store_true")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--custom-marker", default=None)
    p.add_argument("--max-concurrency", type=int, default=None, help="429 above this many requests at once")
    return p.parse_args(argv)


async def _serve_forever(args: argparse.Namespace) -> None:
    config = {k: v for k, v in vars(args).items() if k not in ("host", "port")}
    srv = FakeUpstream(host=args.host, port=args.port, **config)
    await srv.start_async()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"FAKE_UPSTREAM_URL={srv.base_url}", flush=True)
    await stop.wait()
    await srv.aclose()


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    try:
        validate_config({k: v for k, v in vars(args).items() if k not in ("host", "port")})
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if uvloop is not None:
        uvloop.install()
    asyncio.run(_serve_forever(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
