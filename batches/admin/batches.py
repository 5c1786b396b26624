"""The operator console: watch batches, find out why lines failed, and act.

Everything a worker wrote is read-only here. The actions (cancel, retry the
failed lines, re-run) go through ``batches.operations`` and so through the
same lifecycle code as the API; each shows a confirmation page first and
needs the ``change`` permission, so view-only staff can look but not act.
"""

import json
from datetime import timedelta
from urllib.parse import urlencode

from django.contrib import admin, messages
from django.contrib.admin.utils import quote, unquote
from django.db.models import Count, Exists, OuterRef, Q
from django.template.defaultfilters import filesizeformat
from django.template.loader import render_to_string
from django.urls import NoReverseMatch, reverse
from django.utils import timezone
from django.utils.formats import date_format
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe
from django.utils.timesince import timesince
from django_q.models import Task

from files_app.admin import admin_change_link, confirmation_page, file_download_url, report_refused
from files_app.models import File

from . import operations
from .conf import app_settings
from .models import Batch, BatchRequest, BatchStatus

ENDED_AT_FIELDS = ("completed_at", "failed_at", "expired_at", "cancelled_at")
TIMELINE_FIELDS = (
    ("created_at", "created"),
    ("in_progress_at", "in progress"),
    ("cancelling_at", "cancelling"),
    ("finalizing_at", "finalizing"),
    ("completed_at", "completed"),
    ("failed_at", "failed"),
    ("expired_at", "expired"),
    ("cancelled_at", "cancelled"),
)


def status_badge(status):
    return format_html('<span class="ob-status ob-status-{}">{}</span>', status, status.replace("_", " "))


def format_duration(seconds):
    seconds = int(max(0, seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {seconds:02d}s"
    return f"{seconds}s"


def age(moment):
    if timezone.now() - moment < timedelta(minutes=1):
        return "just now"
    return f"{timesince(moment)} ago"


def pretty_json(value):
    if value is None:
        return "—"
    return format_html('<pre class="ob-json">{}</pre>', json.dumps(value, indent=2, ensure_ascii=False))


def changelist_url(model, site_name, **params):
    opts = model._meta
    url = reverse(f"{site_name}:{opts.app_label}_{opts.model_name}_changelist")
    return f"{url}?{urlencode(params)}" if params else url


def batch_ended_at(batch):
    return next((getattr(batch, name) for name in ENDED_AT_FIELDS if getattr(batch, name)), None)


# --- Batch ---------------------------------------------------------------------------


class LineageFilter(admin.SimpleListFilter):
    title = "lineage"
    parameter_name = "lineage"

    def lookups(self, request, model_admin):
        return [("original", "Originals"), ("retry", "Retries and re-runs")]

    def queryset(self, request, queryset):
        if self.value() == "original":
            return queryset.filter(retry_of__isnull=True)
        if self.value() == "retry":
            return queryset.filter(retry_of__isnull=False)
        return queryset


@admin.register(Batch)
class BatchAdmin(admin.ModelAdmin):
    list_display = ("batch", "owner", "endpoint", "model", "status_badge", "progress", "counts", "created", "duration")
    list_filter = (
        "status",
        "endpoint",
        "model",
        ("owner", admin.RelatedOnlyFieldListFilter),
        ("created_at", admin.DateFieldListFilter),
        LineageFilter,
    )
    # Only local columns and the owner are displayed: the page costs the same
    # number of queries whatever its length.
    list_select_related = ("owner",)
    search_fields = ("id",)  # shows the search box; get_search_results does the searching
    search_help_text = "Batch id, input/output file id, input filename, a metadata value, or an exact custom_id."
    ordering = ("-created_at",)
    list_per_page = 50
    empty_value_display = "—"
    actions = ["cancel_batches", "retry_failed_requests", "rerun_batches"]
    fieldsets = (
        (None, {"fields": ("id", "status_badge", "owner", "endpoint", "model", "completion_window", "lineage", "idempotency_key")}),
        ("Progress", {"fields": ("progress", "counts", "request_links", "usage_table")}),
        ("Files", {"fields": ("input_file_link", "output_file_link", "error_file_link", "output_expires_after")}),
        ("Timeline", {"fields": ("timeline",)}),
        ("Validation errors", {"fields": ("errors_table",)}),
        ("Metadata", {"fields": ("metadata_table",)}),
        ("Workers", {"fields": ("tasks", "lease_owner", "lease_expires_at", "slot_expires_at")}),
    )
    readonly_fields = [name for _, options in fieldsets for name in options["fields"]]

    class Media:
        css = {"all": ["batches/admin.css"]}

    # --- permissions: nobody adds or edits batches here; acting needs "change" ---

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        # Without an object Django asks on behalf of the actions; a batch itself is never edited.
        return obj is None and super().has_change_permission(request)

    def has_delete_permission(self, request, obj=None):
        return False

    # --- search ---

    def get_search_results(self, request, queryset, search_term):
        term = search_term.strip()
        if not term:
            return queryset, False
        named_files = File.objects.filter(filename__icontains=term).values("pk")
        # A subquery, not a join: a batch with many matching rows appears once.
        containing = BatchRequest.objects.filter(custom_id=term).values("batch_id")
        matches = (
            Q(pk__icontains=term)
            | Q(input_file_id=term)
            | Q(output_file_id=term)
            | Q(error_file_id=term)
            | Q(input_file_id__in=named_files)
            | Q(metadata__icontains=term)
            | Q(pk__in=containing)
        )
        return queryset.filter(matches), False

    # --- changelist columns ---

    @admin.display(description="batch", ordering="id")
    def batch(self, obj):
        if obj.retry_of_id:
            return format_html('{}<div class="ob-quiet">↻ of {}</div>', obj.id, obj.retry_of_id)
        return obj.id

    @admin.display(description="status", ordering="status")
    def status_badge(self, obj):
        return status_badge(obj.status)

    @admin.display(description="progress")
    def progress(self, obj):
        total = obj.total_requests
        if obj.status == BatchStatus.FAILED and obj.errors:
            # Why it failed, from the row itself (no query): the first error code.
            more = f" +{len(obj.errors) - 1} more" if len(obj.errors) > 1 else ""
            return format_html(
                '<code class="ob-error-code" title="{}">{}</code><span class="ob-quiet">{}</span>',
                obj.errors[0].get("message", ""),
                obj.errors[0].get("code", "error"),
                more,
            )
        if not total:
            return format_html('<span class="ob-quiet">{}</span>', "validating…" if obj.status == BatchStatus.VALIDATING else "—")
        ok = 100 * obj.completed_requests / total
        failed = 100 * obj.failed_requests / total
        done = obj.completed_requests + obj.failed_requests
        return format_html(
            '<div class="ob-progress" title="{} succeeded, {} failed, {} to go">'
            '<span class="ob-progress-ok" style="width:{}%"></span><span class="ob-progress-failed" style="width:{}%"></span></div>'
            '<span class="ob-progress-label">{} / {} ({}%)</span>',
            obj.completed_requests,
            obj.failed_requests,
            total - done,
            f"{ok:.2f}",
            f"{failed:.2f}",
            done,
            total,
            int(100 * done / total),
        )

    @admin.display(description="requests", ordering="total_requests")
    def counts(self, obj):
        return format_html(
            '<span class="ob-count-ok" title="completed">✓ {}</span> <span class="ob-count-failed" title="failed">✗ {}</span> '
            '<span class="ob-quiet">of {}</span>',
            obj.completed_requests,
            obj.failed_requests,
            obj.total_requests,
        )

    @admin.display(description="created", ordering="created_at")
    def created(self, obj):
        return format_html(
            '<time datetime="{}">{}</time><div class="ob-quiet">{}</div>',
            obj.created_at.isoformat(),
            date_format(timezone.localtime(obj.created_at), "SHORT_DATETIME_FORMAT"),
            age(obj.created_at),
        )

    @admin.display(description="duration")
    def duration(self, obj):
        ended = batch_ended_at(obj)
        if ended:
            return format_duration((ended - obj.created_at).total_seconds())
        return format_html('<span class="ob-running">{} …</span>', format_duration((timezone.now() - obj.created_at).total_seconds()))

    # --- detail fields ---

    @admin.display(description="lineage")
    def lineage(self, obj):
        parts = []
        if obj.retry_of_id:
            original = obj.retry_of
            if original is None:
                parts.append(format_html("Retry of {} (deleted)", obj.retry_of_id))
            else:
                parts.append(format_html("{} of {} ({})", self._retry_kind(obj, original), self._link(original), original.status))
        retries = [(self._link(retry), self._retry_kind(retry, obj).lower(), retry.status) for retry in obj.retries.order_by("created_at")]
        if retries:
            parts.append(format_html("Retried as: {}", format_html_join(", ", "{} ({}, {})", retries)))
        return format_html_join(mark_safe("<br>"), "{}", ((part,) for part in parts)) if parts else "—"

    @staticmethod
    def _retry_kind(retry, original):
        return "Re-run" if retry.input_file_id == original.input_file_id else "Retry of the failed lines"

    def _link(self, batch):
        return admin_change_link(batch, site_name=self.admin_site.name)

    @admin.display(description="browse requests")
    def request_links(self, obj):
        if not obj.total_requests:
            return "—"
        site = self.admin_site.name
        links = [
            (changelist_url(BatchRequest, site, batch=obj.id), f"All {obj.total_requests}"),
            (changelist_url(BatchRequest, site, batch=obj.id, status__exact="failed"), "failed"),
            (changelist_url(BatchRequest, site, batch=obj.id, status__exact="succeeded"), "succeeded"),
        ]
        if not obj.is_terminal:
            links.append((changelist_url(BatchRequest, site, batch=obj.id, status__exact="pending"), "pending"))
        return format_html_join(" · ", '<a href="{}">{}</a>', links)

    @admin.display(description="usage")
    def usage_table(self, obj):
        usage = obj.usage or {}
        if not usage:
            return "—"
        rows = [
            ("input tokens", usage.get("input_tokens")),
            ("cached input tokens", (usage.get("input_tokens_details") or {}).get("cached_tokens")),
            ("output tokens", usage.get("output_tokens")),
            ("reasoning tokens", (usage.get("output_tokens_details") or {}).get("reasoning_tokens")),
            ("total tokens", usage.get("total_tokens")),
        ]
        return render_to_string("admin/batches/includes/key_value_table.html", {"rows": rows, "css_class": "ob-usage"})

    def _files(self, obj):
        """The batch's files that still exist, fetched once per page."""
        if not hasattr(obj, "_admin_files"):
            ids = [i for i in (obj.input_file_id, obj.output_file_id, obj.error_file_id) if i]
            obj._admin_files = File.objects.in_bulk(ids)
        return obj._admin_files

    def _file_link(self, obj, file_id):
        if not file_id:
            return "—"
        found = self._files(obj).get(file_id)
        if found is None:
            return format_html('{} <span class="ob-quiet">(deleted)</span>', file_id)
        return format_html(
            '{} <span class="ob-quiet">{} · {}</span> · <a href="{}" download>Download</a>',
            admin_change_link(found, text=found.id, site_name=self.admin_site.name),
            found.filename,
            filesizeformat(found.bytes),
            file_download_url(found.id, self.admin_site.name),
        )

    @admin.display(description="input file")
    def input_file_link(self, obj):
        return self._file_link(obj, obj.input_file_id)

    @admin.display(description="output file")
    def output_file_link(self, obj):
        return self._file_link(obj, obj.output_file_id)

    @admin.display(description="error file")
    def error_file_link(self, obj):
        return self._file_link(obj, obj.error_file_id)

    @admin.display(description="status history")
    def timeline(self, obj):
        stamps = sorted(((getattr(obj, name), label) for name, label in TIMELINE_FIELDS if getattr(obj, name)), key=lambda s: s[0])
        rows = [
            {"label": label, "at": at, "offset": f"+{format_duration((at - obj.created_at).total_seconds())}" if i else ""}
            for i, (at, label) in enumerate(stamps)
        ]
        ended = batch_ended_at(obj)
        context = {"rows": rows, "expires_at": obj.expires_at, "expired": obj.expires_at and obj.expires_at <= timezone.now()}
        context["total"] = format_duration(((ended or timezone.now()) - obj.created_at).total_seconds())
        context["running"] = ended is None
        return render_to_string("admin/batches/includes/timeline.html", context)

    @admin.display(description="errors")
    def errors_table(self, obj):
        if not obj.errors:
            return "—"
        return render_to_string("admin/batches/includes/validation_errors.html", {"errors": obj.errors})

    @admin.display(description="metadata")
    def metadata_table(self, obj):
        if not obj.metadata:
            return "—"
        return render_to_string(
            "admin/batches/includes/key_value_table.html", {"rows": sorted(obj.metadata.items()), "css_class": "ob-metadata"}
        )

    @admin.display(description="django-q2 tasks")
    def tasks(self, obj):
        """The batch's tasks are grouped by its id (see batches.queue)."""
        counts = Task.objects.filter(group=obj.id).aggregate(
            succeeded=Count("pk", filter=Q(success=True)), failed=Count("pk", filter=Q(success=False))
        )
        links = []
        for model_name, label, count in (("success", "succeeded", counts["succeeded"]), ("failure", "failed", counts["failed"])):
            try:
                url = reverse(f"{self.admin_site.name}:django_q_{model_name}_changelist")
            except NoReverseMatch:
                links.append(format_html("{} {}", count, label))
                continue
            links.append(format_html('<a href="{}?group={}">{} {}</a>', url, obj.id, count, label))
        try:
            links.append(
                format_html('<a href="{}">queued tasks (all batches)</a>', reverse(f"{self.admin_site.name}:django_q_ormq_changelist"))
            )
        except NoReverseMatch:
            pass  # only the ORM broker keeps its queue in the database
        return format_html_join(" · ", "{}", ((link,) for link in links))

    def get_fieldsets(self, request, obj=None):
        if obj is not None and not obj.errors:
            return [fieldset for fieldset in self.fieldsets if fieldset[0] != "Validation errors"]
        return self.fieldsets

    # --- pages: the worker-health banner, and the detail page's action buttons ---

    def changelist_view(self, request, extra_context=None):
        context = {"title": "Batches", "worker_health": operations.worker_health()}
        return super().changelist_view(request, {**context, **(extra_context or {})})

    def change_view(self, request, object_id, form_url="", extra_context=None):
        batch = self.get_object(request, unquote(object_id))
        buttons = []
        if batch is not None:
            available = self.get_actions(request)
            checks = {
                "cancel_batches": lambda: operations.cancel_refusal(batch),
                "retry_failed_requests": lambda: operations.retry_refusal(batch),
                "rerun_batches": lambda: operations.rerun_refusal(batch),
            }
            labels = {"cancel_batches": "Cancel batch", "retry_failed_requests": "Retry failed requests", "rerun_batches": "Re-run batch"}
            buttons = [(name, labels[name]) for name, check in checks.items() if name in available and check() is None]
        context = {
            "batch_actions": buttons,
            "changelist_url": changelist_url(Batch, self.admin_site.name),
            "worker_health": operations.worker_health(),
            **(extra_context or {}),
        }
        return super().change_view(request, object_id, form_url, context)

    # --- actions ---

    @admin.action(description="Cancel selected batches", permissions=["change"])
    def cancel_batches(self, request, queryset):
        eligible, refused = [], []
        for batch in queryset:
            refusal = operations.cancel_refusal(batch)
            if refusal:
                refused.append((batch, refusal))
            else:
                eligible.append(
                    (batch, f"{batch.status}, {batch.completed_requests + batch.failed_requests} of {batch.total_requests} done")
                )
        if request.POST.get("post") == "yes":
            done, missed = [], []
            for batch, _ in eligible:
                (done if operations.cancel(batch, request.user) else missed).append(batch)
            if done:
                self.message_user(
                    request,
                    f"Cancelling {len(done)} batch{'es' if len(done) != 1 else ''}: {', '.join(b.id for b in done)}.",
                    messages.SUCCESS,
                )
            report_refused(self, request, "cancelled", refused + [(batch, "its status changed meanwhile") for batch in missed])
            return None
        if not eligible:
            report_refused(self, request, "cancelled", refused)
            return None
        return confirmation_page(
            self,
            request,
            action="cancel_batches",
            question="Cancel these batches?",
            consequence="Workers stop sending their requests; finished results are kept in the output and error files.",
            button="Yes, cancel them",
            eligible=eligible,
            refused=refused,
        )

    @admin.action(description="Retry failed requests of selected batches (as new batches)", permissions=["change"])
    def retry_failed_requests(self, request, queryset):
        statuses = operations.RETRYABLE_REQUEST_STATUSES
        annotated = queryset.annotate(retryable=Count("requests", filter=Q(requests__status__in=statuses)))
        eligible, refused = [], []
        for batch in annotated:
            refusal = operations.retry_refusal(batch, retryable_count=batch.retryable)
            if refusal:
                refused.append((batch, refusal))
            else:
                earlier = f"; already retried {batch.retries.count()}×" if batch.retries.exists() else ""
                eligible.append(
                    (batch, f"{batch.status}: {batch.retryable} failed, cancelled or expired of {batch.total_requests}{earlier}")
                )
        return self._confirm_then_create(
            request,
            eligible,
            refused,
            create=operations.retry_failed_requests,
            created_label="Retrying the failed requests",
            refused_verb="retried",
            action="retry_failed_requests",
            question="Retry the failed, cancelled and expired requests of these batches?",
            consequence="Each gets a new batch for the same owner, endpoint and metadata, linked to it, which is "
            "validated and run as usual.",
            button="Yes, retry them",
        )

    @admin.action(description="Re-run selected failed batches with the same input", permissions=["change"])
    def rerun_batches(self, request, queryset):
        live_input = File.objects.live().filter(pk=OuterRef("input_file_id"), owner_id=OuterRef("owner_id"))
        eligible, refused = [], []
        for batch in queryset.annotate(input_exists=Exists(live_input)):
            refusal = operations.rerun_refusal(batch, input_file_exists=batch.input_exists)
            if refusal:
                refused.append((batch, refusal))
            else:
                first_error = (batch.errors or [{}])[0]
                eligible.append((batch, f"failed: {first_error.get('code', 'unknown')} — {first_error.get('message', '')}"))
        return self._confirm_then_create(
            request,
            eligible,
            refused,
            create=operations.rerun,
            created_label="Re-running",
            refused_verb="re-run",
            action="rerun_batches",
            question="Re-run these failed batches with the same input file?",
            consequence="Use this when a batch failed for a reason outside its input, e.g. the upstream was unreachable during validation.",
            button="Yes, re-run them",
        )

    def _confirm_then_create(self, request, eligible, refused, *, create, created_label, refused_verb, **page):
        """Shared flow of the actions that create new batches: confirmation page first,
        then ``create(batch, user)`` for each eligible batch, reporting what was refused."""
        if request.POST.get("post") == "yes":
            created = []
            for batch, _ in eligible:
                try:
                    created.append((create(batch, request.user), batch))
                except operations.NotAllowed as exc:
                    refused.append((batch, str(exc)))
            self._report_created(request, created, created_label)
            report_refused(self, request, refused_verb, refused)
            return None
        if not eligible:
            report_refused(self, request, refused_verb, refused)
            return None
        return confirmation_page(self, request, eligible=eligible, refused=refused, **page)

    def _report_created(self, request, created, what):
        if created:
            items = format_html_join(", ", "{} as {}", ((original.id, self._link(new)) for new, original in created))
            self.message_user(request, format_html("{}: {}.", what, items), messages.SUCCESS)


# --- BatchRequest ------------------------------------------------------------------------


class BatchFilter(admin.SimpleListFilter):
    """Filter by batch without listing every batch: the chosen one and the newest few."""

    title = "batch"
    parameter_name = "batch"
    recent = 10

    def lookups(self, request, model_admin):
        ids = list(Batch.objects.order_by("-created_at").values_list("pk", flat=True)[: self.recent])
        if self.value() and self.value() not in ids:
            ids.insert(0, self.value())
        return [(pk, pk) for pk in ids]

    def queryset(self, request, queryset):
        return queryset.filter(batch_id=self.value()) if self.value() else queryset


class StatusCodeFilter(admin.SimpleListFilter):
    title = "HTTP status"
    parameter_name = "http_status"
    classes = {"2xx": (200, 299), "4xx": (400, 499), "5xx": (500, 599)}

    def lookups(self, request, model_admin):
        return [("2xx", "2xx"), ("429", "429 rate limited"), ("4xx", "4xx"), ("5xx", "5xx"), ("none", "no response")]

    def queryset(self, request, queryset):
        value = self.value()
        if value == "none":
            return queryset.filter(status_code__isnull=True)
        if value in self.classes:
            low, high = self.classes[value]
            return queryset.filter(status_code__gte=low, status_code__lte=high)
        if value and value.isdigit():
            return queryset.filter(status_code=int(value))
        return queryset


class AttemptsFilter(admin.SimpleListFilter):
    title = "attempts"
    parameter_name = "attempts"

    def lookups(self, request, model_admin):
        most = app_settings.MAX_ATTEMPTS
        return [(str(n), str(n)) for n in range(most)] + [(f"{most}+", f"{most} or more")]

    def queryset(self, request, queryset):
        value = self.value() or ""
        if value.endswith("+") and value[:-1].isdigit():
            return queryset.filter(attempts__gte=int(value[:-1]))
        if value.isdigit():
            return queryset.filter(attempts=int(value))
        return queryset


@admin.register(BatchRequest)
class BatchRequestAdmin(admin.ModelAdmin):
    list_display = ("line", "custom_id", "batch_link", "status_badge", "status_code", "attempts", "took")
    list_display_links = ("line", "custom_id")
    list_filter = (BatchFilter, "status", StatusCodeFilter, AttemptsFilter)
    search_fields = ("=custom_id",)
    search_help_text = "Exact custom_id."
    list_per_page = 100
    # Counting every row of a big table on each page load is what makes admins slow.
    show_full_result_count = False
    fieldsets = (
        (None, {"fields": ("batch_link", "line", "custom_id", "public_id", "status_badge", "attempts")}),
        ("Request", {"fields": ("body_json",)}),
        ("Result", {"fields": ("status_code", "upstream_request_id", "response_json", "error_json", "usage")}),
        ("Timings", {"fields": ("started_at", "finished_at", "took", "not_before", "lease_owner", "lease_expires_at")}),
    )
    readonly_fields = [name for _, options in fieldsets for name in options["fields"]]

    class Media:
        css = {"all": ["batches/admin.css"]}

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def get_queryset(self, request):
        queryset = super().get_queryset(request)
        if request.resolver_match and request.resolver_match.url_name.endswith("_changelist"):
            # The list shows none of the JSON payloads; a page of 100 rows need not load them.
            queryset = queryset.defer("body", "response_body", "error")
        return queryset

    @admin.display(description="batch", ordering="batch")
    def batch_link(self, obj):
        # The id is on the row: linking to it costs no query.
        try:
            url = reverse(f"{self.admin_site.name}:batches_batch_change", args=[quote(obj.batch_id)])
        except NoReverseMatch:
            return obj.batch_id
        return format_html('<a href="{}">{}</a>', url, obj.batch_id)

    @admin.display(description="status", ordering="status")
    def status_badge(self, obj):
        return status_badge(obj.status)

    @admin.display(description="id in output")
    def public_id(self, obj):
        return obj.public_id

    @admin.display(description="took")
    def took(self, obj):
        if obj.started_at and obj.finished_at:
            return f"{(obj.finished_at - obj.started_at).total_seconds():.2f}s"
        return "—"

    @admin.display(description="usage")
    def usage(self, obj):
        usage = obj.response_body.get("usage") if isinstance(obj.response_body, dict) else None
        return pretty_json(usage)

    @admin.display(description="body")
    def body_json(self, obj):
        return pretty_json(obj.body)

    @admin.display(description="response body")
    def response_json(self, obj):
        return pretty_json(obj.response_body)

    @admin.display(description="error")
    def error_json(self, obj):
        return pretty_json(obj.error)
