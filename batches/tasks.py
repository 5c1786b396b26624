"""django-q2 task entry points. Each is idempotent: django-q2 delivers at least
once (ORM broker) or at most once (Redis), and the sweeper re-enqueues anything
whose lease went stale, so running any of these twice is harmless."""

import logging
import secrets
from datetime import timedelta

from django.db.models import Q
from django.utils import timezone

from files_app.conf import app_settings
from files_app.models import File, Upload

from . import bulk, lifecycle, quotas, ratelimit, upstream, webhooks
from .models import Batch, BatchRequest, BatchStatus, RequestStatus
from .output import finalize_batch as _finalize_batch
from .queue import enqueue
from .runner import BatchRunner
from .validation import LineError, LineValidator

logger = logging.getLogger("openai_batches.tasks")

ROWS_PER_INSERT = 1000


def validate_batch(batch_id):
    owner = lifecycle.worker_id()
    if not lifecycle.acquire_batch_lease(batch_id, owner, [BatchStatus.VALIDATING]):
        return "skipped"
    try:
        outcome = InputValidation(batch_id, owner).run()
    finally:
        lifecycle.release_batch_lease(batch_id, owner)
    if outcome == "interrupted":
        _finalize_batch(batch_id)  # cancelled or expired while validating
    return outcome


def run_batch(batch_id):
    return BatchRunner(batch_id).run()


def finalize_batch(batch_id):
    return _finalize_batch(batch_id)


class InputValidation:
    """Streams the input file once: checks every line and stores it as a request row."""

    def __init__(self, batch_id, owner):
        self.batch = Batch.objects.get(pk=batch_id)
        self.owner = owner
        self.errors = []
        self.pending_rows = []
        self.rows_written = 0
        self.failed_rows = 0
        self.prompt_tokens = 0

    def run(self):
        batch = self.batch
        input_file = File.objects.live().filter(pk=batch.input_file_id, owner_id=batch.owner_id).first()
        if input_file is None:
            return self._fail(
                [
                    LineError(
                        "invalid_request", f"The input file {batch.input_file_id} does not exist or was deleted.", "input_file_id", None
                    )
                ]
            )
        if input_file.bytes > app_settings.MAX_INPUT_FILE_BYTES:
            limit_mb = app_settings.MAX_INPUT_FILE_BYTES // (1024 * 1024)
            return self._fail([LineError("file_too_large", f"The input file is larger than {limit_mb} MB.", "input_file_id", None)])
        # A previous attempt may have died half way: start over from a clean slate.
        BatchRequest.objects.filter(batch_id=batch.id).delete()

        validator = LineValidator(batch.endpoint)
        max_errors, max_requests = app_settings.MAX_VALIDATION_ERRORS, app_settings.MAX_REQUESTS_PER_BATCH
        requests = 0
        try:
            handle = input_file.content.open("rb")
        except OSError:
            return self._fail([LineError("invalid_request", f"The input file {input_file.id} could not be read.", "input_file_id", None)])
        with handle:
            for line_no, raw in enumerate(handle, start=1):
                raw = raw.rstrip(b"\r\n")
                if not raw.strip():
                    continue  # blank lines are skipped but still count for line numbers
                requests += 1
                if requests > max_requests:
                    self.errors.append(
                        LineError("too_many_requests", f"A batch may contain at most {max_requests} requests.", None, line_no)
                    )
                    break
                valid, line_errors = validator.check(line_no, raw)
                self.errors.extend(line_errors)
                if len(self.errors) >= max_errors:
                    del self.errors[max_errors:]
                    break
                if valid and not self.errors:
                    self._add_row(valid)
                if line_no % ROWS_PER_INSERT == 0 and not self._still_wanted():
                    return "interrupted"
        if requests == 0:
            return self._fail([LineError("empty_file", "The input file contains no requests.", "input_file_id", None)])
        if not self.errors:
            self.errors.extend(quotas.enqueued_problems(batch, requests, self.prompt_tokens))
        if not self.errors and validator.model:
            self.errors.extend(self._check_model(validator.model))
        if self.errors:
            return self._fail(self.errors)
        self._write_rows()
        if not lifecycle.start_processing(
            batch.id,
            total=self.rows_written,
            model=validator.model,
            failed_requests=self.failed_rows,
            estimated_prompt_tokens=self.prompt_tokens,
        ):
            return "interrupted"
        logger.info("batch.validated batch_id=%s requests=%d rejected_locally=%d", batch.id, self.rows_written, self.failed_rows)
        return "in_progress"

    def _add_row(self, valid):
        row = BatchRequest(batch_id=self.batch.id, line=valid.line, custom_id=valid.custom_id, body=valid.body)
        self.prompt_tokens += ratelimit.estimate_prompt_tokens(valid.body)
        if valid.problem:
            # Breaks the endpoint's schema: answered here as OpenAI would, never sent upstream.
            err = valid.problem["error"]
            row.status, row.status_code, row.response_body = RequestStatus.FAILED, 400, valid.problem
            row.error, row.finished_at = {"code": err["code"], "message": err["message"]}, timezone.now()
            row.upstream_request_id = f"req_{secrets.token_hex(16)}"  # answered here, so the id is ours
            self.failed_rows += 1
        self.pending_rows.append(row)
        if len(self.pending_rows) >= ROWS_PER_INSERT:
            self._write_rows()

    def _write_rows(self):
        if self.pending_rows:
            bulk.insert_each(self.pending_rows)
            self.rows_written += len(self.pending_rows)
            self.pending_rows = []

    def _still_wanted(self):
        """Renew the lease; False once the batch was cancelled or expired meanwhile."""
        if lifecycle.expire_if_due(self.batch.id):
            return False
        return lifecycle.acquire_batch_lease(self.batch.id, self.owner, [BatchStatus.VALIDATING])

    def _check_model(self, model):
        served, problem = upstream.served_models([model])
        if problem:
            return [LineError("upstream_unavailable", problem, None, None)]
        if model not in served:
            return [LineError("model_not_found", f"The model '{model}' does not exist or is not served here.", "body.model", None)]
        return []

    def _fail(self, errors):
        BatchRequest.objects.filter(batch_id=self.batch.id).delete()
        data = [e.as_dict() for e in errors]
        if lifecycle.fail_validation(self.batch.id, data):
            logger.info("batch.validation_failed batch_id=%s errors=%d first_code=%s", self.batch.id, len(data), data[0]["code"])
            return "failed"
        return "interrupted"


def sweep():
    """Scheduled every minute (and at worker start): recover everything a dead
    worker or a lost broker message left behind."""
    now = timezone.now()
    stale = now - timedelta(seconds=app_settings.LEASE_SECONDS)
    found = {"expired": 0, "validate": 0, "run": 0, "finalize": 0, "files": 0, "uploads": 0}
    for batch_id in Batch.objects.filter(status__in=[BatchStatus.VALIDATING, BatchStatus.IN_PROGRESS], expires_at__lte=now).values_list(
        "pk", flat=True
    ):
        found["expired"] += lifecycle.expire_if_due(batch_id, now)
    lease_free = Q(lease_owner__isnull=True) | Q(lease_expires_at__lte=now)
    for batch_id in Batch.objects.filter(lease_free, status=BatchStatus.VALIDATING, created_at__lte=stale).values_list("pk", flat=True):
        enqueue("validate_batch", batch_id)
        found["validate"] += 1
    slot_free = Q(slot_expires_at__isnull=True) | Q(slot_expires_at__lte=now)
    waiting_for_slot = Batch.objects.filter(slot_free, status=BatchStatus.IN_PROGRESS, in_progress_at__lte=stale).order_by("created_at")
    for batch_id in waiting_for_slot.values_list("pk", flat=True)[: app_settings.MAX_CONCURRENT_BATCHES]:
        enqueue("run_batch", batch_id)
        found["run"] += 1
    for batch_id in Batch.objects.filter(lease_free, status__in=[BatchStatus.FINALIZING, BatchStatus.CANCELLING]).values_list(
        "pk", flat=True
    ):
        if not BatchRequest.objects.filter(batch_id=batch_id).live_leases(now).exists():
            enqueue("finalize_batch", batch_id)
            found["finalize"] += 1
    for expired_file in File.objects.filter(expires_at__lte=now).iterator():
        expired_file.delete()
        found["files"] += 1
    found["uploads"] = Upload.objects.expire_lapsed(now)
    found["webhooks"] = webhooks.sweep_deliveries(now)
    if any(found.values()):
        logger.info("sweep %s", " ".join(f"{k}={v}" for k, v in found.items()))
    return found


def sweep_after_worker_start():
    """A worker (re)started, maybe right after its cluster was killed. The dead
    runners' slots and leases look alive for up to LEASE_SECONDS, so ``sweep``
    alone would leave their batches to a later round: give every running batch a
    runner now. It takes the rows over as their leases lapse, and steps aside
    where live runners already serve the batch (``BatchRunner._outnumbered``)."""
    found = sweep()
    for batch_id in Batch.objects.filter(status=BatchStatus.IN_PROGRESS, slot_expires_at__gt=timezone.now()).values_list("pk", flat=True):
        enqueue("run_batch", batch_id)
        found["run"] += 1
    return found
