"""/v1/responses batches through the live stack, output parsed with the SDK's ``Response``."""

import pytest
from openai.types.responses import Response

from tests.live_batches import check_batch_fields, create_and_wait, error_lines, output_bodies, usage_of

pytestmark = pytest.mark.live

ENDPOINT = "/v1/responses"


def response_line(custom_id, value, **body):
    return {"custom_id": custom_id, "method": "POST", "url": ENDPOINT, "body": {"model": "fake-model", "input": value, **body}}


def test_responses_batch_output_parses_as_responses(live_client):
    lines = [
        response_line("string", "Tell me a joke", max_output_tokens=64),
        response_line("messages", [{"role": "developer", "content": "Be terse."}, {"role": "user", "content": "Hi there"}]),
        response_line("parts", [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "parts"}]}]),
        response_line("instructions", "with instructions", instructions="Answer in French.", temperature=0.2),
        response_line("max-output-tokens-8", "too few tokens", max_output_tokens=8),
    ]
    batch = create_and_wait(live_client, ENDPOINT, lines, metadata={"suite": "responses"})
    raw = check_batch_fields(live_client, batch, model="fake-model", total=5, completed=4, failed=1)

    bodies = output_bodies(live_client, batch)
    responses = {custom_id: Response.model_validate(body) for custom_id, body in bodies.items()}
    for response in responses.values():
        assert response.object == "response" and response.status == "completed" and response.model == "fake-model"
        assert response.usage.total_tokens == response.usage.input_tokens + response.usage.output_tokens
    assert responses["string"].output_text == "echo: Tell me a joke"
    assert responses["messages"].output_text == "echo: Hi there"
    assert responses["instructions"].instructions == "Answer in French."

    failures = error_lines(live_client, batch)
    rejected = failures["max-output-tokens-8"]["response"]["body"]["error"]
    assert (rejected["code"], rejected["param"]) == ("integer_below_min_value", "max_output_tokens")

    # Responses usage has the detail fields; the batch sums them as OpenAI does.
    usage = raw["usage"]
    assert (usage["input_tokens"], usage["output_tokens"]) == usage_of(bodies.values())
    assert usage["input_tokens_details"]["cached_tokens"] == sum(
        b["usage"]["input_tokens_details"]["cached_tokens"] for b in bodies.values()
    )
    assert usage["output_tokens_details"]["reasoning_tokens"] == sum(
        b["usage"]["output_tokens_details"]["reasoning_tokens"] for b in bodies.values()
    )
