"""Running batches in-process (no qcluster): validate_batch -> dispatch ->
finalize against the fake upstream; retries, cancel, expiry, idempotency, leases.

In ``db`` tests ``transaction.on_commit`` callbacks never fire, so nothing is
enqueued on django-q2: every task is called directly here.
"""

import asyncio
import json
import socket
import time
from datetime import timedelta

import pytest
from django.utils import timezone

from batches import lifecycle, tasks
from batches import upstream as upstream_module
from batches.claims import Claimer
from batches.models import Batch, BatchRequest, BatchStatus, DispatcherSlot, RequestStatus
from batches.runner import dispatcher
from batches.runner.results import ResultWriter
from files_app.models import File
from tests.conftest import chat_line, claim, run_batches


@pytest.fixture
def batch_settings(settings, upstream):
    """``batch_settings(**keys)``: override OPENAI_BATCHES keys on top of the upstream fixture's."""

    def apply(**keys):
        settings.OPENAI_BATCHES = {**settings.OPENAI_BATCHES, **keys}

    return apply


@pytest.fixture
def run(validated):
    """``run(lines)`` -> (outcome of the dispatcher, the batch afterwards)."""

    def do(lines, **fields):
        batch = validated(lines, **fields)
        outcome = run_batches()
        batch.refresh_from_db()
        return outcome, batch

    return do


@pytest.fixture
def on_flush(monkeypatch):
    """``on_flush(callback)``: call ``callback(batch_ids)`` after every flush of a
    dispatcher's result writer that finished lines of those batches."""

    def install(callback):
        original = ResultWriter.flush

        def flush_then_observe(self):
            finished = original(self)
            if finished:
                callback(list(finished))
            return finished

        monkeypatch.setattr(ResultWriter, "flush", flush_then_observe)

    return install


def read_jsonl(file_id):
    with File.objects.get(pk=file_id).content.open("rb") as handle:
        return [json.loads(line) for line in handle]


def lines_of(batch):
    """(output lines by custom_id, error lines by custom_id) of a finished batch."""
    output = {r["custom_id"]: r for r in read_jsonl(batch.output_file_id)} if batch.output_file_id else {}
    errors = {r["custom_id"]: r for r in read_jsonl(batch.error_file_id)} if batch.error_file_id else {}
    return output, errors


def chat_calls(fake):
    return fake.stats()["by_path"].get("/v1/chat/completions", 0)


# --- the happy path -----------------------------------------------------------------


def test_batch_completes_with_an_output_file(run, upstream):
    contents = [f"question {i}" for i in range(6)]
    outcome, batch = run([chat_line(f"req-{i}", content) for i, content in enumerate(contents)])
    assert outcome == "idle"
    assert batch.status == BatchStatus.COMPLETED
    assert batch.in_progress_at and batch.finalizing_at and batch.completed_at
    assert batch.request_counts() == {"total": 6, "completed": 6, "failed": 0}
    assert batch.error_file_id is None

    output_file = File.objects.get(pk=batch.output_file_id)
    assert output_file.purpose == "batch_output"
    assert output_file.owner_id == batch.owner_id
    assert output_file.filename.endswith(".jsonl")
    output, _ = lines_of(batch)
    assert set(output) == {f"req-{i}" for i in range(6)}
    for i, content in enumerate(contents):
        line = output[f"req-{i}"]
        assert set(line) == {"id", "custom_id", "response", "error"}
        assert line["id"].startswith("batch_req_")
        assert line["error"] is None
        assert set(line["response"]) == {"status_code", "request_id", "body"}
        assert line["response"]["status_code"] == 200
        assert line["response"]["request_id"].startswith("req_")
        assert line["response"]["body"]["object"] == "chat.completion"
        assert line["response"]["body"]["choices"][0]["message"]["content"] == f"echo: {content}"
    assert len({line["id"] for line in output.values()}) == 6

    bodies = [line["response"]["body"] for line in output.values()]
    prompt = sum(b["usage"]["prompt_tokens"] for b in bodies)
    completion = sum(b["usage"]["completion_tokens"] for b in bodies)
    assert batch.usage["input_tokens"] == prompt > 0
    assert batch.usage["output_tokens"] == completion > 0
    assert batch.usage["total_tokens"] == prompt + completion

    assert upstream.stats()["content_counts"] == {content: 1 for content in contents}
    assert set(BatchRequest.objects.filter(batch=batch).values_list("status", flat=True)) == {RequestStatus.SUCCEEDED}
    assert batch.lease_owner is None


def test_upstream_4xx_goes_to_the_error_file_unretried(run, upstream):
    outcome, batch = run([chat_line("ok-1"), chat_line("bad", "please FAIL_400"), chat_line("ok-2")])
    assert batch.status == BatchStatus.COMPLETED
    assert batch.request_counts() == {"total": 3, "completed": 2, "failed": 1}
    output, errors = lines_of(batch)
    assert set(output) == {"ok-1", "ok-2"}
    assert set(errors) == {"bad"}
    line = errors["bad"]
    assert line["response"]["status_code"] == 400
    assert line["response"]["request_id"].startswith("req_")
    assert line["response"]["body"]["error"]["code"] == "fake_fail_400"
    assert line["error"] == {"code": "fake_fail_400", "message": "Deliberate failure requested by FAIL_400 marker."}
    assert upstream.stats()["content_counts"]["please FAIL_400"] == 1
    assert File.objects.get(pk=batch.error_file_id).purpose == "batch_output"


def test_all_failed_leaves_no_output_file(run):
    _, batch = run([chat_line("bad", "FAIL_400")])
    assert batch.status == BatchStatus.COMPLETED
    assert batch.output_file_id is None
    assert batch.error_file_id is not None


def test_output_files_honour_output_expires_after(run):
    _, batch = run([chat_line("a"), chat_line("b", "FAIL_400")], output_expires_after=3600)
    for file_id in (batch.output_file_id, batch.error_file_id):
        stored = File.objects.get(pk=file_id)
        assert stored.expires_at == stored.created_at + timedelta(seconds=3600)


def test_counters_update_live_while_running(run, upstream, batch_settings, on_flush):
    batch_settings(MAX_CONCURRENT_REQUESTS_PER_BATCH=2)
    upstream.configure(latency_ms=50)
    seen = []
    on_flush(
        lambda batch_ids: seen.append(
            Batch.objects.filter(pk=batch_ids[0]).values_list("status", "completed_requests", "failed_requests").get()
        )
    )
    _, batch = run([chat_line(f"r{i}", "FAIL_400" if i % 4 == 0 else f"q{i}") for i in range(8)])
    assert batch.request_counts() == {"total": 8, "completed": 6, "failed": 2}
    in_progress = [(done, failed) for status, done, failed in seen if status == BatchStatus.IN_PROGRESS]
    assert len(in_progress) >= 2
    assert any(0 < done + failed < 8 for done, failed in in_progress)
    totals = [done + failed for done, failed in in_progress]
    assert totals == sorted(totals)


def test_window_slides_past_a_slow_request(run, batch_settings, monkeypatch):
    """With a window of 2, one slow request must not hold back the other slot:
    the slow one only finishes once every fast one has (or after 10 s, which fails)."""
    batch_settings(MAX_CONCURRENT_REQUESTS_PER_BATCH=2)
    real_send = upstream_module.send
    finished = []
    fast_count = 6
    all_fast_done = asyncio.Event()

    async def send(client, endpoint, body):
        content = json.loads(body)["messages"][0]["content"]  # claimed bodies come as their stored JSON text
        if content == "slow":
            try:
                await asyncio.wait_for(all_fast_done.wait(), timeout=10)
            except TimeoutError:
                pass
        outcome = await real_send(client, endpoint, body)
        finished.append(content)
        if sum(1 for c in finished if c.startswith("fast")) == fast_count:
            all_fast_done.set()
        return outcome

    monkeypatch.setattr(upstream_module, "send", send)
    _, batch = run([chat_line("slow", "slow")] + [chat_line(f"fast-{i}", f"fast-{i}") for i in range(fast_count)])
    assert batch.status == BatchStatus.COMPLETED
    assert finished[-1] == "slow"


def test_concurrency_never_exceeds_the_window(run, upstream, batch_settings):
    batch_settings(MAX_CONCURRENT_REQUESTS_PER_BATCH=3)
    upstream.configure(latency_ms=20)
    _, batch = run([chat_line(f"r{i}", f"q{i}") for i in range(12)])
    assert batch.request_counts()["completed"] == 12
    assert 1 <= upstream.stats()["max_in_flight"] <= 3


# --- retries ------------------------------------------------------------------------------


def chat_statuses(fake):
    """Count of each HTTP status the fake upstream answered on chat completions."""
    counts = {}
    for _, path, status in fake.records():
        if path == "/v1/chat/completions":
            counts[status] = counts.get(status, 0) + 1
    return counts


@pytest.mark.parametrize("fault, status", [("error_500_rate", 500), ("error_503_rate", 503), ("error_429_rate", 429)])
def test_transient_errors_are_retried(validated, upstream, batch_settings, fault, status):
    batch_settings(MAX_ATTEMPTS=20)
    contents = [f"q{i}" for i in range(15)]
    batch = validated([chat_line(f"r{i}", content) for i, content in enumerate(contents)])
    upstream.configure(**{fault: 0.4}, retry_after_s=0, seed=7)
    assert run_batches() == "idle"
    batch.refresh_from_db()
    assert batch.status == BatchStatus.COMPLETED
    assert batch.request_counts() == {"total": 15, "completed": 15, "failed": 0}
    statuses = chat_statuses(upstream)
    assert statuses[200] == 15
    assert statuses[status] > 0
    assert set(statuses) == {200, status}
    attempts = set(BatchRequest.objects.filter(batch=batch).values_list("attempts", flat=True))
    # A 500 costs an attempt; 429 and 503 are back-pressure, which never does.
    assert max(attempts) > 1 if status == 500 else attempts == {1}
    output, _ = lines_of(batch)
    assert {line["response"]["body"]["choices"][0]["message"]["content"] for line in output.values()} == {f"echo: {c}" for c in contents}


def test_exhausted_retries_write_the_last_status(run, upstream, batch_settings):
    batch_settings(MAX_ATTEMPTS=3)
    _, batch = run([chat_line("ok"), chat_line("flaky", "always FAIL_500"), chat_line("ok-2")])
    assert batch.status == BatchStatus.COMPLETED
    assert batch.request_counts() == {"total": 3, "completed": 2, "failed": 1}
    _, errors = lines_of(batch)
    assert errors["flaky"]["response"]["status_code"] == 500
    assert errors["flaky"]["response"]["body"]["error"]["type"] == "server_error"
    assert errors["flaky"]["error"]["message"].startswith("Deliberate failure")
    assert upstream.stats()["content_counts"]["always FAIL_500"] == 3
    assert BatchRequest.objects.get(batch=batch, custom_id="flaky").attempts == 3


def test_unreachable_upstream_gives_up_with_no_response(validated, upstream, batch_settings):
    batch_settings(MAX_ATTEMPTS=2, CIRCUIT_BREAKER_THRESHOLD=100)
    batch = validated([chat_line("a")])
    upstream.configure(down=True)
    assert run_batches() == "idle"
    batch.refresh_from_db()
    assert batch.status == BatchStatus.COMPLETED
    _, errors = lines_of(batch)
    assert errors["a"]["response"] is None
    assert errors["a"]["error"]["code"] == "upstream_unreachable"
    assert upstream.stats()["dropped"] == 2


@pytest.fixture
def silent_upstream():
    """The base URL of a server that accepts connections and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    yield f"http://127.0.0.1:{server.getsockname()[1]}/v1"
    server.close()


def test_a_silent_upstream_holds_back_only_its_own_batches(validated, upstream, batch_settings, silent_upstream, on_flush):
    batch_settings(
        MODELS={"fake-model": {"base_url": upstream.base_url}, "silent-model": {"base_url": silent_upstream}},
        UPSTREAM_TIMEOUT=3.0,
        MAX_ATTEMPTS=1,
    )
    stuck = validated([chat_line(f"s{i}", model="silent-model") for i in range(3)])
    healthy = validated([chat_line(f"h{i}") for i in range(20)])
    stuck_done_when_healthy_finished = []

    def observe(batch_ids):
        if healthy.id in batch_ids and not stuck_done_when_healthy_finished:
            if Batch.objects.get(pk=healthy.id).completed_requests == 20:
                stuck_done_when_healthy_finished.append(
                    BatchRequest.objects.filter(batch=stuck).exclude(status=RequestStatus.RUNNING).count()
                )

    on_flush(observe)
    assert run_batches() == "idle"
    # The healthy batch finished while every call to the silent upstream was still waiting.
    assert stuck_done_when_healthy_finished == [0]
    healthy.refresh_from_db()
    stuck.refresh_from_db()
    assert (healthy.status, healthy.request_counts()) == (BatchStatus.COMPLETED, {"total": 20, "completed": 20, "failed": 0})
    assert (stuck.status, stuck.request_counts()) == (BatchStatus.COMPLETED, {"total": 3, "completed": 0, "failed": 3})
    assert chat_calls(upstream) == 20


# --- cancel -------------------------------------------------------------------------------


def test_cancel_mid_run_keeps_finished_results(run, upstream, batch_settings, on_flush, monkeypatch):
    batch_settings(MAX_CONCURRENT_REQUESTS_PER_BATCH=2)
    monkeypatch.setattr(dispatcher, "STATUS_CHECK_SECONDS", 0.05)
    upstream.configure(latency_ms=100)

    def cancel_once(batch_ids):
        batch = Batch.objects.get(pk=batch_ids[0])
        if batch.status == BatchStatus.IN_PROGRESS:
            assert lifecycle.request_cancel(batch)

    on_flush(cancel_once)
    outcome, batch = run([chat_line(f"r{i:02d}", f"q{i}") for i in range(20)])
    assert outcome == "idle"
    assert batch.status == BatchStatus.CANCELLED
    assert batch.cancelling_at is not None and batch.cancelled_at is not None
    assert batch.cancelling_at <= batch.cancelled_at

    output, errors = lines_of(batch)
    assert len(output) + len(errors) == 20
    assert set(output) | set(errors) == {f"r{i:02d}" for i in range(20)}
    assert 0 < len(output) < 20
    for line in errors.values():
        assert line["response"] is None
        assert line["error"]["code"] == "batch_cancelled"
    assert batch.request_counts() == {"total": 20, "completed": len(output), "failed": len(errors)}
    # Nothing was sent after the cancel took effect beyond what finished.
    assert chat_calls(upstream) == len(output)
    assert not BatchRequest.objects.filter(batch=batch).unfinished().exists()


@pytest.fixture
def cancel_once_in_flight(monkeypatch):
    """Cancel every running batch the first time a dispatcher claims while calls of it are in flight."""
    original = Claimer.claim

    def cancel_then_claim(self, *args, **kwargs):
        in_flight = Batch.objects.filter(status=BatchStatus.IN_PROGRESS, requests__status=RequestStatus.RUNNING).distinct()
        for batch in in_flight:
            assert lifecycle.request_cancel(batch)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Claimer, "claim", cancel_then_claim)


def test_calls_in_flight_at_cancel_finish_and_keep_their_results(run, upstream, batch_settings, cancel_once_in_flight, monkeypatch):
    batch_settings(MAX_CONCURRENT_REQUESTS_PER_BATCH=2, CANCEL_DRAIN_SECONDS=30)
    monkeypatch.setattr(dispatcher, "STATUS_CHECK_SECONDS", 0.05)
    upstream.configure(latency_ms=1500)
    outcome, batch = run([chat_line(f"r{i}", f"q{i}") for i in range(6)])
    assert outcome == "idle"
    assert batch.status == BatchStatus.CANCELLED
    output, errors = lines_of(batch)
    # The two calls sent before the cancel were answered after it: real results, not batch_cancelled.
    assert set(output) == {"r0", "r1"}
    assert [output[cid]["response"]["body"]["choices"][0]["message"]["content"] for cid in ("r0", "r1")] == ["echo: q0", "echo: q1"]
    assert set(errors) == {"r2", "r3", "r4", "r5"}
    assert {line["error"]["code"] for line in errors.values()} == {"batch_cancelled"}
    assert chat_calls(upstream) == 2  # nothing new was sent after the cancel
    assert batch.request_counts() == {"total": 6, "completed": 2, "failed": 4}


def test_cancel_drain_seconds_bounds_the_wait_for_calls_in_flight(validated, upstream, batch_settings, cancel_once_in_flight, monkeypatch):
    batch_settings(MAX_CONCURRENT_REQUESTS_PER_BATCH=2, CANCEL_DRAIN_SECONDS=0.2)
    monkeypatch.setattr(dispatcher, "STATUS_CHECK_SECONDS", 0.05)
    batch = validated([chat_line(f"r{i}", f"q{i}") for i in range(4)])
    upstream.configure(latency_ms=4000)
    started = time.monotonic()
    assert run_batches() == "idle"
    assert time.monotonic() - started < 3  # the answers, due after 4 s, were not waited for
    batch.refresh_from_db()
    assert batch.status == BatchStatus.CANCELLED
    output, errors = lines_of(batch)
    assert output == {}
    assert set(errors) == {"r0", "r1", "r2", "r3"}
    assert all(line["response"] is None and line["error"]["code"] == "batch_cancelled" for line in errors.values())
    assert chat_calls(upstream) == 2
    assert batch.request_counts() == {"total": 4, "completed": 0, "failed": 4}


def test_a_dispatcher_killed_while_draining_leaves_every_line_accounted_for(validated, upstream):
    batch = validated([chat_line("a"), chat_line("b"), chat_line("c")])
    claimed = claim("host:9:dead", 2)  # two calls in flight, then the cancel, then the worker dies
    assert lifecycle.request_cancel(batch)
    assert tasks.finalize_batch(batch.id) is False  # live leases: the calls are draining
    BatchRequest.objects.filter(batch=batch).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    assert tasks.sweep()["finalize"] == 1
    assert tasks.finalize_batch(batch.id) is True
    batch.refresh_from_db()
    assert batch.status == BatchStatus.CANCELLED
    _, errors = lines_of(batch)
    assert set(errors) == {"a", "b", "c"}
    assert {line["error"]["code"] for line in errors.values()} == {"batch_cancelled"}
    # The dead dispatcher's answers, should it come back, are discarded: each line has one result.
    late = ResultWriter("host:9:dead", max_attempts=5)
    for pk, batch_id, attempts in claimed:
        late.add(pk, batch_id, attempts, succeeded_outcome(pk))
    assert late.flush() == {}
    assert Batch.objects.get(pk=batch.id).request_counts() == {"total": 3, "completed": 0, "failed": 3}


def test_cancel_before_running_then_finalize(validated, upstream):
    batch = validated([chat_line("a"), chat_line("b")])
    assert lifecycle.request_cancel(batch)
    assert Batch.objects.get(pk=batch.id).status == BatchStatus.CANCELLING
    assert tasks.dispatch() == "idle"
    assert tasks.finalize_batch(batch.id) is True
    batch.refresh_from_db()
    assert batch.status == BatchStatus.CANCELLED
    output, errors = lines_of(batch)
    assert output == {}
    assert {cid: line["error"]["code"] for cid, line in errors.items()} == {"a": "batch_cancelled", "b": "batch_cancelled"}
    assert chat_calls(upstream) == 0


def test_cancel_while_validating(make_batch, upstream):
    batch = make_batch([chat_line("a")])
    assert lifecycle.request_cancel(batch)
    assert tasks.validate_batch(batch.id) == "skipped"
    assert tasks.finalize_batch(batch.id) is True
    batch.refresh_from_db()
    assert batch.status == BatchStatus.CANCELLED
    assert batch.request_counts() == {"total": 0, "completed": 0, "failed": 0}
    assert batch.output_file_id is None and batch.error_file_id is None


# --- expiry -------------------------------------------------------------------------------


def test_expired_batch_is_swept_and_finalized(validated, upstream):
    batch = validated([chat_line("a"), chat_line("b"), chat_line("c")])
    Batch.objects.filter(pk=batch.id).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert tasks.sweep()["expired"] == 1
    assert Batch.objects.get(pk=batch.id).status == BatchStatus.FINALIZING
    assert tasks.finalize_batch(batch.id) is True
    batch.refresh_from_db()
    assert batch.status == BatchStatus.EXPIRED
    assert batch.expired_at is not None
    assert batch.output_file_id is None
    _, errors = lines_of(batch)
    assert set(errors) == {"a", "b", "c"}
    for line in errors.values():
        assert line["response"] is None
        assert line["error"]["code"] == "batch_expired"
    assert batch.request_counts() == {"total": 3, "completed": 0, "failed": 3}
    assert tasks.dispatch() == "idle"
    assert chat_calls(upstream) == 0


def test_expiry_mid_run_keeps_finished_results(run, upstream, batch_settings, on_flush, monkeypatch):
    batch_settings(MAX_CONCURRENT_REQUESTS_PER_BATCH=2)
    monkeypatch.setattr(dispatcher, "STATUS_CHECK_SECONDS", 0.05)
    upstream.configure(latency_ms=100)
    on_flush(lambda batch_ids: Batch.objects.filter(pk__in=batch_ids).update(expires_at=timezone.now() - timedelta(seconds=1)))
    outcome, batch = run([chat_line(f"r{i:02d}", f"q{i}") for i in range(20)])
    assert outcome == "idle"
    assert batch.status == BatchStatus.EXPIRED
    output, errors = lines_of(batch)
    assert len(output) + len(errors) == 20
    assert 0 < len(output) < 20
    assert {line["error"]["code"] for line in errors.values()} == {"batch_expired"}


def test_expired_while_validating(make_batch, upstream):
    batch = make_batch([chat_line("a")])
    Batch.objects.filter(pk=batch.id).update(expires_at=timezone.now() - timedelta(seconds=1))
    tasks.sweep()
    assert tasks.finalize_batch(batch.id) is True
    batch.refresh_from_db()
    assert batch.status == BatchStatus.EXPIRED
    assert batch.output_file_id is None and batch.error_file_id is None


# --- idempotency and leases --------------------------------------------------------------


def test_running_a_finished_batch_again_is_a_no_op(run, upstream):
    _, batch = run([chat_line("a"), chat_line("b")])
    calls, output_id = chat_calls(upstream), batch.output_file_id
    assert tasks.dispatch() == "idle"
    assert tasks.finalize_batch(batch.id) is False
    assert tasks.validate_batch(batch.id) == "skipped"
    batch.refresh_from_db()
    assert chat_calls(upstream) == calls
    assert batch.output_file_id == output_id
    assert File.objects.filter(purpose="batch_output").count() == 1


def test_a_dispatcher_leaves_when_every_slot_is_held_by_a_live_one(validated, batch_settings, upstream):
    batch_settings(DISPATCHERS=1)
    validated([chat_line("a")])
    DispatcherSlot.objects.create(slot=0, owner="host:1:live", lease_expires_at=timezone.now() + timedelta(minutes=1))
    assert tasks.dispatch() == "no_slot"
    assert chat_calls(upstream) == 0
    # A slot whose lease lapsed (its dispatcher died) is taken over.
    DispatcherSlot.objects.filter(slot=0).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    assert run_batches() == "idle"
    assert chat_calls(upstream) == 1


def succeeded_outcome(pk):
    body = {"object": "chat.completion", "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}
    return upstream_module.Outcome("succeeded", status_code=200, body=body, request_id=f"req_stale_{pk}")


def test_results_of_a_dispatcher_whose_lease_was_taken_over_are_discarded(validated, settings):
    batch = validated([chat_line("a"), chat_line("b")])
    claimed = claim("host:1:first", 2)
    assert len(claimed) == 2
    # The first dispatcher stalls past its lease; a second one takes the rows over.
    BatchRequest.objects.filter(batch=batch).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    assert {pk for pk, _, _ in claim("host:2:second", 2)} == {pk for pk, _, _ in claimed}

    first = ResultWriter("host:1:first", max_attempts=5)
    for pk, batch_id, attempts in claimed:
        first.add(pk, batch_id, attempts, succeeded_outcome(pk))
    assert first.flush() == {}
    assert first.stats["succeeded"] == 0
    rows = BatchRequest.objects.filter(batch=batch)
    assert set(rows.values_list("status", "lease_owner")) == {(RequestStatus.RUNNING, "host:2:second")}
    assert set(rows.values_list("attempts", flat=True)) == {2}
    assert Batch.objects.get(pk=batch.id).completed_requests == 0

    second = ResultWriter("host:2:second", max_attempts=5)
    for pk, batch_id, attempts in claimed:
        second.add(pk, batch_id, attempts + 1, succeeded_outcome(pk))
    assert second.flush() == {batch.id: 2}
    assert second.stats["succeeded"] == 2
    assert set(rows.values_list("status", "lease_owner")) == {(RequestStatus.SUCCEEDED, None)}
    assert set(rows.values_list("upstream_request_id", flat=True)) == {f"req_stale_{pk}" for pk, _, _ in claimed}
    assert Batch.objects.get(pk=batch.id).completed_requests == 2


def test_results_for_rows_finished_meanwhile_are_discarded(validated):
    batch = validated([chat_line("a")])
    ((pk, batch_id, attempts),) = claim("host:1:stale", 1)
    # Finalization (cancel) ended the row while the dispatcher was still waiting on it.
    BatchRequest.objects.filter(pk=pk).update(status=RequestStatus.CANCELLED, lease_owner=None, error={"code": "batch_cancelled"})
    stale = ResultWriter("host:1:stale", max_attempts=5)
    stale.add(pk, batch_id, attempts, succeeded_outcome(pk))
    stale.flush()
    row = BatchRequest.objects.get(pk=pk)
    assert row.status == RequestStatus.CANCELLED
    assert row.response_body is None
    assert Batch.objects.get(pk=batch.id).completed_requests == 0


def test_a_dead_dispatchers_rows_are_reclaimed_and_finished(validated, upstream):
    batch = validated([chat_line("a", "first"), chat_line("b", "second")])
    claim("host:9:dead", 2)  # then the worker dies: its rows stay running until the lease runs out
    assert run_batches() == "idle"  # fresh leases: a live dispatcher's, as far as anyone can tell
    assert Batch.objects.get(pk=batch.id).status == BatchStatus.IN_PROGRESS
    BatchRequest.objects.filter(batch=batch).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    assert run_batches() == "idle"
    batch.refresh_from_db()
    assert batch.status == BatchStatus.COMPLETED
    assert batch.request_counts() == {"total": 2, "completed": 2, "failed": 0}
    assert upstream.stats()["content_counts"] == {"first": 1, "second": 1}
