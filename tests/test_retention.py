"""Retention, as OpenAI: batch input files expire 30 days after upload unless the upload
says ``expires_after``; output and error files 30 days after the batch finishes unless
the batch says ``output_expires_after``. ``DEFAULT_INPUT_FILE_TTL`` /
``DEFAULT_OUTPUT_FILE_TTL`` change that (None keeps files); ``tasks.sweep`` deletes
expired files and their stored bytes."""

import io
from datetime import timedelta

import pytest
from django.core.files.storage import default_storage
from django.utils import timezone

from batches import tasks
from batches.checks import check_settings as check_batch_settings
from files_app.checks import check_settings
from files_app.models import File
from tests.conftest import chat_line, jsonl, run_batches
from tests.live import wait_for_batch

THIRTY_DAYS = 30 * 86400


@pytest.fixture
def retention(settings):
    def apply(**keys):
        settings.OPENAI_BATCHES = {**getattr(settings, "OPENAI_BATCHES", {}), **keys}

    return apply


def post_file(api, purpose="batch", filename="in.jsonl", **fields):
    handle = io.BytesIO(jsonl([chat_line("a")]))
    handle.name = filename
    response = api.post("/v1/files", {"file": handle, "purpose": purpose, **fields}, format="multipart")
    assert response.status_code == 200, response.content
    return response.json()


def test_batch_input_files_expire_after_thirty_days_by_default(api):
    body = post_file(api)
    assert body["expires_at"] == body["created_at"] + THIRTY_DAYS
    assert api.get(f"/v1/files/{body['id']}").json()["expires_at"] == body["expires_at"]


def test_other_purposes_are_kept_and_expires_after_wins(api):
    assert post_file(api, purpose="user_data", filename="notes.txt")["expires_at"] is None
    body = post_file(api, **{"expires_after[anchor]": "created_at", "expires_after[seconds]": "7200"})
    assert body["expires_at"] == body["created_at"] + 7200


def test_the_input_default_is_read_live(api, retention):
    retention(DEFAULT_INPUT_FILE_TTL=None)
    assert post_file(api)["expires_at"] is None
    retention(DEFAULT_INPUT_FILE_TTL=3600)
    body = post_file(api)
    assert body["expires_at"] == body["created_at"] + 3600


@pytest.fixture
def finished(make_batch, upstream):
    """``finished(**fields)`` -> a completed batch with one output and one error line."""

    def run(**fields):
        batch = make_batch([chat_line("ok"), chat_line("bad", "FAIL_400")], **fields)
        assert tasks.validate_batch(batch.id) == "in_progress"
        run_batches()
        batch.refresh_from_db()
        assert batch.status == "completed" and batch.output_file_id and batch.error_file_id
        return batch

    return run


def result_files(batch):
    return [File.objects.get(pk=batch.output_file_id), File.objects.get(pk=batch.error_file_id)]


def test_output_and_error_files_expire_thirty_days_after_the_batch_finishes(finished):
    batch = finished()
    for stored in result_files(batch):
        assert stored.created_at == batch.finalizing_at or stored.created_at <= batch.completed_at
        assert stored.expires_at == stored.created_at + timedelta(seconds=THIRTY_DAYS)


def test_output_expires_after_wins_and_none_keeps(finished, retention):
    batch = finished(output_expires_after=3600)
    assert all(f.expires_at == f.created_at + timedelta(seconds=3600) for f in result_files(batch))
    retention(DEFAULT_OUTPUT_FILE_TTL=None)
    assert all(f.expires_at is None for f in result_files(finished()))


def test_the_sweeper_deletes_expired_files_and_their_bytes(finished, make_file):
    batch = finished()
    kept = make_file([chat_line("a")])
    gone = [*result_files(batch), File.objects.get(pk=batch.input_file_id)]
    names = [f.content.name for f in gone]
    File.objects.filter(pk__in=[f.pk for f in gone]).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert tasks.sweep()["files"] == 3
    assert not File.objects.filter(pk__in=[f.pk for f in gone]).exists()
    assert not any(default_storage.exists(name) for name in names)
    assert File.objects.filter(pk=kept.pk).exists()


@pytest.mark.parametrize("value", [0, -5, "30d", 2.5, True])
def test_a_bad_retention_setting_is_a_system_check_error(retention, value):
    retention(DEFAULT_OUTPUT_FILE_TTL=value)
    assert [m.id for m in check_batch_settings(None) if m.is_serious()] == ["openai_batches.E007"]
    retention(DEFAULT_OUTPUT_FILE_TTL=None, DEFAULT_INPUT_FILE_TTL=value)
    assert [m.id for m in check_settings(None)] == ["openai_batches.E007"]


@pytest.mark.parametrize("value", [None, 3600])
def test_good_retention_settings_pass_the_checks(retention, value):
    retention(DEFAULT_INPUT_FILE_TTL=value, DEFAULT_OUTPUT_FILE_TTL=value)
    assert not [m for m in check_settings(None) + check_batch_settings(None) if m.id == "openai_batches.E007"]


@pytest.mark.live
def test_sdk_sees_openai_retention(live_client):
    uploaded = live_client.files.create(file=("keep.jsonl", io.BytesIO(jsonl([chat_line("a")]))), purpose="batch")
    assert uploaded.expires_at == uploaded.created_at + THIRTY_DAYS
    batch = live_client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
    batch = wait_for_batch(live_client, batch.id, timeout=60)
    assert batch.status == "completed", batch.errors
    output = live_client.files.retrieve(batch.output_file_id)
    assert output.expires_at == output.created_at + THIRTY_DAYS
    assert batch.completed_at - 5 <= output.created_at <= batch.completed_at
