"""Shared fixtures: factories for users, keys, files and batches; an API client
that authenticates like the SDK; the fake upstream; a live stack."""

import io
import json
import os

import pytest
from django.contrib.auth import get_user_model
from django.core.files.base import ContentFile
from rest_framework.test import APIClient

from tests.fake_upstream import FakeUpstream
from tests.live import LiveStack


@pytest.fixture(scope="session")
def fake_upstream():
    server = FakeUpstream(models=["fake-model", "fake-embed", "other-model"]).start()
    yield server
    server.stop()


@pytest.fixture
def upstream(fake_upstream, settings):
    """The fake upstream, reset, and configured as the apps' upstream."""
    fake_upstream.reset()
    fake_upstream.configure(
        latency_ms=0, latency_jitter_ms=0, error_500_rate=0, error_503_rate=0, error_429_rate=0, timeout_rate=0, down=False
    )
    settings.OPENAI_BATCHES = {
        **getattr(settings, "OPENAI_BATCHES", {}),
        "UPSTREAM_BASE_URL": fake_upstream.base_url,
        "RETRY_BACKOFF_BASE": 0.01,
        "RETRY_BACKOFF_MAX": 0.05,
    }
    return fake_upstream


@pytest.fixture
def make_user(db):
    counter = {"n": 0}

    def make(username=None, **fields):
        counter["n"] += 1
        return get_user_model().objects.create(username=username or f"user{counter['n']}", **fields)

    return make


@pytest.fixture
def make_api_key(make_user):
    def make(user=None, name="test"):
        from files_app.models import ApiKey

        return ApiKey.objects.issue(user or make_user(), name=name)

    return make


@pytest.fixture
def make_client(make_api_key):
    """``make_client(user=None)`` -> DRF APIClient sending ``Authorization: Bearer <key>``."""

    def make(user=None):
        api_key, raw = make_api_key(user)
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
        client.user = api_key.user
        client.raw_key = raw
        return client

    return make


@pytest.fixture
def api(make_client):
    return make_client()


def jsonl(records):
    return ("\n".join(r if isinstance(r, str) else json.dumps(r) for r in records) + "\n").encode()


def chat_line(custom_id, content="hello", model="fake-model", **body):
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": model, "messages": [{"role": "user", "content": content}], **body},
    }


@pytest.fixture
def make_file(make_user):
    def make(content=b"", owner=None, purpose="batch", filename="input.jsonl"):
        from files_app.models import File

        if isinstance(content, list):
            content = jsonl(content)
        obj = File(owner=owner or make_user(), filename=filename, purpose=purpose, bytes=len(content))
        obj.content.save(filename, ContentFile(content), save=False)
        obj.save()
        return obj

    return make


@pytest.fixture
def make_batch(make_file):
    """``make_batch(lines, owner=..., endpoint=...)`` -> a stored batch in ``validating``."""

    def make(lines, owner=None, endpoint="/v1/chat/completions", **fields):
        from batches import lifecycle

        input_file = make_file(lines, owner=owner)
        return lifecycle.create_batch(owner=input_file.owner, input_file_id=input_file.id, endpoint=endpoint, **fields)

    return make


@pytest.fixture(autouse=True)
def media_root(tmp_path, settings):
    settings.MEDIA_ROOT = tmp_path / "media"


@pytest.fixture(scope="session")
def live_stack(fake_upstream):
    """gunicorn + qcluster processes on their own database, in front of the fake upstream."""
    env = {"BATCHES_LEASE_SECONDS": "10", "BATCHES_EXTRA_ENDPOINTS": "/v1/images/generations,/v1/images/edits"}
    stack = LiveStack(fake_upstream.base_url, env=env).start()
    yield stack
    stack.stop()


@pytest.fixture
def live_client(live_stack, fake_upstream):
    fake_upstream.reset()
    fake_upstream.configure(
        latency_ms=0, latency_jitter_ms=0, error_500_rate=0, error_503_rate=0, error_429_rate=0, timeout_rate=0, down=False
    )
    return live_stack.client()


@pytest.fixture
def validated(make_batch, upstream):
    """``validated(lines, **fields)`` -> a batch in ``in_progress``."""
    from batches import tasks

    def make(lines, **fields):
        batch = make_batch(lines, **fields)
        assert tasks.validate_batch(batch.id) == "in_progress"
        batch.refresh_from_db()
        return batch

    return make


def claim(owner, wanted):
    """Rows a dispatcher ``owner`` claims from the default upstream, with a one-minute
    lease: ``[(pk, batch_id, attempts)]``."""
    from datetime import timedelta

    from django.utils import timezone

    from batches import upstream
    from batches.aimd import Feedback
    from batches.claims import Claimer

    now = timezone.now()
    got = Claimer(owner).claim(
        upstream.default_base_url(),
        wanted=wanted,
        unflushed={},
        feedback=Feedback(),
        now=now,
        lease_until=now + timedelta(minutes=1),
    )
    return [(pk, batch_id, attempts) for pk, batch_id, attempts, _ in got.rows]


def run_batches():
    """What the workers do once batches are validated, in-process: a dispatcher runs until no
    batch has work left, then every finalization it queued (db tests never commit, so nothing
    reaches django-q2). Returns the dispatcher's outcome."""
    from batches import tasks
    from batches.models import Batch, BatchStatus

    outcome = tasks.dispatch()
    for batch_id in Batch.objects.filter(status__in=[BatchStatus.FINALIZING, BatchStatus.CANCELLING]).values_list("pk", flat=True):
        tasks.finalize_batch(batch_id)
    return outcome


def upload(client, records, filename="input.jsonl"):
    """Upload JSONL through the SDK."""
    return client.files.create(file=(filename, io.BytesIO(jsonl(records))), purpose="batch")


os.environ.setdefault("BATCHES_LOG_LEVEL", "WARNING")
