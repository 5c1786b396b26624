"""The batch admin's actions: cancel, force-finish a cancel, retry the failed lines, re-run. Each goes
through ``batches.operations`` (the same lifecycle code as the API), shows a
confirmation page first and needs the ``change`` permission."""

from django.contrib import admin, messages
from django.db.models import Count, Exists, OuterRef, Q
from django.utils.html import format_html, format_html_join

from files_app.admin import confirm_then_act
from files_app.models import File

from .. import operations
from ..models import RequestStatus


def batch_action(description, *, button, refusal):
    """An admin action on batches, described once: its ``description`` in the action
    menu, its ``button`` on a batch's page, shown while ``refusal(batch)`` (why the
    action cannot act on that batch) is None. Needs the ``change`` permission."""

    def decorate(function):
        function = admin.action(description=description, permissions=["change"])(function)
        function.button = button
        function.refusal = refusal
        return function

    return decorate


@batch_action("Cancel selected batches", button="Cancel batch", refusal=operations.cancel_refusal)
def cancel_batches(modeladmin, request, queryset):
    eligible, refused = [], []
    for batch in queryset:
        refusal = operations.cancel_refusal(batch)
        if refusal:
            refused.append((batch, refusal))
        else:
            eligible.append((batch, f"{batch.status}, {batch.completed_requests + batch.failed_requests} of {batch.total_requests} done"))
    return _confirm_then_change(
        modeladmin,
        request,
        eligible,
        refused,
        change=operations.cancel,
        done_message="Cancelling {batches}: {ids}.",
        refused_verb="cancelled",
        question="Cancel these batches?",
        consequence="Workers send nothing more; calls already in flight finish (up to CANCEL_DRAIN_SECONDS) and, like finished results, "
        "are kept in the output and error files.",
        button="Yes, cancel them",
    )


@batch_action("Force-finish cancelling batches", button="Force-finish now", refusal=operations.force_finish_refusal)
def force_finish_batches(modeladmin, request, queryset):
    eligible, refused = [], []
    for batch in queryset.annotate(in_flight=Count("requests", filter=Q(requests__status=RequestStatus.RUNNING))):
        refusal = operations.force_finish_refusal(batch)
        if refusal:
            refused.append((batch, refusal))
        else:
            in_flight = batch.in_flight
            eligible.append((batch, f"{batch.status}, {in_flight} request{'s' if in_flight != 1 else ''} in flight"))
    return _confirm_then_change(
        modeladmin,
        request,
        eligible,
        refused,
        change=operations.force_finish,
        done_message="Finished {batches} now: {ids}.",
        refused_verb="force-finished",
        question="Finish these batches now?",
        consequence="Their requests still in flight are not waited for: they end as batch_cancelled (batch_expired for an expired "
        "batch) and their late answers are discarded. Finished results are kept.",
        button="Yes, finish them now",
    )


@batch_action(
    "Retry failed requests of selected batches (as new batches)", button="Retry failed requests", refusal=operations.retry_refusal
)
def retry_failed_requests(modeladmin, request, queryset):
    statuses = operations.RETRYABLE_REQUEST_STATUSES
    annotated = queryset.annotate(retryable=Count("requests", filter=Q(requests__status__in=statuses)))
    eligible, refused = [], []
    for batch in annotated:
        refusal = operations.retry_refusal(batch, retryable_count=batch.retryable)
        if refusal:
            refused.append((batch, refusal))
        else:
            earlier = f"; already retried {batch.retries.count()}×" if batch.retries.exists() else ""
            eligible.append((batch, f"{batch.status}: {batch.retryable} failed, cancelled or expired of {batch.total_requests}{earlier}"))
    return _confirm_then_create(
        modeladmin,
        request,
        eligible,
        refused,
        create=operations.retry_failed_requests,
        created_label="Retrying the failed requests",
        refused_verb="retried",
        question="Retry the failed, cancelled and expired requests of these batches?",
        consequence="Each gets a new batch for the same owner, endpoint and metadata, linked to it, which is validated and run as usual.",
        button="Yes, retry them",
    )


@batch_action("Re-run selected failed batches with the same input", button="Re-run batch", refusal=operations.rerun_refusal)
def rerun_batches(modeladmin, request, queryset):
    live_input = File.objects.live().filter(pk=OuterRef("input_file_id"), owner_id=OuterRef("owner_id"))
    eligible, refused = [], []
    for batch in queryset.annotate(input_exists=Exists(live_input)):
        refusal = operations.rerun_refusal(batch, input_file_exists=batch.input_exists)
        if refusal:
            refused.append((batch, refusal))
        else:
            first_error = (batch.errors or [{}])[0]
            eligible.append((batch, f"failed: {first_error.get('code', 'unknown')} — {first_error.get('message', '')}"))
    return _confirm_then_create(
        modeladmin,
        request,
        eligible,
        refused,
        create=operations.rerun,
        created_label="Re-running",
        refused_verb="re-run",
        question="Re-run these failed batches with the same input file?",
        consequence="Use this when a batch failed for a reason outside its input, e.g. the upstream was unreachable during validation.",
        button="Yes, re-run them",
    )


def _confirm_then_change(modeladmin, request, eligible, refused, *, change, done_message, **flow):
    """The actions that change batches in place: ``change(batch, user)`` for each
    confirmed batch (False: its status moved meanwhile)."""

    def act(batches):
        done, missed = [], []
        for batch in batches:
            (done if change(batch, request.user) else missed).append(batch)
        if done:
            count = f"{len(done)} batch{'es' if len(done) != 1 else ''}"
            modeladmin.message_user(request, done_message.format(batches=count, ids=", ".join(b.id for b in done)), messages.SUCCESS)
        return [(batch, "its status changed meanwhile") for batch in missed]

    return confirm_then_act(modeladmin, request, eligible, refused, act=act, **flow)


def _confirm_then_create(modeladmin, request, eligible, refused, *, create, created_label, **flow):
    """The actions that create new batches: ``create(batch, user)`` for each confirmed batch."""

    def act(batches):
        created, missed = [], []
        for batch in batches:
            try:
                created.append((create(batch, request.user), batch))
            except operations.NotAllowed as exc:
                missed.append((batch, str(exc)))
        if created:
            items = format_html_join(", ", "{} as {}", ((original.id, modeladmin.link(new)) for new, original in created))
            modeladmin.message_user(request, format_html("{}: {}.", created_label, items), messages.SUCCESS)
        return missed

    return confirm_then_act(modeladmin, request, eligible, refused, act=act, **flow)
