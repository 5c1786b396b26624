"""/v1/files through the DRF test client: upload, list, retrieve, content, delete."""

from datetime import timedelta

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.utils import timezone

from files_app.models import File

JSONL = b'{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {}}\n'


@pytest.fixture
def upload(api):
    """``upload(content=..., filename=..., purpose=..., client=..., **extra)`` -> response."""

    def do(content=JSONL, filename="input.jsonl", purpose="batch", client=None, **extra):
        data = {"file": SimpleUploadedFile(filename, content), **extra}
        if purpose is not None:
            data["purpose"] = purpose
        return (client or api).post("/v1/files", data, format="multipart")

    return do


def assert_error(response, status, *, param=None, code=None, message=None):
    assert response.status_code == status, response.content
    assert response["Content-Type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param
    if code is not None:
        assert error["code"] == code
    if message is not None:
        assert error["message"] == message
    return error


# --- upload -----------------------------------------------------------------------


def test_upload_returns_openai_file_object(upload, api):
    before = int(timezone.now().timestamp())
    response = upload(filename="requests.jsonl")
    assert response.status_code == 200
    body = response.json()
    assert body["id"].startswith("file-")
    assert body == {
        "id": body["id"],
        "object": "file",
        "bytes": len(JSONL),
        "created_at": body["created_at"],
        "expires_at": body["created_at"] + 30 * 86400,  # OpenAI's default for batch input (DEFAULT_INPUT_FILE_TTL)
        "filename": "requests.jsonl",
        "purpose": "batch",
        "status": "processed",
        "status_details": None,
    }
    assert body["created_at"] >= before
    stored = File.objects.get(pk=body["id"])
    assert stored.owner == api.user
    assert stored.content.read() == JSONL


def test_upload_keeps_only_the_base_name_of_the_client_filename(upload):
    response = upload(filename="../../etc/data.jsonl")
    assert response.status_code == 200
    assert response.json()["filename"] == "data.jsonl"


@pytest.mark.parametrize("filename", ["input.json", "input.txt", "jsonl"])
def test_batch_purpose_requires_jsonl_filename(upload, filename):
    assert_error(upload(filename=filename), 400, param="file", code="invalid_file_format")


def test_other_purposes_accept_any_filename(upload):
    response = upload(filename="notes.txt", purpose="user_data", content=b"hello")
    assert response.status_code == 200
    assert response.json()["purpose"] == "user_data"


@pytest.mark.parametrize("purpose", ["nonsense", "batch_output"])
def test_bad_purpose_is_rejected(upload, purpose):
    assert_error(upload(purpose=purpose), 400, param="purpose", code="invalid_value")


def test_missing_purpose_is_rejected(upload):
    assert_error(upload(purpose=None), 400, param="purpose", code="missing_required_parameter")


def test_missing_file_is_rejected(api):
    response = api.post("/v1/files", {"purpose": "batch"}, format="multipart")
    assert_error(response, 400, param="file", code="missing_required_parameter")


def test_expires_after_sets_expires_at(upload):
    response = upload(**{"expires_after[anchor]": "created_at", "expires_after[seconds]": "3600"})
    assert response.status_code == 200
    body = response.json()
    assert body["expires_at"] == body["created_at"] + 3600


@pytest.mark.parametrize(
    "fields, param, code",
    [
        ({"expires_after[anchor]": "now", "expires_after[seconds]": "3600"}, "expires_after.anchor", "invalid_value"),
        ({"expires_after[anchor]": "created_at", "expires_after[seconds]": "soon"}, "expires_after.seconds", "invalid_type"),
        ({"expires_after[anchor]": "created_at", "expires_after[seconds]": "3599"}, "expires_after.seconds", "integer_out_of_range"),
        (
            {"expires_after[anchor]": "created_at", "expires_after[seconds]": str(30 * 86400 + 1)},
            "expires_after.seconds",
            "integer_out_of_range",
        ),
        ({"expires_after[seconds]": "3600"}, "expires_after.anchor", "invalid_value"),
    ],
)
def test_bad_expires_after_is_rejected(upload, fields, param, code):
    assert_error(upload(**fields), 400, param=param, code=code)


def test_expired_file_is_gone(upload, api):
    file_id = upload(**{"expires_after[anchor]": "created_at", "expires_after[seconds]": "3600"}).json()["id"]
    File.objects.filter(pk=file_id).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert_error(api.get(f"/v1/files/{file_id}"), 404, param="id")
    assert file_id not in [f["id"] for f in api.get("/v1/files").json()["data"]]


# --- list -------------------------------------------------------------------------


@pytest.fixture
def uploaded(upload):
    """Three batch files and one user_data file, oldest first."""
    ids = [upload(filename=f"f{i}.jsonl").json()["id"] for i in range(3)]
    ids.append(upload(filename="notes.txt", purpose="user_data", content=b"x").json()["id"])
    return ids


def test_list_is_newest_first_with_cursors(api, uploaded):
    body = api.get("/v1/files").json()
    assert body["object"] == "list"
    assert [f["id"] for f in body["data"]] == uploaded[::-1]
    assert body["first_id"] == uploaded[-1]
    assert body["last_id"] == uploaded[0]
    assert body["has_more"] is False
    assert all(f["object"] == "file" for f in body["data"])


def test_list_order_asc(api, uploaded):
    body = api.get("/v1/files", {"order": "asc"}).json()
    assert [f["id"] for f in body["data"]] == uploaded


def test_list_filters_by_purpose(api, uploaded):
    body = api.get("/v1/files", {"purpose": "batch"}).json()
    assert [f["id"] for f in body["data"]] == uploaded[2::-1]
    assert api.get("/v1/files", {"purpose": "evals"}).json() == {
        "object": "list",
        "data": [],
        "first_id": None,
        "last_id": None,
        "has_more": False,
    }


@pytest.mark.parametrize("order", ["desc", "asc"])
def test_list_pages_with_after_and_limit(api, uploaded, order):
    expected = uploaded[::-1] if order == "desc" else uploaded
    seen, after, pages = [], None, 0
    while True:
        params = {"limit": 3, "order": order, **({"after": after} if after else {})}
        body = api.get("/v1/files", params).json()
        pages += 1
        seen += [f["id"] for f in body["data"]]
        assert body["last_id"] == body["data"][-1]["id"]
        if not body["has_more"]:
            break
        after = body["last_id"]
    assert pages == 2
    assert seen == expected


def test_list_pagination_breaks_created_at_ties_by_id(api, uploaded):
    File.objects.filter(pk__in=uploaded).update(created_at=timezone.now())
    seen, after = [], None
    for _ in range(len(uploaded) + 1):
        body = api.get("/v1/files", {"limit": 1, **({"after": after} if after else {})}).json()
        seen += [f["id"] for f in body["data"]]
        if not body["has_more"]:
            break
        after = body["last_id"]
    assert seen == sorted(uploaded, reverse=True)


def test_list_after_an_unknown_id_is_rejected(api, uploaded):
    assert_error(api.get("/v1/files", {"after": "file-doesnotexist"}), 400, param="after", code="invalid_value")


def test_list_after_an_id_outside_the_filter_is_rejected(api, uploaded):
    user_data_id = uploaded[-1]
    assert_error(api.get("/v1/files", {"purpose": "batch", "after": user_data_id}), 400, param="after")


@pytest.mark.parametrize("limit, code", [("0", "integer_out_of_range"), ("10001", "integer_out_of_range"), ("many", "invalid_type")])
def test_list_bad_limit_is_rejected(api, limit, code):
    assert_error(api.get("/v1/files", {"limit": limit}), 400, param="limit", code=code)


def test_list_bad_order_is_rejected(api):
    assert_error(api.get("/v1/files", {"order": "sideways"}), 400, param="order", code="invalid_value")


# --- retrieve, content, delete ------------------------------------------------------------


def test_retrieve(api, upload):
    created = upload().json()
    response = api.get(f"/v1/files/{created['id']}")
    assert response.status_code == 200
    assert response.json() == created


def test_content_returns_raw_bytes(api, upload):
    content = JSONL + b'{"custom_id": "\xc3\xa9"}\n'
    file_id = upload(content=content).json()["id"]
    response = api.get(f"/v1/files/{file_id}/content")
    assert response.status_code == 200
    assert b"".join(response.streaming_content) == content


@pytest.mark.parametrize("accept", ["application/binary", "application/octet-stream", "text/html", "*/*"])
def test_content_ignores_accept_header(api, upload, accept):
    file_id = upload().json()["id"]
    response = api.get(f"/v1/files/{file_id}/content", HTTP_ACCEPT=accept)
    assert response.status_code == 200
    assert b"".join(response.streaming_content) == JSONL


def test_content_of_a_missing_file_is_404(api):
    error = assert_error(api.get("/v1/files/file-missing/content"), 404, param="id")
    assert error["message"] == "No such File object: file-missing"


def test_delete(api, upload):
    file_id = upload().json()["id"]
    stored_name = File.objects.get(pk=file_id).content.name
    storage = File.objects.get(pk=file_id).content.storage
    response = api.delete(f"/v1/files/{file_id}")
    assert response.status_code == 200
    assert response.json() == {"id": file_id, "object": "file", "deleted": True}
    assert not File.objects.filter(pk=file_id).exists()
    assert not storage.exists(stored_name)
    assert_error(api.delete(f"/v1/files/{file_id}"), 404, param="id")


@pytest.mark.parametrize("method, suffix", [("get", ""), ("get", "/content"), ("delete", "")])
def test_missing_file_is_404_with_openai_message(api, method, suffix):
    response = getattr(api, method)(f"/v1/files/file-nope{suffix}")
    error = assert_error(response, 404, param="id", message="No such File object: file-nope")
    assert error["type"] == "invalid_request_error"


@pytest.mark.parametrize("method, suffix", [("get", ""), ("get", "/content"), ("delete", "")])
def test_another_users_file_is_404(make_client, upload, method, suffix):
    owner, stranger = make_client(), make_client()
    file_id = upload(client=owner).json()["id"]
    response = getattr(stranger, method)(f"/v1/files/{file_id}{suffix}")
    assert_error(response, 404, param="id", message=f"No such File object: {file_id}")
    assert File.objects.filter(pk=file_id).exists()


def test_list_shows_only_own_files(make_client, upload):
    owner, stranger = make_client(), make_client()
    mine = upload(client=owner).json()["id"]
    theirs = upload(client=stranger).json()["id"]
    assert [f["id"] for f in owner.get("/v1/files").json()["data"]] == [mine]
    assert [f["id"] for f in stranger.get("/v1/files").json()["data"]] == [theirs]
    assert_error(owner.get("/v1/files", {"after": theirs}), 400, param="after")
