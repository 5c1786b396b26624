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

import hashlib

from django.conf import settings
from django.db import models
from django.utils import timezone

from files_app.ids import make_id
from files_app.models import File


def to_unix(value):
    return int(value.timestamp()) if value else None


def request_public_id(batch_id, line):
    """The ``id`` of a request's result line: stable across retries and re-finalization, without storing another column."""
    return f"batch_req_{hashlib.blake2b(f'{batch_id}:{line}'.encode(), digest_size=12).hexdigest()}"


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
    """A batch of one endpoint's requests from one input file; its life (statuses and the
    tasks that move it) is described at the top of this module."""

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
    prefix_key = models.BigIntegerField(
        default=0, help_text="Hash of how the prompt starts: pending rows are sent in (prefix_key, line) order."
    )
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
        # Claims read a batch's pending rows in this order (batches/prefixes.py); output reads use the unique (batch, line).
        indexes = [models.Index(fields=["batch", "status", "prefix_key", "line"])]

    def __str__(self):
        return f"{self.batch_id}#{self.line} ({self.custom_id})"

    @property
    def public_id(self):
        return request_public_id(self.batch_id, self.line)

    def to_output_line(self):
        """The JSONL record of this request in the output or error file."""
        response = None
        if self.status_code is not None:
            response = {"status_code": self.status_code, "request_id": self.upstream_request_id, "body": self.response_body}
        return {"id": self.public_id, "custom_id": self.custom_id, "response": response, "error": self.error}
