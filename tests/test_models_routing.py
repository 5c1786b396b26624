"""Model validation: a batch's ``body.model`` must be served by the upstream
(asked once per batch through /v1/models) unless the MODELS allow-list /
routing table says otherwise."""

import pytest

from batches import tasks
from batches.models import Batch, BatchStatus
from tests.conftest import chat_line

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
