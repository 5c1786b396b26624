"""completion_window: OpenAI's "24h" by default, the site's COMPLETION_WINDOWS when set, and
expires_at = created_at + that window (COMPLETION_WINDOW_SECONDS overrides every window)."""

import pytest

from batches.models import Batch
from tests.conftest import chat_line

ENDPOINT = "/v1/chat/completions"


@pytest.fixture
def create(api, make_file):
    """``create(window)`` -> response of POST /v1/batches asking for that completion_window."""

    def do(window):
        input_file = make_file([chat_line("a")], owner=api.user)
        return api.post("/v1/batches", {"input_file_id": input_file.id, "endpoint": ENDPOINT, "completion_window": window}, format="json")

    return do


def windows(settings, **overrides):
    settings.OPENAI_BATCHES = {**getattr(settings, "OPENAI_BATCHES", {}), **overrides}


def assert_invalid_window(response, listed):
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert (error["param"], error["code"], error["type"]) == ("completion_window", "invalid_value", "invalid_request_error")
    assert error["message"].endswith(f"Supported values are: {listed}.")
    assert Batch.objects.count() == 0


def test_by_default_only_openais_24h_is_accepted(create):
    assert_invalid_window(create("1h"), "'24h'")
    body = create("24h").json()
    assert body["completion_window"] == "24h"
    assert body["expires_at"] == body["created_at"] + 86400


@pytest.mark.parametrize("window, seconds", [("1h", 3600), ("24h", 86400), ("7d", 7 * 86400), ("90m", 5400)])
def test_a_configured_window_is_accepted_and_sets_expires_at(settings, create, window, seconds):
    windows(settings, COMPLETION_WINDOWS=["90m", "1h", "24h", "7d"])
    response = create(window)
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["completion_window"] == window
    assert body["expires_at"] == body["created_at"] + seconds
    stored = Batch.objects.get(pk=body["id"])
    assert stored.completion_window == window
    assert (stored.expires_at - stored.created_at).total_seconds() == seconds


@pytest.mark.parametrize("window", ["48h", "2h", "1H", " 1h", "0h", "1w"])
def test_a_window_not_configured_is_refused_listing_the_configured_ones(settings, create, window):
    windows(settings, COMPLETION_WINDOWS=["1h", "24h", "7d"])
    assert_invalid_window(create(window), "'1h', '24h', '7d'")


def test_window_seconds_overrides_every_window(settings, create):
    windows(settings, COMPLETION_WINDOWS=["1h", "24h"], COMPLETION_WINDOW_SECONDS=15)
    for window in ("1h", "24h"):
        body = create(window).json()
        assert body["completion_window"] == window
        assert body["expires_at"] == body["created_at"] + 15


def test_an_idempotent_replay_with_another_window_is_a_conflict(settings, api, make_file):
    windows(settings, COMPLETION_WINDOWS=["1h", "24h"])
    input_file = make_file([chat_line("a")], owner=api.user)
    payload = {"input_file_id": input_file.id, "endpoint": ENDPOINT, "idempotency_key": "k1"}
    first = api.post("/v1/batches", {**payload, "completion_window": "1h"}, format="json")
    again = api.post("/v1/batches", {**payload, "completion_window": "1h"}, format="json")
    other = api.post("/v1/batches", {**payload, "completion_window": "24h"}, format="json")
    assert first.status_code == again.status_code == 200 and again.json()["id"] == first.json()["id"]
    assert other.status_code == 409, other.content
