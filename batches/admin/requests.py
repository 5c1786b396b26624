"""Admin for the request rows of batches: read-only, written by the workers."""

from django.contrib import admin
from django.contrib.admin.utils import quote
from django.urls import NoReverseMatch, reverse
from django.utils.html import format_html

from files_app.admin import ReadOnlyAdmin

from ..conf import app_settings
from ..models import Batch, BatchRequest
from .display import pretty_json, status_badge


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
class BatchRequestAdmin(ReadOnlyAdmin):
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
