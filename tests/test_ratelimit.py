"""Cluster-wide upstream rate limits (batches/ratelimit.py): the GCRA arithmetic on
a fake clock, the shared database bucket, configuration, token estimates, and the
runner taking a permit for every request it sends."""

import collections

import pytest

from batches import ratelimit, tasks
from batches.models import BatchStatus, RateLimitBucket
from batches.ratelimit import Limiter, Rate, estimate_tokens, limiter_for
from batches.upstream import Route
from tests.conftest import chat_line, run_batches


class FakeClock:
    def __init__(self, start=1_000_000.0):
        self.now = start

    def __call__(self):
        return self.now


@pytest.fixture
def clock(monkeypatch):
    fake = FakeClock()
    monkeypatch.setattr(ratelimit.time, "time", fake)
    return fake


def greedy_permit_times(rate, seconds, step=0.01):
    """Every time a greedy client gets a unit permit, polling every ``step`` seconds."""
    tat, now, times = 0.0, 1000.0, []
    end = now + seconds
    while now < end:
        while (after := rate.take(tat, now, 1)) is not None:
            tat = after
            times.append(now)
        now += step
    return times


def max_in_window(times, width):
    window, best = collections.deque(), 0
    for t in times:
        window.append(t)
        while window[0] <= t - width:
            window.popleft()
        best = max(best, len(window))
    return best


@pytest.mark.parametrize("per_minute", [1, 7, 60, 600, 6000, 100_000])
def test_no_minute_exceeds_the_limit_even_with_a_second_of_jitter(per_minute):
    times = greedy_permit_times(Rate(per_minute), seconds=300, step=0.05 if per_minute < 10_000 else 0.01)
    assert max_in_window(times, 60.0) <= per_minute
    # Arrival jitter below a second cannot push a minute over either.
    assert max_in_window(times, 60.99) <= per_minute


def test_a_saturated_limit_is_used_almost_fully():
    times = greedy_permit_times(Rate(600), seconds=300)
    assert max_in_window(times, 60.0) >= 570
    rate = Rate(600)
    assert rate.burst == 10
    assert len([t for t in times if t == times[0]]) == 10  # one second's worth at once


def test_a_cost_larger_than_the_burst_goes_alone_when_the_bucket_is_full():
    rate = Rate(600)  # burst 10 units
    assert rate.take(0.0, 100.0, 50) == pytest.approx(100.0 + 50 * rate.interval)
    tat = rate.take(0.0, 100.0, 50)
    assert rate.take(tat, 100.0, 1) is None
    assert rate.wait(tat, 100.0, 50) == pytest.approx(tat - 100.0)
    assert rate.take(tat, tat, 50) is not None


def test_wait_says_when_the_next_permit_fits():
    rate = Rate(120)
    tat = 0.0
    for _ in range(int(rate.burst)):
        tat = rate.take(tat, 50.0, 1)
    assert rate.take(tat, 50.0, 1) is None
    wait = rate.wait(tat, 50.0, 1)
    assert wait > 0
    assert rate.take(tat, 50.0 + wait, 1) is not None
    assert rate.take(tat, 50.0 + wait * 0.9, 1) is None


@pytest.mark.django_db
def test_limiters_with_one_key_share_one_budget(clock):
    first, second = Limiter("model:m", rpm=600), Limiter("model:m", rpm=600)
    assert first.acquire([0] * 4) == (4, 0.0)
    granted, wait = second.acquire([0] * 20)
    assert granted == 6  # the burst of 10, minus what the other process took
    assert wait > 0
    assert first.acquire([0]) == (0, pytest.approx(wait))
    clock.now += wait
    assert second.acquire([0, 0]) == (1, pytest.approx(Rate(600).interval))
    assert RateLimitBucket.objects.get(pk="model:m").requests_tat > clock.now


@pytest.mark.django_db
def test_tokens_and_requests_must_both_fit(clock):
    limiter = Limiter("upstream:u", rpm=600, tpm=6000)  # bursts: 10 requests, 100 tokens
    granted, wait = limiter.acquire([40, 40, 40, 1])
    assert granted == 2
    assert wait == pytest.approx(Rate(6000).wait(RateLimitBucket.objects.get(pk="upstream:u").tokens_tat, clock.now, 40))
    clock.now += 60
    assert limiter.acquire([1] * 12) == (10, pytest.approx(Rate(600).interval))


@pytest.mark.django_db
def test_a_deleted_bucket_row_is_recreated(clock):
    limiter = Limiter("model:gone", rpm=60)
    assert limiter.acquire([0]) == (1, 0.0)
    RateLimitBucket.objects.all().delete()
    assert limiter.acquire([0])[0] == 1


def test_configuration_picks_a_model_entry_then_the_upstream_default(settings):
    route = Route("http://upstream.example/v1", "")
    settings.OPENAI_BATCHES = {"RATE_LIMITS": {"big": {"rpm": 10, "tpm": 1000}, "*": {"rpm": 600}, "off": {}}}
    own = limiter_for("big", route)
    assert (own.key, own.requests.per_minute, own.tokens.per_minute) == ("model:big", 10, 1000)
    shared = limiter_for("small", route)
    assert (shared.key, shared.requests.per_minute, shared.tokens) == ("upstream:http://upstream.example/v1", 600, None)
    assert limiter_for("off", route) is None
    long_route = Route("http://upstream.example/" + "x" * 400, "")
    assert len(limiter_for("small", long_route).key) <= 255
    settings.OPENAI_BATCHES = {}
    assert limiter_for("big", route) is None


def test_token_estimate_counts_text_and_the_output_cap():
    body = {"model": "a-very-long-model-name", "messages": [{"role": "user", "content": "x" * 400}], "max_tokens": 50, "n": 2}
    # 400 + len("user") characters -> 101 tokens; plus 50 output tokens for each of 2 choices.
    assert estimate_tokens(body) == 101 + 100
    assert estimate_tokens({"model": "m", "input": ["abcd", "efgh"], "max_output_tokens": 7}) == 2 + 7
    assert estimate_tokens({"model": "m", "prompt": "abc", "max_tokens": True, "n": 0}) == 1
    # Strings at any depth count (content parts, tool definitions); the model name never does.
    parts = [{"type": "text", "text": "abcd" * 3}, {"type": "image_url", "image_url": {"url": "u" * 11}}]
    body = {"model": "m" * 50, "messages": [{"role": "user", "content": parts}], "tools": [{"function": {"name": "f" * 8}}]}
    assert estimate_tokens(body) == 12  # 4 + 4 + 12 + 9 + 11 + 8 = 48 characters


def test_a_model_that_is_not_a_string_is_left_out_of_the_estimate():
    assert estimate_tokens({"model": {"id": "x" * 40}, "prompt": "abcd"}) == 1


@pytest.mark.django_db
def test_the_dispatcher_takes_a_permit_for_every_request(make_batch, upstream, settings, monkeypatch):
    settings.OPENAI_BATCHES = {**settings.OPENAI_BATCHES, "RATE_LIMITS": {"fake-model": {"rpm": 120, "tpm": 100_000}}}
    taken = []
    acquire = Limiter.acquire

    def spy(self, costs):
        granted, wait = acquire(self, costs)
        taken.append((list(costs), granted))
        return granted, wait

    monkeypatch.setattr(Limiter, "acquire", spy)
    lines = [chat_line(f"r{i}", f"question {i}", max_tokens=5) for i in range(5)]
    batch = make_batch(lines)
    assert tasks.validate_batch(batch.id) == "in_progress"
    assert run_batches() == "idle"
    batch.refresh_from_db()
    assert batch.status == BatchStatus.COMPLETED
    calls = upstream.stats()["by_path"]["/v1/chat/completions"]
    assert calls == 5
    assert sum(granted for _, granted in taken) == calls
    # The burst of 120 rpm is 2: the other three waited for permits, one every 0.51 s.
    arrivals = sorted(t for t, path, _ in upstream.records() if path == "/v1/chat/completions")
    assert arrivals[-1] - arrivals[0] >= 1.4
    assert max(granted for _, granted in taken) <= 2
    assert {cost for costs, _ in taken for cost in costs} == {estimate_tokens(line["body"]) for line in lines}
