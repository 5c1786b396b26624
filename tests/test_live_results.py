"""GET /v1/batches/{id}/results (finished lines so far, as JSONL) and POST /v1/batches/{id}/retry."""

import json
import urllib.request

import pytest

from batches import tasks
from batches.models import Batch, BatchRequest, BatchStatus, RequestStatus
from tests.conftest import chat_line, run_batches, upload
from tests.live import wait_for_batch, wait_until

ENDPOINT = "/v1/chat/completions"


def lines_of(response):
    return [json.loads(line) for line in b"".join(response.streaming_content).decode().splitlines()]


@pytest.fixture
def finished_batch(api, make_batch, upstream):
    """A completed batch of 5 lines; lines 2 and 4 failed."""
    lines = [chat_line(f"r{i}", "FAIL_400" if i in (2, 4) else f"q{i}") for i in range(1, 6)]
    batch = make_batch(lines, owner=api.user)
    tasks.validate_batch(batch.id)
    run_batches()
    batch.refresh_from_db()
    assert batch.status == BatchStatus.COMPLETED
    return batch


def file_lines(batch, file_id):
    from files_app.models import File

    return File.objects.get(pk=file_id).content.open("rb").read().decode().splitlines() if file_id else []


def test_results_equal_the_final_files(api, finished_batch):
    response = api.get(f"/v1/batches/{finished_batch.id}/results")
    assert response.status_code == 200
    assert response["Content-Type"] == "application/jsonl"
    assert response["X-Incomplete"] == "false"
    body = b"".join(response.streaming_content).decode().splitlines()
    assert [json.loads(line)["custom_id"] for line in body] == ["r1", "r2", "r3", "r4", "r5"]
    files = file_lines(finished_batch, finished_batch.output_file_id) + file_lines(finished_batch, finished_batch.error_file_id)
    assert sorted(body) == sorted(files)  # byte for byte: one function writes both


def test_status_and_custom_id_filters(api, finished_batch):
    url = f"/v1/batches/{finished_batch.id}/results"
    assert [line["custom_id"] for line in lines_of(api.get(url, {"status": "completed"}))] == ["r1", "r3", "r5"]
    failed = lines_of(api.get(url, {"status": "failed"}))
    assert [line["custom_id"] for line in failed] == ["r2", "r4"]
    assert failed[0]["response"]["status_code"] == 400 and failed[0]["error"]["code"] == "fake_fail_400"
    [one] = lines_of(api.get(url, {"custom_id": "r3"}))
    assert one["custom_id"] == "r3" and one["response"]["body"]["choices"][0]["message"]["content"] == "echo: q3"
    assert lines_of(api.get(url, {"custom_id": "r3", "status": "failed"})) == []


def test_cursor_paging(api, finished_batch):
    url = f"/v1/batches/{finished_batch.id}/results"
    seen, after = [], None
    while True:
        response = api.get(url, {"limit": 2, **({"after": after} if after else {})})
        page = [line["custom_id"] for line in lines_of(response)]
        seen += page
        if response["X-Has-More"] == "false":
            break
        after = page[-1]
    assert seen == ["r1", "r2", "r3", "r4", "r5"]


@pytest.mark.parametrize(
    ("params", "status", "param"),
    [
        ({"status": "running"}, 400, "status"),
        ({"limit": 0}, 400, "limit"),
        ({"limit": "x"}, 400, "limit"),
        ({"after": "nope"}, 400, "after"),
        ({"custom_id": "nope"}, 404, "custom_id"),
    ],
)
def test_bad_parameters(api, finished_batch, params, status, param):
    response = api.get(f"/v1/batches/{finished_batch.id}/results", params)
    assert response.status_code == status
    assert response.json()["error"]["param"] == param


def test_results_are_scoped_to_the_owner(make_client, finished_batch):
    other = make_client()
    response = other.get(f"/v1/batches/{finished_batch.id}/results")
    assert response.status_code == 404
    assert response.json()["error"]["message"] == f"No such Batch object: {finished_batch.id}"
    assert other.post(f"/v1/batches/{finished_batch.id}/retry").status_code == 404


def test_unfinished_rows_are_left_out_and_marked_incomplete(api, make_batch, upstream):
    batch = make_batch([chat_line("a"), chat_line("b")], owner=api.user)
    tasks.validate_batch(batch.id)
    BatchRequest.objects.filter(batch=batch, custom_id="a").update(
        status=RequestStatus.SUCCEEDED, status_code=200, response_body={"ok": True}, upstream_request_id="req_1"
    )
    response = api.get(f"/v1/batches/{batch.id}/results")
    assert response["X-Incomplete"] == "true"
    [line] = lines_of(response)
    assert line["custom_id"] == "a" and line["response"] == {"status_code": 200, "request_id": "req_1", "body": {"ok": True}}


def test_retry_creates_the_linked_batch_of_failed_lines(api, finished_batch):
    response = api.post(f"/v1/batches/{finished_batch.id}/retry")
    assert response.status_code == 200, response.content
    retry = response.json()
    assert retry["object"] == "batch" and retry["status"] == "validating" and retry["endpoint"] == ENDPOINT
    stored = Batch.objects.get(pk=retry["id"])
    assert stored.retry_of_id == finished_batch.id and stored.owner_id == finished_batch.owner_id
    tasks.validate_batch(stored.id)
    assert sorted(stored.requests.values_list("custom_id", flat=True)) == ["r2", "r4"]


def test_retry_refused_with_409(api, make_batch, upstream):
    running = make_batch([chat_line("a")], owner=api.user)
    response = api.post(f"/v1/batches/{running.id}/retry")
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "batch_not_retryable"
    assert response["x-should-retry"] == "false"
    assert "status is validating" in response.json()["error"]["message"]


def test_retry_counts_against_the_key_quota(api, finished_batch):
    from files_app.models import ApiKey

    ApiKey.objects.filter(user=api.user).update(max_batch_creations_per_hour=0)
    response = api.post(f"/v1/batches/{finished_batch.id}/retry")
    assert response.status_code == 429
    assert response.json()["error"]["code"] == "rate_limit_exceeded"


def fetch_results(stack, batch_id):
    request = urllib.request.Request(f"{stack.base_url}/batches/{batch_id}/results", headers={"Authorization": f"Bearer {stack.api_key}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.headers["X-Incomplete"], response.read().decode().splitlines()


@pytest.mark.live
def test_results_read_while_the_batch_runs_then_equal_the_files(live_stack, live_client, fake_upstream):
    fake_upstream.configure(latency_ms=50, latency_jitter_ms=4000)  # results spread over seconds
    lines = [chat_line(f"line-{i}", "FAIL_400" if i % 7 == 0 else f"q{i}") for i in range(60)]
    batch = live_client.batches.create(input_file_id=upload(live_client, lines).id, endpoint=ENDPOINT, completion_window="24h")
    partial = []

    def some_but_not_all():
        incomplete, got = fetch_results(live_stack, batch.id)
        if 0 < len(got) < len(lines):
            partial.append((incomplete, got))
            return True
        return False

    wait_until(some_but_not_all, 60, interval=0.05, what="some but not all results")
    incomplete, seen = partial[0]
    assert incomplete == "true"
    numbers = [int(json.loads(line)["custom_id"].split("-")[1]) for line in seen]
    assert numbers == sorted(numbers)  # input order

    done = wait_for_batch(live_client, batch.id, timeout=120)
    assert done.status == "completed"
    incomplete, final = fetch_results(live_stack, batch.id)
    assert incomplete == "false"
    files = [
        *live_client.files.content(done.output_file_id).text.splitlines(),
        *live_client.files.content(done.error_file_id).text.splitlines(),
    ]
    assert len(final) == len(lines) and sorted(final) == sorted(files)
    assert set(seen) <= set(files)  # a line read while running is the line of the final file
