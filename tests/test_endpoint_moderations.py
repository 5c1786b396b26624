"""/v1/moderations batches through the live stack, output parsed with the SDK's
``ModerationCreateResponse``."""

import pytest
from openai.types import ModerationCreateResponse

from tests.live_batches import check_batch_fields, create_and_wait, error_lines, output_bodies

pytestmark = pytest.mark.live

ENDPOINT = "/v1/moderations"


def moderation_line(custom_id, value, **body):
    return {"custom_id": custom_id, "method": "POST", "url": ENDPOINT, "body": {"input": value, **body}}


def test_moderations_batch_output_parses_as_moderation_responses(live_client):
    lines = [
        moderation_line("string", "a harmless sentence", model="fake-model"),
        moderation_line("strings", ["one", "two"], model="fake-model"),
        moderation_line(
            "parts",
            [{"type": "text", "text": "look"}, {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}],
            model="fake-model",
        ),
        moderation_line("empty-array", [], model="fake-model"),
    ]
    batch = create_and_wait(live_client, ENDPOINT, lines)
    check_batch_fields(live_client, batch, model="fake-model", total=4, completed=3, failed=1)

    bodies = output_bodies(live_client, batch)
    responses = {custom_id: ModerationCreateResponse.model_validate(body) for custom_id, body in bodies.items()}
    assert {custom_id: len(r.results) for custom_id, r in responses.items()} == {"string": 1, "strings": 2, "parts": 1}
    for response in responses.values():
        assert response.model == "fake-model"
        assert all(result.flagged is False and result.categories.violence is False for result in response.results)

    rejected = error_lines(live_client, batch)["empty-array"]["response"]["body"]["error"]
    assert (rejected["code"], rejected["param"]) == ("empty_array", "input")


def test_moderations_without_a_model_use_the_upstream_default(live_client):
    batch = create_and_wait(live_client, ENDPOINT, [moderation_line("a", "first"), moderation_line("b", ["second", "third"])])
    raw = check_batch_fields(live_client, batch, model=None, total=2, completed=2, failed=0)

    bodies = output_bodies(live_client, batch)
    assert all(ModerationCreateResponse.model_validate(body).results for body in bodies.values())
    assert raw["usage"]["total_tokens"] == 0  # moderations report no token usage
