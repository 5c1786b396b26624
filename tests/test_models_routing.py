"""Model validation: a batch's ``body.model`` must be served by the upstream
(asked once per batch through /v1/models) unless the MODELS allow-list /
routing table says otherwise."""

import pytest

from batches import tasks
from batches.models import Batch, BatchStatus
from batches.upstream import Route, route_for
from tests.conftest import chat_line, run_batches

pytestmark = pytest.mark.django_db


@pytest.fixture
def models_setting(settings, upstream):
    """``models_setting(value)`` sets OPENAI_BATCHES['MODELS'] on top of the fake upstream."""

    def apply(value):
        settings.OPENAI_BATCHES = {**settings.OPENAI_BATCHES, "MODELS": value}

    return apply


def validated(batch):
    tasks.validate_batch(batch.id)
    return Batch.objects.get(pk=batch.id)


def models_asked(upstream):
    return upstream.stats()["by_path"].get("/v1/models", 0)


def test_unknown_model_fails_validation_with_model_not_found(upstream, make_batch):
    batch = validated(make_batch([chat_line("a", model="no-such-model"), chat_line("b", model="no-such-model")]))

    assert batch.status == BatchStatus.FAILED
    assert batch.errors == [
        {
            "code": "model_not_found",
            "message": "The provided model 'no-such-model' is not supported by the Batch API.",
            "param": "body.model",
            "line": 1,
        }
    ]
    assert batch.requests.count() == 0


def test_model_served_by_upstream_passes(upstream, make_batch):
    batch = validated(make_batch([chat_line("a", model="other-model")]))

    assert batch.status == BatchStatus.IN_PROGRESS
    assert batch.model == "other-model"


def test_upstream_models_are_asked_once_per_batch_not_per_line(upstream, make_batch):
    lines = [chat_line(f"req-{i}") for i in range(50)]

    assert validated(make_batch(lines)).status == BatchStatus.IN_PROGRESS
    assert models_asked(upstream) == 1
    assert validated(make_batch([chat_line(f"req-{i}", model="missing") for i in range(50)])).status == BatchStatus.FAILED
    assert models_asked(upstream) == 2
    assert upstream.stats()["by_path"].get("/v1/chat/completions", 0) == 0


def test_allow_list_admits_a_model_the_upstream_does_not_list(models_setting, upstream, make_batch):
    models_setting(["private-model"])

    batch = validated(make_batch([chat_line("a", model="private-model")]))

    assert batch.status == BatchStatus.IN_PROGRESS
    assert models_asked(upstream) == 0


def test_allow_list_rejects_a_model_the_upstream_serves(models_setting, upstream, make_batch):
    models_setting(["private-model"])

    batch = validated(make_batch([chat_line("a", model="fake-model")]))

    assert batch.status == BatchStatus.FAILED
    assert batch.errors[0]["code"] == "model_not_found"
    assert batch.errors[0]["param"] == "body.model"


def test_routing_table_entry_counts_as_served(models_setting, upstream, make_batch):
    models_setting({"routed-model": {"base_url": upstream.base_url, "api_key": "secret"}})

    assert validated(make_batch([chat_line("a", model="routed-model")])).status == BatchStatus.IN_PROGRESS
    assert validated(make_batch([chat_line("a", model="fake-model")])).status == BatchStatus.FAILED
    assert models_asked(upstream) == 0


def test_unreachable_upstream_fails_validation_without_blaming_the_model(upstream, make_batch):
    upstream.configure(down=True)

    batch = validated(make_batch([chat_line("a")]))

    assert batch.status == BatchStatus.FAILED
    assert batch.errors[0]["code"] == "upstream_unavailable"
    assert batch.errors[0]["param"] is None


def embedding_line(custom_id, model):
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/embeddings", "body": {"model": model, "input": f"text of {custom_id}"}}


def test_an_endpoint_override_sends_that_endpoint_of_the_model_to_its_own_server(models_setting, upstream, make_batch):
    # The entry's own base_url answers nothing: the lines complete only if they go to the override.
    models_setting({"fake-embed": {"base_url": "http://127.0.0.1:9/v1", "endpoints": {"/v1/embeddings": {"base_url": upstream.base_url}}}})
    batch = validated(make_batch([embedding_line(f"e{i}", "fake-embed") for i in range(3)], endpoint="/v1/embeddings"))

    assert batch.upstream == upstream.base_url  # its budget is the override's server's
    assert run_batches() == "idle"

    batch.refresh_from_db()
    assert batch.status == BatchStatus.COMPLETED
    assert batch.request_counts() == {"total": 3, "completed": 3, "failed": 0}
    assert upstream.stats()["by_path"]["/v1/embeddings"] >= 1  # the lines may go bundled (EMBEDDINGS_BUNDLE_SIZE)


def test_an_endpoint_override_keeps_the_entrys_other_endpoints_and_api_key(models_setting):
    models_setting({"m": {"base_url": "http://chat/v1", "api_key": "k", "endpoints": {"/v1/embeddings": {"base_url": "http://embed/v1"}}}})

    assert route_for("m", "/v1/chat/completions") == Route("http://chat/v1", "k")
    assert route_for("m", "/v1/completions") == Route("http://chat/v1", "k")
    assert route_for("m", "/v1/embeddings") == Route("http://embed/v1", "k")


def test_no_upstream_configured_fails_validation_naming_the_setting(settings, make_batch):
    settings.OPENAI_BATCHES = {**getattr(settings, "OPENAI_BATCHES", {}), "UPSTREAM_BASE_URL": None, "MODELS": None}

    assert tasks.validate_batch(make_batch([chat_line("a")]).id) == "failed"  # not an exception the sweeper retries

    (error,) = Batch.objects.get().errors
    assert error["code"] == "upstream_not_configured"
    assert "OPENAI_BATCHES['UPSTREAM_BASE_URL']" in error["message"]
    assert error["param"] is None


def test_an_allow_listed_model_without_any_base_url_fails_validation(settings, models_setting, make_batch):
    models_setting(["fake-model"])  # an allow-list, and no default upstream to send its requests to
    settings.OPENAI_BATCHES = {**settings.OPENAI_BATCHES, "UPSTREAM_BASE_URL": None}

    batch = validated(make_batch([chat_line("a", model="fake-model")]))

    assert batch.status == BatchStatus.FAILED
    assert batch.errors[0]["code"] == "upstream_not_configured"
    assert "a base_url for 'fake-model' in OPENAI_BATCHES['MODELS']" in batch.errors[0]["message"]
