"""The dispatcher: one event loop per worker keeps calls in flight for every running batch.

A ``Dispatcher`` is one ``dispatch`` task, holding one of DISPATCHERS slots
(``batches/slots.py``). Its thread owns the database; an asyncio loop in a helper thread
owns the HTTP calls. Each round it:

1. **collects** finished calls, feeding each upstream's circuit breaker and its
   adaptive limit (``aimd.Feedback``);
2. **writes** outcomes in bulk, guarded by its leases (``results.py``);
   a batch with no unfinished line left goes to finalization (another task);
3. every second **checks** the running batches: upstreams with work, expiry,
   cancelled and expired batches: nothing new is sent for them, calls in flight
   finish and keep their results (within ``CANCEL_DRAIN_SECONDS``), then the
   batch's finalization is queued;
   every heartbeat it renews its leases, every second its slot;
4. **sends** claimed rows as breakers and rate limits (``ratelimit.py``) allow;
5. **claims** more per upstream (``claims.py``): one transaction that applies the
   feedback to the upstream's shared limit, and divides the free places
   between owners and batches (``fairshare.py``), counting every dispatcher's
   live leases, so limits hold cluster-wide.

Each upstream is a ``Lane`` with its own breaker and limit: a down upstream
pauses only its batches. docs/scheduling.md explains the scheduler (with a
diagram); docs/reliability.md the failure model.
"""

import collections
import json
import logging
import time
from datetime import timedelta

from django.conf import settings
from django.db import InterfaceError, OperationalError, connection
from django.db.models import F
from django.utils import timezone

from .. import claims, lifecycle, ratelimit, slots, upstream
from ..conf import app_settings
from ..models import Batch, BatchRequest, BatchStatus, RequestStatus
from ..queue import enqueue
from . import shutdown
from .lanes import Call, EventLoopThread, Job, Lane, timed_send
from .outcome import DispatchOutcome
from .results import ResultWriter

logger = logging.getLogger("openai_batches.dispatcher")

FLUSH_EVERY_SECONDS = 0.1
FLUSH_EVERY_RESULTS = 64
STATUS_CHECK_SECONDS = 1.0
# In-flight calls get at least this long at the end of a slice, whatever django-q2's timeout.
MIN_SLICE_DRAIN_SECONDS = 5.0
# A lease renewed less than a heartbeat (plus this) ago belongs to a live dispatcher.
HEARTBEAT_SLACK_SECONDS = 1.0
# After a database error, retry this often; give up once our leases must have lapsed.
DATABASE_RETRY_SECONDS = 0.5
# An upstream whose last claim found no free place or no work is asked again after this long
# (sooner when our own calls finish): how fast a new batch, or a place freed elsewhere, is seen.
CLAIM_POLL_SECONDS = 0.1
# A stopped batch in these statuses still waits for its calls in flight; any other is finished.
DRAINING_STATUSES = (BatchStatus.CANCELLING, BatchStatus.FINALIZING)


class Dispatcher:
    def __init__(self, *, takeover=False):
        self.owner = lifecycle.worker_id()
        self.takeover = takeover
        self.claimer = claims.Claimer(self.owner)
        self.lease = timedelta(seconds=app_settings.LEASE_SECONDS)
        self.heartbeat_every = max(0.5, app_settings.LEASE_SECONDS / 4)
        self.results = ResultWriter(self.owner, app_settings.MAX_ATTEMPTS)
        self.lanes = {}  # base URL -> Lane
        self.jobs = {}  # batch id -> Job
        self.clients = {}  # upstream.Route -> inference client
        self.in_flight = {}  # row pk -> (job, attempts, lanes.Call)
        self.upstreams = []  # base URLs with batches in progress
        self.dispatchers = 1  # live dispatchers, cluster-wide
        self.slot = None
        self.sent = 0

    # --- entry point -----------------------------------------------------------

    def run(self):
        """Dispatch until nothing is left to do or a stop reason; returns the task's ``DispatchOutcome``."""
        worker = shutdown.worker_shutdown
        if worker.requested():
            enqueue("dispatch")  # fetched by a stopping cluster: leave it to the next one
            return DispatchOutcome.SHUTDOWN
        self.slot = slots.acquire(self.owner, takeover=self.takeover)
        if self.slot is None:
            return DispatchOutcome.NO_SLOT
        self.loop = EventLoopThread()
        logger.info("dispatcher.started owner=%s slot=%d", self.owner, self.slot)
        worker.active_runners += 1
        try:
            try:
                outcome = self._loop()
            finally:
                self._wind_down()
            logger.info(
                "dispatcher.stopped owner=%s outcome=%s %s", self.owner, outcome, " ".join(f"{k}={v}" for k, v in self.stats.items())
            )
            self._after(outcome)
        finally:
            worker.active_runners -= 1
        worker.exit_if_signalled()
        return outcome

    @property
    def stats(self):
        return {"sent": self.sent, **self.results.stats}

    def _wind_down(self):
        """Keep what finished, hand back what did not, close the clients."""
        try:
            self._collect(timeout=0)
            self._release_unsent()
            self._release_in_flight(list(self.in_flight))
            self._flush()
            # Batches cancelled or expired since our last check (or still draining): their
            # finalization waited for our leases, so queue it now rather than at the next sweep.
            for batch_id in Batch.objects.filter(pk__in=list(self.jobs), status__in=DRAINING_STATUSES).values_list("pk", flat=True):
                enqueue("finalize_batch", batch_id)
        except (OperationalError, InterfaceError):
            # The database is gone: our leases lapse and another dispatcher redoes these rows.
            logger.exception("dispatcher.wind_down_failed owner=%s", self.owner)
        finally:
            for client in self.clients.values():
                try:
                    self.loop.submit(client.close()).result(timeout=10)
                except Exception:  # closing is best effort: the process may be going away
                    logger.exception("dispatcher.client_close_failed owner=%s", self.owner)
            self.loop.stop()

    def _after(self, outcome):
        if self.slot is not None:
            slots.release(self.slot, self.owner)
            self.slot = None
        if outcome in (DispatchOutcome.SHUTDOWN, DispatchOutcome.LOST_SLOT):
            enqueue("dispatch")  # on another worker, host or the restarted cluster
        elif outcome == DispatchOutcome.IDLE and slots.work_waiting():
            slots.ensure_dispatching()  # a batch started while we were leaving

    # --- the work loop -------------------------------------------------------------

    def _loop(self):
        now = time.monotonic()
        self.slice_ends = now + app_settings.RUN_SLICE_SECONDS
        self.next_heartbeat = now + self.heartbeat_every
        self.next_slot_renewal = now + slots.RENEW_SECONDS
        self.next_status_check = now
        self.last_flush = now
        self.stop_reason, self.stop_deadline = None, None
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
                logger.warning("dispatcher.database_error owner=%s error=%s", self.owner, str(exc)[:200])
                if not connection.in_atomic_block:
                    connection.close_if_unusable_or_obsolete()  # a broken connection reconnects on the next query
                time.sleep(DATABASE_RETRY_SECONDS)
                continue
            if outcome:
                return outcome

    def _step(self):
        """One round: collect, write, check, renew, send, claim. A stop reason once done."""
        self._collect(timeout=0.02 if self.in_flight or self._has_ready() else 0)
        now = time.monotonic()
        if not self.stop_reason:  # refill the places that just freed before writing their results
            self._claim_more(now)
        if len(self.results) and (
            len(self.results) >= FLUSH_EVERY_RESULTS or now - self.last_flush >= FLUSH_EVERY_SECONDS or not self.in_flight
        ):
            self._flush()
            self.last_flush = now
        if shutdown.worker_shutdown.requested():
            self._stop_for(DispatchOutcome.SHUTDOWN, now)
        if now >= self.next_status_check:
            self.next_status_check = now + STATUS_CHECK_SECONDS
            self._check_batches(now)
        self._settle_stopped_batches(now)
        if now >= self.next_heartbeat:
            self.next_heartbeat = now + self.heartbeat_every
            self._renew_leases()
        if now >= self.next_slot_renewal:
            self.next_slot_renewal = now + slots.RENEW_SECONDS
            if self.slot is not None and not slots.renew(self.slot, self.owner):
                self.slot = None  # we stalled past the lease and another dispatcher took the place
                self._stop_for(DispatchOutcome.LOST_SLOT, now)
        if now >= self.slice_ends:
            self._stop_for(DispatchOutcome.SLICE_OVER, now)
        if self.stop_reason:
            # No new upstream call once stopping; in-flight ones may finish until the deadline.
            self._release_unsent()
            if not self.in_flight or now >= self.stop_deadline:
                return self.stop_reason
            return None
        self._send_ready(now)
        if self._claim_more(now) or self.in_flight or self._has_ready():
            return None
        return self._when_idle()

    def _stop_for(self, reason, now):
        if not reason:
            return
        if self.stop_reason:
            if reason == DispatchOutcome.SHUTDOWN:  # already draining (end of slice): a deploy cannot wait that long
                self.stop_deadline = min(self.stop_deadline, now + app_settings.SHUTDOWN_GRACE_SECONDS)
            return
        grace = app_settings.SHUTDOWN_GRACE_SECONDS if reason == DispatchOutcome.SHUTDOWN else self._drain_seconds()
        self.stop_reason, self.stop_deadline = reason, now + grace
        logger.info("dispatcher.stopping owner=%s reason=%s in_flight=%d", self.owner, reason, len(self.in_flight))
        if reason == DispatchOutcome.SLICE_OVER and self.slot is not None:
            # The successor starts claiming while our last calls finish (they still count as in flight).
            slots.release(self.slot, self.owner)
            self.slot = None
            enqueue("dispatch")

    def _drain_seconds(self):
        """How long in-flight calls may finish at the end of a slice: up to the
        upstream timeout, within what django-q2 allows the task (E012 keeps a minute)."""
        task_timeout = (getattr(settings, "Q_CLUSTER", None) or {}).get("timeout")
        budget = task_timeout - app_settings.RUN_SLICE_SECONDS - 10 if task_timeout else app_settings.UPSTREAM_TIMEOUT
        return max(MIN_SLICE_DRAIN_SECONDS, min(app_settings.UPSTREAM_TIMEOUT, budget))

    def _when_idle(self):
        """Nothing in flight, nothing claimable: wait for work that is coming, or leave."""
        self._flush()
        now = timezone.now()
        running = BatchRequest.objects.filter(batch__status=BatchStatus.IN_PROGRESS)
        pending = running.filter(status=RequestStatus.PENDING)
        if pending.exists():
            # Retries in backoff, places held by other dispatchers, or a paused upstream: claims poll.
            due = pending.filter(not_before__gt=now).order_by("not_before").values_list("not_before", flat=True).first()
            wait = (due - now).total_seconds() if due else CLAIM_POLL_SECONDS
            time.sleep(min(max(wait, 0.01), CLAIM_POLL_SECONDS))
            return None
        # Only rows other dispatchers hold are left. Live ones renew their leases every
        # heartbeat; a dead one's rows are ours once they lapse.
        fresh = now + self.lease - timedelta(seconds=self.heartbeat_every + HEARTBEAT_SLACK_SECONDS)
        stale = running.filter(status=RequestStatus.RUNNING, lease_expires_at__lte=fresh).order_by("lease_expires_at")
        lapse = stale.values_list("lease_expires_at", flat=True).first()
        if lapse is None:
            return DispatchOutcome.IDLE
        time.sleep(min(max((lapse - now).total_seconds(), 0.05), 1.0))
        return None

    # --- batches: discovery, expiry, cancel, completion ----------------------------------

    def _check_batches(self, now):
        """Which upstreams have work; expire late batches; stop sending for batches that left in_progress.

        A stopped batch's calls in flight drain for CANCEL_DRAIN_SECONDS (OpenAI keeps a
        cancelled batch ``cancelling`` until they complete); once the batch is no longer
        waiting for them (force-finished in the admin), they are dropped at once."""
        in_progress = {}
        running = Batch.objects.filter(status=BatchStatus.IN_PROGRESS)
        for pk, base_url, model, endpoint, expires_at, total, completed, failed in running.values_list(
            "pk", "upstream", "model", "endpoint", "expires_at", "total_requests", "completed_requests", "failed_requests"
        ):
            if expires_at and expires_at <= timezone.now() and lifecycle.expire_if_due(pk):
                continue
            if not base_url:  # started before batches knew their upstream
                base_url = upstream.route_for(model, endpoint).base_url
                Batch.objects.filter(pk=pk).update(upstream=base_url)
            if completed + failed >= total:
                lifecycle.finish_processing(pk)
                continue
            in_progress[pk] = base_url
        self.upstreams = sorted(set(in_progress.values()))
        self.dispatchers = max(1, slots.live_count())
        for job in self.jobs.values():
            if job.batch_id not in in_progress and job.stop_deadline is None:
                job.stop_deadline = now + app_settings.CANCEL_DRAIN_SECONDS
                self._release_unsent(job)
                logger.info("dispatcher.batch_stopped owner=%s batch_id=%s in_flight=%d", self.owner, job.batch_id, job.in_flight)
        draining = [job.batch_id for job in self.jobs.values() if job.stop_deadline is not None and job.in_flight]
        if draining:
            waiting = set(Batch.objects.filter(pk__in=draining, status__in=DRAINING_STATUSES).values_list("pk", flat=True))
            for batch_id in set(draining) - waiting:
                self.jobs[batch_id].stop_deadline = now

    def _settle_stopped_batches(self, now):
        """Once a stopped batch's last calls finished (or ran out of time), write them and queue its finalization."""
        for job in [job for job in self.jobs.values() if job.stop_deadline is not None]:
            if job.in_flight and now < job.stop_deadline:
                continue
            self._release_in_flight([pk for pk, (held, _, _) in self.in_flight.items() if held is job])
            self._flush()
            del self.jobs[job.batch_id]
            enqueue("finalize_batch", job.batch_id)

    def _renew_leases(self):
        held = list(self.in_flight) + [pk for lane in self.lanes.values() for rows in lane.ready.values() for pk, *_ in rows]
        held += [pk for pk, *_ in self.results.buffered]
        until = timezone.now() + self.lease
        for start in range(0, len(held), 500):
            BatchRequest.objects.filter(pk__in=held[start : start + 500], lease_owner=self.owner, status=RequestStatus.RUNNING).update(
                lease_expires_at=until
            )

    # --- claiming and sending --------------------------------------------------------

    def _lane(self, base_url):
        if base_url not in self.lanes:
            self.lanes[base_url] = Lane(base_url)
        return self.lanes[base_url]

    def _job(self, batch_id, base_url, endpoint, model):
        job = self.jobs.get(batch_id)
        if job is None:
            route = upstream.route_for(model, endpoint)
            job = self.jobs[batch_id] = Job(batch_id, endpoint, route, ratelimit.limiter_for(model, route), self._lane(base_url))
            if job.limiter:
                job.lane.limiters[job.limiter.key] = job.limiter
            logger.info("dispatcher.batch_joined owner=%s batch_id=%s upstream=%s", self.owner, batch_id, base_url)
        return job

    def _claim_more(self, now):
        """Claim rows for every upstream with room; True if any were claimed."""
        claimed = False
        for base_url in self.upstreams:
            lane = self._lane(base_url)
            polled = now >= lane.next_claim
            if lane.has_ready() or not (polled or lane.finished_since_claim >= lane.claim_group()):
                continue
            wanted = lane.wanted(self.dispatchers, polled)
            if not wanted:
                lane.finished_since_claim = 0
                continue
            at = timezone.now()
            claim = self.claimer.claim(
                base_url,
                wanted=wanted,
                unflushed=self.results.unflushed() if lane.below_share(self.dispatchers) else {},
                feedback=lane.take_feedback(),
                now=at,
                lease_until=at + self.lease,
            )
            lane.limit, lane.usable, lane.finished_since_claim = claim.limit, claim.usable, 0
            if polled:
                # A refill of our own freed places leaves the poll where it was: places beyond our
                # part go to whichever dispatcher polls when they stayed free, not to the quickest refiller.
                lane.next_claim = now if len(claim.rows) >= wanted else now + CLAIM_POLL_SECONDS
            for pk, batch_id, attempts, body in claim.rows:
                endpoint, model = claim.batches[batch_id]
                job = self._job(batch_id, base_url, endpoint, model)
                tokens = ratelimit.estimate_tokens(json.loads(body)) if job.limiter and job.limiter.counts_tokens else 0
                key = job.limiter.key if job.limiter else None
                lane.ready.setdefault(key, collections.deque()).append((pk, job, attempts, body, tokens))
            claimed = claimed or bool(claim.rows)
        if claimed:
            self._send_ready(now)
        return claimed

    def _send_ready(self, now):
        """Send ready rows as each upstream's breaker and the rate limits allow (one hand-off to the loop)."""
        calls = []
        for lane in self.lanes.values():
            for pk, job, attempts, body in lane.sendable(now):
                call = Call(pk, timed_send(self._client(job.route), job.endpoint, body))
                calls.append(call)
                self.in_flight[pk] = (job, attempts, call)
                job.in_flight += 1
                lane.in_flight += 1
        self.sent += len(calls)
        self.loop.start(calls)

    def _client(self, route):
        client = self.clients.get(route)
        if client is None:
            client = self.clients[route] = upstream.async_client(route, max_connections=app_settings.UPSTREAM_MAX_IN_FLIGHT)
        return client

    def _has_ready(self):
        return any(lane.has_ready() for lane in self.lanes.values())

    def _collect(self, timeout):
        """Move finished upstream calls from the loop thread into the write buffer."""
        for call in self.loop.take_finished(timeout):
            held = self.in_flight.get(call.pk)
            if held is not None and held[2] is call and not call.cancelled:
                job, attempts, _ = self.in_flight.pop(call.pk)
                self._record(call.pk, job, attempts, call.task)

    def _record(self, pk, job, attempts, task):
        lane = job.lane
        job.in_flight -= 1
        lane.in_flight -= 1
        lane.finished_since_claim += 1
        try:
            outcome, latency_ms = task.result()
        except Exception as exc:  # a bug, not an upstream problem: keep the line, retry later
            logger.exception("dispatcher.send_crashed batch_id=%s request_pk=%s", job.batch_id, pk)
            outcome, latency_ms = upstream.Outcome("retry", error={"code": "internal_error", "message": type(exc).__name__}), None
        if outcome.congestion:
            lane.feedback.congestion += 1
        elif outcome.kind == "succeeded" and latency_ms is not None:
            lane.feedback.success(latency_ms)
        refund = lane.breaker.record(outcome)
        self.results.add(pk, job.batch_id, attempts, outcome, refund=refund, backpressure=outcome.backpressure)

    # --- handing rows back -------------------------------------------------------------

    def _release_unsent(self, job=None):
        """Hand claimed rows that never went out (all, or ``job``'s) back to pending, attempt refunded."""
        self._release([pk for lane in self.lanes.values() for pk in lane.take_unsent(job)], "unsent")

    def _release_in_flight(self, ids):
        """Give unfinished calls back: their rows return to pending for whoever runs next."""
        calls = []
        for pk in ids:
            job, _, call = self.in_flight.pop(pk)
            calls.append(call)
            job.in_flight -= 1
            job.lane.in_flight -= 1
        self.loop.cancel(calls)
        self._release(ids, "in_flight")

    def _release(self, ids, what):
        if not ids:
            return
        released = BatchRequest.objects.filter(pk__in=ids, lease_owner=self.owner, status=RequestStatus.RUNNING).update(
            status=RequestStatus.PENDING, lease_owner=None, lease_expires_at=None, attempts=F("attempts") - 1
        )
        logger.info("dispatcher.released owner=%s what=%s requests=%d", self.owner, what, released)

    # --- writing results -------------------------------------------------------------

    def _flush(self):
        """Write buffered outcomes; a batch with nothing left goes to finalization."""
        finished = self.results.flush()
        if not finished:
            return
        done = Batch.objects.filter(
            pk__in=list(finished), status=BatchStatus.IN_PROGRESS, total_requests__lte=F("completed_requests") + F("failed_requests")
        )
        for batch_id in done.values_list("pk", flat=True):
            if lifecycle.finish_processing(batch_id):
                self.jobs.pop(batch_id, None)
