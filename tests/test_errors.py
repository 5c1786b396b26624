"""The OpenAI error envelope on every kind of error: unknown routes, 405, 500,
unparsable bodies; and the x-request-id header."""

import logging

import pytest
from rest_framework.test import APIClient

from batches.views import BatchViewSet
from files_app.views import FileViewSet


@pytest.fixture
def strict_api(api):
    """Like ``api`` but with Django's CSRF checks on, as a real SDK client meets them."""
    client = APIClient(enforce_csrf_checks=True)
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {api.raw_key}")
    return client


def assert_envelope(response, status, *, type="invalid_request_error"):
    assert response.status_code == status, response.content
    assert response["Content-Type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["type"] == type
    assert body["error"]["message"]
    return body["error"]


@pytest.mark.parametrize(
    "method, path",
    [
        ("get", "/v1/"),
        ("get", "/v1/nothing-here"),
        ("get", "/v1/models"),
        ("get", "/v1/files/"),
        ("get", "/v1/files/file-x/content/extra"),
        ("get", "/v1/batches/batch_x/outputs"),
        ("post", "/v1/nothing-here"),
        ("post", "/v1/batches/"),
        ("delete", "/v1/nothing-here"),
        ("put", "/v1/chat/completions"),
    ],
)
def test_unknown_v1_routes_are_404_json(strict_api, method, path):
    error = assert_envelope(getattr(strict_api, method)(path), 404)
    assert error["message"] == f"Invalid URL ({method.upper()} {path})"


def test_unknown_route_is_404_json_without_credentials(db):
    assert_envelope(APIClient(enforce_csrf_checks=True).post("/v1/nothing-here", {"a": 1}, format="json"), 404)


@pytest.mark.parametrize(
    "method, path",
    [
        ("put", "/v1/files"),
        ("patch", "/v1/files/file-x"),
        ("post", "/v1/files/file-x"),
        ("post", "/v1/files/file-x/content"),
        ("delete", "/v1/batches"),
        ("delete", "/v1/batches/batch_x"),
        ("put", "/v1/batches/batch_x"),
        ("get", "/v1/batches/batch_x/cancel"),
    ],
)
def test_wrong_method_is_405_json(strict_api, method, path):
    error = assert_envelope(getattr(strict_api, method)(path), 405)
    assert method.upper() in error["message"]


@pytest.mark.parametrize(
    "viewset, method_name, path",
    [
        (BatchViewSet, "list", "/v1/batches"),
        (FileViewSet, "retrieve", "/v1/files/file-x"),
        (BatchViewSet, "cancel", "/v1/batches/b/cancel"),
    ],
)
def test_unexpected_exception_is_a_logged_500_envelope(api, monkeypatch, caplog, viewset, method_name, path):
    def explode(self, request, *args, **kwargs):
        raise RuntimeError("boom: internal detail")

    monkeypatch.setattr(viewset, method_name, explode)
    # The app's loggers do not propagate to the root logger caplog listens on.
    monkeypatch.setattr(logging.getLogger("openai_batches"), "handlers", [caplog.handler])
    http_method = "post" if method_name == "cancel" else "get"
    response = getattr(api, http_method)(path)
    error = assert_envelope(response, 500, type="server_error")
    assert "boom" not in response.content.decode()
    assert error["message"] == "The server had an error while processing your request."
    logged = [r for r in caplog.records if r.getMessage().startswith("api.unhandled_exception")]
    assert len(logged) == 1
    assert logged[0].exc_info[0] is RuntimeError


@pytest.mark.parametrize("body", [b"{not json", b'{"input_file_id": "file-1",', b"\xff\xfe"])
def test_malformed_json_body_is_400(api, body):
    response = api.post("/v1/batches", body, content_type="application/json")
    error = assert_envelope(response, 400)
    assert "parse the JSON body" in error["message"]


def test_unsupported_content_type_is_an_envelope(api):
    response = api.post("/v1/batches", b"input_file_id=x", content_type="text/plain")
    assert_envelope(response, 415)


def test_files_upload_with_json_body_is_an_envelope(api):
    assert_envelope(api.post("/v1/files", {"purpose": "batch"}, format="json"), 415)


@pytest.mark.parametrize(
    "method, path, expected_status",
    [("get", "/v1/files", 200), ("get", "/v1/batches/batch_x", 404), ("get", "/v1/nothing", 404), ("put", "/v1/files", 405)],
)
def test_every_response_has_a_request_id(api, method, path, expected_status):
    response = getattr(api, method)(path)
    assert response.status_code == expected_status
    assert response["x-request-id"].startswith("req_")


def test_request_ids_are_unique(api, db):
    ids = {api.get("/v1/files")["x-request-id"] for _ in range(5)}
    ids.add(APIClient().get("/v1/files")["x-request-id"])
    assert len(ids) == 6
