"""/v1/images/generations and /v1/images/edits: refused unless the site lists them in
OPENAI_BATCHES["EXTRA_ENDPOINTS"]; then only the universal rules are checked and the
body goes to the upstream as it is. Live: the session stack enables both
(BATCHES_EXTRA_ENDPOINTS), output parsed with the SDK's ``ImagesResponse``."""

import pytest
from openai.types import ImagesResponse

from batches import tasks
from batches.checks import check_extra_endpoints
from batches.models import BatchStatus
from tests.live_batches import check_batch_fields, create_and_wait, error_lines, output_bodies
from tests.test_batches_api import assert_error

GENERATIONS = "/v1/images/generations"
EDITS = "/v1/images/edits"


def image_line(custom_id, endpoint=GENERATIONS, **body):
    return {"custom_id": custom_id, "method": "POST", "url": endpoint, "body": {"model": "fake-model", "prompt": "a red fox", **body}}


@pytest.fixture
def extra(settings):
    def enable(endpoints):
        settings.OPENAI_BATCHES = {**getattr(settings, "OPENAI_BATCHES", {}), "EXTRA_ENDPOINTS": endpoints}

    return enable


@pytest.mark.parametrize("endpoint", [GENERATIONS, EDITS])
def test_refused_by_default_with_the_enabled_list(api, make_file, endpoint):
    input_file = make_file([image_line("a", endpoint)], owner=api.user)
    response = api.post("/v1/batches", {"input_file_id": input_file.id, "endpoint": endpoint, "completion_window": "24h"}, format="json")
    error = assert_error(response, 400, param="endpoint", code="invalid_value")
    assert "'/v1/moderations'." in error["message"] and "images" not in error["message"].split("Supported")[1]


@pytest.mark.parametrize("endpoint", [GENERATIONS, EDITS])
def test_enabled_endpoints_check_only_the_universal_rules(api, make_file, extra, upstream, endpoint):
    extra([GENERATIONS, EDITS])
    lines = [
        image_line("odd-fields", endpoint, size="7x7", quality=5, image=[{"file_id": "file-x"}]),  # passed through untouched
        image_line("no-prompt", endpoint, prompt=None),  # the upstream decides
    ]
    input_file = make_file(lines, owner=api.user)
    response = api.post("/v1/batches", {"input_file_id": input_file.id, "endpoint": endpoint, "completion_window": "24h"}, format="json")
    assert response.status_code == 200, response.content
    batch_id = response.json()["id"]
    assert tasks.validate_batch(batch_id) == "in_progress"

    failing = make_file([image_line("a", endpoint, model=None), image_line("b", endpoint, stream=True)], owner=api.user)
    response = api.post("/v1/batches", {"input_file_id": failing.id, "endpoint": endpoint, "completion_window": "24h"}, format="json")
    assert tasks.validate_batch(response.json()["id"]) == "failed"
    from batches.models import Batch

    errors = Batch.objects.get(pk=response.json()["id"]).errors
    assert [(e["code"], e["param"], e["line"]) for e in errors] == [
        ("invalid_request", "body.model", 1),
        ("streaming_unsupported", "body.stream", 2),
    ]
    assert Batch.objects.get(pk=batch_id).status == BatchStatus.IN_PROGRESS


@pytest.mark.parametrize("value", [["/v1/videos"], "/v1/images/generations", [GENERATIONS, 3]])
def test_unknown_extra_endpoints_are_a_system_check_error(extra, value):
    extra(value)
    (error,) = check_extra_endpoints()
    assert error.id == "openai_batches.E013"


def test_known_extra_endpoints_pass_the_checks(extra):
    extra([GENERATIONS, EDITS])
    assert check_extra_endpoints() == []


@pytest.mark.live
@pytest.mark.parametrize("endpoint", [GENERATIONS, EDITS])
def test_images_batch_output_parses_as_images_responses(live_client, endpoint):
    lines = [
        image_line("fox", endpoint),
        image_line("two-cats", endpoint, prompt="two cats", n=2, size="1024x1024"),
        image_line("rejected", endpoint, prompt="FAIL_400"),
    ]
    batch = create_and_wait(live_client, endpoint, lines)
    raw = check_batch_fields(live_client, batch, model="fake-model", total=3, completed=2, failed=1)
    responses = {custom_id: ImagesResponse.model_validate(body) for custom_id, body in output_bodies(live_client, batch).items()}
    assert {custom_id: len(r.data) for custom_id, r in responses.items()} == {"fox": 1, "two-cats": 2}
    assert all(image.b64_json for r in responses.values() for image in r.data)
    assert raw["usage"]["output_tokens"] == 272 * 3
    assert error_lines(live_client, batch)["rejected"]["response"]["status_code"] == 400
