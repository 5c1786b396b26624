"""The validation phase of a batch (the ``validate_batch`` task): the input file
is streamed once, every line checked (``validation.LineValidator``) and stored as
a request row, then the batch moves to ``in_progress`` or ``failed``.

A validation task first validates the waiting batches that go before its own,
smallest input first (``take_next``): django-q2 runs tasks in the order they were
queued, so a 10-line batch queued behind five large ones would otherwise wait for
all five on the worker that is not dispatching."""

import logging
import secrets
from datetime import timedelta

from django.db import connections, router
from django.db.models import BigIntegerField, Case, OuterRef, Q, Subquery, Value, When
from django.db.models.functions import Coalesce
from django.utils import timezone

from files_app.models import File

from . import bulk, lifecycle, prefixes, quotas, ratelimit, upstream
from .conf import app_settings
from .models import Batch, BatchRequest, BatchStatus, RequestStatus
from .validation import LineError, LineValidator

logger = logging.getLogger("openai_batches.tasks")

ROWS_PER_INSERT = 1000
# The columns validation writes (the others start NULL).
ROW_FIELDS = (
    "batch",
    "line",
    "custom_id",
    "body",
    "status",
    "attempts",
    "status_code",
    "response_body",
    "error",
    "upstream_request_id",
    "finished_at",
    "prefix_key",
)

# A batch waiting this long goes first whatever its size: small files keep coming cannot hold a large one back.
VALIDATION_AGING_SECONDS = 30
# Candidates looked at per pick: the rest are leased by other workers or wait for later picks.
TAKE_CANDIDATES = 10


def take_next(owner, queued_for):
    """Lease the next batch the task queued for ``queued_for`` validates, or None once that
    batch is no longer waiting (validated, or leased by another worker).

    Waiting batches go smallest input file first (``queued_for`` first among equals),
    those waiting longer than VALIDATION_AGING_SECONDS before all others, oldest first.
    A task validates the batches that go before its own, then its own: a small batch
    queued last is validated by the next task that starts, and no batch depends on
    another batch's task (a lost task's batch is picked up by the next one, or the sweeper)."""
    now = timezone.now()
    waiting = Batch.objects.filter(Q(lease_owner__isnull=True) | Q(lease_expires_at__lte=now), status=BatchStatus.VALIDATING)
    aged = now - timedelta(seconds=VALIDATION_AGING_SECONDS)
    file_bytes = File.objects.filter(pk=OuterRef("input_file_id")).values("bytes")[:1]
    order = waiting.annotate(
        aged=Case(When(created_at__lte=aged, then=Value(0)), default=Value(1)),
        own=Case(When(pk=queued_for, then=Value(0)), default=Value(1)),
        # A subquery, not a join: a batch whose file is gone must still be taken (to fail).
        size=Case(When(created_at__lte=aged, then=Value(0)), default=Coalesce(Subquery(file_bytes), 0), output_field=BigIntegerField()),
    ).order_by("aged", "size", "own", "created_at")
    candidates = list(order.values_list("pk", flat=True)[:TAKE_CANDIDATES])
    if queued_for in candidates:
        candidates = candidates[: candidates.index(queued_for) + 1]
    elif waiting.filter(pk=queued_for).exists():
        candidates.append(queued_for)  # far down the order: a few of those before it first
    else:
        return None
    for batch_id in candidates:
        if lifecycle.acquire_batch_lease(batch_id, owner, [BatchStatus.VALIDATING]):
            return batch_id
    return None


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
        self.connection = connections[router.db_for_write(BatchRequest)]
        self.json_field = BatchRequest._meta.get_field("body")

    def run(self):
        batch = self.batch
        input_file = File.objects.live().filter(pk=batch.input_file_id, owner_id=batch.owner_id).first()
        if input_file is None:
            # OpenAI's wording; the same whether the file never existed, was deleted or is another owner's.
            message = f"Cannot find file {batch.input_file_id}, or organization {batch.owner.get_username()} does not have access to it."
            return self._fail([LineError("invalid_request", message, "input_file_id", None)])
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
        if not self.errors:
            self.errors.extend(self._check_upstream(validator.model))
        if not self.errors and validator.model:
            self.errors.extend(self._check_model(validator.model, validator.model_line))
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
        """Buffer ``valid`` as a row of ``ROW_FIELDS`` values (as the database takes them)."""
        self.prompt_tokens += ratelimit.estimate_prompt_tokens(valid.body)
        body = self.json_field.get_db_prep_save(valid.body, self.connection)
        prefix_key = prefixes.prefix_key(self.batch.endpoint, valid.body)
        row = [self.batch.id, valid.line, valid.custom_id, body, RequestStatus.PENDING, 0, None, None, None, "", None, prefix_key]
        if valid.problem:
            # Breaks the endpoint's schema: answered here as OpenAI would, never sent upstream.
            err = valid.problem["error"]
            row[4:11] = [
                RequestStatus.FAILED,
                0,
                400,
                self.json_field.get_db_prep_save(valid.problem, self.connection),
                self.json_field.get_db_prep_save({"code": err["code"], "message": err["message"]}, self.connection),
                f"req_{secrets.token_hex(16)}",  # answered here, so the id is ours
                self.connection.ops.adapt_datetimefield_value(timezone.now()),
            ]
            self.failed_rows += 1
        self.pending_rows.append(row)
        if len(self.pending_rows) >= ROWS_PER_INSERT:
            self._write_rows()

    def _write_rows(self):
        if self.pending_rows:
            bulk.insert_rows(BatchRequest, ROW_FIELDS, self.pending_rows)
            self.rows_written += len(self.pending_rows)
            self.pending_rows = []

    def _still_wanted(self):
        """Renew the lease; False once the batch was cancelled or expired meanwhile."""
        if lifecycle.expire_if_due(self.batch.id):
            return False
        return lifecycle.acquire_batch_lease(self.batch.id, self.owner, [BatchStatus.VALIDATING])

    def _check_upstream(self, model):
        """Fail now, not in every run task, when no upstream would take this batch's requests."""
        try:
            upstream.route_for(model, self.batch.endpoint)
        except upstream.UpstreamNotConfigured:
            where = "OPENAI_BATCHES['UPSTREAM_BASE_URL']" + (f" (or a base_url for '{model}' in OPENAI_BATCHES['MODELS'])" if model else "")
            return [LineError("upstream_not_configured", f"No upstream is configured for this batch: set {where}.", None, None)]
        return []

    def _check_model(self, model, line_no):
        served, problem = upstream.served_models([model])
        if problem:
            return [LineError("upstream_unavailable", problem, None, None)]
        if model not in served:
            # OpenAI's wording, on the first line that names the model.
            return [LineError("model_not_found", f"The provided model '{model}' is not supported by the Batch API.", "body.model", line_no)]
        return []

    def _fail(self, errors):
        BatchRequest.objects.filter(batch_id=self.batch.id).delete()
        data = [e.as_dict() for e in errors]
        if lifecycle.fail_validation(self.batch.id, data):
            logger.info("batch.validation_failed batch_id=%s errors=%d first_code=%s", self.batch.id, len(data), data[0]["code"])
            return "failed"
        return "interrupted"
