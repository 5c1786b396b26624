"""/v1/uploads (a file sent in parts): the DRF test client for the rules, the unmodified
SDK against the live stack for the wire format and for using the result as a batch input."""

import hashlib
import io
from datetime import timedelta

import openai
import pytest
from django.core.files.storage import default_storage
from django.utils import timezone
from openai.types import Upload as SDKUpload
from openai.types.uploads import UploadPart as SDKUploadPart

from batches.tasks import sweep
from files_app.models import File, Upload, UploadPart, UploadStatus
from tests.conftest import chat_line, jsonl
from tests.live import wait_for_batch
from tests.test_batches_api import assert_error

CONTENT = jsonl([chat_line(f"line-{i}", f"question {i}") for i in range(6)])


@pytest.fixture
def create(api):
    def do(client=None, **overrides):
        payload = {"bytes": len(CONTENT), "filename": "big.jsonl", "mime_type": "application/jsonl", "purpose": "batch", **overrides}
        payload = {k: v for k, v in payload.items() if v is not ...}
        return (client or api).post("/v1/uploads", payload, format="json")

    return do


def add_part(client, upload_id, data):
    handle = io.BytesIO(data)
    handle.name = "upload"
    return client.post(f"/v1/uploads/{upload_id}/parts", {"data": handle}, format="multipart")


def split(data, count):
    size = -(-len(data) // count)
    return [data[i : i + size] for i in range(0, len(data), size)]


def stored_part_names(upload_id):
    return [part.content.name for part in UploadPart.objects.filter(upload_id=upload_id)]


def test_create_returns_the_sdk_upload_shape(create):
    before = int(timezone.now().timestamp())
    body = create().json()
    assert set(body) == set(SDKUpload.model_fields)
    upload = SDKUpload.model_validate(body)
    assert upload.id.startswith("upload_") and upload.object == "upload" and upload.status == "pending"
    assert (upload.bytes, upload.filename, upload.purpose, upload.file) == (len(CONTENT), "big.jsonl", "batch", None)
    assert before <= upload.created_at and upload.expires_at == upload.created_at + 3600


def test_parts_complete_into_a_file_in_the_listed_order(api, create):
    upload_id = create().json()["id"]
    chunks = split(CONTENT, 3)
    part_ids = []
    for chunk in reversed(chunks):  # sent in any order; part_ids decide the file's order
        response = add_part(api, upload_id, chunk)
        assert response.status_code == 200, response.content
        assert set(response.json()) == set(SDKUploadPart.model_fields)
        part = SDKUploadPart.model_validate(response.json())
        assert part.id.startswith("part_") and part.object == "upload.part" and part.upload_id == upload_id
        part_ids.insert(0, part.id)
    names = stored_part_names(upload_id)
    assert all(default_storage.exists(name) for name in names)

    response = api.post(f"/v1/uploads/{upload_id}/complete", {"part_ids": part_ids, "md5": hashlib.md5(CONTENT).hexdigest()}, format="json")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["status"] == "completed"
    file = body["file"]
    assert (file["object"], file["bytes"], file["filename"], file["purpose"]) == ("file", len(CONTENT), "big.jsonl", "batch")
    assert file["expires_at"] == file["created_at"] + 30 * 86400  # DEFAULT_INPUT_FILE_TTL, as OpenAI
    assert api.get(f"/v1/files/{file['id']}/content").getvalue() == CONTENT
    assert not UploadPart.objects.filter(upload_id=upload_id).exists()
    assert not any(default_storage.exists(name) for name in names), "the parts' bytes are deleted once joined"

    again = api.post(f"/v1/uploads/{upload_id}/complete", {"part_ids": part_ids}, format="json")
    assert again.status_code == 200 and again.json()["file"]["id"] == file["id"], "a retried complete answers the same upload"


def test_expires_after_applies_to_the_file(api, create):
    upload_id = create(expires_after={"anchor": "created_at", "seconds": 7200}).json()["id"]
    part_id = add_part(api, upload_id, CONTENT).json()["id"]
    file = api.post(f"/v1/uploads/{upload_id}/complete", {"part_ids": [part_id]}, format="json").json()["file"]
    assert file["expires_at"] == file["created_at"] + 7200


def test_wrong_md5_or_size_or_parts_refuse_to_complete(api, create, make_client):
    upload_id = create().json()["id"]
    first, second = split(CONTENT, 2)
    part_ids = [add_part(api, upload_id, first).json()["id"], add_part(api, upload_id, second).json()["id"]]
    complete = lambda **body: api.post(f"/v1/uploads/{upload_id}/complete", body, format="json")  # noqa: E731

    assert_error(complete(part_ids=part_ids, md5="0" * 32), 400, param="md5", code="invalid_value")
    assert_error(complete(part_ids=part_ids[:1]), 400, param="part_ids", code="invalid_value")
    assert_error(complete(part_ids=[*part_ids, part_ids[0]]), 400, param="part_ids", code="invalid_value")
    assert_error(complete(part_ids=[part_ids[0], "part_nope"]), 400, param="part_ids", code="invalid_value")
    assert_error(complete(part_ids="part_x"), 400, param="part_ids", code="invalid_type")
    assert_error(complete(), 400, param="part_ids", code="missing_required_parameter")
    other_upload = create().json()["id"]
    other_part = add_part(api, other_upload, CONTENT).json()["id"]
    assert_error(complete(part_ids=[other_part]), 400, param="part_ids", code="invalid_value")
    assert File.objects.count() == 0 and Upload.objects.get(pk=upload_id).status == UploadStatus.PENDING

    stranger = make_client()
    assert_error(stranger.post(f"/v1/uploads/{upload_id}/complete", {"part_ids": part_ids}, format="json"), 404, param="id")
    assert_error(add_part(stranger, upload_id, b"x"), 404, param="id")
    assert complete(part_ids=part_ids).json()["status"] == "completed"


@pytest.mark.parametrize(
    "overrides, param, code",
    [
        ({"bytes": ...}, "bytes", "missing_required_parameter"),
        ({"filename": ...}, "filename", "missing_required_parameter"),
        ({"mime_type": ...}, "mime_type", "missing_required_parameter"),
        ({"purpose": ...}, "purpose", "missing_required_parameter"),
        ({"bytes": "10"}, "bytes", "invalid_type"),
        ({"bytes": 0}, "bytes", "integer_out_of_range"),
        ({"bytes": 512 * 1024 * 1024 + 1}, "bytes", "integer_out_of_range"),
        ({"purpose": "batch_output"}, "purpose", "invalid_value"),
        ({"filename": "big.csv"}, "filename", "invalid_file_format"),
        ({"mime_type": "jsonl"}, "mime_type", "invalid_value"),
        ({"expires_after": {"anchor": "created_at", "seconds": 60}}, "expires_after.seconds", "integer_out_of_range"),
        ({"expires_after": "soon"}, "expires_after", "invalid_type"),
    ],
)
def test_bad_create_is_rejected(create, overrides, param, code):
    assert_error(create(**overrides), 400, param=param, code=code)


def test_cancel_discards_parts_and_blocks_more(api, create):
    upload_id = create().json()["id"]
    part_id = add_part(api, upload_id, CONTENT).json()["id"]
    names = stored_part_names(upload_id)
    body = api.post(f"/v1/uploads/{upload_id}/cancel").json()
    assert (body["status"], body["file"]) == ("cancelled", None)
    assert not any(default_storage.exists(name) for name in names)
    assert api.post(f"/v1/uploads/{upload_id}/cancel").json()["status"] == "cancelled"
    response = add_part(api, upload_id, b"more")
    assert_error(response, 409, param="upload_id", code="upload_not_pending")
    assert response["x-should-retry"] == "false"
    assert_error(
        api.post(f"/v1/uploads/{upload_id}/complete", {"part_ids": [part_id]}, format="json"),
        409,
        param="upload_id",
        code="upload_not_pending",
    )


def test_cancel_of_a_completed_upload_is_a_conflict(api, create):
    upload_id = create().json()["id"]
    part_id = add_part(api, upload_id, CONTENT).json()["id"]
    api.post(f"/v1/uploads/{upload_id}/complete", {"part_ids": [part_id]}, format="json")
    assert_error(api.post(f"/v1/uploads/{upload_id}/cancel"), 409, param="upload_id", code="upload_not_pending")


def test_an_upload_expires_after_an_hour_and_the_sweeper_deletes_its_parts(api, create):
    upload_id = create().json()["id"]
    part_id = add_part(api, upload_id, CONTENT).json()["id"]
    names = stored_part_names(upload_id)
    Upload.objects.filter(pk=upload_id).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert_error(add_part(api, upload_id, b"late"), 409, param="upload_id", code="upload_not_pending")
    response = api.post(f"/v1/uploads/{upload_id}/complete", {"part_ids": [part_id]}, format="json")
    assert "status 'expired'" in assert_error(response, 409, param="upload_id", code="upload_not_pending")["message"]

    assert sweep()["uploads"] == 1
    assert Upload.objects.get(pk=upload_id).status == UploadStatus.EXPIRED
    assert not UploadPart.objects.filter(upload_id=upload_id).exists()
    assert not any(default_storage.exists(name) for name in names)
    assert sweep()["uploads"] == 0


def test_part_size_limits(api, create, settings, monkeypatch):
    monkeypatch.setattr("files_app.upload_views.MAX_PART_BYTES", 1024)
    upload_id = create().json()["id"]
    assert_error(add_part(api, upload_id, b"x" * 4096), 413, param="data", code="file_too_large")
    settings.OPENAI_BATCHES = {**getattr(settings, "OPENAI_BATCHES", {}), "MAX_UPLOAD_BYTES": 1500}
    assert add_part(api, upload_id, b"x" * 1000).status_code == 200
    assert_error(add_part(api, upload_id, b"x" * 1000), 413, param="data", code="file_too_large")
    assert_error(api.post(f"/v1/uploads/{upload_id}/parts", {}, format="multipart"), 400, param="data", code="missing_required_parameter")


# --- the unmodified SDK against the live stack ----------------------------------------------


@pytest.mark.live
def test_sdk_upload_file_chunked_feeds_a_batch(live_client):
    lines = [chat_line(f"req-{i}", f"chunked {i}") for i in range(40)]
    content = jsonl(lines)
    upload = live_client.uploads.upload_file_chunked(
        file=content,
        filename="chunked.jsonl",
        bytes=len(content),
        mime_type="application/jsonl",
        purpose="batch",
        part_size=len(content) // 4 + 1,
        md5=hashlib.md5(content).hexdigest(),
    )
    assert isinstance(upload, SDKUpload) and upload.status == "completed"
    assert upload.file.bytes == len(content) and upload.file.purpose == "batch"
    assert live_client.files.content(upload.file.id).content == content

    batch = live_client.batches.create(input_file_id=upload.file.id, endpoint="/v1/chat/completions", completion_window="24h")
    batch = wait_for_batch(live_client, batch.id, timeout=60)
    assert batch.status == "completed", batch.errors
    assert batch.request_counts.completed == len(lines)


@pytest.mark.live
def test_sdk_parts_complete_and_cancel(live_client):
    content = jsonl([chat_line("only")])
    upload = live_client.uploads.create(bytes=len(content), filename="parts.jsonl", mime_type="application/jsonl", purpose="batch")
    assert upload.status == "pending" and upload.expires_at == upload.created_at + 3600
    first = live_client.uploads.parts.create(upload.id, data=content[:10])
    second = live_client.uploads.parts.create(upload.id, data=content[10:])
    assert isinstance(first, SDKUploadPart) and first.upload_id == upload.id
    with pytest.raises(openai.BadRequestError) as exc_info:
        live_client.uploads.complete(upload.id, part_ids=[second.id, first.id], md5="0" * 32)
    assert exc_info.value.body["param"] == "md5"
    done = live_client.uploads.complete(upload.id, part_ids=[first.id, second.id])
    assert done.status == "completed" and live_client.files.content(done.file.id).content == content

    abandoned = live_client.uploads.create(bytes=5, filename="gone.jsonl", mime_type="application/jsonl", purpose="batch")
    assert live_client.uploads.cancel(abandoned.id).status == "cancelled"
    with pytest.raises(openai.ConflictError):
        live_client.uploads.parts.create(abandoned.id, data=b"hello")
    with pytest.raises(openai.NotFoundError):
        live_client.uploads.cancel("upload_doesnotexist")


# --- the admin: read-only ------------------------------------------------------------------


def test_admin_shows_uploads_read_only(admin_client, api, create, settings):
    from django.contrib.admin.utils import quote
    from django.urls import reverse

    settings.STORAGES = {**settings.STORAGES, "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"}}
    pending = create().json()["id"]
    part_id = add_part(api, pending, CONTENT[:10]).json()["id"]
    done = create().json()["id"]
    file_id = api.post(f"/v1/uploads/{done}/complete", {"part_ids": [add_part(api, done, CONTENT).json()["id"]]}, format="json").json()[
        "file"
    ]["id"]
    html = admin_client.get(reverse("admin:files_app_upload_changelist")).content.decode()
    assert pending in html and done in html and file_id in html
    html = admin_client.get(reverse("admin:files_app_upload_change", args=[quote(pending)])).content.decode()
    assert part_id in html and 'name="_save"' not in html
    assert admin_client.get(reverse("admin:files_app_upload_add")).status_code == 403
    assert admin_client.post(reverse("admin:files_app_upload_delete", args=[quote(pending)]), {"post": "yes"}).status_code == 403


def test_the_sweeper_deletes_parts_left_on_a_finished_upload(api, create):
    """A part that raced a cancel (stored after the cancel discarded the parts)."""
    upload_id = create().json()["id"]
    api.post(f"/v1/uploads/{upload_id}/cancel")
    straggler = UploadPart(upload_id=upload_id, bytes=4)
    straggler.content.save(straggler.id, io.BytesIO(b"late"), save=True)
    assert default_storage.exists(straggler.content.name)
    sweep()
    assert not UploadPart.objects.filter(pk=straggler.pk).exists()
    assert not default_storage.exists(straggler.content.name)


def test_complete_streams_the_parts_without_holding_the_file_in_memory(api, create):
    import tracemalloc

    part_size = 2 * 1024 * 1024
    parts = [bytes([65 + i]) * part_size for i in range(4)]  # an 8 MB file
    upload_id = create(bytes=part_size * len(parts)).json()["id"]
    part_ids = [add_part(api, upload_id, data).json()["id"] for data in parts]
    md5 = hashlib.md5(b"".join(parts)).hexdigest()

    tracemalloc.start()
    try:
        response = api.post(f"/v1/uploads/{upload_id}/complete", {"part_ids": part_ids, "md5": md5}, format="json")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert response.status_code == 200, response.content
    assert peak < part_size, f"peak {peak} bytes while joining {part_size * len(parts)} bytes"
    with File.objects.get(pk=response.json()["file"]["id"]).content.open("rb") as handle:
        assert hashlib.md5(handle.read()).hexdigest() == md5
