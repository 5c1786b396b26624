"""/v1/batches through the DRF test client: create, retrieve, list, cancel, idempotency."""

from datetime import timedelta

import pytest
from django.utils import timezone

from batches.models import Batch, BatchStatus
from tests.conftest import chat_line

ENDPOINT = "/v1/chat/completions"


def assert_error(response, status, *, param=None, code=None):
    assert response.status_code == status, response.content
    assert response["Content-Type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    assert error["param"] == param
    assert error["code"] == code
    return error


@pytest.fixture
def input_file(api, make_file):
    return make_file([chat_line("a"), chat_line("b")], owner=api.user)


@pytest.fixture
def create(api, input_file):
    """``create(**overrides)`` -> response of POST /v1/batches with valid defaults."""

    def do(client=None, headers=None, **overrides):
        payload = {"input_file_id": input_file.id, "endpoint": ENDPOINT, "completion_window": "24h", **overrides}
        payload = {k: v for k, v in payload.items() if v is not ...}
        return (client or api).post("/v1/batches", payload, format="json", headers=headers or {})

    return do


# --- create -----------------------------------------------------------------------


def test_create_returns_a_validating_batch(create, input_file, api):
    before = int(timezone.now().timestamp())
    response = create(metadata={"project": "demo"})
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["id"].startswith("batch_")
    assert body["object"] == "batch"
    assert body["status"] == "validating"
    assert body["endpoint"] == ENDPOINT
    assert body["input_file_id"] == input_file.id
    assert body["completion_window"] == "24h"
    assert body["request_counts"] == {"total": 0, "completed": 0, "failed": 0}
    assert body["metadata"] == {"project": "demo"}
    assert body["errors"] is None and body["output_file_id"] is None and body["error_file_id"] is None
    assert body["created_at"] >= before
    assert body["expires_at"] == body["created_at"] + 86400
    for stamp in ("in_progress_at", "finalizing_at", "completed_at", "failed_at", "expired_at", "cancelling_at", "cancelled_at"):
        assert body[stamp] is None
    assert Batch.objects.get(pk=body["id"]).owner == api.user


@pytest.mark.parametrize(
    "overrides, param, code",
    [
        ({"input_file_id": ...}, "input_file_id", "missing_required_parameter"),
        ({"endpoint": ...}, "endpoint", "missing_required_parameter"),
        ({"completion_window": ...}, "completion_window", "missing_required_parameter"),
        ({"endpoint": ""}, "endpoint", "missing_required_parameter"),
        ({"endpoint": 3}, "endpoint", "invalid_type"),
        ({"input_file_id": ["file-x"]}, "input_file_id", "invalid_type"),
        ({"endpoint": "/v1/images/generations"}, "endpoint", "invalid_value"),
        ({"endpoint": "/v1/chat/completions/"}, "endpoint", "invalid_value"),
        ({"completion_window": "48h"}, "completion_window", "invalid_value"),
        ({"metadata": ["a"]}, "metadata", "invalid_type"),
        ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata", "object_above_max_properties"),
        ({"metadata": {"k" * 65: "v"}}, "metadata." + "k" * 65, "string_above_max_length"),
        ({"metadata": {"count": 3}}, "metadata.count", "invalid_type"),
        ({"metadata": {"flag": None}}, "metadata.flag", "invalid_type"),
        ({"metadata": {"note": "x" * 513}}, "metadata.note", "string_above_max_length"),
        ({"output_expires_after": {"anchor": "created_at", "seconds": 3599}}, "output_expires_after.seconds", "integer_out_of_range"),
        ({"output_expires_after": {"anchor": "created_at", "seconds": 2592001}}, "output_expires_after.seconds", "integer_out_of_range"),
        ({"output_expires_after": {"anchor": "created_at", "seconds": "3600"}}, "output_expires_after.seconds", "invalid_type"),
        ({"output_expires_after": {"anchor": "now", "seconds": 3600}}, "output_expires_after", "invalid_value"),
        ({"output_expires_after": 3600}, "output_expires_after", "invalid_value"),
    ],
)
def test_create_rejects_bad_fields(create, overrides, param, code):
    assert_error(create(**overrides), 400, param=param, code=code)
    assert not Batch.objects.exists()


def test_create_accepts_metadata_at_the_limits(create):
    metadata = {f"{i:02d}" + "k" * 62: "v" * 512 for i in range(16)}
    response = create(metadata=metadata)
    assert response.status_code == 200, response.content
    assert response.json()["metadata"] == metadata


@pytest.mark.parametrize("seconds", [3600, 2592000])
def test_create_accepts_output_expires_after_in_range(create, seconds):
    response = create(output_expires_after={"anchor": "created_at", "seconds": seconds})
    assert response.status_code == 200, response.content
    assert Batch.objects.get(pk=response.json()["id"]).output_expires_after == seconds


def created_then_failed(response):
    """A batch whose input file the caller cannot see: created, then failed at validation."""
    from batches import tasks

    assert response.status_code == 200, response.content
    body = response.json()
    assert body["status"] == "validating"
    assert tasks.validate_batch(body["id"]) == "failed"
    return Batch.objects.get(pk=body["id"])


def test_create_with_unknown_input_file_creates_a_batch_that_fails(create, api):
    batch = created_then_failed(create(input_file_id="file-nope"))
    assert batch.status == BatchStatus.FAILED and batch.input_file_id == "file-nope"
    assert batch.errors == [
        {
            "code": "invalid_request",
            "message": f"Cannot find file file-nope, or organization {api.user.get_username()} does not have access to it.",
            "param": "input_file_id",
            "line": None,
        }
    ]


def test_another_users_file_fails_with_the_same_message_and_stays_theirs(create, api, make_file, make_user):
    owner = make_user()
    theirs = make_file([chat_line("a")], owner=owner)
    batch = created_then_failed(create(input_file_id=theirs.id))
    missing = created_then_failed(create(input_file_id="file-nope"))
    assert batch.errors[0]["message"] == missing.errors[0]["message"].replace("file-nope", theirs.id)
    assert owner.get_username() not in batch.errors[0]["message"]
    assert not batch.requests.exists()
    theirs.refresh_from_db()  # untouched, still theirs
    assert theirs.owner == owner


def test_idempotent_create_with_an_invisible_file_replays_the_failed_batch(create, api, make_file):
    first = created_then_failed(create(input_file_id="file-later", idempotency_key="k1"))
    replay = create(input_file_id="file-later", idempotency_key="k1")
    assert replay.status_code == 200 and replay.json()["id"] == first.id and replay.json()["status"] == "failed"
    visible = make_file([chat_line("a")], owner=api.user)
    assert_error(create(input_file_id=visible.id, idempotency_key="k1"), 409, param="idempotency_key", code="idempotency_key_reused")
    assert create(input_file_id=visible.id, idempotency_key="k2").json()["status"] == "validating"


def test_create_with_a_non_batch_file_is_400(create, make_file, api):
    notes = make_file(b"hello", owner=api.user, purpose="user_data", filename="notes.txt")
    assert_error(create(input_file_id=notes.id), 400, param="input_file_id", code="invalid_value")


def test_create_body_must_be_an_object(api):
    assert_error(api.post("/v1/batches", [1, 2], format="json"), 400, param=None, code="invalid_type")


# --- retrieve ---------------------------------------------------------------------


def test_retrieve(api, create):
    created = create().json()
    response = api.get(f"/v1/batches/{created['id']}")
    assert response.status_code == 200
    assert response.json() == created


def test_retrieve_unknown_is_404(api):
    error = assert_error(api.get("/v1/batches/batch_nope"), 404, param="id")
    assert error["message"] == "No such Batch object: batch_nope"


def test_another_users_batch_is_invisible(make_client, make_batch):
    owner, stranger = make_client(), make_client()
    batch = make_batch([chat_line("a")], owner=owner.user)
    assert owner.get(f"/v1/batches/{batch.id}").status_code == 200
    assert_error(stranger.get(f"/v1/batches/{batch.id}"), 404, param="id")
    assert_error(stranger.post(f"/v1/batches/{batch.id}/cancel"), 404, param="id")
    assert stranger.get("/v1/batches").json()["data"] == []
    assert Batch.objects.get(pk=batch.id).status == BatchStatus.VALIDATING


# --- list -------------------------------------------------------------------------


@pytest.fixture
def five_batches(api, make_batch):
    """Five batches of the caller, oldest first, one second apart."""
    batches = [make_batch([chat_line("a")], owner=api.user) for _ in range(5)]
    start = timezone.now() - timedelta(minutes=1)
    for offset, batch in enumerate(batches):
        Batch.objects.filter(pk=batch.id).update(created_at=start + timedelta(seconds=offset))
    return [b.id for b in batches]


def test_list_is_newest_first(api, five_batches):
    body = api.get("/v1/batches").json()
    assert body["object"] == "list"
    assert [b["id"] for b in body["data"]] == five_batches[::-1]
    assert body["first_id"] == five_batches[-1]
    assert body["last_id"] == five_batches[0]
    assert body["has_more"] is False
    assert all(b["object"] == "batch" for b in body["data"])


def test_list_after_means_items_after_that_one(api, five_batches):
    newest_first = five_batches[::-1]
    body = api.get("/v1/batches", {"after": newest_first[1], "limit": 2}).json()
    assert [b["id"] for b in body["data"]] == newest_first[2:4]
    assert body["has_more"] is True
    body = api.get("/v1/batches", {"after": newest_first[3], "limit": 2}).json()
    assert [b["id"] for b in body["data"]] == newest_first[4:]
    assert body["has_more"] is False


def test_list_pages_through_everything(api, five_batches):
    seen, after, pages = [], None, 0
    while True:
        body = api.get("/v1/batches", {"limit": 2, **({"after": after} if after else {})}).json()
        pages += 1
        seen += [b["id"] for b in body["data"]]
        if not body["has_more"]:
            break
        after = body["data"][-1]["id"]
    assert pages == 3
    assert seen == five_batches[::-1]


def test_list_default_limit_is_20(api, make_batch):
    for _ in range(21):
        make_batch([chat_line("a")], owner=api.user)
    body = api.get("/v1/batches").json()
    assert len(body["data"]) == 20
    assert body["has_more"] is True
    assert len(api.get("/v1/batches", {"limit": 100}).json()["data"]) == 21


@pytest.mark.parametrize(
    "limit, code", [("0", "integer_out_of_range"), ("101", "integer_out_of_range"), ("-1", "integer_out_of_range"), ("x", "invalid_type")]
)
def test_list_bad_limit(api, limit, code):
    assert_error(api.get("/v1/batches", {"limit": limit}), 400, param="limit", code=code)


def test_list_after_unknown_id(api, five_batches):
    assert_error(api.get("/v1/batches", {"after": "batch_nope"}), 400, param="after", code="invalid_value")


# --- cancel -----------------------------------------------------------------------


def test_cancel_validating_batch(api, create):
    batch_id = create().json()["id"]
    response = api.post(f"/v1/batches/{batch_id}/cancel")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["status"] == "cancelling"
    assert body["cancelling_at"] is not None
    assert body["cancelled_at"] is None
    assert Batch.objects.get(pk=batch_id).status == BatchStatus.CANCELLING


def test_cancel_in_progress_batch(api, create):
    batch_id = create().json()["id"]
    Batch.objects.filter(pk=batch_id).update(status=BatchStatus.IN_PROGRESS, in_progress_at=timezone.now())
    body = api.post(f"/v1/batches/{batch_id}/cancel").json()
    assert body["status"] == "cancelling"
    assert body["cancelling_at"] is not None


@pytest.mark.parametrize("status", [BatchStatus.COMPLETED, BatchStatus.FAILED, BatchStatus.EXPIRED, BatchStatus.FINALIZING])
def test_cancel_finished_batch_is_409(api, create, status):
    batch_id = create().json()["id"]
    Batch.objects.filter(pk=batch_id).update(status=status)
    response = api.post(f"/v1/batches/{batch_id}/cancel")
    error = assert_error(response, 409, param=None, code="batch_not_cancellable")
    assert error["message"] == f"Cannot cancel a batch with status '{status}'."
    assert response["x-should-retry"] == "false"
    assert Batch.objects.get(pk=batch_id).status == status


@pytest.mark.parametrize("status", [BatchStatus.CANCELLING, BatchStatus.CANCELLED])
def test_cancel_again_returns_the_batch_as_is(api, create, status):
    batch_id = create().json()["id"]
    stamp = timezone.now() - timedelta(minutes=5)
    Batch.objects.filter(pk=batch_id).update(status=status, cancelling_at=stamp)
    response = api.post(f"/v1/batches/{batch_id}/cancel")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == status
    assert body["cancelling_at"] == int(stamp.timestamp())


def test_cancel_unknown_is_404(api):
    assert_error(api.post("/v1/batches/batch_nope/cancel"), 404, param="id")


# --- idempotency ------------------------------------------------------------------


def test_same_idempotency_key_and_params_returns_the_same_batch(create):
    first = create(headers={"Idempotency-Key": "k1"})
    second = create(headers={"Idempotency-Key": "k1"})
    assert first.status_code == second.status_code == 200
    assert first.json() == second.json()
    assert Batch.objects.count() == 1


def test_idempotency_key_in_the_body(create):
    first = create(idempotency_key="k1").json()
    assert create(idempotency_key="k1").json()["id"] == first["id"]
    assert Batch.objects.count() == 1


def test_same_idempotency_key_with_different_params_is_409(create):
    create(headers={"Idempotency-Key": "k1"}, metadata={"a": "1"})
    response = create(headers={"Idempotency-Key": "k1"}, metadata={"a": "2"})
    assert_error(response, 409, param="idempotency_key", code="idempotency_key_reused")
    assert response["x-should-retry"] == "false"
    assert Batch.objects.count() == 1


def test_idempotency_keys_are_per_owner(make_client, make_file):
    responses = []
    for client in (make_client(), make_client()):
        input_file = make_file([chat_line("a")], owner=client.user)
        payload = {"input_file_id": input_file.id, "endpoint": ENDPOINT, "completion_window": "24h"}
        responses.append(client.post("/v1/batches", payload, format="json", headers={"Idempotency-Key": "shared"}))
    assert [r.status_code for r in responses] == [200, 200]
    assert responses[0].json()["id"] != responses[1].json()["id"]


def test_without_idempotency_key_each_create_is_new(create):
    assert create().json()["id"] != create().json()["id"]


def test_bad_idempotency_key(create):
    assert_error(create(idempotency_key="x" * 256), 400, param="idempotency_key", code="invalid_value")


def test_a_malformed_body_idempotency_key_is_an_error_even_beside_the_header(create):
    response = create(headers={"Idempotency-Key": "k1"}, idempotency_key=12)
    assert_error(response, 400, param="idempotency_key", code="invalid_value")
    assert Batch.objects.count() == 0
    assert create(headers={"Idempotency-Key": "k1"}, idempotency_key="other").status_code == 200  # well-formed: the header wins


def test_bad_idempotency_key_header(create):
    assert_error(create(headers={"Idempotency-Key": "x" * 256}), 400, param="idempotency_key", code="invalid_value")
