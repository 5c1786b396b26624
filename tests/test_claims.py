"""Claims across batches (batches/claims.py): one transaction per upstream that
counts every dispatcher's live leases against the upstream's limit and each
batch's cap, divides the free places fairly, and applies AIMD feedback."""

from datetime import timedelta

import pytest
from django.utils import timezone

from batches import claims, tasks
from batches.aimd import Feedback
from batches.models import Batch, BatchRequest, RequestStatus, UpstreamState
from tests.conftest import chat_line


@pytest.fixture
def scheduling(settings, upstream):
    """``scheduling(**keys)``: OPENAI_BATCHES keys on top of the upstream fixture's."""

    def apply(**keys):
        settings.OPENAI_BATCHES = {**settings.OPENAI_BATCHES, **keys}

    apply(UPSTREAM_MAX_IN_FLIGHT=64, UPSTREAM_INITIAL_IN_FLIGHT=64, MAX_CONCURRENT_REQUESTS_PER_BATCH=64)
    return apply


@pytest.fixture
def running(make_batch, make_api_key, upstream):
    """``running(lines, key=None)`` -> a validated batch (in_progress), created with ``key``."""

    def make(count, key=None, **fields):
        lines = [chat_line(f"r{i}", f"q{i}") for i in range(count)]
        batch = make_batch(lines, owner=key.user if key else None, api_key=key, **fields)
        assert tasks.validate_batch(batch.id) == "in_progress"
        batch.refresh_from_db()
        return batch

    return make


def claim(claimer, base_url, wanted=1000, unflushed=None, feedback=None):
    now = timezone.now()
    return claimer.claim(
        base_url,
        wanted=wanted,
        unflushed=unflushed or {},
        feedback=feedback or Feedback(),
        now=now,
        lease_until=now + timedelta(seconds=60),
    )


def by_batch(claimed):
    counts = {}
    for _, batch_id, _, _ in claimed.rows:
        counts[batch_id] = counts.get(batch_id, 0) + 1
    return counts


def test_a_batch_knows_its_upstream_and_key(running, make_api_key, upstream):
    key, _ = make_api_key()
    batch = running(2, key=key)
    assert batch.upstream == upstream.base_url
    assert batch.api_key_id == key.pk


def test_the_upstream_budget_counts_every_dispatchers_leases(running, scheduling, upstream):
    scheduling(UPSTREAM_INITIAL_IN_FLIGHT=10, UPSTREAM_MAX_IN_FLIGHT=10)
    first, second = running(30), running(30)
    one, two = claims.Claimer("host:1:a"), claims.Claimer("host:2:b")
    got = claim(one, upstream.base_url)
    assert len(got.rows) == 10 and got.limit == 10 and got.in_flight == 0
    assert claim(two, upstream.base_url).rows == []  # the other dispatcher's leases fill the budget
    # Rows answered but not written yet are not in flight: the caller may replace them.
    assert len(claim(one, upstream.base_url, unflushed={first.id: 3}).rows) == 3
    assert {b for _, b, _, _ in got.rows} <= {first.id, second.id}


def test_the_per_batch_cap_holds_across_dispatchers(running, scheduling, upstream):
    scheduling(MAX_CONCURRENT_REQUESTS_PER_BATCH=4)
    batch = running(20)
    assert by_batch(claim(claims.Claimer("host:1:a"), upstream.base_url)) == {batch.id: 4}
    assert claim(claims.Claimer("host:2:b"), upstream.base_url).rows == []


def test_owners_share_the_budget_and_a_newcomer_is_served_at_once(running, scheduling, make_api_key, upstream):
    scheduling(UPSTREAM_INITIAL_IN_FLIGHT=16, UPSTREAM_MAX_IN_FLIGHT=16, MAX_CONCURRENT_REQUESTS_PER_BATCH=16)
    key_a, _ = make_api_key()
    key_b, _ = make_api_key()
    big = [running(100, key=key_a) for _ in range(3)]
    dispatcher = claims.Claimer("host:1:a")
    assert sum(by_batch(claim(dispatcher, upstream.base_url, wanted=10)).values()) == 10  # A alone: 10 in flight
    small = running(5, key=key_b)
    got = by_batch(claim(dispatcher, upstream.base_url))
    assert got == {small.id: 5, big[0].id: 1}  # B's whole batch; A the one place left
    assert Batch.objects.filter(pk__in=[b.id for b in big]).count() == 3


def test_weights_come_from_the_creating_key(running, scheduling, make_api_key, upstream):
    scheduling(UPSTREAM_INITIAL_IN_FLIGHT=32, UPSTREAM_MAX_IN_FLIGHT=32)
    light, _ = make_api_key()
    heavy, _ = make_api_key()
    heavy.weight = 3
    heavy.save()
    a, b = running(100, key=light), running(100, key=heavy)
    assert by_batch(claim(claims.Claimer("host:1:a"), upstream.base_url)) == {a.id: 8, b.id: 24}


def test_the_earliest_deadline_of_an_owner_goes_first(running, scheduling, make_api_key, upstream):
    scheduling(UPSTREAM_INITIAL_IN_FLIGHT=8, UPSTREAM_MAX_IN_FLIGHT=8)
    key, _ = make_api_key()
    running(50, key=key)
    urgent = running(50, key=key)
    Batch.objects.filter(pk=urgent.id).update(expires_at=timezone.now() + timedelta(hours=1))
    assert by_batch(claim(claims.Claimer("host:1:a"), upstream.base_url)) == {urgent.id: 8}


def test_lapsed_leases_are_claimed_first_and_rows_in_backoff_wait(running, scheduling, upstream):
    batch = running(6)
    dead = claims.Claimer("host:9:dead")
    taken = [pk for pk, *_ in claim(dead, upstream.base_url, wanted=2).rows]
    BatchRequest.objects.filter(pk__in=taken).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    BatchRequest.objects.filter(batch=batch, line__gt=4, status=RequestStatus.PENDING).update(
        not_before=timezone.now() + timedelta(minutes=1)
    )
    # Two places: the lapsed rows win them (the claimed rows come back in no particular order).
    first = claim(claims.Claimer("host:1:a"), upstream.base_url, wanted=2)
    assert {pk for pk, *_ in first.rows} == set(taken)
    assert {attempts for _, _, attempts, _ in first.rows} == {2}
    rest = claim(claims.Claimer("host:1:b"), upstream.base_url)
    lines = set(BatchRequest.objects.filter(pk__in=[pk for pk, *_ in rest.rows]).values_list("line", flat=True))
    assert lines == {3, 4}  # lines 5 and 6 are in backoff


def test_feedback_moves_the_shared_limit(running, scheduling, upstream):
    scheduling(UPSTREAM_INITIAL_IN_FLIGHT=8, UPSTREAM_MAX_IN_FLIGHT=64)
    running(100)
    dispatcher = claims.Claimer("host:1:a")
    assert claim(dispatcher, upstream.base_url).limit == 8
    successes = Feedback()
    for _ in range(8):
        successes.success(100.0)
    assert claim(dispatcher, upstream.base_url, feedback=successes).limit == 16  # slow start, saturated
    state = UpstreamState.objects.get(base_url=upstream.base_url)
    assert state.concurrency_limit == 16 and state.latency_ms == 100.0
    cut = claim(dispatcher, upstream.base_url, feedback=Feedback(congestion=1))
    assert cut.limit == 14  # slow start ends at 0.9 × the 16 in flight
    assert UpstreamState.objects.get(base_url=upstream.base_url).last_decrease_at is not None


def test_rows_that_start_alike_are_claimed_together_in_file_order(make_batch, scheduling, upstream):
    # Two system prompts, interleaved line by line in the file.
    prompts = ["You translate into French.", "You summarise legal text."]
    lines = [
        chat_line(f"r{i}", f"text {i}", messages=[{"role": "system", "content": prompts[i % 2]}, {"role": "user", "content": f"text {i}"}])
        for i in range(8)
    ]
    batch = make_batch(lines)
    assert tasks.validate_batch(batch.id) == "in_progress"
    dispatcher = claims.Claimer("host:1:a")
    claimed = []
    for _ in range(4):
        pks = [pk for pk, *_ in claim(dispatcher, upstream.base_url, wanted=2).rows]
        claimed += sorted(BatchRequest.objects.filter(pk__in=pks).values_list("line", flat=True))
    first_group = claimed[0] % 2
    # One system prompt's four lines first, in file order, then the other's.
    assert claimed == [line for parity in (first_group, 1 - first_group) for line in range(1, 9) if line % 2 == parity]


def test_a_claim_bringing_refusals_adds_no_call(running, scheduling, upstream):
    scheduling(UPSTREAM_INITIAL_IN_FLIGHT=16, UPSTREAM_MAX_IN_FLIGHT=16)
    batch = running(50)
    dispatcher = claims.Claimer("host:1:a")
    assert len(claim(dispatcher, upstream.base_url, wanted=16).rows) == 16
    # 6 calls refused: the limit is cut to 0.9 x the 10 still in flight.
    assert claim(dispatcher, upstream.base_url, unflushed={batch.id: 6}, feedback=Feedback(congestion=6)).limit == 9
    # 2 more refused within the cooldown: no second cut, and no call to replace them although a place is free.
    refused = claim(dispatcher, upstream.base_url, unflushed={batch.id: 8}, feedback=Feedback(congestion=2))
    assert (refused.limit, refused.in_flight, refused.rows) == (9, 8, [])
    assert len(claim(dispatcher, upstream.base_url, unflushed={batch.id: 8}).rows) == 1
