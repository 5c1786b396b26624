"""Talking to the OpenAI-compatible upstream: clients, model discovery, outcome classification."""

import dataclasses
import email.utils
import json
import logging
import time
import urllib.parse
import urllib.request
import weakref

import aiohttp
import openai
from django.utils.module_loading import import_string

from . import bundling
from .conf import app_settings

try:  # openai>=3 is built on httpx2, older releases on httpx.
    import httpx2 as httpx
except ImportError:  # pragma: no cover
    import httpx

logger = logging.getLogger("openai_batches.upstream")

# Statuses worth another attempt (OpenAI's SDK retries the same ones).
TRANSIENT_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})
# Answers that mean "too much at once" rather than "this request failed".
BACKPRESSURE_STATUSES = frozenset({429, 503})
# A 429 with this code is OpenAI's billing stop, not congestion: waiting does not help.
QUOTA_EXHAUSTED_CODE = "insufficient_quota"


class UpstreamNotConfigured(Exception):
    pass


@dataclasses.dataclass(frozen=True)
class Route:
    base_url: str
    api_key: str


def route_for(model, endpoint=None):
    """Where ``endpoint`` requests for ``model`` go: the model's MODELS routing-table entry
    (or its ``endpoints[endpoint]`` override), else the default upstream."""
    table = app_settings.MODELS
    entry = table.get(model) if isinstance(table, dict) else None
    if not isinstance(entry, dict):
        return Route(default_base_url(), app_settings.UPSTREAM_API_KEY)
    override = (entry.get("endpoints") or {}).get(endpoint)
    if isinstance(override, dict):
        entry = {**entry, **override}
    return Route(entry.get("base_url") or default_base_url(), entry.get("api_key", app_settings.UPSTREAM_API_KEY))


def default_base_url():
    url = app_settings.UPSTREAM_BASE_URL
    if not url:
        raise UpstreamNotConfigured("No upstream configured: set OPENAI_BATCHES['UPSTREAM_BASE_URL'].")
    return url.rstrip("/")


class AiohttpClient:
    """Inference calls straight on aiohttp, one session per runner (the default).

    An inference call is one JSON POST whose every outcome ``send`` classifies
    itself (the SDK's retries are off anyway), so this client skips the SDK:
    profiled at 0 ms upstream latency, ``AsyncOpenAI.post`` cost about 1.4 ms of
    CPU a call against 0.35 ms for the same request here. Outcomes are the same
    as ``OpenAIClient``'s (tests/test_upstream_clients.py runs both on one table).
    """

    def __init__(self, route: Route, max_connections: int):
        self.url = route.base_url.rstrip("/")
        self.api_key = route.api_key or "none"
        self.max_connections = max_connections
        self.proxy = env_proxy(self.url)
        self.session = None

    def _session(self):
        # Created on first use, inside the event loop that runs the calls.
        if self.session is None:
            self.session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.max_connections),
                headers={"Authorization": f"Bearer {self.api_key}", "Content-Type": "application/json", "Accept": "application/json"},
                timeout=aiohttp.ClientTimeout(total=app_settings.UPSTREAM_TIMEOUT),
            )
        return self.session

    async def post(self, path: str, body: dict | str):
        """``(status, headers, content)`` of one POST of ``body`` (a dict, or its JSON text: sent as it
        is); raises TimeoutError / OSError / aiohttp errors."""
        payload = body.encode() if isinstance(body, str) else json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
        url = f"{self.url}/{path.lstrip('/')}"
        async with self._session().post(url, data=payload, proxy=self.proxy, allow_redirects=False) as response:
            return response.status, response.headers, await response.read()

    async def close(self):
        if self.session is not None:
            await self.session.close()


class OpenAIClient:
    """Inference calls through ``openai.AsyncOpenAI``, on the SDK's aiohttp transport
    when ``openai[aiohttp]`` is installed: the SDK's proxy, header and client
    handling apply, at about four times ``AiohttpClient``'s CPU per call. Same
    interface and outcomes as ``AiohttpClient``."""

    def __init__(self, route: Route, max_connections: int):
        self.api_key = route.api_key or "none"
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        # Redirects are answers, as in AiohttpClient: following one would turn the POST into a GET.
        try:
            http_client = openai.DefaultAioHttpClient(limits=limits, follow_redirects=False)
        except (AttributeError, RuntimeError):  # openai without the aiohttp extra
            http_client = openai.DefaultAsyncHttpxClient(limits=limits, follow_redirects=False)
        # Retries are ours (persisted per request, with backoff), so the SDK's are off.
        self.client = openai.AsyncOpenAI(
            base_url=route.base_url, api_key=self.api_key, max_retries=0, timeout=app_settings.UPSTREAM_TIMEOUT, http_client=http_client
        )

    async def post(self, path: str, body: dict | str):
        if isinstance(body, str):
            body = json.loads(body)
        try:
            response = await self.client.post(path, cast_to=httpx.Response, body=body)
        except openai.APIStatusError as exc:
            response = exc.response
        except openai.APIConnectionError as exc:
            # ``send`` classifies by the transport error at the root of the chain.
            raise ConnectionError(str(exc)) from exc
        return response.status_code, response.headers, response.content

    async def close(self):
        await self.client.close()


def env_proxy(url):
    """The HTTP(S)_PROXY for ``url`` (NO_PROXY honoured), as the SDK would use it.

    Looked up once per client: aiohttp's ``trust_env`` repeats the lookup (and
    reads ~/.netrc) in a thread on every request, a third of a call's CPU."""
    parts = urllib.parse.urlsplit(url)
    if urllib.request.proxy_bypass(parts.hostname or ""):
        return None
    return urllib.request.getproxies().get(parts.scheme)


def async_client(route: Route, max_connections: int):
    """The inference client class named by UPSTREAM_CLIENT_CLASS (a dotted path)."""
    return import_string(app_settings.UPSTREAM_CLIENT_CLASS)(route, max_connections)


def served_models(model_names):
    """The subset of ``model_names`` the upstream serves (None entries: unknown).

    Asked once per batch. Returns ``(served: set, error: str | None)``.
    """
    table = app_settings.MODELS
    if table is not None:
        return set(table) & set(model_names), None
    routes = {}
    for name in model_names:
        routes.setdefault(route_for(name), []).append(name)
    served = set()
    for route, names in routes.items():
        client = openai.OpenAI(base_url=route.base_url, api_key=route.api_key or "none", max_retries=2, timeout=30)
        try:
            available = {m.id for m in client.models.list()}
        except openai.APIError as exc:
            return served, f"The upstream at {route.base_url} could not list its models: {type(exc).__name__}."
        finally:
            client.close()
        served |= available & set(names)
    return served, None


@dataclasses.dataclass
class Outcome:
    """What one upstream call produced, in the shape the error/output files need."""

    kind: str  # "succeeded" | "failed" | "retry"
    status_code: int | None = None
    body: dict | None = None
    request_id: str = ""
    error: dict | None = None
    retry_after: float | None = None
    connection_error: bool = False
    # Seconds the call took (batches/usage.py's histogram): a measurement, not part of what the outcome is.
    latency: float | None = dataclasses.field(default=None, compare=False)
    # ``body`` as the upstream sent it, when that text can be stored as it is (a JSON object on
    # one line, nothing redacted): the result write skips encoding ``body`` again.
    body_text: str | None = dataclasses.field(default=None, compare=False, repr=False)

    @property
    def backpressure(self):
        """The upstream is full (429, 503): the line waits and is sent again without using an attempt."""
        return self.kind == "retry" and self.status_code in BACKPRESSURE_STATUSES

    @property
    def congestion(self):
        """A signal to send less (``batches/aimd.py``): back-pressure, a timeout or a connection error."""
        return self.backpressure or (self.kind == "retry" and self.connection_error)


def endpoint_path(endpoint):
    # The batch endpoint is "/v1/chat/completions"; the client's base_url already ends in /v1.
    return endpoint[3:] if endpoint.startswith("/v1/") else endpoint


def error_from_body(status_code, body):
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict):
        return {"code": err.get("code") or err.get("type") or str(status_code), "message": err.get("message") or ""}
    if isinstance(err, str):
        return {"code": str(status_code), "message": err}
    return {"code": str(status_code), "message": f"Upstream answered HTTP {status_code}."}


def parse_retry_after(headers):
    value = headers.get("retry-after-ms")
    if value:
        try:
            return float(value) / 1000
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        parsed = email.utils.parsedate_tz(value)
        return max(0.0, email.utils.mktime_tz(parsed) - time.time()) if parsed else None


def _json_body(content):
    """``(body, text)``: the answer as a dict (None when it is not JSON) and, when it is
    a JSON object on one line, its text (a result line holds it as it is)."""
    try:
        text = content.decode()
    except UnicodeDecodeError:  # JSON in UTF-16 or -32 (json.loads detects them): decoded, never kept as text
        text = None
    try:
        body = json.loads(content if text is None else text)
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError):
        return None, None
    if not isinstance(body, dict):
        return {"data": body}, None
    return body, (text if text is not None and "\n" not in text and "\r" not in text else None)


def _text_body(content):
    return {"error": {"message": content[:2000].decode(errors="replace"), "type": "upstream_error"}}


def _transport_cause(exc):
    """The innermost transport error in ``exc``'s chain. The SDK wraps aiohttp's
    errors in its own (and reports a refused connection as a connect timeout), so
    the root cause is what both clients agree on."""
    cause, seen, visited = exc, exc, set()
    while seen is not None and id(seen) not in visited:
        visited.add(id(seen))
        if isinstance(seen, (TimeoutError, aiohttp.ClientError, OSError)):
            cause = seen
        seen = seen.__cause__ or seen.__context__
    return cause


def _should_retry(status_code, headers):
    """The upstream's ``x-should-retry`` hint when it gives one (OpenAI's SDK obeys it
    too: a 429 for an exhausted quota says false), else the status decides."""
    hint = headers.get("x-should-retry", "").lower()
    if hint in ("true", "false"):
        return hint == "true"
    return status_code in TRANSIENT_STATUSES


def redact(payload, secret):
    """``payload`` without ``secret`` in it: some servers quote the key they rejected,
    and upstream bodies end up in output files and API responses."""
    return json.loads(json.dumps(payload).replace(secret, "[redacted]"))


EMBEDDINGS = "/v1/embeddings"
# The Bundler of each client: rows sent through the same client may share a call.
_bundlers = weakref.WeakKeyDictionary()


async def send(client, endpoint: str, body: dict | str) -> Outcome:
    """One line's upstream call, classified; an embeddings line may share its call
    with others (``batches/bundling.py``). ``body``: the request body, or its JSON
    text (as claims read it). Never raises for upstream trouble."""
    size = app_settings.EMBEDDINGS_BUNDLE_SIZE
    if endpoint == EMBEDDINGS and size > 1:
        if isinstance(body, str):
            body = json.loads(body)
        bundler = _bundlers.get(client)
        if bundler is None:
            bundler = _bundlers[client] = bundling.Bundler()
        return await bundler.send(lambda request_body: call(client, EMBEDDINGS, request_body), body, size)
    return await call(client, endpoint, body)


async def call(client, endpoint: str, body: dict | str) -> Outcome:
    """One upstream call, classified. Never raises for upstream trouble."""
    started = time.monotonic()
    outcome = await _send(client, endpoint, body)
    outcome.latency = time.monotonic() - started
    return outcome


async def _send(client, endpoint, body):
    try:
        status_code, headers, content = await client.post(endpoint_path(endpoint), body)
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:  # aiohttp's timeouts derive from TimeoutError
        cause = _transport_cause(exc)
        if isinstance(cause, TimeoutError):
            return Outcome("retry", error={"code": "upstream_timeout", "message": "The upstream request timed out."}, connection_error=True)
        return Outcome(
            "retry",
            error={"code": "upstream_unreachable", "message": f"No answer from the upstream: {type(cause).__name__}."},
            connection_error=True,
        )
    payload, text = _json_body(content)
    is_json = payload is not None
    if not is_json:
        payload = _text_body(content)
    if len(client.api_key) >= 8 and client.api_key.encode() in content:
        payload, text = redact(payload, client.api_key), None
    request_id = headers.get("x-request-id", "")
    if 200 <= status_code < 300:
        if is_json:
            return Outcome("succeeded", status_code=status_code, body=payload, request_id=request_id, body_text=text)
        # A 2xx that is not JSON (a proxy's page, a cut-off answer) is no result.
        error = {"code": "invalid_upstream_response", "message": f"The upstream answered HTTP {status_code} with a body that is not JSON."}
        return Outcome("failed", status_code=status_code, body=payload, request_id=request_id, error=error)
    if 300 <= status_code < 400:  # neither client follows: a redirected POST would arrive as a GET
        location = headers.get("location", "")
        error = {"code": "upstream_redirect", "message": f"The upstream redirected to {location!r}: set the base URL to where it points."}
    else:
        error = error_from_body(status_code, payload)
    kind = "retry" if _should_retry(status_code, headers) and error["code"] != QUOTA_EXHAUSTED_CODE else "failed"
    return Outcome(
        kind,
        status_code=status_code,
        body=payload,
        request_id=request_id,
        error=error,
        retry_after=parse_retry_after(headers) if kind == "retry" else None,
        body_text=text,
    )
