"""The admin dashboard's figures and charts.

The figures are the ones ``/metrics`` serves (``batches.metrics``), plus the
per-minute throughput the result write keeps (``ThroughputMinute``). Charts are
inline SVG drawn here, on the server: no JavaScript, no CDN, nothing to load
on a site without internet access.
"""

import math
from dataclasses import dataclass
from datetime import timedelta

from django.utils.html import escape
from django.utils.safestring import mark_safe

from . import metrics
from .models import ThroughputMinute
from .usage import LATENCY_BUCKETS, bucket_label

OK_COLOUR, FAILED_COLOUR, INPUT_COLOUR, OUTPUT_COLOUR = "#43a047", "#e53935", "#1f6fb2", "#6f42c1"
TOP_OWNERS = 10
TOKENS_DAYS = 7


@dataclass
class UpstreamRow:
    base_url: str
    concurrency_limit: int | None
    in_flight: int
    calls: int
    mean_seconds: float | None
    p50_seconds: float | None
    p95_seconds: float | None
    error_share: float | None


def throughput(now, *, minutes, step):
    """[(bucket start, succeeded, failed)] over the last ``minutes`` minutes, ``step`` minutes a bucket."""
    end = now.replace(second=0, microsecond=0) + timedelta(minutes=1)
    start = end - timedelta(minutes=minutes)
    buckets = [[start + timedelta(minutes=step * i), 0, 0] for i in range(minutes // step)]
    rows = ThroughputMinute.objects.filter(minute__gte=start, minute__lt=end).values_list("minute", "succeeded_requests", "failed_requests")
    for minute, succeeded, failed in rows:
        bucket = buckets[int((minute - start).total_seconds() // 60) // step]
        bucket[1] += succeeded
        bucket[2] += failed
    return [tuple(bucket) for bucket in buckets]


def quantile(q, points):
    """``histogram_quantile`` of Prometheus over cumulative ``[(le, count)]``: linear within the bucket."""
    total = points[-1][1] if points else 0
    if not total:
        return None
    rank, lower, below = q * total, 0.0, 0
    for (_, cumulative), bound in zip(points, LATENCY_BUCKETS):
        if cumulative >= rank:
            if bound == math.inf:
                return lower  # beyond the last finite bound: its lower edge, as Prometheus does
            inside = cumulative - below
            return lower + (bound - lower) * ((rank - below) / inside if inside else 1.0)
        lower, below = bound, cumulative
    return lower


def upstream_rows(now):
    in_flight = metrics.in_flight_by_upstream(now)
    limits = metrics.concurrency_limits()
    merged = {}
    for (base_url, status_class), (points, total) in metrics.latency_histograms().items():
        merged.setdefault(base_url, {})[status_class] = (points, total)
    rows = []
    for base_url in sorted(set(in_flight) | set(limits) | set(merged)):
        classes = merged.get(base_url, {})
        calls = sum(points[-1][1] for points, _ in classes.values())
        seconds = sum(total for _, total in classes.values())
        ok_points = classes.get("2xx", ([], 0))[0]
        failed = sum(points[-1][1] for cls, (points, _) in classes.items() if cls != "2xx")
        rows.append(
            UpstreamRow(
                base_url=base_url,
                concurrency_limit=limits.get(base_url),
                in_flight=in_flight.get(base_url, 0),
                calls=calls,
                mean_seconds=seconds / calls if calls else None,
                p50_seconds=quantile(0.5, ok_points),
                p95_seconds=quantile(0.95, ok_points),
                error_share=failed / calls if calls else None,
            )
        )
    return rows


def context(now):
    hour = throughput(now, minutes=60, step=1)
    day = throughput(now, minutes=24 * 60, step=60)
    owners = metrics.tokens_by_owner(since=(now - timedelta(days=TOKENS_DAYS - 1)).date())[:TOP_OWNERS]
    counts = metrics.batch_counts()
    return {
        "pending": metrics.pending_requests(),
        "oldest_pending_seconds": metrics.oldest_pending_seconds(now),
        "batch_counts": counts,
        "active_batches": sum(counts[s] for s in ("validating", "in_progress", "finalizing", "cancelling")),
        "hour_total": sum(s + f for _, s, f in hour),
        "day_total": sum(s + f for _, s, f in day),
        "hour_chart": stacked_bars(hour, label_every=10, label_format="%H:%M", unit="requests per minute"),
        "day_chart": stacked_bars(day, label_every=4, label_format="%H:00", unit="requests per hour"),
        "upstreams": upstream_rows(now),
        "owners_chart": owner_bars(owners),
        "tokens_days": TOKENS_DAYS,
        "latency_buckets": [bucket_label(b) for b in LATENCY_BUCKETS],
    }


# --- SVG ----------------------------------------------------------------------------------

WIDTH, HEIGHT, LEFT, BOTTOM, TOP = 720, 180, 44, 22, 10


def nice_ceiling(value):
    """The smallest of 1, 2, 5 x 10^n at or above ``value`` (a readable axis top)."""
    if value <= 0:
        return 1
    power = 10 ** math.floor(math.log10(value))
    return next(step * power for step in (1, 2, 5, 10) if step * power >= value)


def stacked_bars(points, *, label_every, label_format, unit):
    """Succeeded (green) under failed (red) per bucket, with a y axis and time labels."""
    top = nice_ceiling(max((s + f for _, s, f in points), default=0))
    plot_w, plot_h = WIDTH - LEFT - 8, HEIGHT - BOTTOM - TOP
    slot = plot_w / max(len(points), 1)
    parts = [
        f'<svg class="ob-chart" viewBox="0 0 {WIDTH} {HEIGHT}" width="100%" role="img" aria-label="{escape(unit)}" '
        'xmlns="http://www.w3.org/2000/svg">'
    ]
    for fraction in (0, 0.5, 1):
        y = TOP + plot_h * (1 - fraction)
        parts.append(f'<line x1="{LEFT}" x2="{WIDTH - 8}" y1="{y:.1f}" y2="{y:.1f}" class="ob-chart-grid"/>')
        parts.append(f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end" class="ob-chart-label">{_short(top * fraction)}</text>')
    for i, (start, succeeded, failed) in enumerate(points):
        x = LEFT + i * slot + slot * 0.1
        ok_h, failed_h = plot_h * succeeded / top, plot_h * failed / top
        title = f"{start:{label_format}} UTC: {succeeded} succeeded, {failed} failed"
        parts.append(f"<g><title>{escape(title)}</title>")
        parts.append(f'<rect x="{x:.1f}" y="{TOP + plot_h - ok_h:.1f}" width="{slot * 0.8:.1f}" height="{ok_h:.1f}" fill="{OK_COLOUR}"/>')
        failed_y = TOP + plot_h - ok_h - failed_h
        parts.append(f'<rect x="{x:.1f}" y="{failed_y:.1f}" width="{slot * 0.8:.1f}" height="{failed_h:.1f}" fill="{FAILED_COLOUR}"/>')
        parts.append("</g>")
        if i % label_every == 0:
            parts.append(f'<text x="{x:.1f}" y="{HEIGHT - 6}" class="ob-chart-label">{start:{label_format}}</text>')
    parts.append("</svg>")
    return mark_safe("".join(parts))


def owner_bars(rows):
    """Horizontal bars, input (blue) then output (purple) tokens, one per owner."""
    if not rows:
        return mark_safe('<p class="ob-quiet">No tokens used in this period.</p>')
    row_h, label_w = 26, 150
    height = row_h * len(rows) + 8
    top = max(i + o for _, i, o in rows) or 1
    plot_w = WIDTH - label_w - 90
    parts = [
        f'<svg class="ob-chart" viewBox="0 0 {WIDTH} {height}" width="100%" role="img" aria-label="tokens by owner" '
        'xmlns="http://www.w3.org/2000/svg">'
    ]
    for n, (owner, input_tokens, output_tokens) in enumerate(rows):
        y = 4 + n * row_h
        in_w, out_w = plot_w * input_tokens / top, plot_w * output_tokens / top
        parts.append(f"<g><title>{escape(f'{owner}: {input_tokens:,} input, {output_tokens:,} output tokens')}</title>")
        parts.append(f'<text x="{label_w - 8}" y="{y + 16}" text-anchor="end" class="ob-chart-label">{escape(owner[:24])}</text>')
        parts.append(f'<rect x="{label_w}" y="{y + 3}" width="{in_w:.1f}" height="{row_h - 8}" fill="{INPUT_COLOUR}"/>')
        parts.append(f'<rect x="{label_w + in_w:.1f}" y="{y + 3}" width="{out_w:.1f}" height="{row_h - 8}" fill="{OUTPUT_COLOUR}"/>')
        total = _short(input_tokens + output_tokens)
        parts.append(f'<text x="{label_w + in_w + out_w + 6:.1f}" y="{y + 16}" class="ob-chart-label">{total}</text></g>')
    parts.append("</svg>")
    return mark_safe("".join(parts))


def _short(number):
    for divisor, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if number >= divisor:
            return f"{number / divisor:.3g}{suffix}"
    return f"{number:.3g}" if isinstance(number, float) and not number.is_integer() else str(int(number))
