"""/v1/chat/completions batches through the live stack with the unmodified SDK;
also the create options every endpoint shares: idempotency (body and header),
file ``expires_after`` and ``output_expires_after``."""

import io
import uuid

import openai
import pytest
from openai.types.chat import ChatCompletion

from tests.conftest import chat_line, jsonl
from tests.live import wait_for_batch
from tests.live_batches import check_batch_fields, create_and_wait, error_lines, file_lines, output_bodies, upload_lines, usage_of

pytestmark = pytest.mark.live

ENDPOINT = "/v1/chat/completions"


def test_chat_batch_output_parses_as_chat_completions(live_client):
    lines = [
        chat_line("plain", "Say hello", max_tokens=20),
        chat_line("two-choices", "Pick twice", n=2, temperature=0.5),
        {
            "custom_id": "system+user",
            "method": "POST",
            "url": ENDPOINT,
            "body": {
                "model": "fake-model",
                "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": [{"type": "text", "text": "parts"}]}],
            },
        },
        chat_line("negative-max-tokens", "This should fail", max_tokens=-1),
        chat_line("upstream-400", "FAIL_400 please"),
    ]
    batch = create_and_wait(live_client, ENDPOINT, lines, metadata={"suite": "chat"})
    raw = check_batch_fields(live_client, batch, model="fake-model", total=5, completed=3, failed=2)
    assert raw["metadata"] == {"suite": "chat"}

    bodies = output_bodies(live_client, batch)
    assert set(bodies) == {"plain", "two-choices", "system+user"}
    completions = {custom_id: ChatCompletion.model_validate(body) for custom_id, body in bodies.items()}
    for completion in completions.values():
        assert completion.object == "chat.completion"
        assert completion.model == "fake-model"
        assert completion.choices[0].message.role == "assistant"
        assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens
    assert completions["plain"].choices[0].message.content == "echo: Say hello"
    assert len(completions["two-choices"].choices) == 2

    failures = error_lines(live_client, batch)
    assert set(failures) == {"negative-max-tokens", "upstream-400"}
    local = failures["negative-max-tokens"]  # rejected before reaching the upstream, as OpenAI would
    assert local["response"]["status_code"] == 400
    assert local["response"]["body"]["error"]["param"] == "max_tokens"
    assert local["error"]["code"] == local["response"]["body"]["error"]["code"] == "integer_below_min_value"
    upstream_failure = failures["upstream-400"]
    assert upstream_failure["response"]["status_code"] == 400
    assert upstream_failure["response"]["body"]["error"]["code"] == "fake_fail_400"
    assert upstream_failure["response"]["request_id"]

    usage = raw["usage"]
    expected_input, expected_output = usage_of([*bodies.values(), *(line["response"]["body"] for line in failures.values())])
    assert (usage["input_tokens"], usage["output_tokens"]) == (expected_input, expected_output)
    assert usage["input_tokens"] > 0 and usage["output_tokens"] > 0


def test_idempotency_key_in_the_body_and_in_the_header(live_client):
    input_file = upload_lines(live_client, [chat_line("a")])
    params = {"input_file_id": input_file.id, "endpoint": ENDPOINT, "completion_window": "24h"}

    body_key = f"body-{uuid.uuid4().hex}"
    first = live_client.batches.create(**params, extra_body={"idempotency_key": body_key})
    again = live_client.batches.create(**params, extra_body={"idempotency_key": body_key})
    assert again.id == first.id and again.created_at == first.created_at
    with pytest.raises(openai.ConflictError) as conflict:
        live_client.batches.create(**params, metadata={"changed": "yes"}, extra_body={"idempotency_key": body_key})
    assert conflict.value.response.headers["x-should-retry"] == "false"
    assert conflict.value.body["param"] == "idempotency_key"

    header_key = f"header-{uuid.uuid4().hex}"
    by_header = live_client.batches.create(**params, extra_headers={"Idempotency-Key": header_key})
    assert by_header.id != first.id
    assert live_client.batches.create(**params, extra_headers={"Idempotency-Key": header_key}).id == by_header.id
    with pytest.raises(openai.ConflictError):
        live_client.batches.create(**{**params, "endpoint": "/v1/completions"}, extra_headers={"Idempotency-Key": header_key})

    without_key = live_client.batches.create(**params)
    assert without_key.id not in (first.id, by_header.id)


def test_file_expires_after_and_output_expires_after(live_client):
    uploaded = live_client.files.create(
        file=("input.jsonl", io.BytesIO(jsonl([chat_line("a"), chat_line("b", "FAIL_400")]))),
        purpose="batch",
        expires_after={"anchor": "created_at", "seconds": 3600},
    )
    assert uploaded.expires_at == uploaded.created_at + 3600
    assert live_client.files.retrieve(uploaded.id).expires_at == uploaded.expires_at

    seconds = 7 * 86400
    created = live_client.batches.create(
        input_file_id=uploaded.id,
        endpoint=ENDPOINT,
        completion_window="24h",
        output_expires_after={"anchor": "created_at", "seconds": seconds},
    )
    batch = wait_for_batch(live_client, created.id)
    check_batch_fields(live_client, batch, model="fake-model", total=2, completed=1, failed=1)
    for file_id in (batch.output_file_id, batch.error_file_id):
        result = live_client.files.retrieve(file_id)
        assert result.expires_at == result.created_at + seconds
        assert file_lines(live_client, file_id)


def test_every_response_carries_a_request_id(live_client):
    created = live_client.files.with_raw_response.list()
    assert created.headers["x-request-id"].startswith("req_")
    with pytest.raises(openai.NotFoundError) as missing:
        live_client.batches.retrieve("batch_missing")
    assert missing.value.response.headers["x-request-id"].startswith("req_")
    assert missing.value.request_id == missing.value.response.headers["x-request-id"]
    assert missing.value.body["message"] == "No such Batch object: batch_missing"
