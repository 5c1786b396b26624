"""Adaptive concurrency per upstream: additive increase, multiplicative decrease.

The limit on requests in flight to one upstream is shared by every dispatcher
through its ``UpstreamState`` row: a dispatcher sums what its calls saw
(``Feedback``) and applies it inside its next claim transaction, which holds
that row locked (``batches/claims.py``), so concurrent dispatchers never lose an
update. docs/scheduling.md explains the whole scheduler.

* **Decrease**: ×``DECREASE_FACTOR`` on back-pressure (429 or 503 from the
  upstream, timeouts, connection errors) or when recent latency is above
  ``LATENCY_CUT_RATIO`` × the baseline; at most once per cooldown (about one
  round trip), since the calls already in flight when the limit was cut answer
  with the same signal. The factor is Netflix concurrency-limits' AIMD default
  (0.9): TCP's 0.5-0.7 left a sawtooth averaging 87 % of the upstream's
  capacity. The first cut, which ends slow start, starts from what was in
  flight rather than from the limit that doubling overshot (as TCP sets its
  threshold from the flight size), keeping at least half the limit; only while
  the demand fills the limit, since otherwise fewer requests were in flight for
  want of work, not because the upstream refused them.
* **Increase**: +1 per window of successful calls (as many successes as the
  limit, one round trip's worth) while recent latency stays within
  ``LATENCY_GROW_RATIO`` × baseline and the demand fills the limit; doubled per
  window (+1 per success, TCP's slow start) until the first decrease.
* **Latency**: ``latency_ms`` follows successful calls quickly (EWMA),
  ``baseline_latency_ms`` slowly, and drops at once to a lower recent value,
  so it tracks the upstream's unloaded latency (a latency gradient, as in
  Netflix's concurrency-limits).

``UPSTREAM_MAX_IN_FLIGHT`` is the ceiling; the floor is one request.
"""

import dataclasses
import math

DECREASE_FACTOR = 0.9
# The cut ending slow start keeps at least this share of the limit, however few requests were in flight.
MIN_DECREASE_SHARE = 0.5
LATENCY_GROW_RATIO = 1.5
LATENCY_CUT_RATIO = 2.5
# Per successful call: how fast the recent and the baseline latency follow.
RECENT_WEIGHT = 0.1
BASELINE_WEIGHT = 0.002
# Cuts are at least this far apart, and at least COOLDOWN_RTTS round trips.
MIN_COOLDOWN_SECONDS = 0.2
COOLDOWN_RTTS = 1.5


@dataclasses.dataclass
class Feedback:
    """What one dispatcher's calls to one upstream saw since it last reported."""

    successes: int = 0
    latency_sum_ms: float = 0.0
    congestion: int = 0  # 429/503 answers, timeouts, connection errors

    def success(self, latency_ms):
        self.successes += 1
        self.latency_sum_ms += latency_ms

    def merge(self, other):
        self.successes += other.successes
        self.latency_sum_ms += other.latency_sum_ms
        self.congestion += other.congestion

    def __bool__(self):
        return bool(self.successes or self.congestion)


@dataclasses.dataclass
class Limit:
    """The shared state of one upstream's limit (the columns of ``UpstreamState``)."""

    concurrency_limit: int
    latency_ms: float | None = None
    baseline_latency_ms: float | None = None
    successes_since_increase: int = 0
    last_decrease_at: float | None = None  # Unix seconds; None: still in slow start

    def cooldown_seconds(self):
        rtt = (self.latency_ms or 0.0) / 1000
        return max(MIN_COOLDOWN_SECONDS, COOLDOWN_RTTS * rtt)

    def apply(self, feedback, *, now, ceiling, saturated, in_flight):
        """Fold ``feedback`` into the limit; returns the reason when the limit changed, else None.

        ``saturated``: the demand filled the limit when this feedback was gathered,
        so successes say the upstream could take more (an idle limit never grows).
        ``in_flight``: the requests in flight when it was gathered (cluster-wide)."""
        self.concurrency_limit = max(1, min(self.concurrency_limit, ceiling))
        if feedback.successes:
            self._observe_latency(feedback.latency_sum_ms / feedback.successes, feedback.successes)
        slow = bool(self.baseline_latency_ms and self.latency_ms and self.latency_ms > LATENCY_CUT_RATIO * self.baseline_latency_ms)
        if feedback.congestion or slow:
            cooled = self.last_decrease_at is None or now - self.last_decrease_at >= self.cooldown_seconds()
            if not cooled:
                return None
            before = self.concurrency_limit
            cut = math.floor(DECREASE_FACTOR * before)
            if self.last_decrease_at is None and saturated:
                cut = max(math.floor(DECREASE_FACTOR * min(before, in_flight)), math.floor(before * MIN_DECREASE_SHARE))
            self.concurrency_limit = max(1, min(before - 1, cut))
            self.last_decrease_at = now
            self.successes_since_increase = 0
            if slow:  # the new normal, if it stays: do not cut again for the same latency
                self.baseline_latency_ms = self.latency_ms / LATENCY_GROW_RATIO
            return "congestion" if feedback.congestion else "latency"
        if not (feedback.successes and saturated) or self.concurrency_limit >= ceiling:
            return None
        if self.baseline_latency_ms and self.latency_ms > LATENCY_GROW_RATIO * self.baseline_latency_ms:
            return None
        before = self.concurrency_limit
        if self.last_decrease_at is None:
            self.concurrency_limit = min(ceiling, before + feedback.successes)
        else:
            self.successes_since_increase += feedback.successes
            while self.successes_since_increase >= self.concurrency_limit and self.concurrency_limit < ceiling:
                self.successes_since_increase -= self.concurrency_limit
                self.concurrency_limit += 1
        return "increase" if self.concurrency_limit != before else None

    def _observe_latency(self, mean_ms, samples):
        if self.latency_ms is None:
            self.latency_ms = self.baseline_latency_ms = mean_ms
            return
        recent = 1 - (1 - RECENT_WEIGHT) ** samples
        self.latency_ms += recent * (mean_ms - self.latency_ms)
        if self.latency_ms < self.baseline_latency_ms:
            self.baseline_latency_ms = self.latency_ms
        else:
            baseline = 1 - (1 - BASELINE_WEIGHT) ** samples
            self.baseline_latency_ms += baseline * (self.latency_ms - self.baseline_latency_ms)
