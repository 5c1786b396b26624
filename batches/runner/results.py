"""Writing a runner's request outcomes back, in bulk, guarded by its leases."""

import random
from datetime import timedelta

from django.db import InterfaceError, OperationalError, transaction
from django.db.models import F
from django.utils import timezone

from .. import bulk
from ..conf import app_settings
from ..models import Batch, BatchRequest, RequestStatus

RESULT_FIELDS = ["status", "status_code", "upstream_request_id", "response_body", "error", "lease_owner", "lease_expires_at", "finished_at"]


def backoff_delay(attempt, retry_after=None):
    """Exponential backoff with full jitter; an upstream's Retry-After wins when longer."""
    ceiling = min(app_settings.RETRY_BACKOFF_MAX, app_settings.RETRY_BACKOFF_BASE * 2 ** max(0, attempt - 1))
    delay = random.uniform(ceiling / 2, ceiling)
    if retry_after is not None:
        delay = max(delay, min(retry_after, app_settings.RETRY_BACKOFF_MAX * 5))
    return delay


class ResultWriter:
    """Buffers one runner's outcomes and writes them where its lease still holds.

    A row whose lease another runner took over, or that finalization ended
    meanwhile, keeps what it has: the outcome is discarded.
    """

    def __init__(self, batch_id, owner, max_attempts):
        self.batch_id = batch_id
        self.owner = owner
        self.max_attempts = max_attempts
        self.buffered = []  # (pk, attempts, upstream.Outcome, refund)
        self.stats = {"succeeded": 0, "failed": 0, "retried": 0}

    def __len__(self):
        return len(self.buffered)

    def add(self, pk, attempts, outcome, refund=False):
        """Buffer the outcome of attempt ``attempts`` of row ``pk``; ``refund``: a retry costs no attempt."""
        self.buffered.append((pk, attempts, outcome, refund))

    def flush(self):
        """Write buffered outcomes in bulk, only where our lease still holds.

        On a database error the outcomes stay buffered for the next attempt."""
        if not self.buffered:
            return
        buffered, self.buffered = self.buffered, []
        now = timezone.now()
        succeeded, failed, retry = [], [], []
        for pk, attempts, outcome, refund in buffered:
            row = BatchRequest(pk=pk, lease_owner=None, lease_expires_at=None, finished_at=now)
            row.status_code, row.upstream_request_id = outcome.status_code, outcome.request_id
            row.response_body, row.error = outcome.body, outcome.error
            if outcome.kind == "retry" and (refund or attempts < self.max_attempts):
                row.status, row.finished_at = RequestStatus.PENDING, None
                row.attempts = attempts - 1 if refund else attempts
                row.not_before = now + timedelta(seconds=backoff_delay(attempts, outcome.retry_after))
                retry.append(row)
            elif outcome.kind == "succeeded":
                row.status, row.error = RequestStatus.SUCCEEDED, None
                succeeded.append(row)
            else:
                row.status = RequestStatus.FAILED
                if outcome.status_code is None:  # never got an answer: only the error is known
                    row.response_body = None
                failed.append(row)
        lease = {"batch_id": self.batch_id, "lease_owner": self.owner, "status": RequestStatus.RUNNING}
        try:
            with transaction.atomic():
                bulk.relax_commit()
                done_ok = bulk.update_each(succeeded, RESULT_FIELDS, **lease)
                done_failed = bulk.update_each(failed, RESULT_FIELDS, **lease)
                bulk.update_each(retry, RESULT_FIELDS + ["attempts", "not_before"], **lease)
                if done_ok or done_failed:
                    Batch.objects.filter(pk=self.batch_id).update(
                        completed_requests=F("completed_requests") + done_ok, failed_requests=F("failed_requests") + done_failed
                    )
        except (OperationalError, InterfaceError):
            self.buffered = buffered + self.buffered
            raise
        self.stats["succeeded"] += done_ok
        self.stats["failed"] += done_failed
        self.stats["retried"] += len(retry)
