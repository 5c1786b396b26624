"""The adaptive concurrency limit's arithmetic (batches/aimd.py)."""

from batches.aimd import DECREASE_FACTOR, MIN_DECREASE_SHARE, Feedback, Limit


def successes(count, latency_ms=100.0):
    feedback = Feedback()
    for _ in range(count):
        feedback.success(latency_ms)
    return feedback


def congestion(count=1):
    return Feedback(congestion=count)


def test_slow_start_doubles_per_window_until_the_first_cut():
    limit = Limit(8)
    assert limit.apply(successes(8), now=0.0, ceiling=64, saturated=True, in_flight=limit.concurrency_limit) == "increase"
    assert limit.concurrency_limit == 16
    limit.apply(successes(16), now=0.1, ceiling=64, saturated=True, in_flight=limit.concurrency_limit)
    assert limit.concurrency_limit == 32
    limit.apply(successes(64), now=0.2, ceiling=64, saturated=True, in_flight=limit.concurrency_limit)
    assert limit.concurrency_limit == 64  # the ceiling


def test_additive_increase_is_one_per_window_of_successes_after_a_cut():
    limit = Limit(20, last_decrease_at=0.0)
    limit.apply(successes(19), now=10.0, ceiling=64, saturated=True, in_flight=limit.concurrency_limit)
    assert limit.concurrency_limit == 20
    assert limit.apply(successes(1), now=10.1, ceiling=64, saturated=True, in_flight=limit.concurrency_limit) == "increase"
    assert limit.concurrency_limit == 21
    limit.apply(successes(21 + 22), now=10.2, ceiling=64, saturated=True, in_flight=limit.concurrency_limit)
    assert limit.concurrency_limit == 23


def test_congestion_cuts_multiplicatively_once_per_cooldown():
    limit = Limit(30, latency_ms=100.0, baseline_latency_ms=100.0, last_decrease_at=0.0)
    assert limit.apply(congestion(), now=100.0, ceiling=64, saturated=True, in_flight=limit.concurrency_limit) == "congestion"
    assert limit.concurrency_limit == int(30 * DECREASE_FACTOR) == 27
    # Calls already in flight answer 429 too: no second cut within one round trip (>= 0.2 s).
    assert limit.apply(congestion(5), now=100.1, ceiling=64, saturated=True, in_flight=limit.concurrency_limit) is None
    assert limit.concurrency_limit == 27
    assert limit.apply(congestion(), now=100.3, ceiling=64, saturated=True, in_flight=limit.concurrency_limit) == "congestion"
    assert limit.concurrency_limit == 24


def test_the_cut_ending_slow_start_starts_from_what_was_in_flight():
    # Slow start doubled the limit to 40; the upstream refused the 27th request at once.
    limit = Limit(40, latency_ms=100.0, baseline_latency_ms=100.0)
    limit.apply(congestion(), now=1.0, ceiling=64, saturated=True, in_flight=27)
    assert limit.concurrency_limit == int(27 * DECREASE_FACTOR) == 24
    # Later cuts start from the limit, whatever was in flight at that moment.
    limit.apply(congestion(), now=2.0, ceiling=64, saturated=True, in_flight=18)
    assert limit.concurrency_limit == int(24 * DECREASE_FACTOR) == 21


def test_the_cut_ending_slow_start_starts_from_the_limit_when_work_was_short():
    # Few requests were in flight because few were left, not because the upstream refused more.
    limit = Limit(64, latency_ms=100.0, baseline_latency_ms=100.0)
    limit.apply(congestion(), now=1.0, ceiling=64, saturated=False, in_flight=30)
    assert limit.concurrency_limit == int(64 * DECREASE_FACTOR) == 57


def test_the_cut_ending_slow_start_keeps_half_the_limit_however_little_was_in_flight():
    limit = Limit(40, latency_ms=100.0, baseline_latency_ms=100.0)
    limit.apply(congestion(), now=10.0, ceiling=64, saturated=True, in_flight=3)
    assert limit.concurrency_limit == int(40 * MIN_DECREASE_SHARE) == 20


def test_a_cut_always_lowers_the_limit():
    limit = Limit(5, latency_ms=100.0, baseline_latency_ms=100.0, last_decrease_at=0.0)
    limit.apply(congestion(), now=10.0, ceiling=64, saturated=True, in_flight=5)
    assert limit.concurrency_limit == 4


def test_the_limit_never_goes_below_one():
    limit = Limit(1)
    limit.apply(congestion(), now=0.0, ceiling=64, saturated=True, in_flight=limit.concurrency_limit)
    assert limit.concurrency_limit == 1


def test_an_idle_limit_does_not_grow():
    limit = Limit(10, last_decrease_at=0.0)
    assert limit.apply(successes(100), now=1.0, ceiling=64, saturated=False, in_flight=0) is None
    assert limit.concurrency_limit == 10


def test_latency_well_above_baseline_cuts_and_near_it_grows():
    limit = Limit(40, latency_ms=100.0, baseline_latency_ms=100.0, last_decrease_at=0.0)
    limit.apply(successes(40, latency_ms=110.0), now=5.0, ceiling=64, saturated=True, in_flight=limit.concurrency_limit)
    assert limit.concurrency_limit == 41  # near the baseline: grows
    # A saturated GPU: latency triples before any error.
    reason = None
    for step in range(40):
        reason = (
            limit.apply(successes(10, latency_ms=350.0), now=6.0 + step, ceiling=64, saturated=True, in_flight=limit.concurrency_limit)
            or reason
        )
        if reason == "latency":
            break
    assert reason == "latency"
    assert limit.concurrency_limit == int(41 * DECREASE_FACTOR)


def test_between_the_thresholds_the_limit_holds():
    limit = Limit(30, latency_ms=200.0, baseline_latency_ms=100.0, last_decrease_at=0.0)
    assert limit.apply(successes(60, latency_ms=200.0), now=5.0, ceiling=64, saturated=True, in_flight=limit.concurrency_limit) is None
    assert limit.concurrency_limit == 30


def test_a_lowered_ceiling_applies_at_once():
    limit = Limit(50, last_decrease_at=0.0)
    limit.apply(Feedback(), now=1.0, ceiling=16, saturated=False, in_flight=0)
    assert limit.concurrency_limit == 16


def test_baseline_follows_lower_latency_at_once_and_higher_slowly():
    limit = Limit(10)
    limit.apply(successes(1, latency_ms=100.0), now=0.0, ceiling=64, saturated=False, in_flight=0)
    assert limit.baseline_latency_ms == 100.0
    limit.apply(successes(50, latency_ms=50.0), now=1.0, ceiling=64, saturated=False, in_flight=0)
    assert limit.baseline_latency_ms == limit.latency_ms < 60
    limit.apply(successes(50, latency_ms=120.0), now=2.0, ceiling=64, saturated=False, in_flight=0)
    assert limit.latency_ms > 110 and limit.baseline_latency_ms < 70
