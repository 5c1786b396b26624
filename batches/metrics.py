"""Prometheus metrics, computed from the database at scrape time.

``metrics_view`` serves them (the bundled project at ``GET /metrics``; a host
site mounts the view wherever it likes), behind the bearer token
``OPENAI_BATCHES["METRICS_TOKEN"]``; with no token set the route answers 404.

Every value is read from the database when Prometheus scrapes, by a custom
collector: the rows are shared by every worker process on every host, so any
web process answers the same, complete figures, and nothing is lost when a
worker restarts. Counters come from tables that only grow (``UsageDay``,
``UpstreamLatency``, updated in the same transaction as the results they count,
see ``batches/usage.py``); gauges from the live rows.
"""

import hmac
from collections import defaultdict

from django.contrib.auth import get_user_model
from django.db.models import Count, Min, Sum
from django.http import Http404, HttpResponse
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from .conf import app_settings
from .models import Batch, BatchRequest, BatchStatus, RequestStatus, UpstreamLatency, UpstreamState, UsageDay
from .usage import LATENCY_BUCKETS, bucket_label

PREFIX = "openai_batches"


# --- the figures (also drawn by the admin dashboard, batches/dashboard.py) -------------


def batch_counts():
    """{status: batches}, every status present."""
    counts = dict(Batch.objects.values_list("status").annotate(n=Count("pk")).order_by())
    return {status: counts.get(status, 0) for status in BatchStatus.values}


def requests_by_endpoint():
    """[(endpoint, succeeded, failed)] finished by the workers, ever."""
    rows = UsageDay.objects.values_list("endpoint").annotate(succeeded=Sum("succeeded_requests"), failed=Sum("failed_requests"))
    return list(rows.order_by("endpoint"))


def pending_requests():
    return BatchRequest.objects.filter(status=RequestStatus.PENDING).count()


def oldest_pending_seconds(now):
    """Age of the oldest batch with work waiting: pending requests, or still being validated; 0 when none."""
    candidates = [
        BatchRequest.objects.filter(status=RequestStatus.PENDING).aggregate(oldest=Min("batch__created_at"))["oldest"],
        Batch.objects.filter(status=BatchStatus.VALIDATING).aggregate(oldest=Min("created_at"))["oldest"],
    ]
    oldest = min((c for c in candidates if c is not None), default=None)
    return (now - oldest).total_seconds() if oldest else 0.0


def in_flight_by_upstream(now):
    """{upstream base URL: requests with a live lease}, every dispatcher's."""
    rows = BatchRequest.objects.live_leases(now).values_list("batch__upstream").annotate(n=Count("pk")).order_by()
    return dict(rows)


def concurrency_limits():
    """{upstream base URL: its current adaptive concurrency limit} (the scheduler's ``UpstreamState``)."""
    return dict(UpstreamState.objects.values_list("base_url", "concurrency_limit"))


def latency_histograms():
    """{(upstream, status_class): ([(le label, cumulative count)], sum of seconds)}."""
    series = defaultdict(dict)
    for row in UpstreamLatency.objects.all():
        series[(row.upstream, row.status_class)][row.le] = (row.count, row.sum_seconds)
    histograms = {}
    for labels, buckets in sorted(series.items()):
        cumulative, total, points = 0, 0.0, []
        for bound in LATENCY_BUCKETS:
            count, seconds = buckets.get(bucket_label(bound), (0, 0.0))
            cumulative += count
            total += seconds
            points.append((bucket_label(bound), cumulative))
        histograms[labels] = (points, total)
    return histograms


def tokens_by_owner(since=None):
    """[(owner's username, input tokens, output tokens)], most tokens first; ``since``: a date."""
    owner = f"owner__{get_user_model().USERNAME_FIELD}"
    rows = UsageDay.objects.filter(day__gte=since) if since else UsageDay.objects.all()
    rows = rows.values_list(owner).annotate(input=Sum("input_tokens"), output=Sum("output_tokens"))
    return sorted(rows, key=lambda row: (-(row[1] + row[2]), row[0]))


class BatchesCollector:
    """Collects every openai_batches_* metric in a few aggregate queries."""

    def collect(self):
        now = timezone.now()

        batches = GaugeMetricFamily(f"{PREFIX}_batches", "Batches by status.", labels=["status"])
        for status, count in batch_counts().items():
            batches.add_metric([status], count)
        yield batches

        requests = CounterMetricFamily(
            f"{PREFIX}_requests", "Requests finished by the workers, by batch endpoint and outcome.", labels=["endpoint", "outcome"]
        )
        for endpoint, succeeded, failed in requests_by_endpoint():
            requests.add_metric([endpoint, "succeeded"], succeeded)
            requests.add_metric([endpoint, "failed"], failed)
        yield requests

        yield GaugeMetricFamily(
            f"{PREFIX}_requests_pending", "Requests waiting to be sent (retries in backoff included).", value=pending_requests()
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_oldest_pending_seconds",
            "Age of the oldest batch with work waiting (0 when nothing waits).",
            value=oldest_pending_seconds(now),
        )

        in_flight = GaugeMetricFamily(
            f"{PREFIX}_upstream_in_flight", "Requests sent upstream and not answered yet (live leases), by upstream.", labels=["upstream"]
        )
        for base_url, count in sorted(in_flight_by_upstream(now).items()):
            in_flight.add_metric([base_url], count)
        yield in_flight

        limits = GaugeMetricFamily(
            f"{PREFIX}_upstream_concurrency_limit", "Requests in flight each upstream allows now (adaptive).", labels=["upstream"]
        )
        for base_url, limit in sorted(concurrency_limits().items()):
            limits.add_metric([base_url], limit)
        yield limits

        latency = HistogramMetricFamily(
            f"{PREFIX}_upstream_latency_seconds",
            "Duration of upstream calls (retried ones included), by upstream and status class (2xx, 4xx, 5xx, error).",
            labels=["upstream", "status_class"],
        )
        for labels, (points, total) in latency_histograms().items():
            latency.add_metric(list(labels), points, sum_value=total)
        yield latency

        tokens = CounterMetricFamily(f"{PREFIX}_tokens", "Tokens used by finished requests, by owner and kind.", labels=["owner", "kind"])
        for owner, input_tokens, output_tokens in tokens_by_owner():
            tokens.add_metric([owner, "input"], input_tokens)
            tokens.add_metric([owner, "output"], output_tokens)
        yield tokens


def render():
    """The metrics in Prometheus' text format, freshly collected."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(BatchesCollector())
    return generate_latest(registry)


@never_cache
@require_GET
def metrics_view(request):
    """``GET /metrics`` for Prometheus: ``Authorization: Bearer <METRICS_TOKEN>``."""
    token = app_settings.METRICS_TOKEN
    if not token:
        raise Http404("Metrics are disabled: set OPENAI_BATCHES['METRICS_TOKEN'].")
    sent = request.headers.get("Authorization", "")
    if not hmac.compare_digest(sent.encode(), f"Bearer {token}".encode()):
        response = HttpResponse("A valid bearer token is required.\n", status=401, content_type="text/plain")
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    return HttpResponse(render(), content_type=CONTENT_TYPE_LATEST)
