"""``UpstreamStateAdmin``: per upstream, its adaptive in-flight limit, what is in flight
now and its latency (the scheduler's shared state, docs/scheduling.md). Read-only."""

from datetime import UTC, datetime

from django.contrib import admin
from django.utils.html import format_html

from files_app.admin import ReadOnlyAdmin

from ..conf import app_settings
from ..models import Batch, BatchRequest, BatchStatus, UpstreamState
from .display import age, changelist_url


@admin.register(UpstreamState)
class UpstreamStateAdmin(ReadOnlyAdmin):
    list_display = ("base_url", "concurrency_limit", "ceiling", "in_flight", "running_batches", "latency", "baseline", "updated_at")
    fields = ("base_url", "concurrency_limit", "ceiling", "in_flight", "running_batches", "latency", "baseline", "last_cut", "updated_at")
    readonly_fields = fields

    @admin.display(description="ceiling")
    def ceiling(self, obj):
        return app_settings.UPSTREAM_MAX_IN_FLIGHT

    @admin.display(description="in flight")
    def in_flight(self, obj):
        """Live leases of the upstream's running batches, every dispatcher's."""
        return BatchRequest.objects.filter(batch__upstream=obj.base_url, batch__status=BatchStatus.IN_PROGRESS).live_leases().count()

    @admin.display(description="running batches")
    def running_batches(self, obj):
        count = Batch.objects.filter(upstream=obj.base_url, status=BatchStatus.IN_PROGRESS).count()
        url = changelist_url(Batch, self.admin_site.name, status=BatchStatus.IN_PROGRESS)
        return format_html('<a href="{}">{}</a>', url, count)

    @admin.display(description="recent latency")
    def latency(self, obj):
        return f"{obj.latency_ms:.0f} ms" if obj.latency_ms is not None else "—"

    @admin.display(description="baseline latency")
    def baseline(self, obj):
        return f"{obj.baseline_latency_ms:.0f} ms" if obj.baseline_latency_ms is not None else "—"

    @admin.display(description="last cut")
    def last_cut(self, obj):
        if obj.last_decrease_at is None:
            return "never (still doubling per round trip)"
        return age(datetime.fromtimestamp(obj.last_decrease_at, tz=UTC))
