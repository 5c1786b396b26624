"""Never lose work: crash recovery, graceful shutdown, retries, the circuit breaker,
cancel, expiry and rate limits.

The first part runs the dispatcher in-process (pytest-django database, fake upstream).
The ``fault`` part starts real gunicorn + qcluster processes (tests.live.LiveStack)
in front of an in-process fake upstream with latency and fault injection, kills
and stops the workers, and checks that every request is accounted for exactly
once. Each fault test prints its figures and merges them into FIGURES_PATH; run with
``pytest -m fault -s tests/test_fault.py`` (CI: .ci/steps/20-fault.sh).
"""

import collections
import json
import os
import random
import signal
import sqlite3
import threading
import time
import urllib.parse
from datetime import timedelta

import pytest
from django.db import OperationalError
from django.utils import timezone

from batches import bulk, claims, lifecycle, slots, tasks
from batches import upstream as upstream_module
from batches.models import Batch, BatchRequest, BatchStatus, DispatcherSlot, RequestStatus
from batches.runner import dispatcher, shutdown
from batches.runner.results import ResultWriter
from batches.runner.shutdown import WorkerShutdown
from tests.conftest import chat_line, claim, run_batches, upload
from tests.fake_upstream import FakeUpstream
from tests.live import LiveStack, dispatcher_processes, wait_for_batch, wait_until

FIGURES_PATH = os.environ.get("FAULT_FIGURES_PATH", "/tmp/fault_figures.json")


# --- in-process: the dispatcher's recovery paths ------------------------------------------------


class RecordedShutdown(WorkerShutdown):
    """The worker's shutdown state, with the process exit recorded instead of done."""

    def __init__(self):
        super().__init__()
        self.cluster_stopping = threading.Event()
        self.exits = 0

    def exit(self):
        self.exits += 1


@pytest.fixture
def stopping(monkeypatch):
    """Shutdown state the dispatcher sees: ``.cluster_stopping.set()`` is SIGTERM to the
    cluster, ``.signalled.set()`` SIGTERM to the worker process itself."""
    fake = RecordedShutdown()
    monkeypatch.setattr(shutdown, "worker_shutdown", fake)
    return fake


@pytest.fixture
def enqueued(monkeypatch):
    """Tasks the code under test enqueued: [(task, arg)] (on_commit never fires in db tests)."""
    calls = []
    for module in (dispatcher, tasks, slots, lifecycle):
        monkeypatch.setattr(module, "enqueue", lambda task, arg=None, **kwargs: calls.append((task, arg)))
    return calls


def test_shutdown_keeps_finished_results_and_hands_the_rest_back(validated, upstream, settings, stopping, enqueued, monkeypatch):
    settings.OPENAI_BATCHES = {**settings.OPENAI_BATCHES, "MAX_CONCURRENT_REQUESTS_PER_BATCH": 2}
    upstream.configure(latency_ms=30)
    batch = validated([chat_line(f"r{i}", f"q{i}") for i in range(12)])
    flush = ResultWriter.flush

    def flush_then_stop(self):
        finished = flush(self)
        if Batch.objects.get(pk=batch.id).completed_requests >= 4:
            stopping.cluster_stopping.set()
        return finished

    monkeypatch.setattr(ResultWriter, "flush", flush_then_stop)
    assert tasks.dispatch() == "shutdown"
    assert ("dispatch", None) in enqueued
    rows = BatchRequest.objects.filter(batch=batch)
    done = rows.filter(status=RequestStatus.SUCCEEDED)
    assert 4 <= done.count() < 12
    # Nothing stays leased: the next dispatcher starts at once, not after LEASE_SECONDS.
    assert set(rows.exclude(status=RequestStatus.SUCCEEDED).values_list("status", "lease_owner", "attempts")) == {
        (RequestStatus.PENDING, None, 0)
    }
    assert not DispatcherSlot.objects.filter(owner__isnull=False).exists()

    assert stopping.exits == 0  # the cluster stops its workers itself

    monkeypatch.setattr(ResultWriter, "flush", flush)
    stopping.cluster_stopping.clear()
    assert run_batches() == "idle"
    counts = upstream.stats()["content_counts"]
    assert counts == {f"q{i}": 1 for i in range(12)}  # zero lost, zero repeated


def test_a_worker_signalled_itself_exits_once_its_dispatcher_is_done(validated, upstream, stopping, enqueued, monkeypatch):
    validated([chat_line(f"r{i}", f"q{i}") for i in range(6)])
    flush = ResultWriter.flush

    def flush_then_sigterm(self):
        finished = flush(self)
        if not stopping.signalled.is_set():
            stopping.on_sigterm(signal.SIGTERM, None)  # arrives while the dispatcher works
            assert stopping.exits == 0
        return finished

    monkeypatch.setattr(ResultWriter, "flush", flush_then_sigterm)
    assert tasks.dispatch() == "shutdown"
    assert stopping.exits == 1  # once the dispatcher handed its rows back
    assert ("dispatch", None) in enqueued
    stopping.on_sigterm(signal.SIGTERM, None)
    assert stopping.exits == 2  # idle: at once


def test_a_stopping_cluster_leaves_fetched_dispatch_tasks_to_the_next_one(validated, upstream, stopping, enqueued):
    validated([chat_line("a")])
    enqueued.clear()
    stopping.cluster_stopping.set()
    assert tasks.dispatch() == "shutdown"
    assert enqueued == [("dispatch", None)]
    assert "/v1/chat/completions" not in upstream.stats()["by_path"]


def test_worker_shutdown_hooks_only_cluster_workers():
    # Outside a django-q2 worker (here: pytest, like a task run inline in sync mode) nothing is installed.
    handler = signal.getsignal(signal.SIGTERM)
    assert WorkerShutdown().install() is False
    assert signal.getsignal(signal.SIGTERM) is handler


def test_a_live_dispatcher_takes_over_rows_of_a_dead_one_as_their_leases_lapse(validated, upstream):
    batch = validated([chat_line("a", "first"), chat_line("b", "second"), chat_line("c", "third")])
    claim("host:9:dead", 2)
    # Killed long enough ago that its leases stopped being renewed; they lapse in a moment.
    BatchRequest.objects.filter(batch=batch, lease_owner="host:9:dead").update(lease_expires_at=timezone.now() + timedelta(seconds=1))
    assert run_batches() == "idle"
    assert Batch.objects.get(pk=batch.id).status == BatchStatus.COMPLETED
    assert upstream.stats()["content_counts"] == {"first": 1, "second": 1, "third": 1}


def test_a_restarted_worker_takes_over_the_slot_of_a_dead_dispatcher(validated, settings, enqueued):
    settings.OPENAI_BATCHES = {**settings.OPENAI_BATCHES, "DISPATCHERS": 1}
    validated([chat_line("a")])
    DispatcherSlot.objects.create(slot=0, owner="host:9:dead", lease_expires_at=timezone.now() + timedelta(seconds=1))
    assert slots.acquire("host:1:new") is None  # to anyone else, a live slot means a live dispatcher
    tasks.sweep()
    assert ("dispatch_after_restart", None) not in enqueued
    tasks.sweep_after_worker_start()
    assert ("dispatch_after_restart", None) in enqueued
    # The takeover waits for the holder to renew; a dead one never does, and its slot lapses.
    assert slots.acquire("host:1:new", takeover=True) == 0
    assert DispatcherSlot.objects.get(slot=0).owner == "host:1:new"


def test_a_takeover_leaves_when_the_holder_renews(validated, settings, monkeypatch):
    settings.OPENAI_BATCHES = {**settings.OPENAI_BATCHES, "DISPATCHERS": 1}
    DispatcherSlot.objects.create(slot=0, owner="host:1:live", lease_expires_at=timezone.now() + timedelta(seconds=30))
    sleep = slots.time.sleep

    def holder_renews(seconds):
        slots.renew(0, "host:1:live")
        sleep(0.01)

    monkeypatch.setattr(slots.time, "sleep", holder_renews)
    assert slots.acquire("host:2:new", takeover=True) is None
    assert DispatcherSlot.objects.get(slot=0).owner == "host:1:live"


def test_buffered_results_survive_a_failed_write(validated, upstream, monkeypatch):
    validated([chat_line("a")])
    ((pk, batch_id, attempts),) = claim("host:1:a", 1)
    writer = ResultWriter("host:1:a", max_attempts=5)
    body = {"object": "chat.completion", "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}
    writer.add(pk, batch_id, attempts, upstream_module.Outcome("succeeded", status_code=200, body=body, request_id="req_1"))
    update_rows = bulk.update_rows

    def locked_once(*args, **kwargs):
        monkeypatch.setattr(bulk, "update_rows", update_rows)
        raise OperationalError("database is locked")

    monkeypatch.setattr(bulk, "update_rows", locked_once)
    with pytest.raises(OperationalError):
        writer.flush()
    assert len(writer) == 1
    writer.flush()
    assert len(writer) == 0
    assert BatchRequest.objects.get(pk=pk).status == RequestStatus.SUCCEEDED


def test_the_dispatcher_rides_out_a_locked_database(validated, upstream, monkeypatch):
    validated([chat_line(f"r{i}", f"q{i}") for i in range(5)])
    monkeypatch.setattr(dispatcher, "DATABASE_RETRY_SECONDS", 0.01)
    real_claim = claims.Claimer.claim
    failures = {"left": 3}

    def flaky(self, *args, **kwargs):
        if failures["left"]:
            failures["left"] -= 1
            raise OperationalError("database is locked")
        return real_claim(self, *args, **kwargs)

    monkeypatch.setattr(claims.Claimer, "claim", flaky)
    assert run_batches() == "idle"
    assert failures["left"] == 0
    assert upstream.stats()["content_counts"] == {f"q{i}": 1 for i in range(5)}


# --- live fault injection -------------------------------------------------------------------

LATENCY = {"latency_ms": 35, "latency_jitter_ms": 15}
STACK_ENV = {
    "BATCHES_LEASE_SECONDS": "5",
    "BATCHES_RETRY_BACKOFF_BASE": "0.05",
    "BATCHES_RETRY_BACKOFF_MAX": "0.5",
    "BATCHES_MAX_ATTEMPTS": "10",
    "BATCHES_SHUTDOWN_GRACE_SECONDS": "5",
    "BATCHES_LOG_LEVEL": "INFO",
}


def record(name, **figures):
    """Print one test's figures and merge them into FIGURES_PATH."""
    print(f"\nFIGURES {name}: " + json.dumps(figures, sort_keys=True))
    try:
        with open(FIGURES_PATH) as handle:
            data = json.load(handle)
    except (OSError, ValueError):
        data = {}
    data[name] = figures
    with open(FIGURES_PATH, "w") as handle:
        json.dump(data, handle, indent=2, sort_keys=True)


@pytest.fixture(scope="module")
def fake():
    server = FakeUpstream(models=["fake-model", "other-model"]).start()
    yield server
    server.stop()


def reset(fake, **config):
    fake.reset()
    fake.configure(
        **{
            "error_500_rate": 0,
            "error_503_rate": 0,
            "error_429_rate": 0,
            "timeout_rate": 0,
            "down": False,
            "retry_after_s": 1.0,
            **LATENCY,
            **config,
        }
    )


@pytest.fixture(scope="module")
def stack(fake):
    """One cluster (two worker processes), five-second leases, quick retries."""
    live = LiveStack(fake.base_url, workers=2, env=STACK_ENV).start()
    yield live
    live.stop()


def submit(client, prefix, count, model="fake-model"):
    lines = [chat_line(f"{prefix}-{i:05d}", f"{prefix} line {i}", model=model) for i in range(count)]
    input_file = upload(client, lines)
    return client.batches.create(input_file_id=input_file.id, endpoint="/v1/chat/completions", completion_window="24h")


def progress(client, batch_id):
    batch = client.batches.retrieve(batch_id)
    counts = batch.request_counts
    return batch, (counts.completed + counts.failed) / counts.total if counts and counts.total else 0.0


def wait_for_progress(client, batch_id, fraction, timeout=120, may_finish=False):
    def reached():
        batch, done = progress(client, batch_id)
        if batch.status not in ("validating", "in_progress"):
            assert may_finish, f"batch ended early: {batch.status}"
            return True
        return done >= fraction

    wait_until(reached, timeout, interval=0.05, what=f"{fraction:.0%} progress")


def result_lines(client, batch):
    """(output lines, error lines) of a finished batch, as parsed JSON."""

    def read(file_id):
        return [json.loads(line) for line in client.files.content(file_id).text.splitlines()] if file_id else []

    return read(batch.output_file_id), read(batch.error_file_id)


def assert_accounted(client, batch, prefix, count):
    """Every custom_id exactly once across output + error files; counts equal file lines."""
    output, errors = result_lines(client, batch)
    ids = [line["custom_id"] for line in output + errors]
    assert len(ids) == len(set(ids)), "a custom_id appears twice"
    assert set(ids) == {f"{prefix}-{i:05d}" for i in range(count)}
    counts = batch.request_counts
    assert (counts.total, counts.completed, counts.failed) == (count, len(output), len(errors))
    return output, errors


def repeated_calls(fake, prefix):
    """(upstream calls beyond the first per line, lines never called) for this batch's lines."""
    counts = {k: v for k, v in fake.stats()["content_counts"].items() if k.startswith(f"{prefix} line ")}
    return sum(v - 1 for v in counts.values()), counts


def living_members(pgid):
    """Processes of a process group that have not exited (zombies left out; Linux /proc)."""
    living = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited meanwhile
        state, pgrp = fields[0], int(fields[2])
        if pgrp == pgid and state != "Z":
            living.append(int(entry))
    return living


def leased_rows(stack, batch_id):
    """Rows of a batch still ``running`` (claimed), read straight from the stack's database."""
    url = urllib.parse.urlsplit(stack.db.url)
    query = "SELECT COUNT(*) FROM batches_batchrequest WHERE batch_id = %s AND status = 'running'"
    if url.scheme == "sqlite":
        with sqlite3.connect(url.path) as conn:
            return conn.execute(query.replace("%s", "?"), (batch_id,)).fetchone()[0]
    import psycopg

    with psycopg.connect(stack.db.url) as conn:
        return conn.execute(query, (batch_id,)).fetchone()[0]


@pytest.mark.fault
def test_sigkill_three_times_loses_and_repeats_nothing_beyond_in_flight(stack, fake):
    reset(fake)
    client = stack.client()
    seed = int(os.environ.get("FAULT_SEED", time.time()))
    rng = random.Random(seed)
    count, kills = 2000, []
    started = time.monotonic()
    batch = submit(client, "kill", count)
    for low, high in ((0.05, 0.3), (0.35, 0.6), (0.65, 0.9)):
        wait_for_progress(client, batch.id, rng.uniform(low, high))
        stack.kill_workers(signal.SIGKILL)
        killed_at = time.monotonic()
        _, done = progress(client, batch.id)
        in_flight = leased_rows(stack, batch.id)  # claimed by the dead dispatcher, result not written
        stack.start_workers()
        # Recovery without the minute sweeper: the worker-start sweep and lapsing leases.
        wait_for_progress(client, batch.id, min(done + 0.02, 1.0), timeout=90, may_finish=True)
        kills.append({"at_progress": round(done, 3), "in_flight": in_flight, "recovered_s": round(time.monotonic() - killed_at, 1)})
    final = wait_for_batch(client, batch.id, timeout=180)
    assert final.status == "completed"
    output, errors = assert_accounted(client, final, "kill", count)
    assert errors == []
    repeated, counts = repeated_calls(fake, "kill")
    assert len(counts) == count
    # Only requests claimed and not yet written when a worker died (in flight, or answered
    # but not flushed) run twice.
    in_flight = sum(kill["in_flight"] for kill in kills)
    assert repeated <= in_flight
    record(
        "sigkill_x3",
        seed=seed,
        lines=count,
        kills=kills,
        repeated_upstream_calls=repeated,
        in_flight_at_kills=in_flight,
        output_lines=len(output),
        error_lines=len(errors),
        total_s=round(time.monotonic() - started, 1),
    )


@pytest.mark.fault
def test_transient_upstream_errors_are_retried_until_every_line_succeeds(stack, fake):
    reset(fake, error_500_rate=0.1, error_503_rate=0.1, error_429_rate=0.1, retry_after_s=1.0)
    client = stack.client()
    count = 1000
    started = time.monotonic()
    batch = wait_for_batch(client, submit(client, "flaky", count).id, timeout=180)
    assert batch.status == "completed"
    output, errors = assert_accounted(client, batch, "flaky", count)
    assert errors == [] and len(output) == count
    statuses = collections.Counter(status for _, path, status in fake.records() if path == "/v1/chat/completions")
    assert statuses[200] == count
    assert statuses[500] and statuses[503] and statuses[429]
    calls = sum(statuses.values())
    record(
        "errors_20pct_5xx_10pct_429",
        lines=count,
        upstream_calls=calls,
        responses_by_status=dict(sorted(statuses.items())),
        fault_share=round((statuses[500] + statuses[503] + statuses[429]) / calls, 3),
        failed_lines=len(errors),
        total_s=round(time.monotonic() - started, 1),
    )


@pytest.mark.fault
def test_an_upstream_outage_pauses_the_batch_instead_of_failing_it(stack, fake):
    reset(fake)
    client = stack.client()
    count, outage = 1500, 30.0
    trips_before = stack.log().count("runner.breaker_open")
    batch = submit(client, "outage", count)
    wait_for_progress(client, batch.id, 0.3)
    fake.configure(down=True)
    _, before = progress(client, batch.id)
    time.sleep(outage)
    _, during = progress(client, batch.id)
    attempts_during = fake.stats()["dropped"]
    fake.configure(down=False)
    back = time.monotonic()
    batch = wait_for_batch(client, batch.id, timeout=180)
    assert batch.status == "completed"
    output, errors = assert_accounted(client, batch, "outage", count)
    assert errors == [] and len(output) == count
    # The breaker probes instead of sending the whole window over and over.
    assert attempts_during < 400
    trips = stack.log().count("runner.breaker_open") - trips_before
    record(
        "upstream_down_30s",
        lines=count,
        progress_at_outage=round(before, 3),
        progress_after_outage=round(during, 3),
        calls_during_outage=attempts_during,
        breaker_trips_logged=trips,
        completed_s_after_recovery=round(time.monotonic() - back, 1),
        failed_lines=len(errors),
    )


@pytest.mark.fault
def test_cancel_half_way_accounts_for_every_line(stack, fake):
    reset(fake)
    client = stack.client()
    count = 2000
    batch = submit(client, "cancel", count)
    wait_for_progress(client, batch.id, 0.5)
    requested = time.monotonic()
    assert client.batches.cancel(batch.id).status in ("cancelling", "cancelled")
    batch = wait_for_batch(client, batch.id, timeout=30)
    took = time.monotonic() - requested
    assert batch.status == "cancelled"
    assert took < 10
    calls_at_cancelled = fake.stats()["requests_total"]
    output, errors = assert_accounted(client, batch, "cancel", count)
    assert 0 < len(output) < count
    assert all(line["response"] is None and line["error"]["code"] == "batch_cancelled" for line in errors)
    time.sleep(2)
    assert fake.stats()["requests_total"] == calls_at_cancelled  # no call starts after `cancelled`
    record(
        "cancel_half_way",
        lines=count,
        seconds_to_cancelled=round(took, 2),
        output_lines=len(output),
        batch_cancelled_lines=len(errors),
        upstream_calls=calls_at_cancelled,
    )


def sigterm_mid_batch(stack, fake, prefix, stop):
    """Stop the workers with ``stop()`` at 40 %, restart them; return the figures."""
    reset(fake)
    client = stack.client()
    count = 2000
    batch = submit(client, prefix, count)
    wait_for_progress(client, batch.id, 0.4)
    in_flight = leased_rows(stack, batch.id)
    stopping = time.monotonic()
    stop()
    stopped_s = time.monotonic() - stopping
    leased = leased_rows(stack, batch.id)
    _, at_stop = progress(client, batch.id)
    stack.start_workers()
    batch = wait_for_batch(client, batch.id, timeout=180)
    assert batch.status == "completed"
    output, errors = assert_accounted(client, batch, prefix, count)
    assert errors == []
    repeated, counts = repeated_calls(fake, prefix)
    assert len(counts) == count
    assert leased == 0  # every claimed row was written or handed back
    assert repeated == 0
    return {
        "lines": count,
        "progress_at_stop": round(at_stop, 3),
        "in_flight_at_sigterm": in_flight,
        "seconds_to_stop": round(stopped_s, 2),
        "rows_left_leased": leased,
        "repeated_upstream_calls": repeated,
        "lost": 0,
    }


@pytest.mark.fault
def test_sigterm_to_the_cluster_finishes_in_flight_calls_and_repeats_none(stack, fake):
    # docker stop / Kubernetes / Ctrl-C: only the cluster's main process gets the signal.
    figures = sigterm_mid_batch(stack, fake, "term", lambda: stack.kill_workers(signal.SIGTERM))
    assert figures["seconds_to_stop"] < 15
    record("sigterm_cluster_then_restart", **figures)


@pytest.mark.fault
def test_sigterm_to_every_worker_process_repeats_none(stack, fake):
    # systemd's default KillMode: every process of the service gets SIGTERM at once.
    def stop_group():
        leaders = [proc.pid for proc in stack.workers]
        for pgid in leaders:
            os.killpg(pgid, signal.SIGTERM)
        # django-q2's sentinel dies at once (SIG_DFL) inside stop_event.wait(), which leaves
        # the main process stuck in stop_event.set() until systemd's SIGKILL; it holds no work.
        # The workers must finish or hand back their requests and exit.
        wait_until(lambda: all(set(living_members(pgid)) <= {pgid} for pgid in leaders), 30, what="every worker process to exit")
        stack.kill_workers(signal.SIGKILL)

    figures = sigterm_mid_batch(stack, fake, "groupterm", stop_group)
    assert figures["seconds_to_stop"] < 15
    record("sigterm_every_process_then_restart", **figures)


@pytest.mark.fault
def test_a_short_completion_window_expires_with_partial_output(fake):
    reset(fake, latency_ms=200, latency_jitter_ms=0)
    window = 15
    env = {**STACK_ENV, "BATCHES_COMPLETION_WINDOW_SECONDS": str(window), "BATCHES_MAX_CONCURRENT_REQUESTS_PER_BATCH": "8"}
    with LiveStack(fake.base_url, workers=2, env=env) as short:
        client = short.client()
        count = 2000  # 8 in flight x 200 ms: at most 40 lines a second, 600 in the window
        created = submit(client, "expiry", count)
        batch = wait_for_batch(client, created.id, timeout=window + 30)
        assert batch.status == "expired"
        assert batch.expired_at - batch.expires_at < 10
        output, errors = assert_accounted(client, batch, "expiry", count)
        assert 0 < len(output) < count
        expected = {"code": "batch_expired", "message": "This request could not be executed before the completion window expired."}
        assert all(line["response"] is None and line["error"] == expected for line in errors)
        record(
            "expiry_15s_window",
            lines=count,
            output_lines=len(output),
            batch_expired_lines=len(errors),
            expired_after_s=batch.expired_at - batch.created_at,
            expires_at_minus_created=batch.expires_at - batch.created_at,
        )


@pytest.mark.fault
def test_rate_and_concurrency_limits_hold_across_two_worker_processes(fake):
    env = {
        **STACK_ENV,
        "BATCHES_RATE_LIMITS": json.dumps({"fake-model": {"rpm": 600}}),
        "BATCHES_DISPATCHERS": "2",
        "BATCHES_MAX_CONCURRENT_REQUESTS_PER_BATCH": "8",
    }
    with LiveStack(fake.base_url, workers=2, worker_processes=2, env=env) as pair:
        client = pair.client()

        # Concurrency: the per-batch window counts every live lease, whichever process holds it.
        reset(fake, latency_ms=200, latency_jitter_ms=0)
        batch = wait_for_batch(client, submit(client, "conc", 200, model="other-model").id, timeout=120)
        assert batch.status == "completed"
        assert_accounted(client, batch, "conc", 200)
        max_in_flight = fake.stats()["max_in_flight"]
        concurrency_processes = dispatcher_processes(pair, [batch.id])

        # Rate: two batches, two dispatchers, 660 requests against 600 per minute.
        reset(fake)
        started = time.monotonic()
        batches = [submit(client, f"rpm{n}", 330) for n in range(2)]
        finished = [wait_for_batch(client, b.id, timeout=240) for b in batches]
        took = time.monotonic() - started
        stats = fake.stats()
        arrivals = sorted(t for t, path, _ in fake.records() if path == "/v1/chat/completions")
        rate_processes = dispatcher_processes(pair, [b.id for b in batches])
        record(
            "limits_two_worker_processes",
            concurrency_limit=8,
            max_in_flight=max_in_flight,
            concurrency_dispatcher_processes=len(concurrency_processes),
            rpm_limit=600,
            rpm_max_measured=stats["rpm_max"],
            requests=len(arrivals),
            first_second_burst=sum(1 for t in arrivals if t - arrivals[0] < 1.0),
            seconds=round(took, 1),
            mean_rpm=round(60 * (len(arrivals) - 1) / (arrivals[-1] - arrivals[0]), 1),
            rate_dispatcher_processes=len(rate_processes),
            rate_clusters=len({cluster for cluster, _ in rate_processes}),
        )
        assert max_in_flight <= 8
        assert len(concurrency_processes) >= 2
        for n, done in enumerate(finished):
            assert done.status == "completed"
            assert_accounted(client, done, f"rpm{n}", 330)
        assert len(arrivals) == 660
        assert stats["rpm_max"] <= 600
        assert stats["rpm_max"] >= 540  # and the budget is used, not wasted
        assert len(rate_processes) >= 2
