"""Finalization: turning a batch's rows into its output and error files."""

import functools
import json
import logging
import tempfile
from datetime import timedelta

from django.core.files import File as DjangoFile
from django.db import transaction
from django.db.models import TextField
from django.db.models.functions import Cast
from django.utils import timezone

from files_app.models import File, FilePurpose

from . import lifecycle
from .conf import app_settings
from .field_rules import is_int
from .models import Batch, BatchRequest, BatchStatus, RequestStatus, request_public_id

logger = logging.getLogger("openai_batches.output")

# OpenAI's messages for requests that never ran.
UNFINISHED_ERRORS = {
    BatchStatus.CANCELLED: {"code": "batch_cancelled", "message": "This request was cancelled because the batch was cancelled."},
    BatchStatus.EXPIRED: {
        "code": "batch_expired",
        "message": "This request could not be executed before the completion window expired.",
    },
}
UNFINISHED_ROW_STATUS = {BatchStatus.CANCELLED: RequestStatus.CANCELLED, BatchStatus.EXPIRED: RequestStatus.EXPIRED}
SPOOL_BYTES = 1024 * 1024
_dumps = functools.partial(json.dumps, ensure_ascii=False, separators=(",", ":"))


def result_rows(rows):
    """``rows`` (BatchRequests) as ``result_line`` takes them: the columns of a result line,
    the response body as its stored JSON text (no model instance, no decoding)."""
    body = Cast("response_body", output_field=TextField())
    return rows.values_list("batch_id", "line", "custom_id", "status", "status_code", "upstream_request_id", body, "error")


def result_line(row):
    """One request's line of the output or error file, as bytes (``BatchRequest.to_output_line``
    with the stored body spliced in as it is); also what ``GET /v1/batches/{id}/results`` streams."""
    batch_id, line, custom_id, _, status_code, request_id, body_text, error = row
    response = "null"
    if status_code is not None:
        response = f'{{"status_code":{status_code},"request_id":{_dumps(request_id)},"body":{body_text or "null"}}}'
    public_id = request_public_id(batch_id, line)
    return f'{{"id":"{public_id}","custom_id":{_dumps(custom_id)},"response":{response},"error":{_dumps(error)}}}\n'.encode()


class UsageTotals:
    """Sums token usage across response bodies of any endpoint."""

    def __init__(self):
        self.input = self.output = self.cached = self.reasoning = 0

    def add(self, body):
        usage = body.get("usage") if isinstance(body, dict) else None
        if not isinstance(usage, dict):
            return
        self.input += _int(usage.get("input_tokens", usage.get("prompt_tokens")))
        self.output += _int(usage.get("output_tokens", usage.get("completion_tokens")))
        input_details = usage.get("input_tokens_details") or usage.get("prompt_tokens_details") or {}
        output_details = usage.get("output_tokens_details") or usage.get("completion_tokens_details") or {}
        self.cached += _int(input_details.get("cached_tokens")) if isinstance(input_details, dict) else 0
        self.reasoning += _int(output_details.get("reasoning_tokens")) if isinstance(output_details, dict) else 0

    def as_openai(self):
        return {
            "input_tokens": self.input,
            "input_tokens_details": {"cached_tokens": self.cached},
            "output_tokens": self.output,
            "output_tokens_details": {"reasoning_tokens": self.reasoning},
            "total_tokens": self.input + self.output,
        }


def _int(value):
    return value if is_int(value) else 0


def final_status_for(batch, has_unfinished, now):
    if batch.status == BatchStatus.CANCELLING:
        return BatchStatus.CANCELLED
    expired = batch.expires_at is not None and now >= batch.expires_at
    return BatchStatus.EXPIRED if (has_unfinished or (expired and batch.in_progress_at is None)) else BatchStatus.COMPLETED


def finalize_batch(batch_id, *, force=False):
    """Write output/error files and end the batch. Idempotent; safe to call from anywhere.

    Does nothing while a dispatcher still holds live leases on the batch's rows (calls
    in flight draining after a cancel or expiry): it queues the finalization when they
    are done. ``force`` (the admin's force-finish) does not wait: rows still in flight
    end as unfinished, and their dispatcher's late results are discarded (its leases
    no longer hold).
    """
    batch = Batch.objects.filter(pk=batch_id).first()
    if batch is None or batch.status not in (BatchStatus.FINALIZING, BatchStatus.CANCELLING):
        return False
    if not force and BatchRequest.objects.filter(batch_id=batch_id).live_leases().exists():
        return False
    owner = lifecycle.worker_id()
    if not lifecycle.acquire_batch_lease(batch_id, owner, [BatchStatus.FINALIZING, BatchStatus.CANCELLING]):
        return False
    try:
        return _finalize(batch_id, owner)
    finally:
        lifecycle.release_batch_lease(batch_id, owner)


def _finalize(batch_id, owner):
    batch = Batch.objects.get(pk=batch_id)
    now = timezone.now()
    rows = BatchRequest.objects.filter(batch_id=batch_id)
    has_unfinished = rows.unfinished().exists()
    final_status = final_status_for(batch, has_unfinished, now)
    if has_unfinished:
        rows.unfinished().update(
            status=UNFINISHED_ROW_STATUS[final_status],
            error=UNFINISHED_ERRORS[final_status],
            status_code=None,
            response_body=None,
            lease_owner=None,
            lease_expires_at=None,
            finished_at=now,
        )

    usage = UsageTotals()
    counts = {"succeeded": 0, "failed": 0}
    with tempfile.SpooledTemporaryFile(SPOOL_BYTES) as out, tempfile.SpooledTemporaryFile(SPOOL_BYTES) as err:
        for row in result_rows(rows.order_by("line")).iterator(chunk_size=2000):
            _, _, _, status, status_code, _, body_text, _ = row
            if status_code is not None and body_text:
                usage.add(json.loads(body_text))
            if status == RequestStatus.SUCCEEDED:
                counts["succeeded"] += 1
                out.write(result_line(row))
            else:
                counts["failed"] += 1
                err.write(result_line(row))
        output_file = _store(batch, out, "output", counts["succeeded"], now)
        error_file = _store(batch, err, "error", counts["failed"], now)

    with transaction.atomic():
        ended = lifecycle.transition(
            batch_id,
            [BatchStatus.FINALIZING, BatchStatus.CANCELLING],
            final_status,
            output_file=output_file,
            error_file=error_file,
            total_requests=counts["succeeded"] + counts["failed"],
            completed_requests=counts["succeeded"],
            failed_requests=counts["failed"],
            usage=usage.as_openai() if counts["succeeded"] + counts["failed"] else None,
            lease_owner=None,
            lease_expires_at=None,
        )
    if not ended:  # someone else finished it meanwhile: ours are spare copies
        for spare in (output_file, error_file):
            if spare is not None:
                spare.delete()
        return False
    logger.info(
        "batch.finalized batch_id=%s status=%s completed=%d failed=%d", batch_id, final_status, counts["succeeded"], counts["failed"]
    )
    return True


def _store(batch, handle, kind, line_count, now):
    """Save one result file through the storage API; None when it would be empty."""
    if not line_count:
        return None
    size = handle.tell()
    handle.seek(0)
    # The batch's output_expires_after, else OpenAI's default retention (None keeps the file).
    seconds = batch.output_expires_after or app_settings.DEFAULT_OUTPUT_FILE_TTL
    expires_at = now + timedelta(seconds=seconds) if seconds else None
    obj = File(
        owner_id=batch.owner_id,
        filename=f"{batch.id}_{kind}.jsonl",
        purpose=FilePurpose.BATCH_OUTPUT,
        bytes=size,
        created_at=now,
        expires_at=expires_at,
    )
    obj.content.save(obj.filename, DjangoFile(handle), save=False)
    obj.save()
    return obj
