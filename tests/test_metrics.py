"""Prometheus metrics at /metrics: the bearer token, and every figure read back with
prometheus_client's own parser (in process, then live with two worker processes)."""

import json
import re
import urllib.error
import urllib.request
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from batches import tasks
from batches.models import Batch, UpstreamState
from tests.conftest import chat_line, run_batches, upload
from tests.live import LiveStack, dispatcher_processes, wait_for_batch, wait_until

TOKEN = "metrics-secret-token"


def samples(text):
    """{(sample name, frozenset(labels)): value} of a scrape."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(scrape, name, **labels):
    return scrape[(name, frozenset(labels.items()))]


def total(scrape, name, **labels):
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    return sum(v for (n, ls), v in scrape.items() if n == name and set(labels.items()) <= ls)


@pytest.fixture
def metrics_token(settings):
    settings.OPENAI_BATCHES = {**getattr(settings, "OPENAI_BATCHES", {}), "METRICS_TOKEN": TOKEN}


@pytest.fixture
def scrape(client, metrics_token, db):
    def do():
        response = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
        assert response.status_code == 200
        assert response["Content-Type"].startswith("text/plain; version=")
        return samples(response.content.decode())

    return do


def test_no_token_configured_is_404(client, db):
    assert client.get("/metrics").status_code == 404


def test_missing_or_wrong_token_is_401(client, metrics_token, db):
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": TOKEN}):
        response = client.get("/metrics", headers=headers)
        assert response.status_code == 401
        assert response["WWW-Authenticate"] == 'Bearer realm="metrics"'
        assert TOKEN not in response.content.decode()


def test_empty_site(scrape):
    got = scrape()
    assert value(got, "openai_batches_batches", status="completed") == 0
    assert value(got, "openai_batches_requests_pending") == 0
    assert value(got, "openai_batches_oldest_pending_seconds") == 0


def test_figures_after_a_batch(scrape, make_batch, make_user, upstream, settings):
    settings.OPENAI_BATCHES = {**settings.OPENAI_BATCHES, "MAX_ATTEMPTS": 2}
    owner = make_user("team-a")
    done = make_batch([chat_line("a"), chat_line("b", "FAIL_400"), chat_line("c", "FAIL_500")], owner=owner)
    tasks.validate_batch(done.id)
    run_batches()
    done.refresh_from_db()

    waiting = make_batch([chat_line("w1"), chat_line("w2"), chat_line("w3")], owner=owner)
    tasks.validate_batch(waiting.id)  # in_progress, nothing sent yet
    Batch.objects.filter(pk=waiting.pk).update(created_at=timezone.now() - timedelta(minutes=5))

    got = scrape()
    assert value(got, "openai_batches_batches", status="completed") == 1
    assert value(got, "openai_batches_batches", status="in_progress") == 1
    assert value(got, "openai_batches_requests_total", endpoint="/v1/chat/completions", outcome="succeeded") == 1
    assert value(got, "openai_batches_requests_total", endpoint="/v1/chat/completions", outcome="failed") == 2
    assert value(got, "openai_batches_requests_pending") == 3
    assert 299 <= value(got, "openai_batches_oldest_pending_seconds") <= 330
    assert value(got, "openai_batches_tokens_total", owner="team-a", kind="input") == done.usage["input_tokens"]
    assert value(got, "openai_batches_tokens_total", owner="team-a", kind="output") == done.usage["output_tokens"]
    base = upstream.base_url.rstrip("/")
    # 1 success, 1 x 400, 2 x 500 (tried twice): every call is in the histogram.
    for status_class, calls in (("2xx", 1), ("4xx", 1), ("5xx", 2)):
        labels = {"upstream": base, "status_class": status_class}
        assert value(got, "openai_batches_upstream_latency_seconds_count", **labels) == calls
        assert value(got, "openai_batches_upstream_latency_seconds_bucket", le="+Inf", **labels) == calls
        assert value(got, "openai_batches_upstream_latency_seconds_sum", **labels) > 0


def test_concurrency_limit_per_upstream(scrape):
    UpstreamState.objects.create(base_url="http://gpu-1:8000/v1", concurrency_limit=48)
    assert value(scrape(), "openai_batches_upstream_concurrency_limit", upstream="http://gpu-1:8000/v1") == 48


def test_grafana_dashboard_uses_only_served_metrics(client, metrics_token, db):
    text = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).content.decode()
    served = {family.name + ("_total" if family.type == "counter" else "") for family in text_string_to_metric_families(text)}
    dashboard = json.loads((Path(__file__).resolve().parent.parent / "docs" / "grafana-dashboard.json").read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    used = {re.sub(r"_(bucket|count|sum)$", "", name) for expr in exprs for name in re.findall(r"openai_batches_\w+", expr)}
    assert used == served == {
        "openai_batches_batches", "openai_batches_requests_total", "openai_batches_requests_pending",
        "openai_batches_oldest_pending_seconds", "openai_batches_upstream_in_flight", "openai_batches_upstream_concurrency_limit",
        "openai_batches_upstream_latency_seconds", "openai_batches_tokens_total",
    }  # fmt: skip


@pytest.mark.live
def test_scraped_during_a_live_batch_with_two_worker_processes(fake_upstream):
    env = {
        "BATCHES_METRICS_TOKEN": TOKEN,
        "BATCHES_DISPATCHERS": "2",
        "BATCHES_MAX_CONCURRENT_REQUESTS_PER_BATCH": "16",
        "BATCHES_LEASE_SECONDS": "10",
        "BATCHES_LOG_LEVEL": "INFO",
    }
    fake_upstream.reset()
    fake_upstream.configure(latency_ms=300, latency_jitter_ms=100, error_500_rate=0, error_503_rate=0, error_429_rate=0, timeout_rate=0)
    with LiveStack(fake_upstream.base_url, workers=2, worker_processes=2, env=env) as stack:
        origin = stack.base_url.removesuffix("/v1")

        def scrape():
            request = urllib.request.Request(f"{origin}/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
            with urllib.request.urlopen(request, timeout=30) as response:
                return samples(response.read().decode())

        client = stack.client()
        lines = [chat_line(f"m{i}", "FAIL_400" if i % 10 == 0 else f"q{i}") for i in range(300)]
        batch = client.batches.create(input_file_id=upload(client, lines).id, endpoint="/v1/chat/completions", completion_window="24h")

        def busy():
            got = scrape()
            return (
                got if total(got, "openai_batches_upstream_in_flight") > 0 and value(got, "openai_batches_requests_pending") > 0 else None
            )

        during = wait_until(busy, 60, interval=0.1, what="requests in flight and pending")
        assert value(during, "openai_batches_batches", status="in_progress") == 1
        assert value(during, "openai_batches_oldest_pending_seconds") > 0
        assert value(during, "openai_batches_upstream_in_flight", upstream=fake_upstream.base_url.rstrip("/")) <= 16

        done = wait_for_batch(client, batch.id, timeout=180)
        assert done.status == "completed"
        after = scrape()
        calls = fake_upstream.stats()["by_path"]["/v1/chat/completions"]
        workers = dispatcher_processes(stack, [batch.id])
        print(json.dumps({"upstream_calls": calls, "dispatcher_processes": sorted(workers)}))
        assert len(workers) >= 2  # the counts below come from several processes
        assert value(after, "openai_batches_batches", status="completed") == 1
        assert value(after, "openai_batches_requests_total", endpoint="/v1/chat/completions", outcome="succeeded") == 270
        assert value(after, "openai_batches_requests_total", endpoint="/v1/chat/completions", outcome="failed") == 30
        assert value(after, "openai_batches_requests_pending") == 0
        assert value(after, "openai_batches_oldest_pending_seconds") == 0
        assert total(after, "openai_batches_upstream_in_flight") == 0
        assert total(after, "openai_batches_upstream_latency_seconds_count") == calls
        assert value(after, "openai_batches_tokens_total", owner="live-user", kind="input") == done.usage.input_tokens
        assert value(after, "openai_batches_tokens_total", owner="live-user", kind="output") == done.usage.output_tokens
        # 300 ms calls: none in the buckets below 0.1 s.
        assert total(after, "openai_batches_upstream_latency_seconds_bucket", le="0.1") == 0
        # Any web process answers the same figures.
        assert all(scrape() == after for _ in range(4))
