"""End to end with the unmodified OpenAI SDK against a real deployment:
gunicorn + qcluster + the fake upstream (the session-scoped ``live_stack``)."""

import io
import json
import time

import openai
import pytest

from tests.conftest import chat_line, jsonl, upload
from tests.live import wait_for_batch, wait_until

pytestmark = pytest.mark.live

ENDPOINT = "/v1/chat/completions"


def create_batch(client, input_file_id, **extra):
    return client.batches.create(input_file_id=input_file_id, endpoint=ENDPOINT, completion_window="24h", **extra)


def download_jsonl(client, file_id):
    return {line["custom_id"]: line for line in map(json.loads, client.files.content(file_id).text.splitlines())}


def test_upload_create_poll_download(live_client):
    lines = [chat_line("one", "first"), chat_line("two", "second FAIL_400"), chat_line("three", "third")]
    uploaded = upload(live_client, lines, filename="e2e.jsonl")
    assert uploaded.object == "file"
    assert uploaded.purpose == "batch"
    assert uploaded.filename == "e2e.jsonl"
    assert uploaded.bytes == len(jsonl(lines))
    assert live_client.files.content(uploaded.id).read() == jsonl(lines)

    batch = create_batch(live_client, uploaded.id, metadata={"suite": "e2e"})
    assert batch.status == "validating"
    assert batch.metadata == {"suite": "e2e"}
    assert batch.request_counts.total == 0

    batch = wait_for_batch(live_client, batch.id, timeout=60)
    assert batch.status == "completed", batch.errors
    assert (batch.request_counts.total, batch.request_counts.completed, batch.request_counts.failed) == (3, 2, 1)
    assert batch.in_progress_at and batch.finalizing_at and batch.completed_at
    assert batch.usage.input_tokens > 0 and batch.usage.output_tokens > 0

    output = download_jsonl(live_client, batch.output_file_id)
    assert set(output) == {"one", "three"}
    assert output["one"]["response"]["status_code"] == 200
    assert output["one"]["response"]["body"]["choices"][0]["message"]["content"] == "echo: first"
    assert output["one"]["error"] is None

    errors = download_jsonl(live_client, batch.error_file_id)
    assert set(errors) == {"two"}
    assert errors["two"]["response"]["status_code"] == 400
    assert errors["two"]["error"]["code"] == "fake_fail_400"

    for file_id in (batch.output_file_id, batch.error_file_id):
        result_file = live_client.files.retrieve(file_id)
        assert result_file.purpose == "batch_output"
        assert result_file.status == "processed"


def test_list_pages_across_pages(live_client):
    uploaded = upload(live_client, [chat_line("a")], filename="paging.jsonl")
    created = [create_batch(live_client, uploaded.id).id for _ in range(5)]

    first_page = live_client.batches.list(limit=2)
    assert len(first_page.data) == 2
    assert first_page.has_more is True
    pages = list(first_page.iter_pages())
    assert len(pages) >= 3
    assert all(len(page.data) <= 2 for page in pages)

    listed = [batch.id for batch in live_client.batches.list(limit=2)]  # SDK auto-pagination
    assert len(listed) == len(set(listed))
    assert [batch_id for batch_id in listed if batch_id in created] == created[::-1]

    more_files = [upload(live_client, [chat_line("a")], filename=f"page{i}.jsonl").id for i in range(3)]
    listed_files = [f.id for f in live_client.files.list(limit=2, purpose="batch")]
    assert [file_id for file_id in listed_files if file_id in more_files] == more_files[::-1]
    ascending = [f.id for f in live_client.files.list(limit=2, purpose="batch", order="asc")]
    assert [file_id for file_id in ascending if file_id in more_files] == more_files
    for batch_id in created:
        wait_for_batch(live_client, batch_id, timeout=60)


def test_cancel_mid_run_keeps_partial_results(live_client, fake_upstream):
    fake_upstream.configure(latency_ms=700)
    total = 150  # more than the default window of 64: some requests never start
    uploaded = upload(live_client, [chat_line(f"r{i:03d}", f"q{i}") for i in range(total)], filename="cancel.jsonl")
    batch = create_batch(live_client, uploaded.id)
    wait_until(lambda: live_client.batches.retrieve(batch.id).status == "in_progress", 30, interval=0.05, what="in_progress")

    cancelling = live_client.batches.cancel(batch.id)
    assert cancelling.status == "cancelling"
    assert cancelling.cancelling_at is not None
    assert live_client.batches.cancel(batch.id).status in ("cancelling", "cancelled")

    batch = wait_for_batch(live_client, batch.id, timeout=60)
    assert batch.status == "cancelled"
    assert batch.cancelled_at >= batch.cancelling_at
    assert batch.request_counts.total == total
    output = download_jsonl(live_client, batch.output_file_id) if batch.output_file_id else {}
    errors = download_jsonl(live_client, batch.error_file_id)
    assert len(output) + len(errors) == total
    assert batch.request_counts.completed == len(output) < total
    cancelled = [line for line in errors.values() if line["error"]["code"] == "batch_cancelled"]
    assert cancelled and all(line["response"] is None for line in cancelled)


def test_calls_in_flight_at_cancel_keep_their_results(live_client, fake_upstream):
    fake_upstream.configure(latency_ms=6000)  # longer than the 5 s the runner used to give them
    total = 40
    uploaded = upload(live_client, [chat_line(f"r{i:02d}", f"q{i}") for i in range(total)], filename="drain.jsonl")
    batch = create_batch(live_client, uploaded.id)
    chat_calls = lambda: fake_upstream.stats()["by_path"].get(ENDPOINT, 0)  # noqa: E731
    wait_until(lambda: chat_calls() > 0, 30, interval=0.05, what="a call in flight")

    requested = time.monotonic()
    assert live_client.batches.cancel(batch.id).status == "cancelling"
    batch = wait_for_batch(live_client, batch.id, timeout=60)
    took = time.monotonic() - requested
    assert batch.status == "cancelled"
    assert took < 20  # cancelled once the calls were answered, not at a later sweep
    sent = chat_calls()
    output = download_jsonl(live_client, batch.output_file_id) if batch.output_file_id else {}
    errors = download_jsonl(live_client, batch.error_file_id)
    # Every call sent was answered after the cancel and its answer is in the output file.
    assert 0 < len(output) == sent < total
    for cid, line in output.items():
        assert line["response"]["status_code"] == 200
        assert line["response"]["body"]["choices"][0]["message"]["content"] == f"echo: q{int(cid[1:])}"
    assert len(errors) == total - sent
    assert all(line["response"] is None and line["error"]["code"] == "batch_cancelled" for line in errors.values())
    assert (batch.request_counts.total, batch.request_counts.completed, batch.request_counts.failed) == (total, sent, total - sent)
    time.sleep(1)
    assert chat_calls() == sent  # nothing was sent after the cancel


def test_deleting_the_input_file_right_after_create_never_hangs(live_client):
    uploaded = upload(live_client, [chat_line("a")], filename="gone.jsonl")
    batch = create_batch(live_client, uploaded.id)
    live_client.files.delete(uploaded.id)
    batch = wait_for_batch(live_client, batch.id, timeout=60)
    assert batch.status in ("failed", "completed")
    if batch.status == "failed":
        assert batch.errors.data[0].code == "invalid_request"
        assert batch.errors.data[0].param == "input_file_id"


def test_missing_or_foreign_input_file_is_created_then_failed(live_stack, live_client):
    for input_file_id in ("file-nonexistent-xyz", upload(live_client, [chat_line("a")], filename="mine.jsonl").id):
        client = live_client if input_file_id.startswith("file-nonexistent") else other_owner_client(live_stack)
        batch = create_batch(client, input_file_id)
        assert batch.status == "validating" and batch.input_file_id == input_file_id
        batch = wait_for_batch(client, batch.id, timeout=60)
        assert batch.status == "failed" and batch.failed_at
        (error,) = batch.errors.data
        assert (error.code, error.param, error.line) == ("invalid_request", "input_file_id", None)
        assert error.message.startswith(f"Cannot find file {input_file_id}, or organization ")
        assert error.message.endswith(" does not have access to it.")
        assert "live-user" not in error.message or client is live_client  # the file's owner is never named


def other_owner_client(live_stack):
    key = live_stack.manage("create_api_key", "other-owner").strip().splitlines()[-1]
    return openai.OpenAI(base_url=live_stack.base_url, api_key=key, max_retries=2)


def test_unknown_model_names_its_first_line(live_client):
    lines = [chat_line("a", model="no-such-model"), chat_line("b", model="no-such-model")]
    batch = wait_for_batch(live_client, create_batch(live_client, upload(live_client, lines, filename="model.jsonl").id).id, timeout=60)
    assert batch.status == "failed"
    (error,) = batch.errors.data
    assert (error.code, error.param, error.line) == ("model_not_found", "body.model", 1)
    assert error.message == "The provided model 'no-such-model' is not supported by the Batch API."


def test_responses_lines_without_input(live_client):
    lines = [
        {"custom_id": f"r-{source}", "method": "POST", "url": "/v1/responses", "body": {"model": "fake-model", source: value}}
        for source, value in (("previous_response_id", "resp_1"), ("conversation", "conv_1"), ("prompt", {"id": "pmpt_1"}))
    ]
    uploaded = upload(live_client, lines, filename="responses.jsonl")
    batch = live_client.batches.create(input_file_id=uploaded.id, endpoint="/v1/responses", completion_window="24h")
    batch = wait_for_batch(live_client, batch.id, timeout=60)
    assert batch.status == "completed", batch.errors
    assert batch.request_counts.completed == 3


def test_delete_file(live_client):
    uploaded = upload(live_client, [chat_line("a")], filename="delete-me.jsonl")
    deleted = live_client.files.delete(uploaded.id)
    assert (deleted.id, deleted.object, deleted.deleted) == (uploaded.id, "file", True)
    with pytest.raises(openai.NotFoundError):
        live_client.files.retrieve(uploaded.id)
    with pytest.raises(openai.NotFoundError):
        live_client.files.delete(uploaded.id)
    assert uploaded.id not in [f.id for f in live_client.files.list()]


# --- errors as the SDK's exception classes ---------------------------------------------------


def error_of(exc_info):
    body = exc_info.value.body
    assert set(body) == {"message", "type", "param", "code"}  # the SDK unwraps {"error": ...}
    return body


def test_bad_request_errors(live_client):
    uploaded = upload(live_client, [chat_line("a")], filename="ok.jsonl")
    with pytest.raises(openai.BadRequestError) as exc_info:
        live_client.batches.create(input_file_id=uploaded.id, endpoint="/v1/videos", completion_window="24h")
    assert exc_info.value.status_code == 400
    assert (error_of(exc_info)["code"], error_of(exc_info)["param"]) == ("invalid_value", "endpoint")

    with pytest.raises(openai.BadRequestError) as exc_info:
        create_batch(live_client, uploaded.id, metadata={"n": 1})
    assert (error_of(exc_info)["code"], error_of(exc_info)["param"]) == ("invalid_type", "metadata.n")

    with pytest.raises(openai.BadRequestError) as exc_info:
        create_batch(live_client, uploaded.id, metadata={"note": "x" * 513})
    assert (error_of(exc_info)["code"], error_of(exc_info)["param"]) == ("string_above_max_length", "metadata.note")
    with pytest.raises(openai.BadRequestError) as exc_info:
        create_batch(live_client, uploaded.id, metadata={"k" * 65: "v"})
    assert (error_of(exc_info)["code"], error_of(exc_info)["param"]) == ("string_above_max_length", "metadata." + "k" * 65)

    with pytest.raises(openai.BadRequestError) as exc_info:
        live_client.files.create(file=("input.txt", io.BytesIO(b"{}\n")), purpose="batch")
    assert error_of(exc_info)["param"] == "file"


def test_authentication_error(live_stack):
    client = openai.OpenAI(base_url=live_stack.base_url, api_key="sk-batch-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as exc_info:
        client.batches.list()
    assert exc_info.value.status_code == 401
    assert error_of(exc_info)["code"] == "invalid_api_key"


def test_not_found_errors(live_client):
    with pytest.raises(openai.NotFoundError) as exc_info:
        live_client.batches.retrieve("batch_doesnotexist")
    assert error_of(exc_info)["message"] == "No such Batch object: batch_doesnotexist"
    with pytest.raises(openai.NotFoundError):
        live_client.files.content("file-doesnotexist")
    with pytest.raises(openai.NotFoundError) as exc_info:
        live_client.post("/no/such/route", cast_to=object, body={})
    assert error_of(exc_info)["message"] == "Invalid URL (POST /v1/no/such/route)"


def test_conflict_error_is_not_retried(live_stack, live_client):
    uploaded = upload(live_client, [chat_line("a")], filename="done.jsonl")
    batch = wait_for_batch(live_client, create_batch(live_client, uploaded.id).id, timeout=60)
    assert batch.status == "completed"

    cancel_requests = []
    http_client = openai.DefaultHttpxClient(event_hooks={"request": [lambda request: cancel_requests.append(request.url.path)]})
    client = live_stack.client(max_retries=3, http_client=http_client)
    with pytest.raises(openai.ConflictError) as exc_info:
        client.batches.cancel(batch.id)
    assert exc_info.value.status_code == 409
    assert error_of(exc_info)["message"] == "Cannot cancel a batch with status 'completed'."
    assert exc_info.value.response.headers["x-should-retry"] == "false"
    assert cancel_requests == [f"/v1/batches/{batch.id}/cancel"]
