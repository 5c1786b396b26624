"""The API faces the internet with other people's data in it: authentication on
every route, isolation between owners, streaming upload caps, filenames,
throttling, secrets, the admin, security headers and ``check --deploy``."""

import io
import json
import logging
import os
import re
import secrets
import subprocess
import sys
import tempfile
import threading
import tracemalloc
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from django.core.cache import cache
from django.test import Client, RequestFactory
from django.urls import URLPattern, URLResolver, reverse
from rest_framework.test import APIClient

from batches import tasks
from batches.models import Batch, BatchStatus, WebhookEndpoint
from files_app.models import File
from files_app.serializers import clean_filename
from files_app.views import FileViewSet
from tests.conftest import chat_line, jsonl, run_batches

ROOT = Path(__file__).resolve().parent.parent
MB = 1024 * 1024


def body_of(response):
    return b"".join(response.streaming_content) if response.streaming else response.content


def assert_openai_error(response, status):
    assert response.status_code == status, body_of(response)[:500]
    body = json.loads(body_of(response))
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


# --- every /v1 route refuses bad keys ------------------------------------------------------------


def v1_routes():
    """(method, url) for every DRF route the one ``include("batches.urls")`` serves,
    read from the URLconf so a route added later is covered too."""
    import batches.urls

    found = []

    def walk(patterns):
        for pattern in patterns:
            if isinstance(pattern, URLResolver):
                walk(pattern.url_patterns)
            elif isinstance(pattern, URLPattern) and hasattr(pattern.callback, "cls"):
                kwargs = {name: "obj_x" for name in pattern.pattern.regex.groupindex}
                url = reverse(pattern.name, kwargs=kwargs)
                # DRF adds "head" (answered by the GET handler) to the actions once a view has served a GET.
                found.extend((method, url) for method in pattern.callback.actions if method != "head")

    walk(batches.urls.urlpatterns)
    return sorted(set(found))


def test_route_matrix_covers_the_documented_routes():
    routes = v1_routes()
    for expected in [
        ("get", "/v1/files"),
        ("post", "/v1/files"),
        ("get", "/v1/files/obj_x"),
        ("delete", "/v1/files/obj_x"),
        ("get", "/v1/files/obj_x/content"),
        ("get", "/v1/batches"),
        ("post", "/v1/batches"),
        ("get", "/v1/batches/obj_x"),
        ("post", "/v1/batches/obj_x/cancel"),
    ]:
        assert expected in routes


def bad_authorization(case, make_api_key, make_user):
    if case == "revoked":
        api_key, raw = make_api_key()
        api_key.revoke()
        return f"Bearer {raw}"
    if case == "inactive_user":
        return f"Bearer {make_api_key(make_user(is_active=False))[1]}"
    if case == "right_key_wrong_scheme":
        return f"Basic {make_api_key()[1]}"
    if case == "key_with_suffix":
        return f"Bearer {make_api_key()[1]}x"
    if case == "key_uppercased":
        return f"Bearer {make_api_key()[1].upper()}"
    return {
        "missing": None,
        "empty": "",
        "scheme_only": "Bearer",
        "basic": "Basic dXNlcjpwYXNz",
        "three_parts": "Bearer sk-batch-a sk-batch-b",
        "wrong": f"Bearer sk-batch-{secrets.token_urlsafe(32)}",
        "non_ascii": "Bearer sk-batch-é",
        "nul": "Bearer sk-batch-\x00",
    }[case]


BAD_KEY_CASES = [
    "missing", "empty", "scheme_only", "basic", "three_parts", "wrong", "non_ascii", "nul",
    "revoked", "inactive_user", "right_key_wrong_scheme", "key_with_suffix", "key_uppercased",
]  # fmt: skip


@pytest.mark.parametrize("case", BAD_KEY_CASES)
def test_every_v1_route_refuses_a_bad_key_with_401(case, make_api_key, make_user, make_batch):
    batch = make_batch([chat_line("a")])
    before = (File.objects.count(), Batch.objects.count())
    header = bad_authorization(case, make_api_key, make_user)
    client = APIClient()
    if header is not None:
        client.credentials(HTTP_AUTHORIZATION=header)
    for method, url in v1_routes():
        url = url.replace("obj_x", batch.id if "/batches/" in url else batch.input_file_id)
        response = getattr(client, method)(url)
        error = assert_openai_error(response, 401)
        assert error["code"] == "invalid_api_key", (method, url)
        assert response["WWW-Authenticate"].startswith("Bearer"), (method, url)
    assert (File.objects.count(), Batch.objects.count()) == before
    batch.refresh_from_db()
    assert batch.status == BatchStatus.VALIDATING


# --- one owner's objects are invisible to another ------------------------------------------------------


@pytest.fixture
def alice_and_bob(make_client):
    return make_client(), make_client()


def same_answer(foreign, unknown, foreign_id, unknown_id):
    """The answer about another owner's id reads exactly like one about an id that never existed."""
    assert foreign.status_code == unknown.status_code
    assert foreign.content.decode().replace(foreign_id, "ID") == unknown.content.decode().replace(unknown_id, "ID")


def test_another_owners_file_is_not_found(alice_and_bob, make_file):
    alice, bob = alice_and_bob
    secret_file = make_file([chat_line("private")], owner=alice.user)
    for method, suffix in [("get", ""), ("get", "/content"), ("delete", "")]:
        foreign = getattr(bob, method)(f"/v1/files/{secret_file.id}{suffix}")
        unknown = getattr(bob, method)(f"/v1/files/file-000000000000000000000000{suffix}")
        assert_openai_error(foreign, 404)
        same_answer(foreign, unknown, secret_file.id, "file-000000000000000000000000")
        assert b"private" not in foreign.content
    assert File.objects.filter(pk=secret_file.id).exists()
    assert alice.get(f"/v1/files/{secret_file.id}").status_code == 200
    assert secret_file.id not in bob.get("/v1/files").content.decode()


def test_another_owners_batch_is_not_found_and_cannot_be_cancelled(alice_and_bob, make_batch):
    alice, bob = alice_and_bob
    batch = make_batch([chat_line("a")], owner=alice.user)
    for method, suffix in [("get", ""), ("post", "/cancel")]:
        foreign = getattr(bob, method)(f"/v1/batches/{batch.id}{suffix}")
        unknown = getattr(bob, method)(f"/v1/batches/batch_0000000000000000{suffix}")
        assert_openai_error(foreign, 404)
        same_answer(foreign, unknown, batch.id, "batch_0000000000000000")
    batch.refresh_from_db()
    assert batch.status == BatchStatus.VALIDATING
    assert batch.id not in bob.get("/v1/batches").content.decode()


def test_another_owners_webhook_endpoint_is_not_found(alice_and_bob):
    alice, bob = alice_and_bob
    endpoint = WebhookEndpoint.objects.create(owner=alice.user, url="https://hooks.example.com/in", event_types=["batch.completed"])
    for method in ("get", "delete"):
        foreign = getattr(bob, method)(f"/v1/webhooks/{endpoint.id}")
        unknown = getattr(bob, method)("/v1/webhooks/whep_0000000000000000")
        assert_openai_error(foreign, 404)
        same_answer(foreign, unknown, endpoint.id, "whep_0000000000000000")
        assert endpoint.secret not in foreign.content.decode()
    assert WebhookEndpoint.objects.filter(pk=endpoint.id).exists()


@pytest.mark.parametrize("route", ["/v1/files", "/v1/batches", "/v1/webhooks"])
def test_another_owners_id_as_after_cursor_reads_like_an_unknown_id(alice_and_bob, make_batch, route):
    alice, bob = alice_and_bob
    batch = make_batch([chat_line("a")], owner=alice.user)
    endpoint = WebhookEndpoint.objects.create(owner=alice.user, url="https://hooks.example.com/in", event_types=["batch.completed"])
    make_batch([chat_line("b")], owner=bob.user)  # bob has a page of his own
    alice_id = {"/v1/files": batch.input_file_id, "/v1/batches": batch.id, "/v1/webhooks": endpoint.id}[route]
    unknown_id = alice_id[:-6] + "000000"
    foreign = bob.get(route, {"after": alice_id})
    unknown = bob.get(route, {"after": unknown_id})
    assert 400 <= foreign.status_code < 500
    assert_openai_error(foreign, foreign.status_code)
    same_answer(foreign, unknown, alice_id, unknown_id)


def test_another_owners_file_as_input_file_id_reads_like_an_unknown_file(alice_and_bob, make_file):
    alice, bob = alice_and_bob
    secret_file = make_file([chat_line("private")], owner=alice.user)
    body = {"endpoint": "/v1/chat/completions", "completion_window": "24h"}
    foreign = bob.post("/v1/batches", {**body, "input_file_id": secret_file.id}, format="json")
    unknown = bob.post("/v1/batches", {**body, "input_file_id": "file-000000000000000000000000"}, format="json")
    assert foreign.status_code == unknown.status_code
    if foreign.status_code != 200:
        same_answer(foreign, unknown, secret_file.id, "file-000000000000000000000000")
        assert not Batch.objects.filter(input_file_id=secret_file.id).exists()
        return
    # Created, as OpenAI does for a missing file: validation must then fail without reading alice's file.
    batch = Batch.objects.get(pk=foreign.json()["id"])
    tasks.validate_batch(batch.id)
    batch.refresh_from_db()
    assert batch.status == BatchStatus.FAILED
    assert batch.errors[0]["param"] == "input_file_id"
    assert batch.total_requests == 0


# --- uploads: the cap holds while streaming -------------------------------------------------------------


class CountingStream(io.RawIOBase):
    """A request body that counts how much of it the server reads."""

    def __init__(self, data):
        self.data = io.BytesIO(data)
        self.bytes_read = 0

    def readable(self):
        return True

    def readinto(self, buffer):
        chunk = self.data.read(len(buffer))
        buffer[: len(chunk)] = chunk
        self.bytes_read += len(chunk)
        return len(chunk)


def multipart_body(content, filename="big.jsonl", purpose="batch"):
    boundary = "----hardening-boundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\n{purpose}\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    return head + content + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


@pytest.fixture
def upload_tmp(settings, tmp_path):
    """Upload temp files land in a directory of their own, so leftovers can be seen."""
    directory = tmp_path / "upload-tmp"
    directory.mkdir()
    settings.FILE_UPLOAD_TEMP_DIR = str(directory)
    return directory


def upload_request(api, content, **kwargs):
    """A multipart upload request whose body stream counts what the server reads."""
    body, content_type = multipart_body(content, **kwargs)
    stream = CountingStream(body)
    request = RequestFactory().generic(
        "POST",
        "/v1/files",
        HTTP_AUTHORIZATION=f"Bearer {api.raw_key}",
        CONTENT_TYPE=content_type,
        CONTENT_LENGTH=str(len(body)),
        **{"wsgi.input": stream},
    )
    return request, stream


def send_upload(request):
    response = FileViewSet.as_view({"post": "create"})(request)
    response.render()
    request.close()  # what the WSGI handler does once the response is sent
    return response


def post_upload(api, content, **kwargs):
    request, stream = upload_request(api, content, **kwargs)
    return send_upload(request), stream


def test_announced_oversized_upload_is_refused_before_reading_the_body(api, settings, upload_tmp):
    settings.OPENAI_BATCHES = {"MAX_UPLOAD_BYTES": 1 * MB}
    response, stream = post_upload(api, b"x" * (20 * MB))
    error = assert_openai_error(response, 413)
    assert error["code"] == "file_too_large"
    assert stream.bytes_read == 0
    assert list(upload_tmp.iterdir()) == []
    assert File.objects.count() == 0


def test_upload_over_the_cap_stops_streaming_to_disk_at_the_cap(api, settings, upload_tmp):
    # Content-Length within the cap's slack: only counting the streamed chunks can catch it.
    settings.OPENAI_BATCHES = {"MAX_UPLOAD_BYTES": 1 * MB}
    response, stream = post_upload(api, b"x" * (MB + 32 * 1024))
    assert_openai_error(response, 413)
    assert stream.bytes_read <= MB + 96 * 1024
    assert list(upload_tmp.iterdir()) == []
    assert File.objects.count() == 0
    assert stored_text(settings) == ""


def test_a_20mb_upload_never_sits_in_memory(api, settings, upload_tmp):
    # A cap just under the upload lets all 20 MB stream through: it goes to disk
    # in chunks (never into memory) and the partial temp file is removed.
    settings.OPENAI_BATCHES = {"MAX_UPLOAD_BYTES": 20 * MB - 1}
    request, stream = upload_request(api, b"x" * (20 * MB))
    tracemalloc.start()
    try:
        response = send_upload(request)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert_openai_error(response, 413)
    assert stream.bytes_read > 19 * MB  # it really streamed
    assert peak < 4 * MB, f"the server held {peak / MB:.1f} MB at once"
    assert list(upload_tmp.iterdir()) == []


def test_accepted_upload_leaves_no_temp_file(api, upload_tmp):
    response, _ = post_upload(api, jsonl([chat_line("a")]) * 1000, filename="ok.jsonl")
    assert response.status_code == 200, response.content
    assert File.objects.get(pk=response.data["id"]).content.size == len(jsonl([chat_line("a")]) * 1000)
    assert list(upload_tmp.iterdir()) == []


def test_many_small_files_in_one_request_count_against_one_cap(api, settings, upload_tmp):
    settings.OPENAI_BATCHES = {"MAX_UPLOAD_BYTES": 1 * MB}
    parts = []
    for n in range(3):
        part = io.BytesIO(b"y" * (MB // 2))
        part.name = f"part{n}.jsonl"
        parts.append(part)
    response = api.post("/v1/files", {"file": parts, "purpose": "batch"}, format="multipart")
    assert_openai_error(response, 413)
    assert list(upload_tmp.iterdir()) == []


# --- filenames -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw, clean",
    [
        ("../../etc/passwd.jsonl", "passwd.jsonl"),
        ("..\\..\\windows\\system.ini.jsonl", "system.ini.jsonl"),
        ("/absolute/path/in.jsonl", "in.jsonl"),
        ("nul\x00byte.jsonl", "nulbyte.jsonl"),
        ("new\r\nline.jsonl", "newline.jsonl"),
        ("\x1b[31mred\x1b[0m.jsonl", "[31mred[0m.jsonl"),
        ("rtl\u202egnp.jsonl", "rtlgnp.jsonl"),
        ("zero\u200bwidth.jsonl", "zerowidth.jsonl"),
        ("line\u2028sep.jsonl", "linesep.jsonl"),
        ("...hidden.jsonl", "hidden.jsonl"),
        ("..", "upload"),
        ("", "upload"),
        ("  spaced .jsonl  ", "spaced .jsonl"),
        ("cafe\u0301.jsonl", "café.jsonl"),
        ("日本語.jsonl", "日本語.jsonl"),
    ],
)
def test_clean_filename(raw, clean):
    assert clean_filename(raw) == clean


def test_long_filename_keeps_its_extension():
    name = clean_filename("a" * 400 + ".jsonl")
    assert len(name) == 255
    assert name.endswith(".jsonl")


@pytest.mark.parametrize("filename", ["../../../../tmp/evil.jsonl", "..%2f..%2fevil.jsonl", "sub/dir/evil.jsonl", "\u202eevil.jsonl"])
def test_uploaded_filename_never_reaches_the_storage_path(api, settings, filename):
    body, content_type = multipart_body(jsonl([chat_line("a")]), filename=filename)
    response = api.generic("POST", "/v1/files", body, content_type=content_type)
    assert response.status_code == 200, response.content
    data = response.json()
    assert "/" not in data["filename"] and "\\" not in data["filename"]
    assert all(ch.isprintable() and ch != "\u202e" for ch in data["filename"])
    stored = File.objects.get(pk=data["id"])
    assert stored.content.name == f"openai_files/{stored.id}.jsonl"
    path = Path(stored.content.path).resolve()
    assert path.is_relative_to(Path(settings.MEDIA_ROOT).resolve())
    download = api.get(f"/v1/files/{stored.id}/content")
    disposition = download["Content-Disposition"]
    assert "\r" not in disposition and "\n" not in disposition and "/" not in disposition.split("filename", 1)[1]


def test_downloads_are_never_rendered_by_a_browser(api, make_file):
    stored = make_file(b"<script>alert(1)</script>\n", owner=api.user, purpose="user_data", filename="page.html")
    response = api.get(f"/v1/files/{stored.id}/content")
    assert response.status_code == 200
    assert response["Content-Type"] == "application/octet-stream"
    assert response["Content-Disposition"].startswith("attachment")
    assert response["X-Content-Type-Options"] == "nosniff"


# --- per-key throttling --------------------------------------------------------------------------------


@pytest.fixture
def throttled(settings):
    settings.OPENAI_BATCHES = {"THROTTLE_RATE": "3/min"}
    cache.clear()
    yield
    cache.clear()


def test_throttle_answers_429_with_retry_after_per_key(throttled, make_client, make_api_key):
    first, second = make_client(), make_client()
    for _ in range(3):
        assert first.get("/v1/files").status_code == 200
    limited = first.get("/v1/batches")  # every route counts
    error = assert_openai_error(limited, 429)
    assert error["code"] == "rate_limit_exceeded"
    assert 1 <= int(limited["Retry-After"]) <= 60
    # Another key, even of the same user, has its own budget.
    assert second.get("/v1/files").status_code == 200
    _, raw = make_api_key(first.user)
    same_user = APIClient()
    same_user.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert same_user.get("/v1/files").status_code == 200


def test_unauthenticated_requests_are_401_not_throttled_against_a_key(throttled, api):
    anonymous = APIClient()
    for _ in range(5):
        assert anonymous.get("/v1/files").status_code == 401
    assert api.get("/v1/files").status_code == 200


# --- the upstream API key never leaves the server --------------------------------------------------------


class Capture(logging.Handler):
    def __init__(self):
        super().__init__(level=logging.DEBUG)
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
        self.lines = []

    def emit(self, record):
        self.lines.append(self.format(record))  # includes tracebacks


@pytest.fixture
def all_logs(monkeypatch):
    """Every log line of every logger, at DEBUG, formatted with tracebacks."""
    capture = Capture()
    root = logging.getLogger()
    monkeypatch.setattr(root, "level", logging.DEBUG)
    root.addHandler(capture)
    for name in ("openai_batches", "django_q", "openai", "httpx", "httpx2", "httpcore"):
        logger = logging.getLogger(name)
        monkeypatch.setattr(logger, "level", logging.DEBUG)
        monkeypatch.setattr(logger, "handlers", [*logger.handlers, capture])
    yield capture
    root.removeHandler(capture)


def run_to_the_end(batch):
    tasks.validate_batch(batch.id)
    for _ in range(50):
        batch.refresh_from_db()
        if batch.is_terminal:
            return batch
        run_batches()
    raise AssertionError(f"batch {batch.id} did not finish: {batch.status}")


def everything_the_client_sees(client, batch):
    urls = [f"/v1/batches/{batch.id}", "/v1/batches", "/v1/files"]
    for file_id in (batch.output_file_id, batch.error_file_id):
        if file_id:
            urls += [f"/v1/files/{file_id}", f"/v1/files/{file_id}/content"]
    seen = [body_of(client.get(url)) for url in urls]
    return b"\n".join(seen).decode()


def stored_text(settings):
    media = Path(settings.MEDIA_ROOT)
    return "\n".join(p.read_text(errors="replace") for p in media.rglob("*") if p.is_file()) if media.exists() else ""


def assert_never_leaked(key, *texts):
    for text in texts:
        assert key not in text
        assert key[-12:] not in text  # not even its tail


def test_upstream_key_never_appears_in_responses_files_or_logs(make_client, make_batch, upstream, settings, all_logs, capfd):
    key = f"sk-upstream-{secrets.token_hex(20)}"
    settings.OPENAI_BATCHES = {**settings.OPENAI_BATCHES, "UPSTREAM_API_KEY": key, "MAX_ATTEMPTS": 2}
    client = make_client()
    lines = [chat_line("ok"), chat_line("bad", content="FAIL_400"), chat_line("broken", content="FAIL_500")]
    batch = run_to_the_end(make_batch(lines, owner=client.user))
    assert batch.status == BatchStatus.COMPLETED
    assert batch.output_file_id and batch.error_file_id
    out, err = capfd.readouterr()
    assert_never_leaked(key, everything_the_client_sees(client, batch), stored_text(settings), "\n".join(all_logs.lines), out, err)
    assert any("batch.status" in line for line in all_logs.lines)  # the capture did see the batch's log lines


def test_upstream_key_never_appears_when_the_upstream_is_down(make_client, make_batch, upstream, settings, all_logs, capfd):
    key = f"sk-upstream-{secrets.token_hex(20)}"
    settings.OPENAI_BATCHES = {**settings.OPENAI_BATCHES, "UPSTREAM_API_KEY": key, "MAX_ATTEMPTS": 2}
    client = make_client()
    batch = make_batch([chat_line("a"), chat_line("b")], owner=client.user)
    assert tasks.validate_batch(batch.id) == "in_progress"
    upstream.configure(down=True)
    batch = run_to_the_end(batch)
    out, err = capfd.readouterr()
    assert_never_leaked(key, everything_the_client_sees(client, batch), stored_text(settings), "\n".join(all_logs.lines), out, err)


class EchoingUpstream(BaseHTTPRequestHandler):
    """An upstream that quotes the caller's Authorization header in its errors,
    the way some servers quote a rejected key."""

    def log_message(self, *args):
        pass

    def answer(self, status, payload):
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        self.answer(200, {"object": "list", "data": [{"id": "fake-model", "object": "model", "created": 0, "owned_by": "me"}]})

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        auth = self.headers.get("Authorization", "")
        message = f"Incorrect API key provided: {auth}."
        self.answer(401, {"error": {"message": message, "type": "invalid_request_error", "code": "invalid_api_key"}})


@pytest.fixture
def echoing_upstream():
    server = ThreadingHTTPServer(("127.0.0.1", 0), EchoingUpstream)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def test_upstream_key_quoted_back_by_the_upstream_is_redacted(make_client, make_batch, echoing_upstream, settings, all_logs, capfd):
    key = f"sk-upstream-{secrets.token_hex(20)}"
    settings.OPENAI_BATCHES = {"UPSTREAM_BASE_URL": echoing_upstream, "UPSTREAM_API_KEY": key, "MAX_ATTEMPTS": 1}
    client = make_client()
    batch = run_to_the_end(make_batch([chat_line("a")], owner=client.user))
    assert batch.error_file_id
    seen = everything_the_client_sees(client, batch)
    assert "Incorrect API key provided" in seen  # the upstream's message is kept...
    out, err = capfd.readouterr()
    assert_never_leaked(key, seen, stored_text(settings), "\n".join(all_logs.lines), out, err)  # ...without the key


# --- the admin is for staff only -----------------------------------------------------------------------------


@pytest.mark.parametrize("who", ["anonymous", "active_user", "api_key_holder"])
def test_admin_needs_staff(who, make_user, make_api_key):
    client = Client()
    if who == "active_user":
        client.force_login(make_user())
    if who == "api_key_holder":
        _, raw = make_api_key(make_user())
        client = Client(HTTP_AUTHORIZATION=f"Bearer {raw}")
    for url in ("/admin/", "/admin/batches/batch/", "/admin/files_app/apikey/"):
        response = client.get(url)
        assert response.status_code == 302, url
        assert response["Location"].startswith("/admin/login/")


def test_admin_lets_staff_in(make_user, settings):
    settings.STORAGES = {**settings.STORAGES, "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"}}
    client = Client()
    client.force_login(make_user(is_staff=True, is_superuser=True))
    assert client.get("/admin/").status_code == 200


# --- security headers and check --deploy ------------------------------------------------------------------------


def test_api_responses_carry_security_headers(api):
    response = api.get("/v1/files")
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["X-Frame-Options"] == "DENY"
    assert response["Referrer-Policy"] == "same-origin"
    assert response["Cross-Origin-Opener-Policy"] == "same-origin"


def test_https_deployment_redirects_and_sends_hsts(settings, make_api_key):
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    settings.SECURE_SSL_REDIRECT = True
    settings.SECURE_HSTS_SECONDS = 31536000
    settings.SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    settings.SECURE_HSTS_PRELOAD = True
    _, raw = make_api_key()
    client = Client(HTTP_AUTHORIZATION=f"Bearer {raw}")
    plain = client.get("/v1/files")
    assert plain.status_code == 301
    assert plain["Location"] == "https://testserver/v1/files"
    secure = client.get("/v1/files", HTTP_X_FORWARDED_PROTO="https")
    assert secure.status_code == 200
    assert secure["Strict-Transport-Security"] == "max-age=31536000; includeSubDomains; preload"


def manage(*args, **env):
    with tempfile.TemporaryDirectory() as var_dir:
        full_env = {key: value for key, value in os.environ.items() if not key.startswith(("DJANGO_", "BATCHES_"))}
        full_env.update(DJANGO_SETTINGS_MODULE="project.settings", VAR_DIR=var_dir, **env)
        return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=120)


PRODUCTION = {"DJANGO_DEBUG": "0", "DJANGO_HTTPS": "1", "BATCHES_UPSTREAM_BASE_URL": "http://127.0.0.1:9/v1"}


def test_production_settings_pass_check_deploy():
    result = manage("check", "--deploy", "--fail-level", "WARNING", DJANGO_SECRET_KEY=secrets.token_urlsafe(50), **PRODUCTION)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_check_deploy_flags_the_fallback_secret_key():
    result = manage("check", "--deploy", "--fail-level", "WARNING", **PRODUCTION)
    assert result.returncode != 0
    assert "security.W009" in result.stderr


def test_check_deploy_flags_plain_http():
    result = manage("check", "--deploy", "--fail-level", "WARNING", DJANGO_SECRET_KEY=secrets.token_urlsafe(50), DJANGO_DEBUG="0")
    assert result.returncode != 0
    assert re.search(r"security\.W0(04|08)", result.stderr)
