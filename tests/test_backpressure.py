"""Back-pressure is not failure: a 429 or 503 from an upstream that is full sends the
line back to the queue without using an attempt, so overload never fails a line
(docs/scheduling.md). OpenAI's 429 ``insufficient_quota`` is a billing stop: it fails fast."""

import asyncio
import collections
import json

import pytest
from django.utils import timezone

from batches import tasks, upstream
from batches.models import BatchRequest, BatchStatus, RequestStatus, UpstreamState
from batches.runner.results import ResultWriter
from tests.conftest import chat_line, run_batches


@pytest.mark.parametrize("fault, status", [("error_429_rate", 429), ("error_503_rate", 503)])
def test_overload_never_uses_a_lines_attempts(make_batch, upstream, settings, fault, status):
    # One attempt per line: a single counted failure would fail it.
    settings.OPENAI_BATCHES = {**settings.OPENAI_BATCHES, "MAX_ATTEMPTS": 1, "CIRCUIT_BREAKER_THRESHOLD": 1000}
    batch = make_batch([chat_line(f"r{i}", f"q{i}") for i in range(30)])
    assert tasks.validate_batch(batch.id) == "in_progress"
    upstream.configure(**{fault: 0.5}, retry_after_s=0, seed=11)
    assert run_batches() == "idle"
    batch.refresh_from_db()
    assert batch.status == BatchStatus.COMPLETED
    assert batch.request_counts() == {"total": 30, "completed": 30, "failed": 0}
    statuses = collections.Counter(code for _, path, code in upstream.records() if path == "/v1/chat/completions")
    assert statuses[200] == 30 and statuses[status] >= 10
    assert set(BatchRequest.objects.filter(batch=batch).values_list("attempts", flat=True)) == {1}
    # And the upstream's limit was cut for it.
    assert UpstreamState.objects.get(base_url=upstream.base_url).last_decrease_at is not None


class AnsweringClient:
    """An inference client whose every call gets one canned answer."""

    api_key = "none"

    def __init__(self, status, body, headers=None):
        self.answer = (status, headers or {}, json.dumps(body).encode())

    async def post(self, path, body):
        return self.answer


def classify(status, body, headers=None):
    return asyncio.run(upstream.send(AnsweringClient(status, body, headers), "/v1/chat/completions", {"model": "m"}))


def test_which_answers_are_back_pressure():
    rate_limited = classify(429, {"error": {"code": "rate_limit_exceeded", "message": "slow down"}}, {"retry-after": "2"})
    assert rate_limited.kind == "retry" and rate_limited.backpressure and rate_limited.congestion
    assert rate_limited.retry_after == 2.0
    assert classify(503, {"error": "overloaded"}).backpressure
    server_error = classify(500, {"error": "boom"})
    assert server_error.kind == "retry" and not server_error.backpressure and not server_error.congestion


def test_insufficient_quota_fails_fast():
    outcome = classify(429, {"error": {"code": "insufficient_quota", "message": "You exceeded your current quota."}})
    assert outcome.kind == "failed" and not outcome.backpressure
    assert outcome.error == {"code": "insufficient_quota", "message": "You exceeded your current quota."}


def test_back_pressure_refunds_the_attempt_and_waits_only_briefly(make_batch, upstream):
    batch = make_batch([chat_line("a")])
    tasks.validate_batch(batch.id)
    row = BatchRequest.objects.get(batch=batch)
    BatchRequest.objects.filter(pk=row.pk).update(status=RequestStatus.RUNNING, lease_owner="host:1:a", attempts=5)
    writer = ResultWriter("host:1:a", max_attempts=5)
    writer.add(row.pk, batch.id, 5, classify(429, {"error": {"code": "rate_limit_exceeded", "message": ""}}), backpressure=True)
    writer.flush()
    row.refresh_from_db()
    assert (row.status, row.attempts, row.lease_owner) == (RequestStatus.PENDING, 4, None)
    assert (row.not_before - timezone.now()).total_seconds() < 0.3
