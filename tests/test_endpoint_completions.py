"""/v1/completions batches through the live stack, output parsed with the SDK's ``Completion``."""

import pytest
from openai.types import Completion

from tests.live_batches import check_batch_fields, create_and_wait, error_lines, output_bodies, usage_of

pytestmark = pytest.mark.live

ENDPOINT = "/v1/completions"


def completion_line(custom_id, prompt, **body):
    return {"custom_id": custom_id, "method": "POST", "url": ENDPOINT, "body": {"model": "fake-model", "prompt": prompt, **body}}


def test_completions_batch_output_parses_as_completions(live_client):
    lines = [
        completion_line("string", "Once upon a time", max_tokens=16),
        completion_line("strings", ["first", "second"], n=1),
        completion_line("tokens", [101, 102, 103]),
        completion_line("token-arrays", [[1, 2], [3, 4]]),
        completion_line("score-prompt", "just the prompt", max_tokens=0, echo=True),
    ]
    batch = create_and_wait(live_client, ENDPOINT, lines)
    raw = check_batch_fields(live_client, batch, model="fake-model", total=5, completed=5, failed=0)
    assert raw["error_file_id"] is None  # nothing failed

    bodies = output_bodies(live_client, batch)
    assert set(bodies) == {line["custom_id"] for line in lines}
    completions = {custom_id: Completion.model_validate(body) for custom_id, body in bodies.items()}
    for completion in completions.values():
        assert completion.object == "text_completion"
        assert completion.model == "fake-model"
        assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens
    assert completions["string"].choices[0].text == "echo: Once upon a time"
    assert len(completions["strings"].choices) == 2
    assert len(completions["token-arrays"].choices) == 2

    usage = raw["usage"]
    assert (usage["input_tokens"], usage["output_tokens"]) == usage_of(bodies.values())
    assert usage["output_tokens_details"] == {"reasoning_tokens": 0}


def test_completions_schema_errors_go_to_the_error_file(live_client):
    lines = [
        completion_line("ok", "fine"),
        completion_line("best-of-below-n", "x", n=3, best_of=2),
        completion_line("logprobs-too-high", "x", logprobs=6),
    ]
    batch = create_and_wait(live_client, ENDPOINT, lines)
    check_batch_fields(live_client, batch, model="fake-model", total=3, completed=1, failed=2)

    failures = error_lines(live_client, batch)
    assert {custom_id: line["response"]["body"]["error"]["param"] for custom_id, line in failures.items()} == {
        "best-of-below-n": "best_of",
        "logprobs-too-high": "logprobs",
    }
