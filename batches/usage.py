"""Usage per owner and upstream latency, kept as lines finish.

The runner's result write calls ``record`` in the same transaction as the rows
it finishes, so the counts move with the results: a write that rolls back
counts nothing, a row written once counts once. Nothing is recomputed from
files, and the rows outlive the batches and files they came from.

* ``UsageDay``: requests and tokens per owner, UTC day, endpoint and model
  (the admin exports it as CSV; ``/metrics`` sums it).
* ``ThroughputMinute``: requests finished per minute, all owners together
  (the admin dashboard's throughput charts).
* ``UpstreamLatency``: a histogram of upstream call durations per upstream and
  status class, every call counted (retried ones too). It lives in the
  database, not in worker memory, so every web process scraping it sees the
  calls of every worker process on every host.
"""

import collections
import functools
import math
from datetime import UTC

from . import bulk
from .models import Batch, BatchRequest, RequestStatus, ThroughputMinute, UpstreamLatency, UsageDay
from .output import UsageTotals

# Upper bounds (seconds) of the latency histogram's buckets, as Prometheus' "le" labels.
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, math.inf)


def bucket_label(bound):
    return "+Inf" if bound == math.inf else repr(float(bound))


@functools.lru_cache(maxsize=1024)
def _batch_facts(batch_id):
    """(owner_id, endpoint, model, upstream base URL) of a running batch; fixed once validated."""
    owner_id, endpoint, model, base_url = Batch.objects.values_list("owner_id", "endpoint", "model", "upstream").get(pk=batch_id)
    return owner_id, endpoint, model or "", base_url


def status_class(outcome):
    return f"{outcome.status_code // 100}xx" if outcome.status_code else "error"


def record(batch_of, finished_rows, outcomes, written):
    """Count what one result write finished, in its transaction.

    ``finished_rows``: the rows written as succeeded or failed (anything with a
    ``BatchRequest``'s pk, status, status_code, response_body and finished_at),
    ``batch_of``: their batch ids by primary key, ``written``: ``{batch_id: (succeeded,
    failed)}`` rows whose write went through (the others lost their lease: the worker
    whose write landed counts them), ``outcomes``: ``[(batch_id, upstream.Outcome)]``
    of every call the write covers, retried ones included (for the latency histogram)."""
    by_batch = collections.defaultdict(list)
    for row in finished_rows:
        by_batch[batch_of[row.pk]].append(row)
    usage, minutes = [], collections.Counter()
    for batch_id, rows in by_batch.items():
        if sum(written.get(batch_id, (0, 0))) < len(rows):
            mine = BatchRequest.objects.filter(pk__in=[row.pk for row in rows], finished_at=rows[0].finished_at)
            kept = set(mine.values_list("pk", flat=True))
            rows = [row for row in rows if row.pk in kept]
        if not rows:
            continue
        owner_id, endpoint, model, _ = _batch_facts(batch_id)
        tokens = UsageTotals()
        succeeded = 0
        for row in rows:
            succeeded += row.status == RequestStatus.SUCCEEDED
            if row.status_code is not None:
                tokens.add(row.response_body)
        finished_at = rows[0].finished_at
        minutes[(finished_at.replace(second=0, microsecond=0), "succeeded_requests")] += succeeded
        minutes[(finished_at.replace(second=0, microsecond=0), "failed_requests")] += len(rows) - succeeded
        key = {"owner_id": owner_id, "day": finished_at.astimezone(UTC).date(), "endpoint": endpoint, "model": model}
        counts = {
            "succeeded_requests": succeeded,
            "failed_requests": len(rows) - succeeded,
            "input_tokens": tokens.input,
            "output_tokens": tokens.output,
            "cached_tokens": tokens.cached,
            "reasoning_tokens": tokens.reasoning,
        }
        usage.append((key, counts))
    bulk.increment_each(UsageDay, usage)
    per_minute = collections.defaultdict(lambda: {"succeeded_requests": 0, "failed_requests": 0})
    for (minute, field), count in minutes.items():
        per_minute[minute][field] += count
    bulk.increment_each(ThroughputMinute, [({"minute": minute}, counts) for minute, counts in per_minute.items()])

    observed = collections.defaultdict(lambda: [0, 0.0])
    for batch_id, outcome in outcomes:
        if outcome.latency is None:
            continue
        bound = next(b for b in LATENCY_BUCKETS if outcome.latency <= b)
        bucket = observed[(_batch_facts(batch_id)[3], status_class(outcome), bucket_label(bound))]
        bucket[0] += 1
        bucket[1] += outcome.latency
    bulk.increment_each(
        UpstreamLatency,
        [
            ({"upstream": base_url, "status_class": cls, "le": le}, {"count": count, "sum_seconds": seconds})
            for (base_url, cls, le), (count, seconds) in observed.items()
        ],
    )
