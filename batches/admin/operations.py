"""Admin for operations: usage per owner
(read-only rows, exported as CSV: the selected rows, or the filtered list from
the link) and the dashboard (batches/dashboard.py)."""

import csv

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.http import StreamingHttpResponse
from django.template.response import TemplateResponse
from django.urls import path
from django.utils import timezone

from files_app.admin import ReadOnlyAdmin

from .. import dashboard
from ..models import Batch, Dashboard, UsageDay

CSV_COLUMNS = (
    "day",
    "owner",
    "endpoint",
    "model",
    "succeeded_requests",
    "failed_requests",
    "input_tokens",
    "output_tokens",
    "cached_tokens",
    "reasoning_tokens",
)


class _Echo:
    def write(self, value):
        return value


def usage_csv(queryset, filename="usage.csv"):
    """A streamed CSV of ``queryset`` (UsageDay rows), one line per owner, day, endpoint and model."""
    writer = csv.writer(_Echo())
    rows = queryset.select_related("owner").order_by("day", "owner_id", "endpoint", "model").iterator(chunk_size=2000)

    def lines():
        yield writer.writerow(CSV_COLUMNS)
        for row in rows:
            yield writer.writerow([row.day.isoformat(), row.owner.get_username()] + [getattr(row, c) for c in CSV_COLUMNS[2:]])

    response = StreamingHttpResponse(lines(), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


@admin.register(UsageDay)
class UsageDayAdmin(ReadOnlyAdmin):
    list_display = ("day", "owner", "endpoint", "model", "succeeded_requests", "failed_requests", "input_tokens", "output_tokens")
    list_filter = (("day", admin.DateFieldListFilter), "endpoint", "model")
    search_fields = ("owner__username", "model")
    date_hierarchy = "day"
    list_select_related = ("owner",)
    actions = ["export_csv"]
    change_list_template = "admin/batches/usageday/change_list.html"

    def has_delete_permission(self, request, obj=None):
        return False  # counters: deleting a row would make /metrics' counters go backwards

    def get_urls(self):
        opts = self.model._meta
        export = path("export.csv", self.admin_site.admin_view(self.export_view), name=f"{opts.app_label}_{opts.model_name}_export")
        return [export, *super().get_urls()]

    def export_view(self, request):
        """The changelist's rows as they are filtered now, as CSV."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        changelist = self.get_changelist_instance(request)
        return usage_csv(changelist.get_queryset(request))

    @admin.action(description="Export selected rows as CSV", permissions=["view"])
    def export_csv(self, request, queryset):
        return usage_csv(queryset)  # a download: no message, the page stays as it was


@admin.register(Dashboard)
class DashboardAdmin(admin.ModelAdmin):
    """/admin/batches/dashboard/: throughput, queue, upstreams, top owners; for whoever may view batches."""

    def has_view_permission(self, request, obj=None):
        return request.user.has_perm(f"{Batch._meta.app_label}.view_{Batch._meta.model_name}")

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def get_urls(self):
        opts = self.model._meta
        return [path("", self.admin_site.admin_view(self.changelist_view), name=f"{opts.app_label}_{opts.model_name}_changelist")]

    def changelist_view(self, request, extra_context=None):
        if not self.has_view_permission(request):
            raise PermissionDenied
        context = {
            **self.admin_site.each_context(request),
            **dashboard.context(timezone.now()),
            "title": "Batch operations dashboard",
            "opts": self.model._meta,
            "batch_opts": Batch._meta,
        }
        return TemplateResponse(request, "admin/batches/dashboard.html", context)
