"""The fair-share order (batches/fairshare.py) on synthetic queues: owners by
weighted max-min fairness, an owner's batches by deadline."""

from datetime import UTC, datetime, timedelta

from batches.fairshare import Candidate, allocate, shares, will_miss_window

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def batch(batch_id, owner, *, weight=1, live=0, remaining=1000, cap=64, expires_in_h=24, at_risk=False):
    return Candidate(batch_id, owner, weight, live, remaining, cap, NOW + timedelta(hours=expires_in_h), NOW, at_risk)


def test_an_owner_with_one_small_batch_gets_its_share_at_once_beside_twenty_large_ones():
    queue = [batch(f"a{i}", owner=1, live=3 if i < 10 else 0, cap=8) for i in range(20)]  # 30 in flight
    queue.append(batch("b", owner=2, remaining=10, cap=8))
    allocation = allocate(queue, 34)  # a limit of 64, 30 in flight
    assert allocation["b"] == 8  # its cap: it wants less than its share
    assert sum(allocation.values()) == 34


def test_equal_owners_converge_to_equal_in_flight():
    queue = [batch("a1", 1, live=20), batch("a2", 1), batch("b1", 2, live=4)]
    allocation = allocate(queue, 16)
    # Water-filling: B is raised to A's 20 first, then both grow together.
    assert allocation == {"b1": 16}
    allocation = allocate(queue, 26)
    assert allocation.get("b1") == 21 and allocation["a1"] == 5  # 25 each


def test_weights_divide_the_budget_in_proportion():
    queue = [batch("a", 1), batch("b", 2, weight=3)]
    allocation = allocate(queue, 32)
    assert allocation == {"a": 8, "b": 24}


def test_within_an_owner_the_earliest_deadline_goes_first():
    queue = [batch("day", 1, expires_in_h=24, cap=10), batch("hour", 1, expires_in_h=1, cap=10)]
    assert allocate(queue, 10) == {"hour": 10}
    assert allocate(queue, 15) == {"hour": 10, "day": 5}


def test_a_batch_that_will_miss_its_window_goes_before_batches_with_slack():
    queue = [batch("soon", 1, expires_in_h=1, cap=10), batch("late-but-behind", 1, expires_in_h=5, cap=10, at_risk=True)]
    assert allocate(queue, 10) == {"late-but-behind": 10}


def test_headroom_respects_the_per_batch_cap_and_the_remaining_lines():
    queue = [batch("capped", 1, live=6, cap=8), batch("almost-done", 2, live=1, remaining=3)]
    assert allocate(queue, 100) == {"capped": 2, "almost-done": 2}
    assert allocate(queue, 0) == {}


def test_an_owner_over_its_share_is_not_preempted_but_gets_nothing_more():
    queue = [batch("a", 1, live=40), batch("b", 2, live=0)]
    assert allocate(queue, 10) == {"b": 10}


def test_ties_are_deterministic():
    queue = [batch("x", 2), batch("y", 1)]
    assert allocate(queue, 1) == allocate(list(reversed(queue)), 1)


def test_will_miss_window_at_the_current_rate():
    started = NOW - timedelta(minutes=30)
    # 100 of 1000 lines in 30 minutes: 4.5 hours to go.
    assert will_miss_window(total=1000, done=100, started_at=started, expires_at=NOW + timedelta(hours=4), now=NOW)
    assert not will_miss_window(total=1000, done=100, started_at=started, expires_at=NOW + timedelta(hours=5), now=NOW)
    assert not will_miss_window(total=1000, done=0, started_at=started, expires_at=NOW + timedelta(minutes=1), now=NOW)


def test_shares_for_the_admin():
    queue = [batch("a1", 1, live=5), batch("a2", 1, expires_in_h=1), batch("b", 2, weight=3, live=2)]
    result = shares(queue, 64)
    assert result["a2"]["position"] == 1 and result["a1"]["position"] == 2
    assert result["a1"]["owner_share"] == 16 and result["b"]["owner_share"] == 48
    assert result["a1"]["owner_in_flight"] == 5
