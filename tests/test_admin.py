"""The operator console: every admin page and action through the Django test client."""

import os
from datetime import timedelta

import pytest
from django.contrib.admin.utils import quote
from django.contrib.auth.models import Permission
from django.contrib.messages import get_messages
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from batches import lifecycle, operations, tasks
from batches.models import Batch, BatchStatus, RequestStatus, UpstreamState
from files_app.models import ApiKey, File, hash_key
from tests.conftest import chat_line, run_batches

BATCHES_URL = reverse("admin:batches_batch_changelist")
REQUESTS_URL = reverse("admin:batches_batchrequest_changelist")


@pytest.fixture(autouse=True)
def plain_static_files(settings):
    # The manifest storage needs collectstatic; the admin's templates only need URLs here.
    settings.STORAGES = {**settings.STORAGES, "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"}}


@pytest.fixture
def staff_client(client, make_user):
    """``staff_client("view_batch", ...)`` -> a client logged in as staff with exactly those permissions."""

    def make(*codenames):
        user = make_user(is_staff=True)
        user.user_permissions.set(Permission.objects.filter(codename__in=codenames))
        client.force_login(user)
        return client

    return make


@pytest.fixture
def processed_batch(make_batch, upstream):
    """``processed_batch(lines, **fields)`` -> a batch validated and run against the fake upstream."""

    def make(lines, **fields):
        batch = make_batch(lines, **fields)
        tasks.validate_batch(batch.id)
        # The dispatcher serves every running batch: other fixtures' batches stay as they are.
        others = list(Batch.objects.filter(status=BatchStatus.IN_PROGRESS).exclude(pk=batch.id).values_list("pk", flat=True))
        Batch.objects.filter(pk__in=others).update(status=BatchStatus.VALIDATING)
        run_batches()
        Batch.objects.filter(pk__in=others).update(status=BatchStatus.IN_PROGRESS)
        batch.refresh_from_db()
        return batch

    return make


@pytest.fixture
def batch_with_failures(processed_batch):
    """Completed: 3 lines succeeded, 2 got a 400 from the upstream."""
    lines = [chat_line(f"ok-{n}") for n in range(3)] + [chat_line(f"bad-{n}", content="FAIL_400") for n in range(2)]
    batch = processed_batch(lines, metadata={"project": "apollo", "owner_team": "search"})
    assert batch.status == BatchStatus.COMPLETED and batch.failed_requests == 2
    return batch


@pytest.fixture
def running_batch(make_batch, upstream):
    """In progress with every line still pending (no worker runs it)."""
    batch = make_batch([chat_line(f"run-{n}") for n in range(4)])
    tasks.validate_batch(batch.id)
    batch.refresh_from_db()
    assert batch.status == BatchStatus.IN_PROGRESS
    return batch


@pytest.fixture
def failed_batch(make_batch, upstream):
    """Failed at validation because the upstream was down (an infrastructure failure)."""
    upstream.configure(down=True)
    batch = make_batch([chat_line("x-1"), chat_line("x-2")])
    tasks.validate_batch(batch.id)
    upstream.configure(down=False)
    batch.refresh_from_db()
    assert batch.status == BatchStatus.FAILED
    return batch


def run_action(client, action, batches, confirm=True, url=BATCHES_URL):
    data = {"action": action, "_selected_action": [b.pk for b in batches]}
    if confirm:
        data["post"] = "yes"
    return client.post(url, data)


def messages_of(response):
    return [str(m) for m in get_messages(response.wsgi_request)]


# --- changelist ---------------------------------------------------------------------------


def test_changelist_shows_status_progress_and_counts(admin_client, batch_with_failures, running_batch):
    response = admin_client.get(BATCHES_URL)
    assert response.status_code == 200
    html = response.content.decode()
    assert batch_with_failures.id in html and running_batch.id in html
    assert 'class="ob-status ob-status-completed"' in html and 'class="ob-status ob-status-in_progress"' in html
    assert "5 / 5 (100%)" in html  # completed + failed of total
    assert "0 / 4 (0%)" in html
    assert "✓ 3</span>" in html and "✗ 2</span>" in html
    assert "batches/admin.css" in html
    # Newest first.
    assert html.index(running_batch.id) < html.index(batch_with_failures.id)


def test_changelist_query_count_does_not_grow_with_rows(admin_client, make_file, make_user):
    owners = [make_user() for _ in range(3)]
    inputs = [make_file(b"{}\n", owner=owner) for owner in owners]

    def add_batches(count):
        for n in range(count):
            i = n % len(inputs)
            Batch.objects.create(
                owner=owners[i],
                input_file=inputs[i],
                endpoint="/v1/chat/completions",
                status=list(BatchStatus)[n % len(BatchStatus)],
                total_requests=10,
                completed_requests=n % 10,
                retry_of=Batch.objects.first() if n % 4 == 0 else None,
            )

    def queries_for_page():
        with CaptureQueriesContext(connection) as captured:
            assert admin_client.get(BATCHES_URL).status_code == 200
        return len(captured)

    add_batches(2)
    few = queries_for_page()
    add_batches(18)
    many = queries_for_page()
    assert Batch.objects.count() == 20
    assert few == many


def test_search_by_custom_id_finds_the_batch_once(admin_client, batch_with_failures, running_batch):
    response = admin_client.get(BATCHES_URL, {"q": "bad-1"})
    assert list(response.context["cl"].result_list) == [batch_with_failures]
    response = admin_client.get(BATCHES_URL, {"q": "run-2"})
    assert list(response.context["cl"].result_list) == [running_batch]


@pytest.mark.parametrize(
    "term",
    ["apollo", "owner_team", "input.jsonl", "{input_file_id}", "{output_file_id}", "{batch_id_tail}"],
)
def test_search_by_ids_filename_and_metadata(admin_client, batch_with_failures, running_batch, term):
    term = term.format(
        input_file_id=batch_with_failures.input_file_id,
        output_file_id=batch_with_failures.output_file_id,
        batch_id_tail=batch_with_failures.id[-10:],
    )
    File.objects.filter(pk=running_batch.input_file_id).update(filename="other.jsonl")
    response = admin_client.get(BATCHES_URL, {"q": term})
    assert list(response.context["cl"].result_list) == [batch_with_failures]


def test_search_matching_many_rows_of_one_batch_lists_it_once(admin_client, make_batch, upstream):
    # Matches the metadata (true for every row a join would produce) and one custom_id.
    batch = make_batch([chat_line("apollo"), chat_line("apollo-2"), chat_line("other")], metadata={"name": "apollo"})
    tasks.validate_batch(batch.id)
    response = admin_client.get(BATCHES_URL, {"q": "apollo"})
    assert response.context["cl"].result_count == 1
    assert list(response.context["cl"].result_list) == [batch]


def test_filters(admin_client, batch_with_failures, running_batch, make_batch):
    embeddings = make_batch(
        [{"custom_id": "e", "method": "POST", "url": "/v1/embeddings", "body": {"model": "fake-embed", "input": "x"}}],
        endpoint="/v1/embeddings",
    )

    def listed(**params):
        response = admin_client.get(BATCHES_URL, params)
        assert response.status_code == 200, response
        return set(response.context["cl"].result_list)

    assert listed(status__exact="completed") == {batch_with_failures}
    assert listed(endpoint="/v1/embeddings") == {embeddings}
    assert listed(model="fake-model") == {batch_with_failures, running_batch}
    assert listed(owner__id__exact=running_batch.owner_id) == {running_batch}
    today = timezone.localtime().replace(hour=0, minute=0, second=0, microsecond=0)  # as the "Today" link sends it
    assert listed(created_at__gte=str(today), created_at__lt=str(today + timedelta(days=1))) == {
        batch_with_failures,
        running_batch,
        embeddings,
    }
    retry = operations.retry_failed_requests(batch_with_failures)
    assert listed(lineage="retry") == {retry}


# --- detail ---------------------------------------------------------------------------------


def test_batch_detail_shows_everything_read_only(admin_client, batch_with_failures):
    batch = batch_with_failures
    response = admin_client.get(reverse("admin:batches_batch_change", args=[quote(batch.id)]))
    assert response.status_code == 200
    html = response.content.decode()
    for expected in ("created", "in progress", "finalizing", "completed", "took"):  # timeline
        assert f">{expected}<" in html
    assert "apollo" in html and "owner_team" in html  # metadata
    assert "input tokens" in html and "total tokens" in html  # usage
    for file_id in (batch.input_file_id, batch.output_file_id, batch.error_file_id):
        assert reverse("admin:files_app_file_download", args=[quote(file_id)]) in html
    assert f"{REQUESTS_URL}?batch={batch.id}" in html
    assert f"?group={batch.id}" in html  # django-q2 task pages
    assert 'name="_save"' not in html and "Validation errors" not in html
    assert "Retry failed requests" in html and "Cancel batch" not in html and "Re-run batch" not in html
    assert admin_client.get(reverse("admin:batches_batch_add")).status_code == 403
    response = admin_client.post(reverse("admin:batches_batch_change", args=[quote(batch.id)]), {"status": "failed", "endpoint": "/v1/x"})
    assert response.status_code == 403
    batch.refresh_from_db()
    assert batch.status == BatchStatus.COMPLETED


def test_batch_detail_shows_validation_errors_as_a_table(admin_client, make_batch, upstream):
    batch = make_batch([chat_line("a"), "not json", {"custom_id": "b", "method": "GET", "url": "/v1/chat/completions", "body": {}}])
    tasks.validate_batch(batch.id)
    batch.refresh_from_db()
    assert batch.status == BatchStatus.FAILED
    html = admin_client.get(reverse("admin:batches_batch_change", args=[quote(batch.id)])).content.decode()
    assert "Validation errors" in html and '<table class="ob-errors">' in html
    for error in batch.errors:
        assert f"<code>{error['code']}</code>" in html
        assert f"<td>{error['line']}</td>" in html
    # Its input is what is wrong: re-running it would fail the same way.
    assert "rerun_batches" not in html
    assert "invalid lines" in operations.rerun_refusal(batch)


def test_deleted_input_file_is_reported_not_fatal(admin_client, batch_with_failures):
    File.objects.get(pk=batch_with_failures.input_file_id).delete()
    for url in (BATCHES_URL, reverse("admin:batches_batch_change", args=[quote(batch_with_failures.id)])):
        response = admin_client.get(url)
        assert response.status_code == 200
        assert batch_with_failures.id in response.content.decode()
    assert "(deleted)" in response.content.decode()


def test_file_download_streams_content_to_staff_only(client, admin_client, staff_client, batch_with_failures):
    output = File.objects.get(pk=batch_with_failures.output_file_id)
    url = reverse("admin:files_app_file_download", args=[quote(output.id)])
    response = admin_client.get(url)
    assert response.status_code == 200
    assert response["Content-Disposition"].startswith("attachment")
    body = b"".join(response.streaming_content)
    assert body == output.content.open("rb").read()
    assert body.count(b"\n") == 3 and b'"custom_id":"ok-0"' in body

    client.logout()
    assert client.get(url).status_code == 302  # to the admin login
    assert staff_client("view_batch").get(url).status_code == 403
    assert staff_client("view_file").get(url).status_code == 200
    assert admin_client.get(reverse("admin:files_app_file_download", args=[quote("file-missing")])).status_code == 404


# --- actions --------------------------------------------------------------------------------


def test_cancel_asks_first_then_cancels_only_cancellable(admin_client, running_batch, batch_with_failures):
    response = run_action(admin_client, "cancel_batches", [running_batch, batch_with_failures], confirm=False)
    assert response.status_code == 200
    assert response.templates[0].name == "admin/files_app/confirm_action.html"
    html = response.content.decode()
    assert "Cancel these batches?" in html and "status is completed" in html
    assert f'name="_selected_action" value="{running_batch.id}"' in html
    assert f'name="_selected_action" value="{batch_with_failures.id}"' not in html
    running_batch.refresh_from_db()
    assert running_batch.status == BatchStatus.IN_PROGRESS  # nothing happened yet

    response = run_action(admin_client, "cancel_batches", [running_batch, batch_with_failures])
    assert response.status_code == 302
    running_batch.refresh_from_db()
    batch_with_failures.refresh_from_db()
    assert running_batch.status == BatchStatus.CANCELLING and running_batch.cancelling_at
    assert batch_with_failures.status == BatchStatus.COMPLETED
    notes = messages_of(response)
    assert any(f"Cancelling 1 batch: {running_batch.id}" in note for note in notes)
    assert any(batch_with_failures.id in note and "status is completed" in note for note in notes)


def test_cancel_from_the_detail_page_goes_through_the_confirmation(admin_client, running_batch):
    detail = admin_client.get(reverse("admin:batches_batch_change", args=[quote(running_batch.id)])).content.decode()
    assert 'value="cancel_batches"' in detail
    response = admin_client.post(BATCHES_URL, {"action": "cancel_batches", "_selected_action": running_batch.id})
    assert "Cancel these batches?" in response.content.decode()


def test_cancelled_batch_finishes_through_the_workers_code(admin_client, running_batch):
    run_action(admin_client, "cancel_batches", [running_batch])
    tasks.finalize_batch(running_batch.id)
    running_batch.refresh_from_db()
    assert running_batch.status == BatchStatus.CANCELLED
    assert set(running_batch.requests.values_list("status", flat=True)) == {RequestStatus.CANCELLED}


def test_force_finish_ends_a_cancelling_batch_without_waiting_for_calls_in_flight(admin_client, running_batch, batch_with_failures):
    in_flight = list(running_batch.requests.order_by("line")[:2].values_list("pk", flat=True))
    # A dispatcher has two calls in flight (live leases) when the batch is cancelled: it drains them.
    running_batch.requests.filter(pk__in=in_flight).update(
        status=RequestStatus.RUNNING, lease_owner="host:1:drainer", lease_expires_at=timezone.now() + timedelta(minutes=5)
    )
    run_action(admin_client, "cancel_batches", [running_batch])
    assert tasks.finalize_batch(running_batch.id) is False
    detail = admin_client.get(reverse("admin:batches_batch_change", args=[quote(running_batch.id)])).content.decode()
    assert 'value="force_finish_batches"' in detail

    response = run_action(admin_client, "force_finish_batches", [running_batch, batch_with_failures], confirm=False)
    html = response.content.decode()
    assert "Finish these batches now?" in html and "cancelling, 2 requests in flight" in html and "status is completed" in html
    assert Batch.objects.get(pk=running_batch.id).status == BatchStatus.CANCELLING  # nothing happened yet

    response = run_action(admin_client, "force_finish_batches", [running_batch, batch_with_failures])
    assert response.status_code == 302
    running_batch.refresh_from_db()
    assert running_batch.status == BatchStatus.CANCELLED
    assert running_batch.request_counts() == {"total": 4, "completed": 0, "failed": 4}
    rows = running_batch.requests.all()
    assert set(rows.values_list("status", flat=True)) == {RequestStatus.CANCELLED}
    assert {row.error["code"] for row in rows} == {"batch_cancelled"}
    notes = messages_of(response)
    assert any(f"Finished 1 batch now: {running_batch.id}" in note for note in notes)
    assert any(batch_with_failures.id in note and "Not force-finished" in note for note in notes)


def test_nothing_cancellable_reports_without_a_confirmation_page(admin_client, batch_with_failures):
    response = run_action(admin_client, "cancel_batches", [batch_with_failures], confirm=False)
    assert response.status_code == 302
    assert any("Not cancelled" in note for note in messages_of(response))


def test_retry_failed_requests_builds_a_linked_batch(admin_client, batch_with_failures, running_batch, django_capture_on_commit_callbacks):
    original = batch_with_failures
    response = run_action(admin_client, "retry_failed_requests", [original, running_batch], confirm=False)
    html = response.content.decode()
    assert "2 failed, cancelled or expired of 5" in html and "status is in_progress" in html

    with django_capture_on_commit_callbacks() as callbacks:
        response = run_action(admin_client, "retry_failed_requests", [original, running_batch])
    retry = Batch.objects.get(retry_of=original)
    assert len(callbacks) == 1  # its validation is queued like any new batch
    assert retry.status == BatchStatus.VALIDATING
    assert (retry.owner_id, retry.endpoint, retry.metadata) == (original.owner_id, original.endpoint, original.metadata)
    retry_input = File.objects.get(pk=retry.input_file_id)
    assert (retry_input.owner_id, retry_input.purpose) == (original.owner_id, "batch")
    lines = retry_input.content.open("rb").read().decode().splitlines()
    assert [line.split('"custom_id":"')[1].split('"')[0] for line in lines] == ["bad-0", "bad-1"]
    assert retry_input.bytes == len("\n".join(lines)) + 1
    notes = messages_of(response)
    assert any(original.id in note and retry.id in note for note in notes)
    assert any(running_batch.id in note and "Not retried" in note for note in notes)

    # The two batches link to each other.
    html = admin_client.get(reverse("admin:batches_batch_change", args=[quote(retry.id)])).content.decode()
    assert "Retry of the failed lines of" in html and reverse("admin:batches_batch_change", args=[quote(original.id)]) in html
    html = admin_client.get(reverse("admin:batches_batch_change", args=[quote(original.id)])).content.decode()
    assert "Retried as" in html and reverse("admin:batches_batch_change", args=[quote(retry.id)]) in html


def test_retried_cancelled_lines_run_to_completion(running_batch):
    operations.cancel(running_batch)
    tasks.finalize_batch(running_batch.id)
    running_batch.refresh_from_db()
    assert running_batch.status == BatchStatus.CANCELLED

    retry = operations.retry_failed_requests(running_batch)
    tasks.validate_batch(retry.id)
    run_batches()
    retry.refresh_from_db()
    assert retry.status == BatchStatus.COMPLETED
    assert (retry.completed_requests, retry.failed_requests) == (4, 0)
    assert set(retry.requests.values_list("custom_id", flat=True)) == {f"run-{n}" for n in range(4)}


def test_retry_refuses_batches_without_failed_lines(processed_batch):
    clean = processed_batch([chat_line("fine")])
    assert clean.status == BatchStatus.COMPLETED
    assert operations.retry_refusal(clean) == "no failed, cancelled or expired requests"
    with pytest.raises(operations.NotAllowed):
        operations.retry_failed_requests(clean)


def test_rerun_a_failed_batch_with_the_same_input(admin_client, failed_batch, batch_with_failures):
    assert failed_batch.errors[0]["code"] == "upstream_unavailable"
    response = run_action(admin_client, "rerun_batches", [failed_batch, batch_with_failures], confirm=False)
    html = response.content.decode()
    assert "upstream_unavailable" in html and "only failed batches are re-run" in html

    response = run_action(admin_client, "rerun_batches", [failed_batch, batch_with_failures])
    again = Batch.objects.get(retry_of=failed_batch)
    assert again.input_file_id == failed_batch.input_file_id and again.status == BatchStatus.VALIDATING
    assert any("Re-running" in note for note in messages_of(response))
    tasks.validate_batch(again.id)
    run_batches()
    again.refresh_from_db()
    assert again.status == BatchStatus.COMPLETED and again.completed_requests == 2
    html = admin_client.get(reverse("admin:batches_batch_change", args=[quote(again.id)])).content.decode()
    assert "Re-run of" in html


def test_rerun_refuses_when_the_input_file_is_gone(admin_client, failed_batch):
    File.objects.get(pk=failed_batch.input_file_id).delete()
    response = run_action(admin_client, "rerun_batches", [failed_batch], confirm=False)
    assert response.status_code == 302
    assert any("no longer exists" in note for note in messages_of(response))
    assert not Batch.objects.filter(retry_of=failed_batch).exists()


def test_view_only_staff_can_look_but_not_act(staff_client, running_batch, batch_with_failures):
    client = staff_client("view_batch", "view_batchrequest")
    response = client.get(BATCHES_URL)
    assert response.status_code == 200
    assert 'name="action"' not in response.content.decode()
    detail = client.get(reverse("admin:batches_batch_change", args=[quote(running_batch.id)])).content.decode()
    assert "cancel_batches" not in detail
    assert client.get(f"{REQUESTS_URL}?batch={running_batch.id}").status_code == 200

    for action in ("cancel_batches", "retry_failed_requests"):
        run_action(client, action, [running_batch, batch_with_failures])
    running_batch.refresh_from_db()
    assert running_batch.status == BatchStatus.IN_PROGRESS
    assert not Batch.objects.filter(retry_of__isnull=False).exists()


def test_staff_with_change_permission_can_act(staff_client, running_batch):
    client = staff_client("view_batch", "change_batch")
    run_action(client, "cancel_batches", [running_batch])
    running_batch.refresh_from_db()
    assert running_batch.status == BatchStatus.CANCELLING


def test_staff_without_permissions_see_nothing(staff_client, running_batch):
    client = staff_client()
    assert client.get(BATCHES_URL).status_code == 403
    assert client.get(reverse("admin:batches_batch_change", args=[quote(running_batch.id)])).status_code == 403


# --- requests ---------------------------------------------------------------------------------


def test_request_changelist_filters_and_search(admin_client, batch_with_failures, running_batch):
    def listed(**params):
        response = admin_client.get(REQUESTS_URL, params)
        assert response.status_code == 200
        return {row.custom_id for row in response.context["cl"].result_list}

    assert listed(batch=batch_with_failures.id) == {"ok-0", "ok-1", "ok-2", "bad-0", "bad-1"}
    assert listed(batch=batch_with_failures.id, status__exact="failed") == {"bad-0", "bad-1"}
    assert listed(http_status="4xx") == {"bad-0", "bad-1"}
    assert listed(http_status="2xx") == {"ok-0", "ok-1", "ok-2"}
    assert listed(http_status="none") == {f"run-{n}" for n in range(4)}
    assert listed(attempts="0") == {f"run-{n}" for n in range(4)}
    assert listed(attempts="1", batch=batch_with_failures.id) == {"ok-0", "ok-1", "ok-2", "bad-0", "bad-1"}
    assert listed(q="bad-1") == {"bad-1"}


def test_request_changelist_query_count_does_not_grow_with_rows(admin_client, running_batch, make_batch, upstream):
    big = make_batch([chat_line(f"big-{n}") for n in range(40)])
    tasks.validate_batch(big.id)

    def queries_for(batch):
        with CaptureQueriesContext(connection) as captured:
            response = admin_client.get(REQUESTS_URL, {"batch": batch.id})
        assert len(response.context["cl"].result_list) == batch.requests.count()
        return len(captured)

    assert queries_for(running_batch) == queries_for(big)


def test_request_detail_pretty_prints_json(admin_client, batch_with_failures):
    row = batch_with_failures.requests.get(custom_id="bad-0")
    response = admin_client.get(reverse("admin:batches_batchrequest_change", args=[quote(row.pk)]))
    assert response.status_code == 200
    html = response.content.decode()
    assert '<pre class="ob-json">' in html
    assert "&quot;messages&quot;: [" in html  # indented JSON of the body
    assert "FAIL_400" in html and "400" in html
    assert row.public_id in html and 'name="_save"' not in html
    ok_row = batch_with_failures.requests.get(custom_id="ok-0")
    html = admin_client.get(reverse("admin:batches_batchrequest_change", args=[quote(ok_row.pk)])).content.decode()
    assert "&quot;total_tokens&quot;:" in html  # usage from the response
    assert admin_client.get(reverse("admin:batches_batchrequest_add")).status_code == 403


# --- files and keys -----------------------------------------------------------------------------


def test_file_admin_lists_and_links_batches(admin_client, batch_with_failures):
    response = admin_client.get(reverse("admin:files_app_file_changelist"))
    assert response.status_code == 200
    assert batch_with_failures.output_file_id in response.content.decode()
    html = admin_client.get(reverse("admin:files_app_file_change", args=[quote(batch_with_failures.input_file_id)])).content.decode()
    assert reverse("admin:batches_batch_change", args=[quote(batch_with_failures.id)]) in html and "— input" in html
    html = admin_client.get(reverse("admin:files_app_file_change", args=[quote(batch_with_failures.error_file_id)])).content.decode()
    assert "— errors" in html
    assert admin_client.get(reverse("admin:files_app_file_add")).status_code == 403


def test_file_admin_delete_removes_stored_content(admin_client, make_file):
    stored = make_file(b'{"a": 1}\n')
    path = stored.content.path
    response = admin_client.post(
        reverse("admin:files_app_file_changelist"), {"action": "delete_selected", "_selected_action": [stored.pk], "post": "yes"}
    )
    assert response.status_code == 302
    assert not File.objects.filter(pk=stored.pk).exists()
    assert not os.path.exists(path)


def test_adding_an_api_key_shows_the_secret_once(admin_client, make_user):
    owner = make_user()
    response = admin_client.post(reverse("admin:files_app_apikey_add"), {"user": owner.pk, "name": "ci"})
    assert response.status_code == 200
    assert "no-store" in response["Cache-Control"]
    key = ApiKey.objects.get(user=owner)
    secret = response.context["secret"]
    assert secret.startswith("sk-batch-") and key.key_hash == hash_key(secret)
    assert secret in response.content.decode() and key.name == "ci"

    html = admin_client.get(reverse("admin:files_app_apikey_change", args=[quote(key.pk)])).content.decode()
    assert secret not in html and key.key_hash not in html and f"{key.prefix}…" in html
    html = admin_client.get(reverse("admin:files_app_apikey_changelist")).content.decode()
    assert secret not in html and key.key_hash not in html


def test_issued_key_authenticates_against_the_api(admin_client, make_user):
    from rest_framework.test import APIClient

    owner = make_user()
    response = admin_client.post(reverse("admin:files_app_apikey_add"), {"user": owner.pk, "name": "sdk"})
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {response.context['secret']}")
    assert api.get("/v1/batches").status_code == 200


def test_revoke_keys_action(admin_client, make_api_key):
    active, _ = make_api_key()
    revoked, _ = make_api_key()
    revoked.revoke()
    url = reverse("admin:files_app_apikey_changelist")
    response = admin_client.post(url, {"action": "revoke_keys", "_selected_action": [active.pk, revoked.pk]})
    assert "Revoke these API keys?" in response.content.decode()
    active.refresh_from_db()
    assert active.is_active
    response = admin_client.post(url, {"action": "revoke_keys", "_selected_action": [active.pk], "post": "yes"})
    active.refresh_from_db()
    assert not active.is_active
    assert any("Revoked 1 API key" in note for note in messages_of(response))


# --- worker health ------------------------------------------------------------------------------


def banner_in(client, url=BATCHES_URL):
    return "ob-worker-banner" in client.get(url).content.decode()


def test_banner_when_batches_wait_and_no_task_ran(admin_client, running_batch):
    assert banner_in(admin_client)
    assert banner_in(admin_client, reverse("admin:batches_batch_change", args=[quote(running_batch.id)]))
    assert "python manage.py qcluster" in admin_client.get(BATCHES_URL).content.decode()


# With the Redis broker the cluster heartbeat is authoritative, so the queue-evidence
# fallback these tests exercise only exists under the ORM broker.
orm_broker_only = pytest.mark.skipif(
    bool(os.environ.get("BATCHES_REDIS_URL")), reason="queue evidence is the ORM broker's fallback; Redis has a shared heartbeat"
)


@orm_broker_only
def test_no_banner_when_a_task_finished_recently(admin_client, running_batch):
    from django_q.models import Success

    now = timezone.now()
    Success.objects.create(
        id="t1", name="dispatch", func="batches.tasks.dispatch", started=now, stopped=now, success=True, group=running_batch.id
    )
    assert not banner_in(admin_client)
    Success.objects.filter(pk="t1").update(stopped=now - timedelta(minutes=10))
    assert banner_in(admin_client)


@orm_broker_only
def test_no_banner_when_idle_and_nothing_waits(admin_client, batch_with_failures):
    assert not banner_in(admin_client)


@orm_broker_only
def test_banner_for_tasks_nobody_pulled(admin_client, batch_with_failures):
    from django_q.brokers import get_broker
    from django_q.models import OrmQ

    OrmQ.objects.create(key=get_broker().list_key, payload="x", lock=timezone.now() - timedelta(minutes=5))
    health = operations.worker_health()
    assert not health.ok and "1 queued task(s)" in health.summary
    assert banner_in(admin_client)


def test_running_cluster_heartbeat_hides_the_banner(admin_client, running_batch, monkeypatch):
    from types import SimpleNamespace

    from django_q.status import Stat

    monkeypatch.setattr(Stat, "get_all", staticmethod(lambda broker=None: [SimpleNamespace(status="Idle", host="worker-1")]))
    health = operations.worker_health()
    assert health.ok and "worker-1" in health.summary
    assert not banner_in(admin_client)


def test_shared_cache_without_heartbeat_means_no_cluster(admin_client, batch_with_failures, settings, tmp_path):
    # With a cache every process shares, a missing heartbeat is conclusive even when idle.
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.filebased.FileBasedCache", "LOCATION": str(tmp_path / "cache")}}
    health = operations.worker_health()
    assert not health.ok and "No django-q2 cluster is running" in health.summary
    assert banner_in(admin_client)


def test_unreachable_broker_is_reported(running_batch, monkeypatch):
    from django_q.status import Stat

    def refuse(broker=None):
        raise ConnectionError("refused")

    monkeypatch.setattr(Stat, "get_all", staticmethod(refuse))
    health = operations.worker_health()
    assert not health.ok and "cannot be reached" in health.summary


def test_lifecycle_cancel_is_the_api_cancel(running_batch):
    # The admin's cancel and the API's cancel are one transition.
    assert operations.cancel(running_batch) is True
    assert operations.cancel(running_batch) is False
    assert lifecycle.request_cancel(running_batch) is False


def test_broker_keeping_heartbeats_itself_is_conclusive(batch_with_failures, monkeypatch):
    # Like the Redis broker: stats live in the broker, so their absence means no cluster.
    from django_q.brokers import Broker

    class HeartbeatKeepingBroker(Broker):
        def get_stats(self, pattern):
            return []

    monkeypatch.setattr(operations, "get_broker", lambda: HeartbeatKeepingBroker(list_key="probe"))
    health = operations.worker_health()
    assert not health.ok and "No django-q2 cluster is running" in health.summary


# --- scheduling: upstreams, a batch's share, key weights ------------------------------------


def test_an_api_keys_weight_is_edited_on_its_page(admin_client, make_api_key):
    key, _ = make_api_key()
    url = reverse("admin:files_app_apikey_change", args=[quote(key.pk)])
    assert 'name="weight"' in admin_client.get(url).content.decode()
    response = admin_client.post(url, {"user": key.user_id, "name": key.name, "weight": 3})
    assert response.status_code == 302
    key.refresh_from_db()
    assert key.weight == 3
    assert admin_client.post(url, {"user": key.user_id, "name": key.name, "weight": 0}).status_code == 200  # at least 1


def test_upstreams_show_limit_in_flight_and_latency(admin_client, running_batch, upstream):
    from batches import claims
    from batches.aimd import Feedback

    feedback = Feedback()
    feedback.success(42.0)
    now = timezone.now()
    claims.Claimer("host:1:a").claim(
        upstream.base_url, wanted=3, unflushed={}, feedback=feedback, now=now, lease_until=now + timedelta(minutes=1)
    )
    state = UpstreamState.objects.get(base_url=upstream.base_url)
    html = admin_client.get(reverse("admin:batches_upstreamstate_changelist")).content.decode()
    assert upstream.base_url in html and "42 ms" in html
    detail = admin_client.get(reverse("admin:batches_upstreamstate_change", args=[state.pk])).content.decode()
    assert f'<div class="readonly">{state.concurrency_limit}</div>' in detail
    assert '<div class="readonly">3</div>' in detail  # in flight: the three leased rows
    assert admin_client.get(reverse("admin:batches_upstreamstate_add")).status_code == 403


def test_a_running_batch_shows_its_owners_share_and_place(admin_client, make_batch, make_user, upstream):
    owner = make_user()
    first, second = (make_batch([chat_line(f"r{n}") for n in range(3)], owner=owner) for _ in range(2))
    for batch in (first, second):
        tasks.validate_batch(batch.id)
    Batch.objects.filter(pk=first.id).update(expires_at=timezone.now() + timedelta(hours=1))
    html = admin_client.get(reverse("admin:batches_batch_change", args=[quote(second.id)])).content.decode()
    assert "owner&#x27;s share" in html and "place in the owner&#x27;s queue" in html
    assert "2 of 2" in html  # the batch expiring sooner goes first
    assert "after 1 earlier batch(es) of its owner" in html


def test_admin_retries_and_reruns_keep_the_original_key_and_its_weight(admin_client, processed_batch, make_api_key, upstream):
    key, _ = make_api_key()
    key.weight = 3
    key.save()
    upstream.configure(down=True)
    failed = processed_batch([chat_line("x-1")], owner=key.user, api_key=key)
    upstream.configure(down=False)
    assert failed.status == BatchStatus.FAILED
    with_failures = processed_batch([chat_line("ok-0"), chat_line("bad-0", content="FAIL_400")], owner=key.user, api_key=key)
    run_action(admin_client, "rerun_batches", [failed])
    run_action(admin_client, "retry_failed_requests", [with_failures])
    assert Batch.objects.get(retry_of=failed).api_key_id == key.pk
    assert Batch.objects.get(retry_of=with_failures).api_key_id == key.pk
