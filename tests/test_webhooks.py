"""Webhooks (signed, retried, decoupled from batch processing) and the batch signals."""

import base64
import importlib
import json
import threading
import time
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from unittest import mock

import openai
import pytest
from django.contrib.admin.utils import quote
from django.urls import reverse
from django.utils import timezone
from openai.types.webhooks import BatchCompletedWebhookEvent

from batches import lifecycle, tasks, webhooks
from batches import queue as batches_queue
from batches.models import Batch, BatchStatus, DeliveryStatus, WebhookDelivery, WebhookEndpoint
from batches.signals import batch_finished, batch_status_changed
from tests.conftest import chat_line, run_batches

# --- fixtures -------------------------------------------------------------------------------


class Receiver:
    """A webhook receiver on loopback. ``script`` lists what to answer, in order:
    an HTTP status, or ``"hang"`` (hold the request until ``release`` is set);
    once the script is used up it answers 200."""

    def __init__(self, script=()):
        self.script = list(script)
        self.requests = []  # {"headers", "body", "received", "answered", "status"}
        self.release = threading.Event()
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                record = {"headers": dict(self.headers.items()), "body": body, "received": time.monotonic(), "answered": None}
                with receiver.lock:
                    receiver.requests.append(record)
                    action = receiver.script.pop(0) if receiver.script else 200
                if action == "hang":
                    receiver.release.wait(30)
                    action = 200
                record["status"] = action
                record["answered"] = time.monotonic()
                try:
                    self.send_response(action)
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(b"ok")
                except OSError:
                    pass  # the sender gave up waiting

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks/batches?source=test"

    def stop(self):
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def make_receiver():
    receivers = []

    def make(script=()):
        receivers.append(Receiver(script))
        return receivers[-1]

    yield make
    for receiver in receivers:
        receiver.stop()


@pytest.fixture(autouse=True)
def allow_private(settings):
    """Receivers live on loopback, which the SSRF guard refuses by default."""
    settings.OPENAI_BATCHES = {**getattr(settings, "OPENAI_BATCHES", {}), "WEBHOOKS_ALLOW_PRIVATE": True}


def set_app_settings(settings, **values):
    settings.OPENAI_BATCHES = {**settings.OPENAI_BATCHES, **values}


@pytest.fixture
def task_queue(django_capture_on_commit_callbacks):
    """Stands in for django-q2 for webhook deliveries: records queued delivery tasks
    (batch tasks go to the broker as usual); ``run()`` executes them like a worker
    would (by dotted path) and returns their results. ``sweep(now)`` runs the
    sweeper's webhook part and commits, as tasks.sweep would."""
    broker_async_task = batches_queue.async_task

    class Queue:
        def __init__(self):
            self.tasks = []

        def async_task(self, func, *args, **kwargs):
            if func != "batches.tasks.deliver_webhook":
                return broker_async_task(func, *args, **kwargs)
            self.tasks.append((func, args))

        def run(self):
            results = []
            while self.tasks:
                func, args = self.tasks.pop(0)
                module, name = func.rsplit(".", 1)
                results.append(getattr(importlib.import_module(module), name)(*args))
            return results

        def sweep(self, now=None):
            with django_capture_on_commit_callbacks(execute=True):
                return webhooks.sweep_deliveries(now=now)

    queue = Queue()
    with mock.patch.object(batches_queue, "async_task", queue.async_task):
        yield queue


@pytest.fixture
def make_endpoint(make_client):
    """Register an endpoint through the API; returns (endpoint, secret, client)."""

    def make(url, event_types=("batch.completed", "batch.failed", "batch.cancelled", "batch.expired"), client=None):
        client = client or make_client()
        response = client.post("/v1/webhooks", {"url": url, "event_types": list(event_types)}, format="json")
        assert response.status_code == 200, response.json()
        body = response.json()
        return WebhookEndpoint.objects.get(pk=body["id"]), body["secret"], client

    return make


@pytest.fixture
def finish_batch(make_batch, upstream, django_capture_on_commit_callbacks):
    """Run a batch to its end in-process, the way workers would; returns it reloaded.
    Commit callbacks (signals, queued tasks) run as the outer transaction would commit."""

    def finish(owner, lines=None):
        with django_capture_on_commit_callbacks(execute=True):
            batch = make_batch(lines or [chat_line("a"), chat_line("b")], owner=owner)
        with django_capture_on_commit_callbacks(execute=True):
            tasks.validate_batch(batch.id)
        with django_capture_on_commit_callbacks(execute=True):
            run_batches()
        batch.refresh_from_db()
        return batch

    return finish


def unwrap(secret, record):
    return openai.OpenAI(api_key="unused", webhook_secret=secret).webhooks.unwrap(record["body"], record["headers"])


def deliveries_of(event_id):
    return list(WebhookDelivery.objects.filter(event_id=event_id).order_by("attempt", "id"))


# --- delivery end to end ------------------------------------------------------------------------


def test_finished_batch_event_is_signed_for_the_openai_sdk(make_receiver, make_endpoint, finish_batch, task_queue):
    receiver = make_receiver()
    _, other_secret, client = make_endpoint(make_receiver().url)  # a second endpoint: each endpoint gets the event
    own_endpoint, own_secret, _ = make_endpoint(receiver.url, client=client)

    batch = finish_batch(client.user)

    assert batch.status == BatchStatus.COMPLETED
    assert receiver.requests == []  # nothing was sent from the batch path
    assert [name for name, _ in task_queue.tasks] == ["batches.tasks.deliver_webhook"] * 2
    assert sorted(task_queue.run()) == ["succeeded", "succeeded"]

    [record] = receiver.requests
    event = unwrap(own_secret, record)
    assert isinstance(event, BatchCompletedWebhookEvent)
    assert event.type == "batch.completed" and event.object == "event"
    assert event.data.id == batch.id
    assert event.id.startswith("evt_") and record["headers"]["webhook-id"] == event.id
    assert event.created_at == int(batch.completed_at.timestamp())
    assert json.loads(record["body"]) == {
        "id": event.id,
        "object": "event",
        "type": "batch.completed",
        "created_at": event.created_at,
        "data": {"id": batch.id},
    }
    with pytest.raises(openai.InvalidWebhookSignatureError):
        unwrap(other_secret, record)  # the other endpoint's secret does not verify it
    tampered = {**record, "body": record["body"].replace(batch.id.encode(), b"batch_0000")}
    with pytest.raises(openai.InvalidWebhookSignatureError):
        unwrap(own_secret, tampered)

    [delivery] = WebhookDelivery.objects.filter(endpoint=own_endpoint, event_id=event.id)
    assert (delivery.status, delivery.status_code, delivery.attempt, delivery.next_attempt_at) == (DeliveryStatus.SUCCEEDED, 200, 1, None)
    assert delivery.latency_ms is not None and delivery.attempted_at is not None


def test_receiver_failing_twice_gets_the_event_once_successfully(make_receiver, make_endpoint, finish_batch, task_queue):
    receiver = make_receiver(script=[500, 500])
    endpoint, secret, client = make_endpoint(receiver.url)
    batch = finish_batch(client.user)

    assert task_queue.run() == ["retry_scheduled"]
    [first, second] = WebhookDelivery.objects.filter(endpoint=endpoint).order_by("attempt")
    assert first.next_attempt_at == second.next_attempt_at  # the log shows when the retry is due
    assert timedelta(seconds=4) < second.next_attempt_at - first.attempted_at < timedelta(seconds=15)  # schedule[0] = 5 s

    # Nothing is due yet: the sweeper leaves the retry alone.
    assert task_queue.sweep() == 0
    # Time passes: each sweep queues the due retry, a worker runs it.
    for expected in (["retry_scheduled"], ["succeeded"]):
        assert task_queue.sweep(now=timezone.now() + timedelta(hours=1)) == 1
        assert task_queue.run() == expected
    assert task_queue.sweep(now=timezone.now() + timedelta(days=2)) == 0

    log = deliveries_of(first.event_id)
    assert [(d.attempt, d.status, d.status_code) for d in log] == [
        (1, DeliveryStatus.FAILED, 500),
        (2, DeliveryStatus.FAILED, 500),
        (3, DeliveryStatus.SUCCEEDED, 200),
    ]
    assert all(d.error.startswith("HTTP 500") for d in log[:2]) and log[2].error == ""
    assert log[1].next_attempt_at - log[1].attempted_at > timedelta(seconds=25)  # schedule[1] = 30 s
    assert [r["status"] for r in receiver.requests] == [500, 500, 200]
    # Every attempt carries the same webhook-id (receivers deduplicate on it) and a fresh valid signature.
    assert {r["headers"]["webhook-id"] for r in receiver.requests} == {first.event_id}
    assert all(unwrap(secret, r).data.id == batch.id for r in receiver.requests)


def test_retries_stop_when_the_schedule_is_used_up(make_receiver, make_endpoint, finish_batch, task_queue, settings):
    set_app_settings(settings, WEBHOOKS_RETRY_SCHEDULE=(1, 2))
    receiver = make_receiver(script=[503] * 10)
    endpoint, _, client = make_endpoint(receiver.url)
    finish_batch(client.user)

    assert task_queue.run() == ["retry_scheduled"]
    for expected in (["retry_scheduled"], ["gave_up"]):
        task_queue.sweep(now=timezone.now() + timedelta(minutes=5))
        assert task_queue.run() == expected
    assert task_queue.sweep(now=timezone.now() + timedelta(days=2)) == 0
    log = list(WebhookDelivery.objects.filter(endpoint=endpoint).order_by("attempt"))
    assert [(d.attempt, d.status, d.status_code) for d in log] == [(n, DeliveryStatus.FAILED, 503) for n in (1, 2, 3)]
    assert log[-1].next_attempt_at is None and len(receiver.requests) == 3


def test_hanging_receiver_does_not_slow_the_batch(make_receiver, make_endpoint, make_user, finish_batch, task_queue, settings):
    """The batch path only stores and queues deliveries; the receiver's time is spent in
    the delivery task, bounded by WEBHOOKS_TIMEOUT, and then retried."""
    set_app_settings(settings, WEBHOOKS_TIMEOUT=1.0)
    receiver = make_receiver(script=["hang"])
    started = time.monotonic()
    finish_batch(make_user())  # an owner without endpoints
    without_receiver = time.monotonic() - started

    endpoint, secret, client = make_endpoint(receiver.url)
    started = time.monotonic()
    batch = finish_batch(client.user)
    with_hanging_receiver = time.monotonic() - started
    print(f"batch finish: without receiver {without_receiver:.3f}s, with hanging receiver {with_hanging_receiver:.3f}s")

    assert batch.status == BatchStatus.COMPLETED
    assert receiver.requests == []  # the batch finished before any delivery began
    [delivery] = WebhookDelivery.objects.filter(endpoint=endpoint)
    assert delivery.status == DeliveryStatus.PENDING

    started = time.monotonic()
    assert task_queue.run() == ["retry_scheduled"]
    print(f"delivery attempt against the hanging receiver: {time.monotonic() - started:.3f}s (timeout 1s)")
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.FAILED and delivery.status_code is None
    assert "timed out" in delivery.error
    assert len(receiver.requests) == 1 and receiver.requests[0]["answered"] is None  # still hanging when we gave up

    receiver.release.set()
    task_queue.sweep(now=timezone.now() + timedelta(minutes=1))
    assert task_queue.run() == ["succeeded"]
    assert unwrap(secret, receiver.requests[-1]).data.id == batch.id


def test_only_matching_enabled_endpoints_of_the_owner_get_events(make_receiver, make_endpoint, finish_batch, task_queue):
    receiver = make_receiver()
    _, _, client = make_endpoint(receiver.url, event_types=["batch.failed"])
    disabled, _, _ = make_endpoint(receiver.url, client=client)
    WebhookEndpoint.objects.filter(pk=disabled.pk).update(enabled=False)
    make_endpoint(receiver.url)  # another user's endpoint

    finish_batch(client.user)

    assert task_queue.tasks == []
    assert not WebhookDelivery.objects.exists()


def test_endpoint_disabled_after_queueing_is_not_called(make_receiver, make_endpoint, finish_batch, task_queue):
    receiver = make_receiver()
    endpoint, _, client = make_endpoint(receiver.url)
    finish_batch(client.user)
    WebhookEndpoint.objects.filter(pk=endpoint.pk).update(enabled=False)

    assert task_queue.run() == ["disabled"]
    assert receiver.requests == []
    assert WebhookDelivery.objects.get(endpoint=endpoint).error == "The endpoint is disabled."


def test_delivery_task_is_idempotent(make_receiver, make_endpoint, finish_batch, task_queue):
    receiver = make_receiver()
    endpoint, _, client = make_endpoint(receiver.url)
    finish_batch(client.user)
    [(func, args)] = task_queue.tasks
    task_queue.tasks.append((func, args))  # the broker delivered the task twice

    assert task_queue.run() == ["succeeded", "skipped"]
    assert len(receiver.requests) == 1


def test_sweep_recovers_an_attempt_lost_with_its_worker(
    make_receiver, make_endpoint, finish_batch, task_queue, django_capture_on_commit_callbacks
):
    receiver = make_receiver()
    endpoint, _, client = make_endpoint(receiver.url)
    finish_batch(client.user)
    task_queue.tasks.clear()  # the queued task is lost...
    lost = WebhookDelivery.objects.get(endpoint=endpoint)
    # ...or a worker claimed the attempt and died; its lease ran out a minute ago.
    WebhookDelivery.objects.filter(pk=lost.pk).update(status=DeliveryStatus.SENDING, next_attempt_at=timezone.now() - timedelta(minutes=1))

    with django_capture_on_commit_callbacks(execute=True):
        found = tasks.sweep()
    lost.refresh_from_db()
    assert lost.status == DeliveryStatus.FAILED and "worker stopped" in lost.error
    assert found["webhooks"] == 0  # the retry is due after schedule[0]
    task_queue.sweep(now=timezone.now() + timedelta(minutes=1))
    assert task_queue.run() == ["succeeded"]
    assert len(receiver.requests) == 1


def test_sweep_requeues_a_first_attempt_whose_task_was_lost(make_receiver, make_endpoint, finish_batch, task_queue):
    receiver = make_receiver()
    endpoint, _, client = make_endpoint(receiver.url)
    finish_batch(client.user)
    task_queue.tasks.clear()

    assert task_queue.sweep() == 0  # not before REQUEUE_AFTER
    later = timezone.now() + webhooks.REQUEUE_AFTER + timedelta(seconds=1)
    assert task_queue.sweep(now=later) == 1
    assert task_queue.sweep(now=later) == 0  # queued once per REQUEUE_AFTER, however long the backlog
    assert task_queue.run() == ["succeeded"]
    assert len(receiver.requests) == 1


def test_private_target_is_refused_at_delivery_time(make_receiver, make_endpoint, finish_batch, task_queue, settings):
    receiver = make_receiver()
    endpoint, _, client = make_endpoint(receiver.url)
    finish_batch(client.user)
    set_app_settings(settings, WEBHOOKS_ALLOW_PRIVATE=False)

    assert task_queue.run() == ["retry_scheduled"]
    assert receiver.requests == []
    assert "non-public address (127.0.0.1)" in WebhookDelivery.objects.get(endpoint=endpoint, attempt=1).error


def test_unreachable_receiver_is_logged_and_retried(make_endpoint, finish_batch, task_queue):
    gone = Receiver()
    gone.stop()  # a port nobody listens on any more
    endpoint, _, client = make_endpoint(gone.url)
    finish_batch(client.user)

    assert task_queue.run() == ["retry_scheduled"]
    first = WebhookDelivery.objects.get(endpoint=endpoint, attempt=1)
    assert first.status == DeliveryStatus.FAILED and first.status_code is None
    assert "ConnectionRefusedError" in first.error


def test_signing_matches_the_standard_webhooks_example():
    # Test vector from the Standard Webhooks specification's reference libraries.
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    body = b'{"test": 2432232314}'
    assert webhooks.sign(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", "1614265330", body) == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


# --- SSRF guard ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8000/hook",
        "http://localhost/hook",
        "http://[::1]/hook",
        "http://[::ffff:127.0.0.1]/hook",
        "http://10.1.2.3/hook",
        "http://192.168.0.10/hook",
        "http://172.16.0.1/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://100.64.0.1/hook",
        "http://0.0.0.0/hook",
        "http://224.0.0.1/hook",
    ],
)
def test_non_public_targets_are_refused_unless_allowed(url, settings):
    set_app_settings(settings, WEBHOOKS_ALLOW_PRIVATE=False)
    with pytest.raises(webhooks.UnsafeURL, match="non-public address"):
        webhooks.check_url(url)
    set_app_settings(settings, WEBHOOKS_ALLOW_PRIVATE=True)
    webhooks.check_url(url)


@pytest.mark.parametrize(
    "url, message",
    [
        ("ftp://93.184.215.14/hook", "http:// or https://"),
        ("file:///etc/passwd", "http:// or https://"),
        ("https:///hook", "no host"),
        ("https://user:pw@93.184.215.14/hook", "credentials"),
        ("https://93.184.215.14:99999/hook", "invalid port"),
        ("https://93.184.215.14/a b", "spaces or control"),
        ("https://nonexistent.invalid/hook", "could not be resolved"),
        ("https://a..b/hook", "not a valid host name"),
        ("https://93.184.215.14/h\u00e9", "must be ASCII"),
    ],
)
def test_malformed_urls_are_refused(url, message):
    with pytest.raises(webhooks.UnsafeURL, match=message):
        webhooks.check_url(url)


def test_public_target_is_accepted_with_the_guard_on(settings):
    set_app_settings(settings, WEBHOOKS_ALLOW_PRIVATE=False)
    assert webhooks.check_url("https://93.184.215.14:8443/hooks?x=1") == ("https", "93.184.215.14", 8443, "/hooks?x=1", ["93.184.215.14"])


# --- /v1/webhooks API -------------------------------------------------------------------------


def test_create_returns_the_secret_once(api):
    response = api.post(
        "/v1/webhooks", {"url": "https://93.184.215.14/hook", "event_types": ["batch.completed", "batch.failed"]}, format="json"
    )
    assert response.status_code == 200
    body = response.json()
    assert body["id"].startswith("whep_")
    assert body["object"] == "webhook_endpoint"
    assert body["url"] == "https://93.184.215.14/hook"
    assert body["event_types"] == ["batch.completed", "batch.failed"]
    assert body["enabled"] is True and isinstance(body["created_at"], int)
    assert body["secret"].startswith("whsec_") and len(base64.b64decode(body["secret"][6:])) == 32

    listed = api.get("/v1/webhooks").json()
    assert listed["object"] == "list" and listed["first_id"] == listed["last_id"] == body["id"] and listed["has_more"] is False
    assert listed["data"] == [{k: v for k, v in body.items() if k != "secret"}]
    assert "secret" not in api.get(f"/v1/webhooks/{body['id']}").json()


def test_list_is_newest_first_and_paginated(api):
    ids = [
        api.post("/v1/webhooks", {"url": f"https://93.184.215.14/{n}", "event_types": ["batch.completed"]}, format="json").json()["id"]
        for n in range(3)
    ]
    page = api.get("/v1/webhooks", {"limit": 2}).json()
    assert [e["id"] for e in page["data"]] == ids[::-1][:2] and page["has_more"] is True
    rest = api.get("/v1/webhooks", {"limit": 2, "after": page["last_id"]}).json()
    assert [e["id"] for e in rest["data"]] == [ids[0]] and rest["has_more"] is False


def test_endpoints_are_scoped_to_their_owner(make_client):
    alice, bob = make_client(), make_client()
    endpoint_id = alice.post("/v1/webhooks", {"url": "https://93.184.215.14/a", "event_types": ["batch.completed"]}, format="json").json()[
        "id"
    ]

    assert bob.get("/v1/webhooks").json()["data"] == []
    for response in (bob.get(f"/v1/webhooks/{endpoint_id}"), bob.delete(f"/v1/webhooks/{endpoint_id}")):
        assert response.status_code == 404
        assert response.json()["error"]["message"] == f"No such WebhookEndpoint object: {endpoint_id}"
    assert WebhookEndpoint.objects.filter(pk=endpoint_id).exists()

    deleted = alice.delete(f"/v1/webhooks/{endpoint_id}")
    assert deleted.status_code == 200
    assert deleted.json() == {"id": endpoint_id, "object": "webhook_endpoint.deleted", "deleted": True}
    assert alice.get(f"/v1/webhooks/{endpoint_id}").status_code == 404


def test_requires_an_api_key(client):
    for response in (client.get("/v1/webhooks"), client.post("/v1/webhooks", {}, content_type="application/json")):
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "invalid_api_key"


@pytest.mark.parametrize(
    "body, param, code",
    [
        ({"event_types": ["batch.completed"]}, "url", "missing_required_parameter"),
        ({"url": 5, "event_types": ["batch.completed"]}, "url", "invalid_type"),
        ({"url": "ftp://93.184.215.14/x", "event_types": ["batch.completed"]}, "url", "invalid_url"),
        ({"url": "https://93.184.215.14/" + "x" * 2100, "event_types": ["batch.completed"]}, "url", "invalid_value"),
        ({"url": "https://93.184.215.14/x"}, "event_types", "missing_required_parameter"),
        ({"url": "https://93.184.215.14/x", "event_types": "batch.completed"}, "event_types", "invalid_type"),
        ({"url": "https://93.184.215.14/x", "event_types": []}, "event_types", "invalid_value"),
        ({"url": "https://93.184.215.14/x", "event_types": ["response.completed"]}, "event_types", "invalid_value"),
        (["not", "an", "object"], None, "invalid_type"),
    ],
)
def test_invalid_create_is_an_openai_400(api, body, param, code):
    response = api.post("/v1/webhooks", body, format="json")
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["type"], error["param"], error["code"]) == ("invalid_request_error", param, code)
    assert not WebhookEndpoint.objects.exists()


def test_ssrf_refused_by_the_api_when_the_setting_is_off(api, settings):
    set_app_settings(settings, WEBHOOKS_ALLOW_PRIVATE=False)
    response = api.post("/v1/webhooks", {"url": "http://169.254.169.254/latest", "event_types": ["batch.completed"]}, format="json")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_url"
    assert "non-public address" in response.json()["error"]["message"]


def test_duplicate_event_types_are_stored_once(api):
    body = api.post(
        "/v1/webhooks", {"url": "https://93.184.215.14/x", "event_types": ["batch.failed", "batch.failed"]}, format="json"
    ).json()
    assert body["event_types"] == ["batch.failed"]


# --- admin -------------------------------------------------------------------------------------


@pytest.fixture
def admin_client(admin_client, settings):
    # The service's manifest storage needs collectstatic; admin pages only need URLs here.
    settings.STORAGES = {**settings.STORAGES, "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"}}
    return admin_client


def test_admin_shows_the_secret_once_on_creation(admin_client, admin_user):
    response = admin_client.post(
        "/admin/batches/webhookendpoint/add/",
        {"owner": admin_user.pk, "url": "https://93.184.215.14/hook", "event_types": ["batch.completed"], "enabled": "on"},
        follow=True,
    )
    assert response.status_code == 200
    endpoint = WebhookEndpoint.objects.get()
    assert endpoint.event_types == ["batch.completed"]
    assert endpoint.secret in response.content.decode()
    change_page = admin_client.get(reverse("admin:batches_webhookendpoint_change", args=[quote(endpoint.pk)]))
    assert change_page.status_code == 200 and endpoint.secret not in change_page.content.decode()


def test_admin_refuses_private_urls_when_not_allowed(admin_client, admin_user, settings):
    set_app_settings(settings, WEBHOOKS_ALLOW_PRIVATE=False)
    response = admin_client.post(
        "/admin/batches/webhookendpoint/add/",
        {"owner": admin_user.pk, "url": "http://127.0.0.1/hook", "event_types": ["batch.completed"]},
    )
    assert response.status_code == 200 and "non-public address" in response.content.decode()
    assert not WebhookEndpoint.objects.exists()


def test_admin_delivery_log_and_resend(
    admin_client, make_receiver, make_endpoint, finish_batch, task_queue, django_capture_on_commit_callbacks
):
    receiver = make_receiver(script=[500])
    endpoint, secret, client = make_endpoint(receiver.url)
    finish_batch(client.user)
    task_queue.run()
    failed = WebhookDelivery.objects.get(endpoint=endpoint, attempt=1)

    page = admin_client.get("/admin/batches/webhookdelivery/")
    assert page.status_code == 200 and failed.event_id in page.content.decode()
    assert admin_client.get(reverse("admin:batches_webhookdelivery_change", args=[quote(failed.pk)])).status_code == 200  # read-only view

    # Attempt 2 is still pending: resend is refused for that event.
    response = admin_client.post("/admin/batches/webhookdelivery/", {"action": "resend", "_selected_action": [failed.pk]}, follow=True)
    assert "Queued 0 event(s) again; 1 already had an attempt pending." in response.content.decode()

    WebhookDelivery.objects.filter(endpoint=endpoint, status=DeliveryStatus.PENDING).delete()
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post("/admin/batches/webhookdelivery/", {"action": "resend", "_selected_action": [failed.pk]}, follow=True)
    assert "Queued 1 event(s) again" in response.content.decode()
    assert task_queue.run() == ["succeeded"]
    assert unwrap(secret, receiver.requests[-1]).id == failed.event_id
    assert WebhookDelivery.objects.filter(event_id=failed.event_id, status=DeliveryStatus.SUCCEEDED).count() == 1


# --- Django signals ------------------------------------------------------------------------


@pytest.fixture
def signal_log():
    """Records every batch_status_changed / batch_finished as it is sent."""
    log = []

    def on_change(sender, batch, old_status, new_status, **kwargs):
        log.append(("changed", batch.id, old_status, new_status))

    def on_finish(sender, batch, **kwargs):
        log.append(("finished", batch.id, batch.status))

    batch_status_changed.connect(on_change, weak=False)
    batch_finished.connect(on_finish, weak=False)
    yield log
    batch_status_changed.disconnect(on_change)
    batch_finished.disconnect(on_finish)


def test_signals_for_a_completed_batch(finish_batch, make_user, signal_log):
    batch = finish_batch(make_user())
    assert signal_log == [
        ("changed", batch.id, "validating", "in_progress"),
        ("changed", batch.id, "in_progress", "finalizing"),
        ("changed", batch.id, "finalizing", "completed"),
        ("finished", batch.id, "completed"),
    ]


def test_signals_for_a_batch_failing_validation(finish_batch, make_user, signal_log):
    batch = finish_batch(make_user(), lines=["not json"])
    assert batch.status == BatchStatus.FAILED
    assert signal_log == [("changed", batch.id, "validating", "failed"), ("finished", batch.id, "failed")]


def test_signals_for_a_cancelled_batch(make_batch, upstream, make_user, signal_log, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        batch = make_batch([chat_line("a")], owner=make_user())
        tasks.validate_batch(batch.id)
        lifecycle.request_cancel(Batch.objects.get(pk=batch.id))
        tasks.finalize_batch(batch.id)
    assert signal_log == [
        ("changed", batch.id, "validating", "in_progress"),
        ("changed", batch.id, "in_progress", "cancelling"),
        ("changed", batch.id, "cancelling", "cancelled"),
        ("finished", batch.id, "cancelled"),
    ]


def test_signals_for_an_expired_batch(make_batch, upstream, make_user, signal_log, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        batch = make_batch([chat_line("a")], owner=make_user())
        tasks.validate_batch(batch.id)
        Batch.objects.filter(pk=batch.id).update(expires_at=timezone.now() - timedelta(seconds=1))
        run_batches()  # notices the expiry, finalizes
    assert signal_log == [
        ("changed", batch.id, "validating", "in_progress"),
        ("changed", batch.id, "in_progress", "finalizing"),
        ("changed", batch.id, "finalizing", "expired"),
        ("finished", batch.id, "expired"),
    ]


def test_signals_wait_for_the_commit(make_batch, upstream, make_user, signal_log, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        batch = make_batch([chat_line("a")], owner=make_user())
    with django_capture_on_commit_callbacks() as pending:
        tasks.validate_batch(batch.id)
    assert signal_log == []  # not committed yet: nothing sent
    for callback in pending:
        callback()
    assert ("changed", batch.id, "validating", "in_progress") in signal_log


@pytest.mark.parametrize(
    "end, event_type",
    [("cancel", "batch.cancelled"), ("expire", "batch.expired"), ("fail", "batch.failed")],
)
def test_every_terminal_status_has_its_event(
    end, event_type, make_batch, upstream, make_receiver, make_endpoint, task_queue, django_capture_on_commit_callbacks
):
    receiver = make_receiver()
    endpoint, secret, client = make_endpoint(receiver.url)
    with django_capture_on_commit_callbacks(execute=True):
        batch = make_batch(["not json"] if end == "fail" else [chat_line("a")], owner=client.user)
        tasks.validate_batch(batch.id)
        if end == "cancel":
            lifecycle.request_cancel(Batch.objects.get(pk=batch.id))
            tasks.finalize_batch(batch.id)
        elif end == "expire":
            Batch.objects.filter(pk=batch.id).update(expires_at=timezone.now() - timedelta(seconds=1))
            run_batches()  # notices the expiry, finalizes
    assert task_queue.run() == ["succeeded"]
    event = unwrap(secret, receiver.requests[0])
    assert (event.type, event.data.id) == (event_type, batch.id)


# --- live: real web server and qcluster workers -------------------------------------------------


@pytest.fixture(scope="module")
def webhook_stack(fake_upstream):
    from tests.live import LiveStack

    stack = LiveStack(fake_upstream.base_url, env={"BATCHES_LEASE_SECONDS": "10", "BATCHES_WEBHOOKS_ALLOW_PRIVATE": "1"}).start()
    yield stack
    stack.stop()


@pytest.mark.live
def test_live_hanging_receiver_does_not_delay_batches(webhook_stack, fake_upstream):
    """Real workers: a receiver holds the first delivery open; batches keep completing meanwhile."""
    import io
    import urllib.request

    from tests.conftest import jsonl
    from tests.live import wait_for_batch, wait_until

    fake_upstream.reset()
    fake_upstream.configure(latency_ms=20, error_500_rate=0, error_503_rate=0, error_429_rate=0, timeout_rate=0, down=False)
    client = webhook_stack.client()
    lines = [chat_line(f"r{n}") for n in range(20)]

    def run_batch():
        input_file = client.files.create(file=("input.jsonl", io.BytesIO(jsonl(lines))), purpose="batch")
        started = time.monotonic()
        batch = client.batches.create(input_file_id=input_file.id, endpoint="/v1/chat/completions", completion_window="24h")
        batch = wait_for_batch(client, batch.id, timeout=60)
        assert batch.status == "completed"
        return batch, time.monotonic() - started

    run_batch()  # warm-up: first requests of fresh processes
    without_receiver = min(run_batch()[1] for _ in range(2))

    receiver = Receiver(script=["hang"])
    try:
        request = urllib.request.Request(
            f"{webhook_stack.base_url}/webhooks",
            data=json.dumps({"url": receiver.url, "event_types": ["batch.completed"]}).encode(),
            headers={"Authorization": f"Bearer {webhook_stack.api_key}", "Content-Type": "application/json"},
        )
        secret = json.loads(urllib.request.urlopen(request, timeout=10).read())["secret"]

        first, first_time = run_batch()
        hanging = wait_until(lambda: receiver.requests and receiver.requests[0], 30, what="the first delivery")
        second, second_time = run_batch()  # while the receiver holds the first delivery
        assert hanging["answered"] is None  # still holding it: the second batch did not wait for it
        receiver.release.set()
        wait_until(lambda: len(receiver.requests) == 2, 30, what="the second delivery")
    finally:
        receiver.stop()

    print(
        f"live batch of {len(lines)} requests: {without_receiver:.2f}s without endpoint, {first_time:.2f}s with a hanging "
        f"receiver, {second_time:.2f}s while that receiver held a delivery open"
    )
    events = [unwrap(secret, r) for r in receiver.requests]
    assert sorted((e.type, e.data.id) for e in events) == sorted([("batch.completed", first.id), ("batch.completed", second.id)])
