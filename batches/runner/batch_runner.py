"""Running a batch's requests against the upstream.

A ``BatchRunner`` is one ``run_batch`` task. Its thread owns the database: it
claims pending rows under a lease, takes rate-limit permits for them
(``batches/ratelimit.py``), hands them to an asyncio event loop (in a helper
thread) that keeps up to MAX_CONCURRENT_REQUESTS_PER_BATCH upstream calls in
flight as a sliding window, and writes outcomes back in bulk, guarded by the
lease. Between rounds it renews its leases and re-reads the batch status, so
cancel, expiry and shutdown take effect within about a second.

Several runners (on any hosts) can share one batch: the per-batch limit counts
every live lease of the batch, whoever holds it. Duplicate run tasks (the
sweeper, broker re-delivery, worker restarts) are harmless: a runner that sees
enough other live runners on its batch steps aside. docs/reliability.md has the
whole failure model.
"""

import asyncio
import collections
import logging
import queue
import threading
import time
from datetime import timedelta

from django.conf import settings
from django.db import InterfaceError, OperationalError, connection
from django.db.models import F
from django.utils import timezone

from .. import claims, lifecycle, ratelimit, upstream
from ..conf import app_settings
from ..models import Batch, BatchRequest, BatchStatus, RequestStatus
from ..output import finalize_batch
from ..queue import enqueue
from . import shutdown
from .breaker import CircuitBreaker
from .outcome import RunOutcome
from .results import ResultWriter

logger = logging.getLogger("openai_batches.runner")

FLUSH_EVERY_SECONDS = 0.1
FLUSH_EVERY_RESULTS = 64
STATUS_CHECK_SECONDS = 1.0
# How long in-flight requests may finish after a cancel or expiry before being abandoned.
STOP_GRACE_SECONDS = 5.0
# A lease renewed less than a heartbeat (plus this) ago belongs to a live runner.
HEARTBEAT_SLACK_SECONDS = 1.0
# After a database error, retry this often; give up once our leases must have lapsed.
DATABASE_RETRY_SECONDS = 0.5


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
        self.claimer = claims.Claimer(batch_id, self.owner)
        self.window = app_settings.MAX_CONCURRENT_REQUESTS_PER_BATCH
        self.lease = timedelta(seconds=app_settings.LEASE_SECONDS)
        self.heartbeat_every = max(0.5, app_settings.LEASE_SECONDS / 4)
        self.limiter = None
        self.ready = collections.deque()  # claimed rows waiting for rate-limit permits: (pk, attempts, body, tokens)
        self.permits_at = 0.0  # monotonic time the limiter said the next permit is due
        self.in_flight = {}  # row pk -> (attempts, concurrent future)
        self.done = queue.SimpleQueue()  # (pk, attempts, future) from the loop thread
        self.results = ResultWriter(batch_id, self.owner, app_settings.MAX_ATTEMPTS)
        self.breaker = CircuitBreaker()
        self.sent = 0

    # --- entry point -----------------------------------------------------------

    def run(self):
        """Work on the batch until a stop reason; returns the task's ``RunOutcome``."""
        batch = Batch.objects.filter(pk=self.batch_id).only("status", "endpoint", "model", "expires_at").first()
        if batch is None or batch.status != BatchStatus.IN_PROGRESS:
            return RunOutcome.NOT_RUNNING
        worker = shutdown.worker_shutdown
        if worker.requested():
            # Fetched by a stopping cluster: leave the batch to the next one.
            enqueue("run_batch", self.batch_id)
            return RunOutcome.SHUTDOWN
        if lifecycle.expire_if_due(self.batch_id):
            return RunOutcome.EXPIRED
        if not lifecycle.acquire_slot(self.batch_id):
            logger.info("runner.waiting_for_slot batch_id=%s", self.batch_id)
            return RunOutcome.NO_SLOT
        self.endpoint = batch.endpoint
        route = upstream.route_for(batch.model, batch.endpoint)
        self.limiter = ratelimit.limiter_for(batch.model, route)
        self.loop = EventLoopThread()
        self.client = upstream.async_client(route, max_connections=self.window)
        logger.info("runner.started batch_id=%s owner=%s window=%d limiter=%s", self.batch_id, self.owner, self.window, self.limiter)
        worker.active_runners += 1
        try:
            try:
                outcome = self._loop()
            finally:
                self._wind_down()
            logger.info(
                "runner.stopped batch_id=%s owner=%s outcome=%s %s",
                self.batch_id,
                self.owner,
                outcome,
                " ".join(f"{k}={v}" for k, v in self.stats.items()),
            )
            outcome = self._after(outcome)
        finally:
            worker.active_runners -= 1
        worker.exit_if_signalled()
        return outcome

    @property
    def stats(self):
        return {"sent": self.sent, **self.results.stats}

    def _wind_down(self):
        """Keep what finished, hand back what did not, close the client."""
        try:
            self._collect(timeout=0)
            self._abandon_unsent_and_in_flight()
            self.results.flush()
        except (OperationalError, InterfaceError):
            # The database is gone: our leases lapse and another runner redoes these rows.
            logger.exception("runner.wind_down_failed batch_id=%s", self.batch_id)
        finally:
            self.loop.submit(self.client.close()).result(timeout=10)
            self.loop.stop()

    def _after(self, outcome):
        """What the batch needs once this runner stopped; returns the task's outcome."""
        if outcome == RunOutcome.ALL_DONE:
            if lifecycle.transition(self.batch_id, [BatchStatus.IN_PROGRESS], BatchStatus.FINALIZING):
                lifecycle.release_slot(self.batch_id)
                finalize_batch(self.batch_id)
        elif outcome in (RunOutcome.SLICE_OVER, RunOutcome.SHUTDOWN):
            # Another run task carries on (on this or another host, or after the restart).
            if not self._others_hold_leases():
                lifecycle.release_slot(self.batch_id)
            enqueue("run_batch", self.batch_id)
        elif outcome == RunOutcome.LOST_SLOT:
            enqueue("run_batch", self.batch_id)
        elif not outcome.batch_goes_on:
            lifecycle.release_slot(self.batch_id)
            finalize_batch(self.batch_id)
            return RunOutcome.STOPPED
        # OTHERS_RUNNING: those runners finalize; REDUNDANT: they carry on.
        return outcome

    # --- the work loop -------------------------------------------------------------

    def _loop(self):
        now = time.monotonic()
        self.slice_ends = now + app_settings.RUN_SLICE_SECONDS
        self.next_heartbeat = now + self.heartbeat_every
        self.next_status_check = now + STATUS_CHECK_SECONDS
        self.last_flush = now
        self.stop_reason, self.stop_deadline = None, None
        self.heartbeats = collections.deque([timezone.now()], maxlen=2)
        trouble_since = None
        while True:
            try:
                outcome = self._step()
                trouble_since = None
            except (OperationalError, InterfaceError) as exc:
                # SQLite "database is locked" past busy_timeout, a PostgreSQL restart...:
                # results and leases are kept, so retry until our leases must have lapsed.
                trouble_since = trouble_since or time.monotonic()
                if time.monotonic() - trouble_since > self.lease.total_seconds():
                    raise
                logger.warning("runner.database_error batch_id=%s error=%s", self.batch_id, str(exc)[:200])
                if not connection.in_atomic_block:
                    connection.close_if_unusable_or_obsolete()  # a broken connection reconnects on the next query
                time.sleep(DATABASE_RETRY_SECONDS)
                continue
            if outcome:
                return outcome

    def _step(self):
        """One round: collect, write, check, renew, send, claim. A stop reason once done."""
        self._collect(timeout=0.02 if self.in_flight or self.ready else 0)
        now = time.monotonic()
        if self.results and (
            len(self.results) >= FLUSH_EVERY_RESULTS or now - self.last_flush >= FLUSH_EVERY_SECONDS or not self.in_flight
        ):
            self.results.flush()
            self.last_flush = now
        if shutdown.worker_shutdown.requested():
            self._stop_for(RunOutcome.SHUTDOWN, now)
        if now >= self.next_status_check:
            self.next_status_check = now + STATUS_CHECK_SECONDS
            if self.stop_reason is None:
                self._stop_for(self.batch_stop_reason(), now)
        if now >= self.next_heartbeat:
            self.next_heartbeat = now + self.heartbeat_every
            self._stop_for(self._heartbeat(), now)
        if now >= self.slice_ends:
            self._stop_for(RunOutcome.SLICE_OVER, now)
        if self.stop_reason:
            # No new upstream call once stopping; in-flight ones may finish until the deadline.
            self._abandon_unsent()
            if not self.in_flight or now >= self.stop_deadline:
                return self.stop_reason
            return None
        self._send_ready()
        if self._claim_more():
            return None
        if self.in_flight or self.ready:
            return None
        if self.breaker.is_open:
            time.sleep(min(0.2, max(0.0, self.breaker.open_until - time.monotonic())))
            return None
        self.results.flush()
        return self._nothing_claimable()

    def _stop_for(self, reason, now):
        if not reason:
            return
        if self.stop_reason:
            if reason == RunOutcome.SHUTDOWN:  # already draining (end of slice): a deploy cannot wait that long
                self.stop_deadline = min(self.stop_deadline, now + app_settings.SHUTDOWN_GRACE_SECONDS)
            return
        grace = {
            RunOutcome.SHUTDOWN: app_settings.SHUTDOWN_GRACE_SECONDS,
            RunOutcome.SLICE_OVER: self._drain_seconds(),
            RunOutcome.REDUNDANT: self._drain_seconds(),
        }.get(reason, STOP_GRACE_SECONDS)
        self.stop_reason, self.stop_deadline = reason, now + grace
        logger.info("runner.stopping batch_id=%s owner=%s reason=%s in_flight=%d", self.batch_id, self.owner, reason, len(self.in_flight))

    def _drain_seconds(self):
        """How long in-flight calls may finish at the end of a slice: up to the
        upstream timeout, within what django-q2 allows the task (E012 keeps a minute)."""
        task_timeout = (getattr(settings, "Q_CLUSTER", None) or {}).get("timeout")
        budget = task_timeout - app_settings.RUN_SLICE_SECONDS - 10 if task_timeout else app_settings.UPSTREAM_TIMEOUT
        return max(STOP_GRACE_SECONDS, min(app_settings.UPSTREAM_TIMEOUT, budget))

    def _nothing_claimable(self):
        """No row could be claimed and nothing is in flight: wait, hand over or finish."""
        rows = BatchRequest.objects.filter(batch_id=self.batch_id)
        # One query, so a retry written meanwhile by another runner cannot slip between checks.
        if not rows.unfinished().exists():
            return RunOutcome.ALL_DONE
        now = timezone.now()
        if rows.filter(status=RequestStatus.PENDING).exists():
            # Retries in backoff, or the per-batch limit is held by other runners.
            due = (
                rows.filter(status=RequestStatus.PENDING, not_before__gt=now)
                .order_by("not_before")
                .values_list("not_before", flat=True)
                .first()
            )
            time.sleep(min(max((due - now).total_seconds() if due else 0.2, 0.05), 1.0))
            return None
        # Only rows other runners hold are left. Live runners renew their leases every
        # heartbeat and finalize when done; a dead one's rows are ours once they lapse.
        fresh = now + self.lease - timedelta(seconds=self.heartbeat_every + HEARTBEAT_SLACK_SECONDS)
        if rows.live_leases(now).filter(lease_expires_at__gt=fresh).exists():
            return RunOutcome.OTHERS_RUNNING
        lapse = rows.filter(status=RequestStatus.RUNNING).order_by("lease_expires_at").values_list("lease_expires_at", flat=True).first()
        time.sleep(min(max((lapse - now).total_seconds() if lapse else 0.05, 0.05), 1.0))
        return None

    def batch_stop_reason(self):
        """Why the batch's own state ends this run (re-read from the database), or None."""
        status = Batch.objects.filter(pk=self.batch_id).values_list("status", flat=True).first()
        if status != BatchStatus.IN_PROGRESS:
            logger.info("runner.batch_left_in_progress batch_id=%s status=%s", self.batch_id, status or "deleted")
            return RunOutcome.BATCH_LEFT_IN_PROGRESS
        if lifecycle.expire_if_due(self.batch_id):
            return RunOutcome.EXPIRED
        return None

    def _heartbeat(self):
        now = timezone.now()
        BatchRequest.objects.filter(batch_id=self.batch_id, lease_owner=self.owner, status=RequestStatus.RUNNING).update(
            lease_expires_at=now + self.lease
        )
        if not lifecycle.acquire_slot(self.batch_id):
            return self.batch_stop_reason() or RunOutcome.LOST_SLOT
        since = self.heartbeats[0]
        self.heartbeats.append(now)
        if self.outnumbered(since):
            return RunOutcome.REDUNDANT
        return None

    def outnumbered(self, since):
        """True when RUN_TASKS_PER_BATCH other runners, each with an owner id ordered
        before ours, renewed or claimed leases on this batch since ``since``.

        The order makes exactly the surplus step aside when duplicates meet."""
        alive = (
            BatchRequest.objects.filter(batch_id=self.batch_id, status=RequestStatus.RUNNING, lease_expires_at__gt=since + self.lease)
            .exclude(lease_owner=self.owner)
            .order_by()  # the default ordering would make DISTINCT count a runner per row
            .values_list("lease_owner", flat=True)
            .distinct()
        )
        return sum(1 for owner in set(alive) if owner < self.owner) >= app_settings.RUN_TASKS_PER_BATCH

    def _others_hold_leases(self):
        return BatchRequest.objects.filter(batch_id=self.batch_id).live_leases().exclude(lease_owner=self.owner).exists()

    # --- claiming and sending --------------------------------------------------------

    def claim(self, wanted):
        """Claim up to ``wanted`` rows under this runner's lease: [(pk, attempts, body)]."""
        now = timezone.now()
        return self.claimer.claim(wanted, window=self.window, unflushed=len(self.results), now=now, lease_until=now + self.lease)

    def _claim_more(self):
        """Claim rows into the ready queue when the window has room; True if any were claimed."""
        if self.ready or self.breaker.is_open:
            return False
        free = self.window - len(self.in_flight)
        # Claim in small groups (an eighth of the window, at most 8) so one slow
        # request never holds the window back, even when the window is small.
        if free < max(1, min(8, self.window // 8)):
            return False
        wanted = self.breaker.allowance(free)
        if self.limiter and self.limiter.burst_requests:
            wanted = min(wanted, self.limiter.burst_requests)
        claimed = self.claim(wanted) if wanted else []
        counts_tokens = self.limiter is not None and self.limiter.counts_tokens
        for pk, attempts, body in claimed:
            self.ready.append((pk, attempts, body, ratelimit.estimate_tokens(body) if counts_tokens else 0))
        self._send_ready()
        return bool(claimed)

    def _send_ready(self):
        """Send ready rows as the breaker and the rate limits allow."""
        if not self.ready or time.monotonic() < self.permits_at:
            return
        allowed = self.breaker.allowance(len(self.ready))
        if not allowed:
            return
        if self.limiter:
            granted, wait = self.limiter.acquire([self.ready[i][3] for i in range(allowed)])
            if granted < allowed:
                self.permits_at = time.monotonic() + wait
        else:
            granted = allowed
        self.breaker.sent(granted)
        for _ in range(granted):
            pk, attempts, body, _tokens = self.ready.popleft()
            future = self.loop.submit(upstream.send(self.client, self.endpoint, body))
            future.add_done_callback(lambda f, pk=pk, attempts=attempts: self.done.put((pk, attempts, f)))
            self.in_flight[pk] = (attempts, future)
            self.sent += 1

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
                self.results.add(pk, attempts, outcome, refund=self.breaker.record(outcome))
            try:
                item = self.done.get_nowait()
            except queue.Empty:
                return

    def _abandon_unsent(self):
        """Hand claimed rows that never went out back to pending, attempt refunded."""
        if self.ready:
            ids = [pk for pk, *_ in self.ready]
            self.ready.clear()
            self._release(ids, "unsent")

    def _abandon_unsent_and_in_flight(self):
        """Give unfinished calls back: their rows return to pending for whoever runs next."""
        self._abandon_unsent()
        if self.in_flight:
            for _, future in self.in_flight.values():
                future.cancel()
            ids = list(self.in_flight)
            self.in_flight.clear()
            self._release(ids, "in_flight")

    def _release(self, ids, what):
        released = BatchRequest.objects.filter(pk__in=ids, lease_owner=self.owner, status=RequestStatus.RUNNING).update(
            status=RequestStatus.PENDING, lease_owner=None, lease_expires_at=None, attempts=F("attempts") - 1
        )
        logger.info("runner.released batch_id=%s what=%s requests=%d", self.batch_id, what, released)
