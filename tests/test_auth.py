"""Bearer-key authentication on every /v1 route, and the create_api_key command."""

import io

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from rest_framework.test import APIClient

from files_app.models import ApiKey, hash_key
from tests.conftest import chat_line


@pytest.fixture
def routes(make_batch, make_user):
    """Every /v1 route as (method, path), pointing at objects that exist."""
    batch = make_batch([chat_line("a")], owner=make_user())
    file_id = batch.input_file_id
    return [
        ("get", "/v1/files"),
        ("post", "/v1/files"),
        ("get", f"/v1/files/{file_id}"),
        ("delete", f"/v1/files/{file_id}"),
        ("get", f"/v1/files/{file_id}/content"),
        ("get", "/v1/batches"),
        ("post", "/v1/batches"),
        ("get", f"/v1/batches/{batch.id}"),
        ("post", f"/v1/batches/{batch.id}/cancel"),
    ]


def revoked_key(make_api_key):
    api_key, raw = make_api_key()
    api_key.revoke()
    return f"Bearer {raw}"


def inactive_users_key(make_api_key, make_user):
    _, raw = make_api_key(make_user(is_active=False))
    return f"Bearer {raw}"


BAD_HEADERS = {
    "missing": lambda **_: None,
    "empty": lambda **_: "",
    "no_token": lambda **_: "Bearer",
    "other_scheme": lambda **_: "Token sk-batch-abc",
    "basic": lambda **_: "Basic dXNlcjpwYXNz",
    "extra_part": lambda **_: "Bearer sk-batch-abc extra",
    "wrong": lambda **_: "Bearer sk-batch-not-a-real-key",
    "revoked": lambda make_api_key, **_: revoked_key(make_api_key),
    "inactive_user": lambda make_api_key, make_user, **_: inactive_users_key(make_api_key, make_user),
}


@pytest.mark.parametrize("case", list(BAD_HEADERS))
def test_every_route_answers_401_without_a_valid_key(case, routes, make_api_key, make_user):
    header = BAD_HEADERS[case](make_api_key=make_api_key, make_user=make_user)
    client = APIClient()
    if header is not None:
        client.credentials(HTTP_AUTHORIZATION=header)
    for method, path in routes:
        response = getattr(client, method)(path)
        assert response.status_code == 401, (method, path, response.content)
        assert response["Content-Type"].startswith("application/json")
        assert response["WWW-Authenticate"].startswith("Bearer")
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert error["type"] == "invalid_request_error"
        assert error["code"] == "invalid_api_key"
        assert error["message"]


def test_a_key_is_never_echoed_back(make_api_key):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Bearer sk-batch-secret-value")
    assert b"secret-value" not in client.get("/v1/files").content


def test_non_ascii_key_is_401():
    client = APIClient()
    response = client.get("/v1/files", HTTP_AUTHORIZATION="Bearer ключ".encode().decode("latin-1"))
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"


def test_scheme_is_case_insensitive(make_api_key):
    _, raw = make_api_key()
    response = APIClient().get("/v1/files", HTTP_AUTHORIZATION=f"bearer {raw}")
    assert response.status_code == 200


def test_valid_key_authenticates_its_user_and_records_use(api):
    api_key = ApiKey.objects.get(key_hash=hash_key(api.raw_key))
    assert api_key.last_used_at is None
    response = api.get("/v1/batches")
    assert response.status_code == 200
    api_key.refresh_from_db()
    assert api_key.last_used_at is not None


def test_revoking_a_key_locks_it_out(api):
    assert api.get("/v1/files").status_code == 200
    ApiKey.objects.get(key_hash=hash_key(api.raw_key)).revoke()
    assert api.get("/v1/files").status_code == 401


def test_keys_are_stored_hashed(make_api_key):
    api_key, raw = make_api_key()
    stored = ApiKey.objects.filter(pk=api_key.pk).values_list("key_hash", "prefix").get()
    assert raw not in stored
    assert stored[0] == hash_key(raw)
    assert raw.startswith(stored[1])


# --- create_api_key ------------------------------------------------------------------


def run_create_api_key(*args):
    out = io.StringIO()
    call_command("create_api_key", *args, stdout=out)
    return out.getvalue().strip().splitlines()


def test_create_api_key_creates_the_user_and_prints_a_working_key(db):
    lines = run_create_api_key("alice")
    user = get_user_model().objects.get(username="alice")
    assert not user.has_usable_password()
    key = lines[-1]
    assert key.startswith("sk-batch-")
    assert ApiKey.objects.get(key_hash=hash_key(key)).user == user

    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
    assert client.get("/v1/batches").status_code == 200


def test_create_api_key_for_an_existing_user_adds_a_key(make_user):
    user = make_user("bob")
    first = run_create_api_key("bob")[-1]
    second = run_create_api_key("bob", "--name", "ci")[-1]
    assert first != second
    assert get_user_model().objects.filter(username="bob").count() == 1
    assert ApiKey.objects.filter(user=user).count() == 2
    assert ApiKey.objects.get(key_hash=hash_key(second)).name == "ci"
    for key in (first, second):
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
        assert client.get("/v1/files").status_code == 200
