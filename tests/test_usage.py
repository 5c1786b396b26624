"""Usage per owner and the upstream latency histogram, kept by the result writer; CSV export."""

import csv
import io
from datetime import timedelta

import pytest
from django.utils import timezone

from batches import tasks, usage
from batches.models import BatchRequest, RequestStatus, UpstreamLatency, UsageDay
from batches.upstream import Outcome
from tests.conftest import chat_line, run_batches


@pytest.fixture(autouse=True)
def plain_static_files(settings):
    settings.STORAGES = {**settings.STORAGES, "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"}}


@pytest.fixture
def run(make_batch, upstream):
    def do(lines, owner=None):
        batch = make_batch(lines, owner=owner)
        tasks.validate_batch(batch.id)
        run_batches()
        batch.refresh_from_db()
        return batch

    return do


def test_usage_is_counted_as_lines_finish(run, make_user, settings, upstream):
    settings.OPENAI_BATCHES = {**settings.OPENAI_BATCHES, "MAX_ATTEMPTS": 2}
    alice = make_user("alice")
    batch = run([chat_line("a", "one two three"), chat_line("b", "four FAIL_400"), chat_line("c", "x FAIL_500"), chat_line("d")], alice)
    assert batch.status == "completed"
    [row] = UsageDay.objects.filter(owner=alice)
    assert (row.day, row.endpoint, row.model) == (timezone.now().date(), "/v1/chat/completions", "fake-model")
    assert (row.succeeded_requests, row.failed_requests) == (2, 2)
    # The same totals the batch's usage (summed from its result files' bodies) reports.
    assert (row.input_tokens, row.output_tokens) == (batch.usage["input_tokens"], batch.usage["output_tokens"])
    assert row.input_tokens > 0 and row.output_tokens > 0

    # A second batch of the same owner, day and model adds to the same row.
    again = run([chat_line("e", "five six")], alice)
    row.refresh_from_db()
    assert row.succeeded_requests == 3
    assert row.input_tokens == batch.usage["input_tokens"] + again.usage["input_tokens"]


def test_latency_histogram_counts_every_upstream_call(run, settings, upstream):
    settings.OPENAI_BATCHES = {**settings.OPENAI_BATCHES, "MAX_ATTEMPTS": 2}
    run([chat_line("a"), chat_line("b"), chat_line("c", "FAIL_400"), chat_line("d", "FAIL_500")])
    counts = {}
    for bucket in UpstreamLatency.objects.all():
        assert bucket.upstream == upstream.base_url.rstrip("/")
        counts[bucket.status_class] = counts.get(bucket.status_class, 0) + bucket.count
    assert counts == {"2xx": 2, "4xx": 1, "5xx": 2}  # the 500 was tried twice
    took = sum(UpstreamLatency.objects.filter(status_class="2xx").values_list("sum_seconds", flat=True))
    assert 0 < took < 2  # the fake answers at once


def test_rows_whose_lease_was_lost_are_not_counted(make_batch, upstream, make_user):
    owner = make_user()
    batch = make_batch([chat_line("a"), chat_line("b")], owner=owner)
    tasks.validate_batch(batch.id)
    now = timezone.now()
    ours, theirs = BatchRequest.objects.filter(batch=batch).order_by("line")
    body = {"usage": {"prompt_tokens": 10, "completion_tokens": 5}}
    # Another worker wrote "b" (its own time); our write of "a" went through.
    BatchRequest.objects.filter(pk=ours.pk).update(status=RequestStatus.SUCCEEDED, finished_at=now)
    BatchRequest.objects.filter(pk=theirs.pk).update(status=RequestStatus.SUCCEEDED, finished_at=now - timedelta(seconds=1))
    rows = [
        BatchRequest(pk=pk, status=RequestStatus.SUCCEEDED, status_code=200, response_body=body, finished_at=now)
        for pk in (ours.pk, theirs.pk)
    ]
    outcomes = [(batch.id, Outcome("succeeded", status_code=200, body=body, latency=0.2))] * 2
    usage.record({ours.pk: batch.id, theirs.pk: batch.id}, rows, outcomes, written={batch.id: (1, 0)})
    [row] = UsageDay.objects.filter(owner=owner)
    assert (row.succeeded_requests, row.input_tokens, row.output_tokens) == (1, 10, 5)
    # Both calls happened, so both count in the latency histogram.
    assert UpstreamLatency.objects.get(status_class="2xx", le="0.25").count == 2


def parse_csv(response):
    return list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode())))


def test_csv_export_from_the_admin(admin_client, run, make_user):
    alice, bob = make_user("alice"), make_user("bob")
    run([chat_line("a")], alice)
    run([chat_line("b"), chat_line("c")], bob)
    changelist = admin_client.get("/admin/batches/usageday/")
    assert changelist.status_code == 200
    assert b"Export these rows as CSV" in changelist.content

    response = admin_client.get("/admin/batches/usageday/export.csv")
    assert response.status_code == 200 and response["Content-Type"].startswith("text/csv")
    header, *rows = parse_csv(response)
    assert header[:6] == ["day", "owner", "endpoint", "model", "succeeded_requests", "failed_requests"]
    by_owner = {row[1]: row for row in rows}
    assert set(by_owner) == {"alice", "bob"}
    assert by_owner["bob"][4] == "2" and int(by_owner["bob"][6]) > 0

    # The export follows the changelist's filters and search.
    [only_bob] = parse_csv(admin_client.get("/admin/batches/usageday/export.csv", {"q": "bob"}))[1:]
    assert only_bob[1] == "bob"

    # And the action exports the selected rows.
    pk = UsageDay.objects.get(owner=alice).pk
    response = admin_client.post("/admin/batches/usageday/", {"action": "export_csv", "_selected_action": [pk]})
    assert [row[1] for row in parse_csv(response)[1:]] == ["alice"]


def test_usage_rows_are_read_only_in_the_admin(admin_client, run, make_user):
    run([chat_line("a")], make_user())
    row = UsageDay.objects.get()
    page = admin_client.get(f"/admin/batches/usageday/{row.pk}/change/")
    assert page.status_code == 200 and b'name="_save"' not in page.content


def test_a_bundled_embeddings_call_counts_once_in_the_histogram(make_batch, upstream):
    lines = [
        {"custom_id": f"e{n}", "method": "POST", "url": "/v1/embeddings", "body": {"model": "fake-embed", "input": f"doc {n}"}}
        for n in range(10)
    ]
    batch = make_batch(lines, endpoint="/v1/embeddings")
    tasks.validate_batch(batch.id)
    run_batches()
    calls = upstream.stats()["by_path"]["/v1/embeddings"]
    assert calls < 10  # bundled
    assert sum(UpstreamLatency.objects.values_list("count", flat=True)) == calls
    [row] = UsageDay.objects.filter(endpoint="/v1/embeddings")
    assert row.succeeded_requests == 10 and row.input_tokens > 0
