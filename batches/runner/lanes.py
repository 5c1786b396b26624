"""What a dispatcher keeps per upstream and per batch, and the loop thread its calls run on.

A ``Lane`` is one upstream (base URL) with its own circuit breaker, adaptive-limit
feedback and ready rows; a ``Job`` is one batch being sent. ``dispatcher.py`` drives them.
"""

import asyncio
import collections
import dataclasses
import threading
import time

from .. import aimd, ratelimit, upstream
from ..conf import app_settings
from .breaker import CircuitBreaker

# Rows leased per claim at most: keeps the claim transaction short.
CLAIM_MAX_ROWS = 64


class Call:
    """One row's upstream call, from the dispatching thread's side: its coroutine until
    the loop starts it, then its task."""

    __slots__ = ("pk", "coro", "task", "cancelled")

    def __init__(self, pk, coro):
        self.pk, self.coro, self.task, self.cancelled = pk, coro, None, False


class EventLoopThread:
    """An asyncio loop in a daemon thread, for the upstream calls.

    Calls cross between the threads in groups: one hand-off starts every call the
    dispatching thread had ready, and calls that finish in the same loop iteration wake
    it once. A hand-off per call each way (``run_coroutine_threadsafe`` and a done
    callback: a lock, a self-pipe write and a GIL switch each) cost about 7 % of the
    CPU per line at 0 ms upstream latency, and delayed the loop at 50 ms."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.finished = collections.deque()  # Calls done, for the dispatching thread to take
        self.woken = threading.Event()
        self.wake_due = False  # loop thread only: a wake-up is scheduled for this iteration
        self.thread = threading.Thread(target=self.loop.run_forever, name="batch-upstream", daemon=True)
        self.thread.start()

    def submit(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def start(self, calls):
        """Start ``calls`` on the loop, with one hand-off."""
        if calls:
            self.loop.call_soon_threadsafe(self._start, calls)

    def cancel(self, calls):
        """Give ``calls`` up: one not started yet never starts, one running is cancelled.
        A cancelled call is never handed back."""
        for call in calls:
            call.cancelled = True
        if calls:
            self.loop.call_soon_threadsafe(self._cancel, calls)

    def take_finished(self, timeout=0):
        """The Calls finished since the last take, waiting up to ``timeout`` seconds for one."""
        if timeout and not self.finished:
            self.woken.wait(timeout)
        self.woken.clear()  # before taking: a call finishing from here on wakes the next take
        taken = []
        while self.finished:
            taken.append(self.finished.popleft())
        return taken

    def stop(self):
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()

    # --- in the loop thread ---

    def _start(self, calls):
        for call in calls:
            coro, call.coro = call.coro, None
            if call.cancelled:
                coro.close()
                continue
            call.task = self.loop.create_task(coro)
            call.task.add_done_callback(lambda task, call=call: self._done(call))

    def _cancel(self, calls):
        for call in calls:
            if call.task is not None:
                call.task.cancel()

    def _done(self, call):
        if call.cancelled or call.task.cancelled():
            return
        self.finished.append(call)
        if not self.wake_due:
            self.wake_due = True
            self.loop.call_soon(self._wake)

    def _wake(self):
        self.wake_due = False
        self.woken.set()


async def timed_send(client, endpoint, body):
    """``(outcome, latency in ms)`` of one upstream call."""
    started = time.monotonic()
    outcome = await upstream.send(client, endpoint, body)
    return outcome, (time.monotonic() - started) * 1000


@dataclasses.dataclass
class Job:
    """A batch this dispatcher sends rows of."""

    batch_id: str
    endpoint: str
    route: upstream.Route
    limiter: ratelimit.Limiter | None
    lane: "Lane"
    in_flight: int = 0
    stop_deadline: float | None = None  # set when the batch left in_progress: its calls drain until then


class Lane:
    """One upstream (base URL) as this dispatcher sees it."""

    def __init__(self, base_url):
        self.base_url = base_url
        self.breaker = CircuitBreaker()
        self.feedback = aimd.Feedback()
        self.ready = collections.OrderedDict()  # limiter key -> deque of (pk, job, attempts, body, tokens)
        self.permits_at = {}  # limiter key -> monotonic time its next permit is due
        self.limiters = {}  # limiter key -> Limiter
        self.in_flight = 0
        self.finished_since_claim = 0
        self.next_claim = 0.0
        self.limit = self.usable = app_settings.UPSTREAM_INITIAL_IN_FLIGHT

    def has_ready(self):
        return any(self.ready.values())

    def claim_group(self):
        """Claim again once this many of our calls finished: small groups, so one slow call never holds places back."""
        return max(1, min(8, self.limit // 16))

    def wanted(self, dispatchers, polled):
        """How many rows to claim now: what the breaker allows, within the smallest rate-limit burst seen here.

        Refilling places our own calls freed goes up to our part of what the upstream's
        batches can have in flight (divided by the live dispatchers); beyond it only on a
        poll, when places stayed free: so
        dispatchers on several processes share an upstream instead of the quickest one
        taking every place, and a busy or slow one leaves its part to the others."""
        bursts = [limiter.burst_requests for limiter in self.limiters.values() if limiter.burst_requests]
        wanted = min([CLAIM_MAX_ROWS, *bursts])
        if not polled:
            wanted = min(wanted, self.share(dispatchers) - self.held())
        return self.breaker.allowance(max(0, wanted))

    def share(self, dispatchers):
        """Our part of the places this upstream's batches can have in flight now."""
        return -(-self.usable // dispatchers)

    def held(self):
        """Rows we hold: in flight or ready to send."""
        return self.in_flight + sum(len(rows) for rows in self.ready.values())

    def below_share(self, dispatchers):
        """Below our part, a claim counts our finished calls whose results are not written yet as
        free places; beyond it, only places no dispatcher holds. Otherwise the dispatcher that
        refills its own freed places before writing their results takes every place, and the
        others (which still see those rows leased) never get one."""
        return self.held() < self.share(dispatchers)

    def sendable(self, now):
        """Pop the ready rows that may go out now, as the breaker and each rate limit allow:
        ``(pk, job, attempts, body)``."""
        for key, rows in self.ready.items():
            if not rows or now < self.permits_at.get(key, 0.0):
                continue
            allowed = self.breaker.allowance(len(rows))
            if not allowed:
                return
            limiter = self.limiters.get(key)
            granted = allowed
            if limiter:
                granted, wait = limiter.acquire([rows[i][4] for i in range(allowed)])
                if granted < allowed:
                    self.permits_at[key] = now + wait
            self.breaker.sent(granted)
            for _ in range(granted):
                pk, job, attempts, body, _tokens = rows.popleft()
                yield pk, job, attempts, body

    def take_unsent(self, job=None):
        """Remove and return the pks of ready rows (all, or ``job``'s)."""
        taken = []
        for key, rows in self.ready.items():
            keep = collections.deque()
            for row in rows:
                if job is None or row[1] is job:
                    taken.append(row[0])
                else:
                    keep.append(row)
            self.ready[key] = keep
        return taken

    def take_feedback(self):
        feedback, self.feedback = self.feedback, aimd.Feedback()
        return feedback
