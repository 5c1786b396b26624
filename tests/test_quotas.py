"""Quotas per API key, through the OpenAI SDK: 429s at create, failures at validation."""

import io
import json
from datetime import timedelta

import httpx2
import openai
import pytest
from django.core.handlers.wsgi import WSGIHandler
from django.core.signals import request_finished, request_started
from django.db import close_old_connections
from django.utils import timezone

from batches import tasks
from batches.models import Batch, BatchStatus
from files_app.models import ApiKey
from tests.conftest import chat_line, jsonl

ENDPOINT = "/v1/chat/completions"


@pytest.fixture
def sdk(make_api_key):
    """``sdk(**quotas)`` -> (OpenAI SDK client calling this process's Django app, its ApiKey)."""

    def make(**quotas):
        api_key, raw = make_api_key()
        ApiKey.objects.filter(pk=api_key.pk).update(**quotas)
        transport = httpx2.WSGITransport(app=WSGIHandler())
        client = openai.OpenAI(base_url="http://testserver/v1", api_key=raw, max_retries=0, http_client=httpx2.Client(transport=transport))
        return client, api_key

    # As Django's test client does: the request cycle must not close the test's
    # connection (on PostgreSQL that would end the test's transaction).
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    yield make
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


def create(client, lines=None):
    uploaded = client.files.create(file=("in.jsonl", io.BytesIO(jsonl(lines or [chat_line("a")]))), purpose="batch")
    return client.batches.create(input_file_id=uploaded.id, endpoint=ENDPOINT, completion_window="24h")


def error_of(exc_info):
    response = exc_info.value.response
    return response, response.json()["error"]


def test_unlimited_by_default(sdk):
    client, api_key = sdk()
    for _ in range(5):
        create(client)
    assert Batch.objects.filter(api_key=api_key).count() == 5


def test_max_active_batches(sdk):
    client, api_key = sdk(max_active_batches=2)
    first, _second = create(client), create(client)
    with pytest.raises(openai.RateLimitError) as exc_info:
        create(client)
    response, error = error_of(exc_info)
    assert response.status_code == 429
    assert error["code"] == "active_batch_limit_exceeded"
    assert error["type"] == "requests"
    assert "has 2 active batches and may have at most 2" in error["message"]
    assert response.headers["x-should-retry"] == "false"
    assert Batch.objects.filter(api_key=api_key).count() == 2

    # A finished batch frees its slot.
    client.batches.cancel(first.id)
    Batch.objects.filter(pk=first.id).update(status=BatchStatus.CANCELLED)
    assert create(client).status == "validating"


def test_quota_is_per_key(sdk, make_api_key):
    client, api_key = sdk(max_active_batches=1)
    create(client)
    other_client, _ = sdk(max_active_batches=1)
    assert create(other_client).status == "validating"


def test_site_default_applies_when_the_key_field_is_empty(sdk, settings):
    settings.OPENAI_BATCHES = {**getattr(settings, "OPENAI_BATCHES", {}), "DEFAULT_QUOTAS": {"MAX_ACTIVE_BATCHES": 1}}
    client, _ = sdk()
    create(client)
    with pytest.raises(openai.RateLimitError) as exc_info:
        create(client)
    assert error_of(exc_info)[1]["code"] == "active_batch_limit_exceeded"
    # The key's own value wins over the default.
    roomy, _ = sdk(max_active_batches=3)
    create(roomy)
    create(roomy)


def test_batch_creations_per_hour_with_retry_after(sdk):
    client, api_key = sdk(max_batch_creations_per_hour=2)
    create(client)
    create(client)
    # The oldest creation was 50 minutes ago: its slot frees in 10 minutes.
    oldest = Batch.objects.filter(api_key=api_key).order_by("created_at").first()
    Batch.objects.filter(pk=oldest.pk).update(created_at=timezone.now() - timedelta(minutes=50))
    with pytest.raises(openai.RateLimitError) as exc_info:
        create(client)
    response, error = error_of(exc_info)
    assert error["code"] == "rate_limit_exceeded"
    assert "limit 2 per hour, used 2" in error["message"]
    assert 595 <= int(response.headers["retry-after"]) <= 601
    Batch.objects.filter(pk=oldest.pk).update(created_at=timezone.now() - timedelta(minutes=61))
    assert create(client).status == "validating"


def test_idempotent_replay_is_not_counted(sdk):
    client, _ = sdk(max_active_batches=1)
    uploaded = client.files.create(file=("in.jsonl", io.BytesIO(jsonl([chat_line("a")]))), purpose="batch")
    kwargs = {"input_file_id": uploaded.id, "endpoint": ENDPOINT, "completion_window": "24h", "extra_headers": {"Idempotency-Key": "k1"}}
    first = client.batches.create(**kwargs)
    assert client.batches.create(**kwargs).id == first.id


def validated(client, lines):
    batch = create(client, lines)
    tasks.validate_batch(batch.id)
    return client.batches.retrieve(batch.id)


def test_enqueued_requests_limit_fails_the_batch_at_validation(sdk, upstream):
    client, _ = sdk(max_enqueued_requests=5)
    assert validated(client, [chat_line(f"r{i}") for i in range(3)]).status == "in_progress"
    batch = validated(client, [chat_line(f"s{i}") for i in range(3)])
    assert batch.status == "failed"
    [error] = batch.errors.data
    assert error.code == "request_limit_exceeded"
    assert error.message.startswith("Enqueued request limit reached for this API key: limit 5, currently enqueued 3")
    assert "this batch has 3" in error.message
    # Within the limit it runs.
    assert validated(client, [chat_line(f"t{i}") for i in range(2)]).status == "in_progress"


def test_enqueued_prompt_tokens_limit(sdk, upstream):
    client, api_key = sdk(max_enqueued_prompt_tokens=100)
    # About 4 characters a token: 200 characters of content are 50+ tokens.
    first = validated(client, [chat_line("a", "x" * 200)])
    assert first.status == "in_progress"
    used = Batch.objects.get(pk=first.id).estimated_prompt_tokens
    assert 50 <= used < 60
    batch = validated(client, [chat_line("b", "y" * 200)])
    assert batch.status == "failed"
    [error] = batch.errors.data
    assert error.code == "token_limit_exceeded"
    assert f"limit 100 prompt tokens, currently enqueued {used} in unfinished batches; this batch has {used}" in error.message
    # Once the first batch is finished its tokens no longer count.
    Batch.objects.filter(pk=first.id).update(status=BatchStatus.COMPLETED)
    assert validated(client, [chat_line("c", "z" * 200)]).status == "in_progress"


def test_quotas_are_editable_in_the_admin(admin_client, make_api_key, settings):
    settings.STORAGES = {**settings.STORAGES, "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"}}
    api_key, _ = make_api_key()
    url = f"/admin/files_app/apikey/{api_key.pk}/change/"
    page = admin_client.get(url)
    assert b"max_enqueued_prompt_tokens" in page.content
    response = admin_client.post(
        url,
        {"name": "team-a", "max_active_batches": "3", "max_batch_creations_per_hour": "", "max_enqueued_requests": "1000", "weight": "1"},
    )
    assert response.status_code == 302, response.content[:2000]
    api_key.refresh_from_db()
    assert (api_key.max_active_batches, api_key.max_batch_creations_per_hour, api_key.max_enqueued_requests) == (3, None, 1000)


def test_default_quotas_setting_is_checked(settings):
    from django.core import checks

    settings.OPENAI_BATCHES = {"DEFAULT_QUOTAS": {"MAX_ACTIVE_BATCHES": -1, "MAX_BATCHES": 3}}
    messages = [m.msg for m in checks.run_checks() if m.id == "openai_batches.E006"]
    assert any("MAX_BATCHES" in m for m in messages)
    assert any("MAX_ACTIVE_BATCHES" in m and "-1" in m for m in messages)


def test_zero_active_batches_refuses_every_create(sdk):
    client, _ = sdk(max_active_batches=0)
    with pytest.raises(openai.RateLimitError) as exc_info:
        create(client)
    body = json.loads(exc_info.value.response.text)
    assert set(body["error"]) == {"message", "type", "param", "code"}
