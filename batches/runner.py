"""Running a batch's requests against the upstream.

A ``BatchRunner`` is one ``run_batch`` task. Its thread owns the database: it
claims pending rows under a lease, hands them to an asyncio event loop (in a
helper thread) that keeps up to MAX_CONCURRENT_REQUESTS_PER_BATCH upstream
calls in flight as a sliding window, and writes outcomes back in bulk, guarded
by the lease. Between rounds it renews its leases and re-reads the batch
status, so cancel and expiry take effect within about a second.

Several runners (on any hosts) can share one batch: the per-batch limit counts
every live lease of the batch, whoever holds it.
"""

import asyncio
import logging
import queue
import random
import threading
import time
from datetime import timedelta

from django.db import transaction
from django.db.models import F
from django.utils import timezone

from files_app.conf import app_settings

from . import lifecycle, upstream
from .models import Batch, BatchRequest, BatchStatus, RequestStatus
from .output import finalize_batch
from .queue import enqueue

logger = logging.getLogger("openai_batches.runner")

FLUSH_EVERY_SECONDS = 0.1
FLUSH_EVERY_RESULTS = 64
STATUS_CHECK_SECONDS = 1.0
# How long in-flight requests may finish after a cancel or expiry before being abandoned.
STOP_GRACE_SECONDS = 5.0


def backoff_delay(attempt, retry_after=None):
    """Exponential backoff with full jitter; an upstream's Retry-After wins when longer."""
    ceiling = min(app_settings.RETRY_BACKOFF_MAX, app_settings.RETRY_BACKOFF_BASE * 2 ** max(0, attempt - 1))
    delay = random.uniform(ceiling / 2, ceiling)
    if retry_after is not None:
        delay = max(delay, min(retry_after, app_settings.RETRY_BACKOFF_MAX * 5))
    return delay


class CircuitBreaker:
    """Pauses the whole batch while the upstream looks down, instead of burning
    every line's attempts at full speed. Failures seen while it trips don't cost
    the request an attempt."""

    def __init__(self):
        self.consecutive_failures = 0
        self.open_until = 0.0
        self.trips = 0
        self.probing = False

    @property
    def is_open(self):
        return time.monotonic() < self.open_until

    def allowed_claims(self, wanted):
        if self.is_open:
            return 0
        if self.trips and self.consecutive_failures >= app_settings.CIRCUIT_BREAKER_THRESHOLD:
            # Half-open: one probe request decides whether to close.
            if self.probing:
                return 0
            self.probing = True
            return min(1, wanted)
        return wanted

    def record(self, outcome):
        """Return True when this failure should not count as an attempt."""
        transient = outcome.kind == "retry" and (outcome.connection_error or (outcome.status_code or 0) >= 500)
        if not transient:
            if self.trips:
                logger.info("runner.breaker_closed after_trips=%d", self.trips)
            self.consecutive_failures, self.trips, self.probing = 0, 0, False
            return False
        self.consecutive_failures += 1
        self.probing = False
        if self.consecutive_failures >= app_settings.CIRCUIT_BREAKER_THRESHOLD:
            if not self.is_open:
                cooldown = min(app_settings.RETRY_BACKOFF_MAX, app_settings.RETRY_BACKOFF_BASE * 2**self.trips)
                self.trips += 1
                self.open_until = time.monotonic() + cooldown
                logger.warning("runner.breaker_open cooldown_s=%.1f trips=%d", cooldown, self.trips)
            return True
        return False


class EventLoopThread:
    """An asyncio loop in a daemon thread, for the upstream calls."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="batch-upstream", daemon=True)
        self.thread.start()

    def submit(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def stop(self):
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


class BatchRunner:
    def __init__(self, batch_id):
        self.batch_id = batch_id
        self.owner = lifecycle.worker_id()
        self.window = app_settings.MAX_CONCURRENT_REQUESTS_PER_BATCH
        self.lease = timedelta(seconds=app_settings.LEASE_SECONDS)
        self.max_attempts = app_settings.MAX_ATTEMPTS
        self.in_flight = {}  # row pk -> (attempts, concurrent future)
        self.done = queue.SimpleQueue()  # (pk, attempts, Outcome) from the loop thread
        self.results = []
        self.breaker = CircuitBreaker()
        self.stats = {"sent": 0, "succeeded": 0, "failed": 0, "retried": 0}

    # --- entry point -----------------------------------------------------------

    def run(self):
        batch = Batch.objects.filter(pk=self.batch_id).only("status", "endpoint", "model", "expires_at").first()
        if batch is None or batch.status != BatchStatus.IN_PROGRESS:
            return "not_running"
        if lifecycle.expire_if_due(self.batch_id):
            return "expired"
        if not lifecycle.acquire_slot(self.batch_id):
            logger.info("runner.waiting_for_slot batch_id=%s", self.batch_id)
            return "no_slot"
        self.endpoint = batch.endpoint
        self.loop = EventLoopThread()
        self.client = upstream.async_client(upstream.route_for(batch.model), max_connections=self.window)
        logger.info("runner.started batch_id=%s owner=%s window=%d", self.batch_id, self.owner, self.window)
        try:
            outcome = self._loop()
        finally:
            self._abandon_in_flight()
            self._flush()
            self.loop.submit(self.client.close()).result(timeout=10)
            self.loop.stop()
        logger.info("runner.stopped batch_id=%s owner=%s outcome=%s %s", self.batch_id, self.owner, outcome,
                    " ".join(f"{k}={v}" for k, v in self.stats.items()))
        self._after(outcome)
        return outcome

    def _after(self, outcome):
        if outcome == "slice_over":
            lifecycle.release_slot(self.batch_id)
            enqueue("run_batch", self.batch_id)
        elif outcome == "all_done":
            if lifecycle.transition(self.batch_id, [BatchStatus.IN_PROGRESS], BatchStatus.FINALIZING):
                lifecycle.release_slot(self.batch_id)
                finalize_batch(self.batch_id)
        elif outcome == "stopped":
            lifecycle.release_slot(self.batch_id)
            finalize_batch(self.batch_id)
        elif outcome == "lost_slot":
            enqueue("run_batch", self.batch_id)
        # "others_running": the last runner to finish finalizes.

    # --- the work loop -------------------------------------------------------------

    def _loop(self):
        deadline = time.monotonic() + app_settings.RUN_SLICE_SECONDS
        heartbeat_every = max(0.5, app_settings.LEASE_SECONDS / 4)
        next_heartbeat = time.monotonic() + heartbeat_every
        next_status_check = time.monotonic() + STATUS_CHECK_SECONDS
        last_flush = time.monotonic()
        stop_reason = None
        stop_deadline = None
        while True:
            self._collect(timeout=0.02 if self.in_flight else 0)
            now = time.monotonic()
            if self.results and (len(self.results) >= FLUSH_EVERY_RESULTS or now - last_flush >= FLUSH_EVERY_SECONDS or not self.in_flight):
                self._flush()
                last_flush = now
            if now >= next_status_check:
                next_status_check = now + STATUS_CHECK_SECONDS
                if stop_reason is None:
                    stop_reason = self._should_stop()
                    if stop_reason:
                        stop_deadline = now + STOP_GRACE_SECONDS
                        logger.info("runner.stopping batch_id=%s reason=%s in_flight=%d", self.batch_id, stop_reason, len(self.in_flight))
            if now >= next_heartbeat:
                next_heartbeat = now + heartbeat_every
                if not self._heartbeat() and stop_reason is None:
                    stop_reason, stop_deadline = "lost_slot", now + STOP_GRACE_SECONDS
            if stop_reason is None and now >= deadline:
                stop_reason, stop_deadline = "slice_over", now + app_settings.UPSTREAM_TIMEOUT
            if stop_reason:
                if not self.in_flight or now >= stop_deadline:
                    return {"slice_over": "slice_over", "lost_slot": "lost_slot"}.get(stop_reason, "stopped")
                continue
            free = self.window - len(self.in_flight)
            # Claim in small groups so one slow request never holds the window back.
            if free >= min(8, self.window) or (free and not self.in_flight):
                wanted = self.breaker.allowed_claims(free)
                if wanted and self._claim_and_send(wanted):
                    continue
            if self.in_flight:
                continue
            if self.breaker.is_open:
                time.sleep(min(0.2, max(0.0, self.breaker.open_until - time.monotonic())))
                continue
            self._flush()
            decision = self._nothing_claimable()
            if decision:
                return decision

    def _nothing_claimable(self):
        """No row could be claimed and nothing is in flight: wait, hand over or finish."""
        rows = BatchRequest.objects.filter(batch_id=self.batch_id)
        now = timezone.now()
        waiting = rows.filter(status=RequestStatus.PENDING).order_by("not_before").values_list("not_before", flat=True).first()
        if waiting is not None or rows.filter(status=RequestStatus.PENDING).exists():
            # Retries in backoff, or the per-batch limit is held by other runners.
            pause = (waiting - now).total_seconds() if waiting else 0.2
            time.sleep(min(max(pause, 0.05), 1.0))
            return None
        if rows.live_leases(now).exists():
            return "others_running"
        if rows.filter(status=RequestStatus.RUNNING).exists():
            return None  # a dead runner's rows: claimable on the next round
        return "all_done"

    def _should_stop(self):
        status = Batch.objects.filter(pk=self.batch_id).values_list("status", flat=True).first()
        if status != BatchStatus.IN_PROGRESS:
            return status or "deleted"
        if lifecycle.expire_if_due(self.batch_id):
            return "expired"
        return None

    def _heartbeat(self):
        BatchRequest.objects.filter(batch_id=self.batch_id, lease_owner=self.owner, status=RequestStatus.RUNNING).update(
            lease_expires_at=timezone.now() + self.lease
        )
        return lifecycle.acquire_slot(self.batch_id)

    # --- claiming and sending --------------------------------------------------------

    def _claim(self, wanted):
        now = timezone.now()
        rows = BatchRequest.objects.filter(batch_id=self.batch_id)
        with transaction.atomic():
            # Serialises claimers of this batch (a no-op on SQLite, whose IMMEDIATE
            # transactions are serialised already), so the per-batch limit holds.
            status = Batch.objects.select_for_update().filter(pk=self.batch_id).values_list("status", flat=True).first()
            if status != BatchStatus.IN_PROGRESS:
                return []
            allowed = min(wanted, self.window - rows.live_leases(now).count())
            if allowed <= 0:
                return []
            # Rows of a dead runner first (their lease ran out), then pending rows in file order.
            ids = list(rows.filter(status=RequestStatus.RUNNING, lease_expires_at__lte=now).values_list("pk", flat=True)[:allowed])
            if len(ids) < allowed:
                ids += list(
                    rows.filter(status=RequestStatus.PENDING)
                    .exclude(not_before__gt=now)
                    .order_by("line")
                    .values_list("pk", flat=True)[: allowed - len(ids)]
                )
            if not ids:
                return []
            rows.filter(pk__in=ids).claimable(now).update(
                status=RequestStatus.RUNNING,
                lease_owner=self.owner,
                lease_expires_at=now + self.lease,
                attempts=F("attempts") + 1,
                not_before=None,
                started_at=now,
            )
            return list(rows.filter(pk__in=ids, lease_owner=self.owner, status=RequestStatus.RUNNING).values_list("pk", "attempts", "body"))

    def _claim_and_send(self, wanted):
        claimed = self._claim(wanted)
        for pk, attempts, body in claimed:
            future = self.loop.submit(upstream.send(self.client, self.endpoint, body))
            future.add_done_callback(lambda f, pk=pk, attempts=attempts: self.done.put((pk, attempts, f)))
            self.in_flight[pk] = (attempts, future)
            self.stats["sent"] += 1
        return bool(claimed)

    def _collect(self, timeout):
        """Move finished upstream calls from the loop thread into the write buffer."""
        try:
            item = self.done.get(timeout=timeout) if timeout else self.done.get_nowait()
        except queue.Empty:
            return
        while True:
            pk, attempts, future = item
            if pk in self.in_flight and not future.cancelled():
                del self.in_flight[pk]
                try:
                    outcome = future.result()
                except Exception as exc:  # a bug, not an upstream problem: keep the line, retry later
                    logger.exception("runner.send_crashed batch_id=%s request_pk=%s", self.batch_id, pk)
                    outcome = upstream.Outcome("retry", error={"code": "internal_error", "message": type(exc).__name__})
                self.results.append((pk, attempts, outcome, self.breaker.record(outcome)))
            try:
                item = self.done.get_nowait()
            except queue.Empty:
                return

    def _abandon_in_flight(self):
        """Give unfinished calls back: their rows return to pending for whoever runs next."""
        if not self.in_flight:
            return
        for _, future in self.in_flight.values():
            future.cancel()
        ids = list(self.in_flight)
        self.in_flight.clear()
        released = BatchRequest.objects.filter(pk__in=ids, lease_owner=self.owner, status=RequestStatus.RUNNING).update(
            status=RequestStatus.PENDING, lease_owner=None, lease_expires_at=None, attempts=F("attempts") - 1
        )
        logger.info("runner.released batch_id=%s requests=%d", self.batch_id, released)

    # --- writing results -------------------------------------------------------------

    def _flush(self):
        """Write buffered outcomes in bulk, only where our lease still holds."""
        if not self.results:
            return
        now = timezone.now()
        succeeded, failed, retry = [], [], []
        for pk, attempts, outcome, refund in self.results:
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
        self.results = []
        guarded = BatchRequest.objects.filter(batch_id=self.batch_id, lease_owner=self.owner, status=RequestStatus.RUNNING)
        result_fields = ["status", "status_code", "upstream_request_id", "response_body", "error", "lease_owner", "lease_expires_at", "finished_at"]
        with transaction.atomic():
            done_ok = guarded.bulk_update(succeeded, result_fields) if succeeded else 0
            done_failed = guarded.bulk_update(failed, result_fields) if failed else 0
            if retry:
                guarded.bulk_update(retry, result_fields + ["attempts", "not_before"])
            if done_ok or done_failed:
                Batch.objects.filter(pk=self.batch_id).update(
                    completed_requests=F("completed_requests") + done_ok, failed_requests=F("failed_requests") + done_failed
                )
        self.stats["succeeded"] += done_ok
        self.stats["failed"] += done_failed
        self.stats["retried"] += len(retry)
