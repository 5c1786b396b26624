"""Signed webhooks for batch events, delivered by django-q2 tasks.

When a batch ends, ``queue_batch_event`` (a ``batch_finished`` receiver) stores
one ``WebhookDelivery`` row per matching endpoint of the batch's owner and
queues ``deliver_webhook`` after commit. The batch worker only writes those rows:
it never talks to a receiver, so a slow or dead receiver cannot delay a batch.

Each attempt POSTs the event JSON signed per Standard Webhooks
(https://www.standardwebhooks.com), which the OpenAI SDK's
``client.webhooks.unwrap(body, headers)`` verifies::

    webhook-id: evt_...             the same on every attempt: receivers deduplicate on it
    webhook-timestamp: 1700000000   unix seconds of this attempt
    webhook-signature: v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>

where ``key`` is the base64-decoded part of the endpoint's ``whsec_...`` secret.

Delivery is at least once: a 2xx answer ends it; anything else (or no answer
within WEBHOOKS_TIMEOUT) is logged and retried as a new row after
``WEBHOOKS_RETRY_SCHEDULE[attempt - 1]`` seconds. ``tasks.sweep`` calls
``sweep_deliveries`` to queue due retries and recover attempts lost with
their worker.
"""

import base64
import hashlib
import hmac
import http.client
import ipaddress
import json
import logging
import socket
import time
from datetime import timedelta
from urllib.parse import urlsplit

from django.db import transaction
from django.utils import timezone

from files_app.ids import make_id

from .conf import app_settings
from .models import (
    BatchStatus,
    DeliveryStatus,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookEventType,
    to_unix,
)
from .queue import enqueue

logger = logging.getLogger("openai_batches.webhooks")

EVENT_TYPE_FOR_STATUS = {
    BatchStatus.COMPLETED: WebhookEventType.BATCH_COMPLETED,
    BatchStatus.FAILED: WebhookEventType.BATCH_FAILED,
    BatchStatus.CANCELLED: WebhookEventType.BATCH_CANCELLED,
    BatchStatus.EXPIRED: WebhookEventType.BATCH_EXPIRED,
}
# A queued attempt not picked up within this long (lost broker message, long
# backlog) is queued again by the sweeper; the claim makes duplicates harmless.
REQUEUE_AFTER = timedelta(minutes=2)
SWEEP_LIMIT = 500
MAX_ERROR_CHARS = 2000
RESPONSE_EXCERPT_BYTES = 512


# --- Target URLs: only http(s), only public addresses unless allowed ------------------


class UnsafeURL(ValueError):
    """A webhook URL we refuse to call; the message is safe to show the user."""


def check_url(url):
    """Validate a webhook URL and resolve it: ``(scheme, host, port, path, addresses)``.

    Every address the host resolves to must be public (unless
    WEBHOOKS_ALLOW_PRIVATE), and the request later connects to exactly these
    addresses, so DNS cannot be switched to an internal one in between.
    """
    if any(ord(ch) <= 0x20 or ord(ch) == 0x7F for ch in url):
        raise UnsafeURL("The webhook URL must not contain spaces or control characters.")
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise UnsafeURL("The webhook URL must start with http:// or https://.")
    if not parts.hostname:
        raise UnsafeURL("The webhook URL has no host.")
    try:
        host = parts.hostname.encode("idna").decode("ascii")  # what DNS and the Host header need
    except UnicodeError:
        raise UnsafeURL(f"The webhook host '{parts.hostname}' is not a valid host name.") from None
    if parts.username is not None or parts.password is not None:
        raise UnsafeURL("The webhook URL must not contain credentials.")
    try:
        port = parts.port or (443 if scheme == "https" else 80)
    except ValueError:
        raise UnsafeURL("The webhook URL has an invalid port.") from None
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror:
        raise UnsafeURL(f"The webhook host '{parts.hostname}' could not be resolved.") from None
    addresses = list(dict.fromkeys(info[4][0] for info in infos))
    if not app_settings.WEBHOOKS_ALLOW_PRIVATE:
        for address in addresses:
            if not is_public_address(address):
                raise UnsafeURL(f"The webhook host '{parts.hostname}' resolves to a non-public address ({address}).")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    if not path.isascii():
        raise UnsafeURL("The webhook URL's path must be ASCII (percent-encode other characters).")
    return scheme, host, port, path, addresses


def is_public_address(address):
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # drop an IPv6 zone id
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    # is_global is False for loopback, private, link-local (cloud metadata),
    # shared (CGNAT), reserved and unspecified ranges.
    return ip.is_global and not ip.is_multicast


# --- Signing and sending ----------------------------------------------------------------


def sign(secret, webhook_id, timestamp, body):
    """The Standard Webhooks ``webhook-signature`` value for one attempt."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    digest = hmac.new(key, f"{webhook_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def _pinned_connect(addresses):
    """A replacement for socket.create_connection that only dials the checked addresses."""

    def create_connection(address, timeout=None, source_address=None):
        last_error = OSError("no address to connect to")
        for ip in addresses:
            try:
                return socket.create_connection((ip, address[1]), timeout, source_address)
            except OSError as exc:
                last_error = exc
        raise last_error

    return create_connection


def post_event(url, secret, event_id, body, timeout):
    """POST one signed event; returns ``(status_code, start of the response body)``."""
    scheme, host, port, path, addresses = check_url(url)
    timestamp = str(int(time.time()))
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "django-openai-batches-webhooks",
        "webhook-id": event_id,
        "webhook-timestamp": timestamp,
        "webhook-signature": sign(secret, event_id, timestamp, body),
    }
    connection_class = http.client.HTTPSConnection if scheme == "https" else http.client.HTTPConnection
    connection = connection_class(host, port, timeout=timeout)
    # http.client dials through this attribute; HTTPS still verifies the certificate for `host`.
    connection._create_connection = _pinned_connect(addresses)
    try:
        connection.request("POST", path, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, response.read(RESPONSE_EXCERPT_BYTES)
    finally:
        connection.close()


# --- Queueing events (runs in the batch worker: database writes only) --------------------


def queue_batch_event(sender, batch, **kwargs):
    """``batch_finished`` receiver: store and queue one delivery per matching endpoint."""
    try:
        queue_event(batch)
    except Exception:
        # The signal is sent with send() after the batch committed: an error here
        # must not surface in (or stop) the batch worker. Nothing was queued.
        logger.exception("webhook.queue_failed batch_id=%s", batch.id)


def queue_event(batch):
    """Create the event for a finished batch and its deliveries; returns the deliveries."""
    event_type = EVENT_TYPE_FOR_STATUS.get(batch.status)
    if event_type is None:
        return []
    endpoints = [e for e in WebhookEndpoint.objects.filter(owner_id=batch.owner_id, enabled=True) if e.wants(event_type)]
    if not endpoints:
        return []
    event_id = make_id("evt_", 16)
    finished_at = batch.entered_at(batch.status) or timezone.now()
    payload = json.dumps(
        {"id": event_id, "object": "event", "type": event_type, "created_at": to_unix(finished_at), "data": {"id": batch.id}},
        separators=(",", ":"),
    )
    now = timezone.now()
    with transaction.atomic():
        deliveries = [
            WebhookDelivery.objects.create(
                endpoint=endpoint,
                event_id=event_id,
                event_type=event_type,
                batch_id=batch.id,
                payload=payload,
                next_attempt_at=now + REQUEUE_AFTER,
            )
            for endpoint in endpoints
        ]
        for delivery in deliveries:
            enqueue_delivery(delivery)
    logger.info("webhook.event_queued event_id=%s type=%s batch_id=%s endpoints=%d", event_id, event_type, batch.id, len(deliveries))
    return deliveries


def enqueue_delivery(delivery):
    """Queue the ``deliver_webhook`` task once the row is committed; if that is lost,
    the sweeper queues the row again after REQUEUE_AFTER."""
    enqueue("deliver_webhook", delivery.pk, group=delivery.batch_id)


def resend(delivery):
    """Queue the event of ``delivery`` again, as attempt 1 of a fresh retry schedule.

    Returns the new row, or None while that event already has an attempt pending.
    """
    active = WebhookDelivery.objects.filter(
        endpoint_id=delivery.endpoint_id, event_id=delivery.event_id, status__in=(DeliveryStatus.PENDING, DeliveryStatus.SENDING)
    )
    with transaction.atomic():
        if active.exists():
            return None
        fresh = delivery.add_attempt(attempt=1, next_attempt_at=timezone.now() + REQUEUE_AFTER)
        enqueue_delivery(fresh)
    logger.info("webhook.resend event_id=%s endpoint_id=%s delivery_id=%s", fresh.event_id, fresh.endpoint_id, fresh.pk)
    return fresh


# --- Delivering (django-q2 tasks) ---------------------------------------------------------


def deliver(delivery_id):
    """The ``deliver_webhook`` task: make one attempt of one delivery. Idempotent: only a pending row is claimed."""
    now = timezone.now()
    timeout = float(app_settings.WEBHOOKS_TIMEOUT)
    # While sending, next_attempt_at is the lease (and the claim's token): past it,
    # the sweeper counts the attempt as lost.
    lease = now + timedelta(seconds=timeout * 3 + 60)
    if not WebhookDelivery.objects.filter(pk=delivery_id, status=DeliveryStatus.PENDING).update(
        status=DeliveryStatus.SENDING, next_attempt_at=lease
    ):
        return "skipped"
    delivery = WebhookDelivery.objects.select_related("endpoint").filter(pk=delivery_id).first()
    if delivery is None:  # the endpoint was deleted meanwhile, and its log with it
        return "gone"
    endpoint = delivery.endpoint
    if not endpoint.enabled:
        _conclude(delivery, lease, attempted_at=now, error="The endpoint is disabled.", retry=False)
        return "disabled"

    status_code, error = None, ""
    started = time.monotonic()
    try:
        status_code, excerpt = post_event(endpoint.url, endpoint.secret, delivery.event_id, delivery.payload.encode(), timeout)
    except UnsafeURL as exc:
        error = str(exc)
    except (OSError, http.client.HTTPException) as exc:  # refused, timed out, TLS, malformed answer
        error = f"{type(exc).__name__}: {exc}".rstrip(": ")
    else:
        if not 200 <= status_code < 300:
            error = f"HTTP {status_code}: {excerpt.decode('utf-8', 'replace')}".strip()
    latency_ms = int((time.monotonic() - started) * 1000)
    outcome = _conclude(delivery, lease, attempted_at=now, status_code=status_code, latency_ms=latency_ms, error=error)
    logger.info(
        "webhook.attempt delivery_id=%s event_id=%s endpoint_id=%s attempt=%d status_code=%s latency_ms=%d outcome=%s",
        delivery.pk,
        delivery.event_id,
        endpoint.pk,
        delivery.attempt,
        status_code,
        latency_ms,
        outcome,
    )
    return outcome


def retry_delay(attempt):
    """Seconds before the attempt after ``attempt``, or None when retries are used up."""
    schedule = app_settings.WEBHOOKS_RETRY_SCHEDULE
    return schedule[attempt - 1] if attempt <= len(schedule) else None


def _conclude(delivery, lease, *, attempted_at, status_code=None, latency_ms=None, error="", retry=True):
    """Record an attempt's result (if we still hold its lease) and add the retry row."""
    succeeded = not error
    delay = None if succeeded or not retry else retry_delay(delivery.attempt)
    retry_at = timezone.now() + timedelta(seconds=delay) if delay is not None else None
    with transaction.atomic():
        recorded = WebhookDelivery.objects.filter(pk=delivery.pk, status=DeliveryStatus.SENDING, next_attempt_at=lease).update(
            status=DeliveryStatus.SUCCEEDED if succeeded else DeliveryStatus.FAILED,
            attempted_at=attempted_at,
            status_code=status_code,
            latency_ms=latency_ms,
            error=error[:MAX_ERROR_CHARS],
            next_attempt_at=retry_at,
        )
        if not recorded:
            return "lease_lost"
        if retry_at is not None:
            delivery.add_attempt(attempt=delivery.attempt + 1, next_attempt_at=retry_at)
    if succeeded:
        return "succeeded"
    return "retry_scheduled" if retry_at else "gave_up"


def sweep_deliveries(now=None):
    """Called by ``tasks.sweep``: conclude lost attempts, queue due ones. Returns how many were queued."""
    now = now or timezone.now()
    for lost in WebhookDelivery.objects.for_sweep(now).filter(status=DeliveryStatus.SENDING)[:SWEEP_LIMIT]:
        if (
            _conclude(lost, lost.next_attempt_at, attempted_at=None, error="No result: the worker stopped during the attempt.")
            != "lease_lost"
        ):
            logger.info("webhook.attempt_lost delivery_id=%s event_id=%s attempt=%d", lost.pk, lost.event_id, lost.attempt)
    queued = 0
    for delivery in WebhookDelivery.objects.for_sweep(now).filter(status=DeliveryStatus.PENDING).order_by("next_attempt_at")[:SWEEP_LIMIT]:
        # Pushing next_attempt_at first means one queued task per REQUEUE_AFTER, however long the backlog.
        if WebhookDelivery.objects.filter(pk=delivery.pk, status=DeliveryStatus.PENDING).update(next_attempt_at=now + REQUEUE_AFTER):
            enqueue_delivery(delivery)
            queued += 1
    return queued
