"""The OpenAPI schema (drf-spectacular) at /v1/openapi.json: complete, valid,
warning-free, and every real response of the API matches it. The apps also work
without drf-spectacular installed."""

import io
import os
import subprocess
import sys
import textwrap
import urllib.parse
from pathlib import Path

import jsonschema
import pytest
from django.urls import URLPattern, URLResolver
from drf_spectacular.checks import schema_check
from drf_spectacular.validation import validate_schema

from batches import tasks
from batches.models import WebhookEndpoint
from tests.conftest import chat_line, jsonl, run_batches, upload
from tests.live import wait_for_batch

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def schema():
    from rest_framework.test import APIClient

    response = APIClient().get("/v1/openapi.json")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("application/vnd.oai.openapi+json") or response["Content-Type"].startswith(
        "application/json"
    )
    return response.json()


pytestmark = pytest.mark.django_db


def test_schema_is_valid_openapi(schema):
    validate_schema(schema)
    assert schema["openapi"].startswith("3.")
    assert schema["components"]["securitySchemes"]["ApiKeyAuth"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "An API key: 'Authorization: Bearer sk-batch-...'.",
    }


def test_schema_generation_is_warning_free():
    # What `manage.py check --deploy` runs (drf_spectacular.W001/W002).
    assert schema_check(None) == []


def url_routes():
    """(METHOD, /v1/... template) of every DRF route under the /v1 include."""
    import batches.urls

    found = set()

    def walk(patterns, prefix):
        for pattern in patterns:
            if isinstance(pattern, URLResolver):
                walk(pattern.url_patterns, prefix + str(pattern.pattern))
            elif isinstance(pattern, URLPattern) and hasattr(pattern.callback, "cls"):
                template = (prefix + str(pattern.pattern)).lstrip("^").rstrip("$")
                template = template.replace("(?P<pk>[^/]+)", "{id}").replace("<str:pk>", "{id}")
                for method in pattern.callback.actions:
                    if method != "head":
                        found.add((method.upper(), "/v1/" + template))

    walk(batches.urls.urlpatterns, "")
    return found


def test_every_v1_route_is_described_with_an_operation_id(schema):
    described = {(method.upper(), path) for path, item in schema["paths"].items() for method in item if method != "parameters"}
    assert described == url_routes()
    for item in schema["paths"].values():
        for operation in item.values():
            assert operation["operationId"]
            assert operation["security"] == [{"ApiKeyAuth": []}]
            for status in ("401", "429"):
                assert operation["responses"][status]["content"]["application/json"]["schema"] == {
                    "$ref": "#/components/schemas/ErrorResponse"
                }


# --- real responses match the schema -------------------------------------------------------------


def json_schema(openapi, node):
    """An OpenAPI 3.0 schema as plain JSON Schema: $refs inlined, ``nullable`` made a null type."""
    if isinstance(node, list):
        return [json_schema(openapi, item) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        name = node["$ref"].rsplit("/", 1)[-1]
        return json_schema(openapi, openapi["components"]["schemas"][name])
    node = {key: json_schema(openapi, value) for key, value in node.items()}
    if node.pop("nullable", False):
        node = {"anyOf": [node, {"type": "null"}]}
    return node


def check(schema, response, path, method):
    """Validate ``response`` against what the schema declares for it."""
    operation = schema["paths"][path][method]
    declared = operation["responses"][str(response.status_code)]
    content_type = response["Content-Type"].split(";")[0]
    assert content_type in declared["content"], f"{response.status_code} {content_type} not declared for {method} {path}"
    if content_type == "application/json":
        jsonschema.validate(response.json(), json_schema(schema, declared["content"][content_type]["schema"]))
    return response


@pytest.fixture
def named(api):
    def upload(records, name="input.jsonl", purpose="batch"):
        handle = io.BytesIO(jsonl(records))
        handle.name = name
        return api.post("/v1/files", {"file": handle, "purpose": purpose}, format="multipart")

    return upload


def test_files_responses_match(schema, api, named):
    created = check(schema, named([chat_line("a")]), "/v1/files", "post")
    file_id = created.json()["id"]
    check(schema, api.get("/v1/files"), "/v1/files", "get")
    check(schema, api.get(f"/v1/files/{file_id}"), "/v1/files/{id}", "get")
    check(schema, api.get(f"/v1/files/{file_id}/content"), "/v1/files/{id}/content", "get")
    check(schema, api.delete(f"/v1/files/{file_id}"), "/v1/files/{id}", "delete")
    check(schema, api.get(f"/v1/files/{file_id}"), "/v1/files/{id}", "get")  # 404
    check(schema, api.get(f"/v1/files/{file_id}/content"), "/v1/files/{id}/content", "get")  # 404
    check(schema, named([chat_line("a")], name="in.txt"), "/v1/files", "post")  # 400
    check(schema, api.post("/v1/files", {"purpose": "batch"}, format="json"), "/v1/files", "post")  # 415
    check(schema, api.get("/v1/files", {"limit": 0}), "/v1/files", "get")  # 400


def test_file_with_expiry_matches(schema, api):
    handle = io.BytesIO(jsonl([chat_line("a")]))
    handle.name = "input.jsonl"
    body = {"file": handle, "purpose": "batch", "expires_after[anchor]": "created_at", "expires_after[seconds]": 3600}
    response = check(schema, api.post("/v1/files", body, format="multipart"), "/v1/files", "post")
    assert response.json()["expires_at"] is not None


def test_batch_responses_match_through_a_whole_life(schema, api, named, upstream):
    input_id = named([chat_line("ok"), chat_line("bad", content="FAIL_400")]).json()["id"]
    body = {"input_file_id": input_id, "endpoint": "/v1/chat/completions", "completion_window": "24h", "metadata": {"k": "v"}}
    created = check(schema, api.post("/v1/batches", body, format="json"), "/v1/batches", "post")
    batch_id = created.json()["id"]
    check(schema, api.get(f"/v1/batches/{batch_id}"), "/v1/batches/{id}", "get")  # validating
    tasks.validate_batch(batch_id)
    run_batches()
    done = check(schema, api.get(f"/v1/batches/{batch_id}"), "/v1/batches/{id}", "get")
    assert done.json()["status"] == "completed" and done.json()["usage"] is not None
    check(schema, api.get("/v1/batches"), "/v1/batches", "get")
    check(schema, api.get(f"/v1/batches/{batch_id}/results", {"limit": 1}), "/v1/batches/{id}/results", "get")
    check(schema, api.get(f"/v1/batches/{batch_id}/results", {"status": "x"}), "/v1/batches/{id}/results", "get")  # 400
    check(schema, api.get("/v1/batches/batch_nope/results"), "/v1/batches/{id}/results", "get")  # 404
    check(schema, api.post(f"/v1/batches/{batch_id}/retry"), "/v1/batches/{id}/retry", "post")
    check(schema, api.post("/v1/batches/batch_nope/retry"), "/v1/batches/{id}/retry", "post")  # 404
    check(schema, api.post(f"/v1/batches/{batch_id}/cancel"), "/v1/batches/{id}/cancel", "post")  # 409
    check(schema, api.post("/v1/batches/batch_nope/cancel"), "/v1/batches/{id}/cancel", "post")  # 404
    check(schema, api.post("/v1/batches", {**body, "endpoint": "/v1/nope"}, format="json"), "/v1/batches", "post")  # 400


def test_failed_and_cancelled_batches_match(schema, api, named, upstream):
    bad_id = named([chat_line("a"), chat_line("a")]).json()["id"]
    body = {"input_file_id": bad_id, "endpoint": "/v1/chat/completions", "completion_window": "24h"}
    failed_id = api.post("/v1/batches", body, format="json").json()["id"]
    tasks.validate_batch(failed_id)
    failed = check(schema, api.get(f"/v1/batches/{failed_id}"), "/v1/batches/{id}", "get")
    assert failed.json()["errors"]["data"]
    good_id = named([chat_line("a")]).json()["id"]
    batch_id = api.post("/v1/batches", {**body, "input_file_id": good_id}, format="json").json()["id"]
    cancelling = check(schema, api.post(f"/v1/batches/{batch_id}/cancel"), "/v1/batches/{id}/cancel", "post")
    assert cancelling.json()["status"] == "cancelling"


def test_webhook_responses_match(schema, api, make_api_key):
    endpoint = WebhookEndpoint.objects.create(owner=api.user, url="https://hooks.example.com/in", event_types=["batch.completed"])
    check(schema, api.get("/v1/webhooks"), "/v1/webhooks", "get")
    check(schema, api.get(f"/v1/webhooks/{endpoint.id}"), "/v1/webhooks/{id}", "get")
    check(schema, api.post("/v1/webhooks", {"url": "not a url", "event_types": ["batch.completed"]}, format="json"), "/v1/webhooks", "post")
    check(schema, api.delete(f"/v1/webhooks/{endpoint.id}"), "/v1/webhooks/{id}", "delete")


def test_auth_and_throttle_errors_match(schema, api, settings):
    from django.core.cache import cache
    from rest_framework.test import APIClient

    check(schema, APIClient().get("/v1/batches"), "/v1/batches", "get")  # 401
    settings.OPENAI_BATCHES = {"THROTTLE_RATE": "1/min"}
    cache.clear()
    try:
        api.get("/v1/files")
        check(schema, api.get("/v1/files"), "/v1/files", "get")  # 429
    finally:
        cache.clear()


def test_nullable_fields_are_checked(schema):
    # The OpenAPI -> JSON Schema conversion must not be vacuous.
    batch_schema = json_schema(schema, {"$ref": "#/components/schemas/Batch"})
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"id": "batch_1"}, batch_schema)
    file_schema = json_schema(schema, {"$ref": "#/components/schemas/OpenAIFile"})
    good = {
        "id": "file-1", "object": "file", "bytes": 1, "created_at": 1, "expires_at": None,
        "filename": "a.jsonl", "purpose": "batch", "status": "processed", "status_details": None,
    }  # fmt: skip
    jsonschema.validate(good, file_schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**good, "object": "batch"}, file_schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**good, "bytes": None}, file_schema)


# --- drf-spectacular stays optional ----------------------------------------------------------------


def test_apps_work_without_drf_spectacular(tmp_path):
    """A host site without drf-spectacular: the import is blocked, the apps load,
    migrate, and serve uploads and batches."""
    (tmp_path / "host_settings.py").write_text(
        textwrap.dedent(
            f"""
            from project.settings import *
            INSTALLED_APPS = [app for app in INSTALLED_APPS if app != "drf_spectacular"]
            REST_FRAMEWORK = {{}}
            ROOT_URLCONF = "host_urls"
            DATABASES = {{"default": {{"ENGINE": "django.db.backends.sqlite3", "NAME": {str(tmp_path / "db.sqlite3")!r}}}}}
            MEDIA_ROOT = {str(tmp_path / "media")!r}
            """
        )
    )
    (tmp_path / "host_urls.py").write_text('from django.urls import include, path\nurlpatterns = [path("v1/", include("batches.urls"))]\n')
    script = textwrap.dedent(
        """
        import io, sys
        sys.modules["drf_spectacular"] = None  # as if it were not installed
        import django
        django.setup()
        from django.core.management import call_command
        from django.test import Client
        from files_app.models import ApiKey
        from django.contrib.auth import get_user_model

        call_command("migrate", verbosity=0)
        _, key = ApiKey.objects.issue(get_user_model().objects.create(username="host"))
        client = Client(HTTP_AUTHORIZATION=f"Bearer {key}")
        upload = io.BytesIO(b'{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "m", "messages": [{"role": "user", "content": "hi"}]}}\\n')
        upload.name = "in.jsonl"
        created = client.post("/v1/files", {"file": upload, "purpose": "batch"})
        batch = client.post("/v1/batches", {"input_file_id": created.json()["id"], "endpoint": "/v1/chat/completions", "completion_window": "24h"}, content_type="application/json")
        print(created.status_code, batch.status_code, batch.json()["status"], "drf_spectacular" in sys.modules and sys.modules["drf_spectacular"] is not None)
        """
    )
    env = {
        **os.environ,
        "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}",
        "DJANGO_SETTINGS_MODULE": "host_settings",
        "VAR_DIR": str(tmp_path / "var"),
    }
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[-4:] == ["200", "200", "validating", "False"]


# --- schemathesis against the live server ----------------------------------------------------------

# Checks it runs: all but positive_data_acceptance, which cannot hold for an API whose
# valid inputs are ids that exist (a random input_file_id or `after` is rightly a 4xx).
SCHEMATHESIS_ARGS = ["--checks", "all", "--exclude-checks", "positive_data_acceptance", "--workers", "2", "--no-color"]
# Registering a webhook makes the server resolve the fuzzed host names: kept out of the run.
NOT_FUZZED = ["createWebhookEndpoint"]


@pytest.mark.live
@pytest.mark.skipif(
    not os.environ.get("SCHEMATHESIS"), reason="set SCHEMATHESIS to a schemathesis executable; .ci/steps/60-schemathesis.sh does"
)
def test_schemathesis_finds_no_server_error_and_no_schema_violation(live_stack, live_client, tmp_path):
    # Real objects for the operations that take an id, so fuzzing gets past the 404s.
    kept = live_client.files.create(file=("notes.txt", io.BytesIO(b"hello\n")), purpose="user_data")
    doomed = live_client.files.create(file=("old.txt", io.BytesIO(b"bye\n")), purpose="user_data")
    batch = live_client.batches.create(
        input_file_id=upload(live_client, [chat_line("a")]).id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    wait_for_batch(live_client, batch.id)
    ids = {
        "retrieveFile": kept.id, "downloadFile": kept.id, "deleteFile": doomed.id,
        "retrieveBatch": batch.id, "cancelBatch": batch.id, "retrieveBatchResults": batch.id, "retryBatch": batch.id,
    }  # fmt: skip
    config = tmp_path / "schemathesis.toml"
    config.write_text(
        "".join(f'[[operations]]\ninclude-operation-id = "{op}"\nparameters = {{ id = "{value}" }}\n\n' for op, value in ids.items())
    )
    origin = urllib.parse.urlsplit(live_stack.base_url)._replace(path="").geturl()
    command = [
        os.environ["SCHEMATHESIS"], "--config-file", str(config), "run", f"{origin}/v1/openapi.json",
        "-H", f"Authorization: Bearer {live_stack.api_key}",
        "--max-examples", os.environ.get("SCHEMATHESIS_MAX_EXAMPLES", "50"),
        *SCHEMATHESIS_ARGS, *[arg for op in NOT_FUZZED for arg in ("--exclude-operation-id", op)],
    ]  # fmt: skip
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=1200)  # its cache stays out of the repo
    print(result.stdout[-6000:], result.stderr[-2000:])
    assert result.returncode == 0, "schemathesis found problems (output above)"
    assert " passed" in result.stdout and "failures" not in result.stdout.lower().split("summary")[-1]
