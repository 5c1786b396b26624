"""Batches and their per-line requests.

The life of a batch (every transition lives in ``batches/lifecycle.py``)::

    POST /v1/batches ──> validating ──> in_progress ──> finalizing ──> completed
                             │              │               └────────> expired   (past expires_at)
                             └─> failed     └─> cancelling ──────────> cancelled (POST .../cancel)

* ``validating``: ``tasks.validate_batch`` streams the input file and creates one
  ``BatchRequest`` row per line; any validation error fails the whole batch.
* ``in_progress``: ``tasks.dispatch`` (docs/scheduling.md: one dispatcher serves every
  running batch, on any workers) claims pending rows with a lease, calls the
  upstream, writes results guarded by that lease.
* ``finalizing``: ``tasks.finalize_batch`` streams the rows into the output and
  error files; unfinished rows become ``batch_expired`` / ``batch_cancelled``.
* ``tasks.sweep`` (scheduled every minute) re-enqueues work whose leases went
  stale (killed workers, lost broker messages) and expires late batches.

The rows are the single source of truth: progress, cancel, expiry, crash
recovery and retries are all changes of ``BatchRequest.status`` under a lease.
"""

import base64
import hashlib
import secrets

from django.conf import settings
from django.db import models
from django.utils import timezone

from files_app.ids import make_id
from files_app.models import File


def to_unix(value):
    return int(value.timestamp()) if value else None


def new_batch_id():
    return make_id("batch_", 16)


class BatchStatus(models.TextChoices):
    VALIDATING = "validating"
    FAILED = "failed"
    IN_PROGRESS = "in_progress"
    FINALIZING = "finalizing"
    COMPLETED = "completed"
    EXPIRED = "expired"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"


TERMINAL_STATUSES = (BatchStatus.COMPLETED, BatchStatus.FAILED, BatchStatus.EXPIRED, BatchStatus.CANCELLED)
# The column stamped when a batch enters each status (``validating``: ``created_at``).
STATUS_TIMESTAMP_FIELDS = {
    BatchStatus.VALIDATING: "created_at",
    BatchStatus.IN_PROGRESS: "in_progress_at",
    BatchStatus.CANCELLING: "cancelling_at",
    BatchStatus.FINALIZING: "finalizing_at",
    BatchStatus.COMPLETED: "completed_at",
    BatchStatus.FAILED: "failed_at",
    BatchStatus.EXPIRED: "expired_at",
    BatchStatus.CANCELLED: "cancelled_at",
}
CANCELLABLE_STATUSES = (BatchStatus.VALIDATING, BatchStatus.IN_PROGRESS)


class BatchQuerySet(models.QuerySet):
    def owned_by(self, user):
        return self.filter(owner=user)

    def unfinished(self):
        return self.exclude(status__in=TERMINAL_STATUSES)

    def created_with(self, api_key):
        return self.filter(api_key=api_key)


class Batch(models.Model):
    id = models.CharField(primary_key=True, max_length=64, default=new_batch_id, editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="openai_batches")
    endpoint = models.CharField(max_length=64)
    # Files are referenced without a database constraint: a client may delete its
    # input (or output) file and the batch must keep reporting the id.
    input_file = models.ForeignKey(File, on_delete=models.DO_NOTHING, db_constraint=False, related_name="+")
    output_file = models.ForeignKey(File, on_delete=models.DO_NOTHING, db_constraint=False, null=True, blank=True, related_name="+")
    error_file = models.ForeignKey(File, on_delete=models.DO_NOTHING, db_constraint=False, null=True, blank=True, related_name="+")
    completion_window = models.CharField(max_length=16, default="24h")
    status = models.CharField(max_length=16, choices=BatchStatus.choices, default=BatchStatus.VALIDATING, db_index=True)
    model = models.CharField(max_length=255, null=True, blank=True)
    metadata = models.JSONField(null=True, blank=True)
    errors = models.JSONField(null=True, blank=True, help_text="Validation errors: OpenAI's errors.data list.")
    usage = models.JSONField(null=True, blank=True)
    output_expires_after = models.PositiveIntegerField(null=True, blank=True, help_text="Seconds; applies to output files.")

    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    in_progress_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    finalizing_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)
    failed_at = models.DateTimeField(null=True, blank=True)
    expired_at = models.DateTimeField(null=True, blank=True)
    cancelling_at = models.DateTimeField(null=True, blank=True)
    cancelled_at = models.DateTimeField(null=True, blank=True)

    # Live counters, maintained in bulk by the workers; finalize recounts from rows.
    total_requests = models.PositiveIntegerField(default=0)
    completed_requests = models.PositiveIntegerField(default=0)
    failed_requests = models.PositiveIntegerField(default=0)

    # Exclusive work on the batch itself (validation, finalization).
    lease_owner = models.CharField(max_length=64, null=True, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)

    # Scheduling (batches/fairshare.py): the upstream whose in-flight budget it draws from.
    upstream = models.CharField(
        max_length=255, blank=True, default="", help_text="Base URL of the upstream its model routes to, set when validated."
    )

    idempotency_key = models.CharField(max_length=255, null=True, blank=True)
    request_fingerprint = models.CharField(max_length=64, blank=True, default="")
    retry_of = models.ForeignKey("self", on_delete=models.SET_NULL, null=True, blank=True, related_name="retries")
    # The key that created the batch (None: created in the admin): its quotas apply,
    # and its weight sets the owner's share of the upstream (batches/fairshare.py).
    api_key = models.ForeignKey("files_app.ApiKey", on_delete=models.SET_NULL, null=True, blank=True, related_name="batches")
    estimated_prompt_tokens = models.PositiveBigIntegerField(
        default=0, help_text="Prompt tokens of all requests, estimated at validation (about 4 characters a token)."
    )

    objects = BatchQuerySet.as_manager()

    class Meta:
        verbose_name_plural = "batches"
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(fields=["owner", "idempotency_key"], name="batch_unique_idempotency_key_per_owner"),
        ]
        indexes = [models.Index(fields=["owner", "created_at"]), models.Index(fields=["status", "upstream"])]

    def __str__(self):
        return self.id

    @property
    def is_terminal(self):
        return self.status in TERMINAL_STATUSES

    def entered_at(self, status):
        """When the batch entered ``status`` (None if it never did)."""
        return getattr(self, STATUS_TIMESTAMP_FIELDS[status])

    @property
    def ended_at(self):
        return next((self.entered_at(status) for status in TERMINAL_STATUSES if self.entered_at(status)), None)

    def request_counts(self):
        return {"total": self.total_requests, "completed": self.completed_requests, "failed": self.failed_requests}

    def to_openai(self):
        return {
            "id": self.id,
            "object": "batch",
            "endpoint": self.endpoint,
            "model": self.model,
            "errors": {"object": "list", "data": self.errors} if self.errors else None,
            "input_file_id": self.input_file_id,
            "completion_window": self.completion_window,
            "status": self.status,
            "output_file_id": self.output_file_id,
            "error_file_id": self.error_file_id,
            "created_at": to_unix(self.created_at),
            "in_progress_at": to_unix(self.in_progress_at),
            "expires_at": to_unix(self.expires_at),
            "finalizing_at": to_unix(self.finalizing_at),
            "completed_at": to_unix(self.completed_at),
            "failed_at": to_unix(self.failed_at),
            "expired_at": to_unix(self.expired_at),
            "cancelling_at": to_unix(self.cancelling_at),
            "cancelled_at": to_unix(self.cancelled_at),
            "request_counts": self.request_counts(),
            "usage": self.usage,
            "metadata": self.metadata,
        }


class RequestStatus(models.TextChoices):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"


class BatchRequestQuerySet(models.QuerySet):
    def unfinished(self):
        return self.filter(status__in=(RequestStatus.PENDING, RequestStatus.RUNNING))

    def live_leases(self, now=None):
        return self.filter(status=RequestStatus.RUNNING, lease_expires_at__gt=now or timezone.now())


class BatchRequest(models.Model):
    """One line of a batch's input file, and what became of it."""

    batch = models.ForeignKey(Batch, on_delete=models.CASCADE, related_name="requests")
    line = models.PositiveIntegerField(help_text="1-based line number in the input file.")
    custom_id = models.CharField(max_length=512)
    body = models.JSONField()
    status = models.CharField(max_length=16, choices=RequestStatus.choices, default=RequestStatus.PENDING)
    attempts = models.PositiveSmallIntegerField(default=0)
    lease_owner = models.CharField(max_length=64, null=True, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    not_before = models.DateTimeField(null=True, blank=True, help_text="Retry backoff: not claimed before this time.")
    # Result: status_code + response_body when the upstream answered; error when it never did.
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    response_body = models.JSONField(null=True, blank=True)
    error = models.JSONField(null=True, blank=True)
    upstream_request_id = models.CharField(max_length=255, blank=True, default="")
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    objects = BatchRequestQuerySet.as_manager()

    class Meta:
        ordering = ["batch", "line"]
        constraints = [
            models.UniqueConstraint(fields=["batch", "line"], name="batchrequest_unique_line"),
            models.UniqueConstraint(fields=["batch", "custom_id"], name="batchrequest_unique_custom_id"),
        ]
        indexes = [models.Index(fields=["batch", "status", "line"])]

    def __str__(self):
        return f"{self.batch_id}#{self.line} ({self.custom_id})"

    @property
    def public_id(self):
        # Stable across retries and re-finalization, without storing another column.
        digest = hashlib.blake2b(f"{self.batch_id}:{self.line}".encode(), digest_size=12).hexdigest()
        return f"batch_req_{digest}"

    def to_output_line(self):
        """The JSONL record of this request in the output or error file."""
        response = None
        if self.status_code is not None:
            response = {"status_code": self.status_code, "request_id": self.upstream_request_id, "body": self.response_body}
        return {"id": self.public_id, "custom_id": self.custom_id, "response": response, "error": self.error}


# --- Usage and upstream latency, counted as lines finish (batches/usage.py) -------------


class UsageDay(models.Model):
    """Requests and tokens of one owner on one UTC day, per endpoint and model."""

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="openai_batch_usage")
    day = models.DateField()
    endpoint = models.CharField(max_length=64)
    model = models.CharField(max_length=255, blank=True, default="")
    succeeded_requests = models.PositiveBigIntegerField(default=0)
    failed_requests = models.PositiveBigIntegerField(default=0)
    input_tokens = models.PositiveBigIntegerField(default=0)
    output_tokens = models.PositiveBigIntegerField(default=0)
    cached_tokens = models.PositiveBigIntegerField(default=0)
    reasoning_tokens = models.PositiveBigIntegerField(default=0)

    class Meta:
        verbose_name = "usage per day"
        verbose_name_plural = "usage per day"
        ordering = ["-day", "owner", "endpoint", "model"]
        constraints = [
            models.UniqueConstraint(fields=["owner", "day", "endpoint", "model"], name="usageday_unique_owner_day_endpoint_model")
        ]
        indexes = [models.Index(fields=["day"])]

    def __str__(self):
        return f"{self.owner} {self.day} {self.model}"


class Dashboard(Batch):
    """The admin's operations dashboard (batches/ops_admin.py). A proxy model only so
    that the page has its entry, /admin/batches/dashboard/, in the admin index."""

    class Meta:
        proxy = True
        verbose_name = verbose_name_plural = "dashboard"


class ThroughputMinute(models.Model):
    """Requests finished in one minute, all batches together (the admin dashboard's charts)."""

    minute = models.DateTimeField(unique=True)
    succeeded_requests = models.PositiveBigIntegerField(default=0)
    failed_requests = models.PositiveBigIntegerField(default=0)

    class Meta:
        ordering = ["-minute"]

    def __str__(self):
        return f"{self.minute:%Y-%m-%d %H:%M}"


class UpstreamLatency(models.Model):
    """One bucket of the upstream call duration histogram: calls whose duration
    fell in (previous bound, ``le``] seconds, and the sum of their durations."""

    upstream = models.CharField(max_length=255, help_text="The upstream's base URL.")
    status_class = models.CharField(max_length=8, help_text='"2xx", "4xx", "5xx", or "error" when no response came.')
    le = models.CharField(max_length=16, help_text='Upper bound in seconds, or "+Inf".')
    count = models.PositiveBigIntegerField(default=0)
    sum_seconds = models.FloatField(default=0.0)

    class Meta:
        verbose_name_plural = "upstream latency"
        constraints = [models.UniqueConstraint(fields=["upstream", "status_class", "le"], name="upstreamlatency_unique_bucket")]

    def __str__(self):
        return f"{self.upstream} {self.status_class} le={self.le}"


# --- Webhooks: endpoints and the delivery log (sent by batches/webhooks.py) ---------


class WebhookEventType(models.TextChoices):
    BATCH_COMPLETED = "batch.completed"
    BATCH_FAILED = "batch.failed"
    BATCH_CANCELLED = "batch.cancelled"
    BATCH_EXPIRED = "batch.expired"


def new_webhook_endpoint_id():
    return make_id("whep_", 16)


def new_webhook_secret():
    # Standard Webhooks form: "whsec_" + base64 of the HMAC key. The OpenAI SDK's
    # webhooks.unwrap() decodes it the same way.
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


class WebhookEndpointQuerySet(models.QuerySet):
    def owned_by(self, user):
        return self.filter(owner=user)


class WebhookEndpoint(models.Model):
    """A URL that receives signed events about its owner's batches."""

    id = models.CharField(primary_key=True, max_length=64, default=new_webhook_endpoint_id, editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="openai_webhook_endpoints")
    url = models.URLField(max_length=2048)
    event_types = models.JSONField(default=list, help_text='Event types sent to this URL, e.g. ["batch.completed"].')
    # Stored as is because signing needs the key; shown to the user only once, at creation.
    secret = models.CharField(max_length=128, default=new_webhook_secret, editable=False)
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    objects = WebhookEndpointQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["owner", "created_at"])]

    def __str__(self):
        return f"{self.id} ({self.url})"

    def wants(self, event_type):
        return self.enabled and event_type in self.event_types

    def to_openai(self, *, with_secret=False):
        data = {
            "id": self.id,
            "object": "webhook_endpoint",
            "url": self.url,
            "event_types": self.event_types,
            "enabled": self.enabled,
            "created_at": to_unix(self.created_at),
        }
        if with_secret:
            data["secret"] = self.secret
        return data


class DeliveryStatus(models.TextChoices):
    PENDING = "pending"
    SENDING = "sending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class WebhookDeliveryQuerySet(models.QuerySet):
    def for_sweep(self, now):
        """Pending attempts due (again) and attempts whose worker vanished mid-request."""
        return self.filter(status__in=(DeliveryStatus.PENDING, DeliveryStatus.SENDING), next_attempt_at__lte=now)


class WebhookDelivery(models.Model):
    """One attempt to deliver one event to one endpoint: the delivery log.

    A failed attempt adds the next attempt as a new row, so every attempt keeps
    its status code, latency and error.
    """

    endpoint = models.ForeignKey(WebhookEndpoint, on_delete=models.CASCADE, related_name="deliveries")
    event_id = models.CharField(max_length=64, db_index=True, help_text="Also the webhook-id header: the same on every attempt.")
    event_type = models.CharField(max_length=32, choices=WebhookEventType.choices)
    batch_id = models.CharField(max_length=64, db_index=True)
    payload = models.TextField(help_text="The exact JSON body that is signed and sent.")
    attempt = models.PositiveSmallIntegerField(default=1)
    status = models.CharField(max_length=16, choices=DeliveryStatus.choices, default=DeliveryStatus.PENDING)
    next_attempt_at = models.DateTimeField(
        null=True,
        blank=True,
        help_text="Pending: when the sweeper (re)queues this attempt. Sending: when it counts as lost. Failed: when the retry is due.",
    )
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    attempted_at = models.DateTimeField(null=True, blank=True)
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    latency_ms = models.PositiveIntegerField(null=True, blank=True)
    error = models.TextField(blank=True, default="")

    objects = WebhookDeliveryQuerySet.as_manager()

    class Meta:
        verbose_name_plural = "webhook deliveries"
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["status", "next_attempt_at"])]

    def __str__(self):
        return f"{self.event_id} -> {self.endpoint_id} #{self.attempt}"

    def add_attempt(self, *, attempt, next_attempt_at):
        """Store another attempt of this delivery's event to its endpoint (a retry or a resend)."""
        return WebhookDelivery.objects.create(
            endpoint_id=self.endpoint_id,
            event_id=self.event_id,
            event_type=self.event_type,
            batch_id=self.batch_id,
            payload=self.payload,
            attempt=attempt,
            next_attempt_at=next_attempt_at,
        )


# --- Upstream rate limits (batches/ratelimit.py) ----------------------------------------


class RateLimitBucket(models.Model):
    """Shared state of one upstream rate limit, so every worker on every host draws
    from one budget: per dimension, the GCRA "theoretical arrival time" (Unix
    seconds), the moment from which the limit has its full burst available again."""

    key = models.CharField(primary_key=True, max_length=255, help_text='"model:<id>" or "upstream:<base url>".')
    requests_tat = models.FloatField(default=0.0)
    tokens_tat = models.FloatField(default=0.0)

    def __str__(self):
        return self.key


# --- Scheduling (batches/claims.py, batches/aimd.py, batches/runner/) ---------------------------


class UpstreamState(models.Model):
    """The adaptive in-flight limit of one upstream (one base URL of the MODELS
    routing table), shared by every dispatcher on every host: each claim locks
    this row, folds in what its calls saw (``batches/aimd.py``) and counts the
    live leases of the upstream's batches against ``concurrency_limit``.
    In flight now = live leases of batches whose ``upstream`` is ``base_url``."""

    base_url = models.CharField(max_length=255, unique=True)
    concurrency_limit = models.PositiveIntegerField(help_text="Requests in flight allowed now (AIMD, at most UPSTREAM_MAX_IN_FLIGHT).")
    latency_ms = models.FloatField(null=True, blank=True, help_text="Recent latency of successful calls.")
    baseline_latency_ms = models.FloatField(null=True, blank=True, help_text="The upstream's latency when not loaded.")
    successes_since_increase = models.PositiveIntegerField(default=0)
    last_decrease_at = models.FloatField(null=True, blank=True, help_text="Unix time of the last cut; empty while in slow start.")
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        verbose_name = "upstream"
        ordering = ["base_url"]

    def __str__(self):
        return self.base_url


class DispatcherSlot(models.Model):
    """One of the DISPATCHERS places for a running dispatcher, held under a lease
    (renewed every heartbeat), so a fixed number of django-q2 workers dispatch
    cluster-wide and the others stay free for validation, finalization and webhooks."""

    slot = models.PositiveSmallIntegerField(primary_key=True)
    owner = models.CharField(max_length=64, null=True, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["slot"]

    def __str__(self):
        return f"dispatcher {self.slot}"
