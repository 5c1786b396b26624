"""``BatchAdmin``: batches are never added or edited here; the actions (``actions.py``) act on them."""

from django.contrib import admin
from django.contrib.admin.utils import unquote
from django.db.models import Count, Q
from django.template.defaultfilters import filesizeformat
from django.template.loader import render_to_string
from django.urls import NoReverseMatch, reverse
from django.utils import timezone
from django.utils.formats import date_format
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe
from django_q.models import Task

from files_app.admin import admin_change_link, file_download_url
from files_app.models import File

from .. import claims, fairshare, operations
from ..conf import app_settings
from ..models import STATUS_TIMESTAMP_FIELDS, Batch, BatchRequest, BatchStatus
from . import actions
from .display import age, changelist_url, format_duration, status_badge


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
    # What an operator scans first, then the details: at 1366x768 with the navigation
    # sidebar open the first five columns fit without scrolling (tests/test_admin_browser.py).
    list_display = ("batch", "owner", "status_badge", "progress", "counts", "endpoint", "model", "created", "duration")
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
    actions = [actions.cancel_batches, actions.force_finish_batches, actions.retry_failed_requests, actions.rerun_batches]
    fieldsets = (
        (None, {"fields": ("id", "status_badge", "owner", "endpoint", "model", "completion_window", "lineage", "idempotency_key")}),
        ("Progress", {"fields": ("progress", "counts", "request_links", "usage_table")}),
        ("Files", {"fields": ("input_file_link", "output_file_link", "error_file_link", "output_expires_after")}),
        ("Timeline", {"fields": ("timeline",)}),
        ("Validation errors", {"fields": ("errors_table",)}),
        ("Metadata", {"fields": ("metadata_table",)}),
        ("Scheduling", {"fields": ("scheduling",)}),
        ("Workers", {"fields": ("tasks", "lease_owner", "lease_expires_at")}),
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
        ended = obj.ended_at
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
                parts.append(format_html("{} of {} ({})", self._retry_kind(obj, original), self.link(original), original.status))
        retries = [(self.link(retry), self._retry_kind(retry, obj).lower(), retry.status) for retry in obj.retries.order_by("created_at")]
        if retries:
            parts.append(format_html("Retried as: {}", format_html_join(", ", "{} ({}, {})", retries)))
        return format_html_join(mark_safe("<br>"), "{}", ((part,) for part in parts)) if parts else "—"

    @staticmethod
    def _retry_kind(retry, original):
        return "Re-run" if retry.input_file_id == original.input_file_id else "Retry of the failed lines"

    def link(self, batch):
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
        entered = ((obj.entered_at(status), status) for status in STATUS_TIMESTAMP_FIELDS if obj.entered_at(status))
        stamps = sorted(
            ((at, "created" if status == BatchStatus.VALIDATING else status.replace("_", " ")) for at, status in entered),
            key=lambda s: s[0],
        )
        rows = [
            {"label": label, "at": at, "offset": f"+{format_duration((at - obj.created_at).total_seconds())}" if i else ""}
            for i, (at, label) in enumerate(stamps)
        ]
        ended = obj.ended_at
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

    @admin.display(description="scheduling")
    def scheduling(self, obj):
        """Its upstream, its owner's share and its place in its owner's queue (docs/scheduling.md)."""
        if obj.status != BatchStatus.IN_PROGRESS or not obj.upstream:
            return "—"
        candidates, state = claims.queue_of(obj.upstream)
        limit = state.concurrency_limit if state else app_settings.UPSTREAM_INITIAL_IN_FLIGHT
        mine = next((c for c in candidates if c.batch_id == obj.id), None)
        in_flight = sum(c.live for c in candidates)
        upstream_row = ("upstream", f"{obj.upstream} — limit {limit} of {app_settings.UPSTREAM_MAX_IN_FLIGHT}, {in_flight} in flight")
        rows = [upstream_row]
        if mine is not None:
            share = fairshare.shares(candidates, limit)[obj.id]
            ahead = [c for c in fairshare.owner_order(candidates)[mine.owner_id] if c.priority() < mine.priority()]
            rows += [
                ("owner's share", f"{share['owner_share']:.1f} places ({share['owner_in_flight']} in flight)"),
                ("this batch", f"{mine.live} in flight, {mine.remaining} lines left" + (", behind its window" if mine.at_risk else "")),
                ("place in the owner's queue", f"{share['position']} of {sum(1 for c in candidates if c.owner_id == mine.owner_id)}"),
                ("estimated start", estimated_start(mine, ahead, share["owner_in_flight"], state)),
            ]
        return render_to_string("admin/batches/includes/key_value_table.html", {"rows": rows, "css_class": "ob-metadata"})

    def get_fieldsets(self, request, obj=None):
        fieldsets = self.fieldsets
        if obj is not None and not obj.errors:
            fieldsets = [fieldset for fieldset in fieldsets if fieldset[0] != "Validation errors"]
        if obj is not None and obj.status != BatchStatus.IN_PROGRESS:
            fieldsets = [fieldset for fieldset in fieldsets if fieldset[0] != "Scheduling"]
        return fieldsets

    # --- pages: the worker-health banner, and the detail page's action buttons ---

    def changelist_view(self, request, extra_context=None):
        context = {"title": "Batches", "worker_health": operations.worker_health()}
        return super().changelist_view(request, {**context, **(extra_context or {})})

    def change_view(self, request, object_id, form_url="", extra_context=None):
        batch = self.get_object(request, unquote(object_id))
        buttons = []
        if batch is not None:
            buttons = [
                (name, action.button)
                for name, (action, _, _) in self.get_actions(request).items()
                if hasattr(action, "refusal") and action.refusal(batch) is None
            ]
        context = {
            "batch_actions": buttons,
            "changelist_url": changelist_url(Batch, self.admin_site.name),
            "worker_health": operations.worker_health(),
            **(extra_context or {}),
        }
        return super().change_view(request, object_id, form_url, context)


def estimated_start(batch, ahead, owner_in_flight, state):
    """Now, or once the owner's batches ahead of it are done at its current rate (Little's law)."""
    if batch.live or not ahead:
        return "running" if batch.live else "on the next claim"
    latency = state.latency_ms if state and state.latency_ms else None
    if not owner_in_flight or not latency:
        return f"after {len(ahead)} earlier batch(es) of its owner"
    seconds = sum(c.remaining for c in ahead) / (owner_in_flight / (latency / 1000))
    return f"in about {format_duration(seconds)} (after {len(ahead)} earlier batch(es) of its owner)"
