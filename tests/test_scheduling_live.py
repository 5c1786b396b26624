"""The upstream budget holds across processes: two qclusters (each with its own
dispatcher) serve two owners' batches against one upstream, and the upstream never
sees more than UPSTREAM_MAX_IN_FLIGHT requests at once (docs/scheduling.md)."""

import pytest

from tests.conftest import chat_line, upload
from tests.live import LiveStack, wait_for_batch

pytestmark = pytest.mark.live

BUDGET = 6


def dispatcher_pids(stack):
    """Worker processes whose dispatcher sent rows (from the ``dispatcher.batch_joined`` log lines)."""
    pids = set()
    for cluster in range(stack.worker_processes):
        for line in stack.log(f"worker{cluster}").splitlines():
            if "dispatcher.batch_joined" in line:
                pids.add((cluster, line.split(" owner=", 1)[1].split(":")[1]))
    return pids


def test_two_worker_processes_never_exceed_the_budget_together(fake_upstream):
    env = {
        "BATCHES_UPSTREAM_MAX_IN_FLIGHT": str(BUDGET),
        "BATCHES_UPSTREAM_INITIAL_IN_FLIGHT": str(BUDGET),
        "BATCHES_DISPATCHERS": "2",
        "BATCHES_LOG_LEVEL": "INFO",
    }
    fake_upstream.reset()
    # Calls end at random moments, so both dispatchers find places freed by the other.
    fake_upstream.configure(latency_ms=100, latency_jitter_ms=80, error_500_rate=0, error_503_rate=0, error_429_rate=0, down=False)
    with LiveStack(fake_upstream.base_url, workers=2, worker_processes=2, env=env) as stack:
        client = stack.client()
        batches = []
        for owner in range(2):
            lines = [chat_line(f"o{owner}-{i}", f"owner {owner} line {i}") for i in range(200)]
            batches.append(
                client.batches.create(input_file_id=upload(client, lines).id, endpoint="/v1/chat/completions", completion_window="24h")
            )
        finished = [wait_for_batch(client, batch.id, timeout=120) for batch in batches]
        assert [batch.status for batch in finished] == ["completed", "completed"]
        assert all(batch.request_counts.completed == 200 for batch in finished)
        stats = fake_upstream.stats()
        assert stats["max_in_flight"] <= BUDGET
        assert stats["max_in_flight"] >= BUDGET - 1  # and the budget is used
        assert len(dispatcher_pids(stack)) == 2  # both clusters dispatched
