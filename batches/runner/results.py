"""Writing a dispatcher's request outcomes back, in bulk, guarded by its leases."""

import collections
import random
from datetime import timedelta

from django.db import InterfaceError, OperationalError, connections, router, transaction
from django.db.models import F
from django.utils import timezone

from .. import bulk, usage
from ..conf import app_settings
from ..models import Batch, BatchRequest, RequestStatus

RESULT_FIELDS = ["status", "status_code", "upstream_request_id", "response_body", "error", "lease_owner", "lease_expires_at", "finished_at"]
# What usage.record reads of a row the write finishes.
FinishedRow = collections.namedtuple("FinishedRow", "pk status status_code response_body finished_at")
# After back-pressure without a Retry-After (the upstream is full), a line waits about this long.
BACKPRESSURE_DELAY_SECONDS = (0.05, 0.25)


def backoff_delay(attempt, retry_after=None):
    """Exponential backoff with full jitter; an upstream's Retry-After wins when longer."""
    ceiling = min(app_settings.RETRY_BACKOFF_MAX, app_settings.RETRY_BACKOFF_BASE * 2 ** max(0, attempt - 1))
    delay = random.uniform(ceiling / 2, ceiling)
    if retry_after is not None:
        delay = max(delay, min(retry_after, app_settings.RETRY_BACKOFF_MAX * 5))
    return delay


def backpressure_delay(retry_after=None):
    """How long a line answered with back-pressure waits: the upstream's Retry-After, else a moment."""
    if retry_after is not None:
        return min(retry_after, app_settings.RETRY_BACKOFF_MAX * 5)
    return random.uniform(*BACKPRESSURE_DELAY_SECONDS)


class ResultWriter:
    """Buffers a dispatcher's outcomes (rows of any batch) and writes them where its lease still holds.

    A row whose lease another dispatcher took over, or that finalization ended
    meanwhile, keeps what it has: the outcome is discarded.
    """

    def __init__(self, owner, max_attempts):
        self.owner = owner
        self.max_attempts = max_attempts
        self.buffered = []  # (pk, batch_id, attempts, upstream.Outcome, refund, backpressure)
        self.stats = {"succeeded": 0, "failed": 0, "retried": 0, "backpressure": 0}

    def __len__(self):
        return len(self.buffered)

    def add(self, pk, batch_id, attempts, outcome, *, refund=False, backpressure=False):
        """Buffer the outcome of attempt ``attempts`` of row ``pk``.

        ``refund``: a retry costs no attempt (the circuit breaker was open).
        ``backpressure``: the upstream was full (429/503): the line goes back to
        pending without using an attempt and waits only briefly, never fails."""
        self.buffered.append((pk, batch_id, attempts, outcome, refund, backpressure))

    def unflushed(self):
        """``{batch_id: rows}`` answered but not written: still leased, no longer in flight."""
        return collections.Counter(batch_id for _, batch_id, *_ in self.buffered)

    def flush(self):
        """Write buffered outcomes in bulk, only where our lease still holds.

        Returns ``{batch_id: lines finished}``. On a database error the outcomes
        stay buffered for the next attempt."""
        if not self.buffered:
            return {}
        buffered, self.buffered = self.buffered, []
        now = timezone.now()
        connection = connections[router.db_for_write(BatchRequest)]
        json_field = BatchRequest._meta.get_field("response_body")
        at = connection.ops.adapt_datetimefield_value(now)
        # Per batch, so its counters move by exactly the rows whose lease still held.
        by_batch = collections.defaultdict(lambda: ([], [], [], []))  # succeeded, failed: (pk, values); their FinishedRows
        retry, batch_of = [], {}
        for pk, batch_id, attempts, outcome, refund, backpressure in buffered:
            batch_of[pk] = batch_id
            body = outcome.body
            if outcome.body_text is not None:
                stored_body = bulk.json_text(outcome.body_text, connection)
            else:
                stored_body = json_field.get_db_prep_save(body, connection)
            error = json_field.get_db_prep_save(outcome.error, connection)
            if outcome.kind == "retry" and (refund or backpressure or attempts < self.max_attempts):
                delay = backpressure_delay(outcome.retry_after) if backpressure else backoff_delay(attempts, outcome.retry_after)
                not_before = connection.ops.adapt_datetimefield_value(now + timedelta(seconds=delay))
                values = [RequestStatus.PENDING, outcome.status_code, outcome.request_id, stored_body, error, None, None, None]
                retry.append((pk, [*values, attempts - 1 if refund or backpressure else attempts, not_before]))
                continue
            if outcome.kind == "succeeded":
                status, error, index = RequestStatus.SUCCEEDED, None, 0
            else:
                status, index = RequestStatus.FAILED, 1
                if outcome.status_code is None:  # never got an answer: only the error is known
                    body = stored_body = None
            rows = by_batch[batch_id]
            rows[index].append((pk, [status, outcome.status_code, outcome.request_id, stored_body, error, None, None, at]))
            rows[index + 2].append(FinishedRow(pk, status, outcome.status_code, body, now))
        lease = {"lease_owner": self.owner, "status": RequestStatus.RUNNING}
        finished = {}
        try:
            with transaction.atomic():
                bulk.relax_commit()
                for batch_id, (succeeded, failed, _, _) in sorted(by_batch.items()):
                    done_ok = bulk.update_rows(BatchRequest, RESULT_FIELDS, succeeded, **lease)
                    done_failed = bulk.update_rows(BatchRequest, RESULT_FIELDS, failed, **lease)
                    if done_ok or done_failed:
                        Batch.objects.filter(pk=batch_id).update(
                            completed_requests=F("completed_requests") + done_ok, failed_requests=F("failed_requests") + done_failed
                        )
                        finished[batch_id] = (done_ok, done_failed)
                bulk.update_rows(BatchRequest, RESULT_FIELDS + ["attempts", "not_before"], retry, **lease)
                finished_rows = [row for rows in by_batch.values() for row in rows[2] + rows[3]]
                usage.record(batch_of, finished_rows, [(entry[1], entry[3]) for entry in buffered], finished)
        except (OperationalError, InterfaceError):
            self.buffered = buffered + self.buffered
            raise
        for done_ok, done_failed in finished.values():
            self.stats["succeeded"] += done_ok
            self.stats["failed"] += done_failed
        self.stats["retried"] += len(retry)
        self.stats["backpressure"] += sum(1 for entry in buffered if entry[5])
        return {batch_id: ok + bad for batch_id, (ok, bad) in finished.items()}
