"""Claiming requests for a dispatcher: its hottest database work, in plain SQL.

One claim serves one upstream and every runnable batch routed to it, in one
transaction that locks the upstream's ``UpstreamState`` row (PostgreSQL
``FOR UPDATE``; SQLite's IMMEDIATE transactions lock the whole database). Under
that lock it:

1. folds the caller's feedback into the upstream's adaptive limit (``aimd.py``),
2. counts every dispatcher's live leases per batch (the in-flight requests),
3. divides the free places (limit minus in flight) between owners and their
   batches (``fairshare.py``), each batch within MAX_CONCURRENT_REQUESTS_PER_BATCH,
4. leases rows: lapsed leases (a dead dispatcher's) first, then pending rows past
   their backoff, those that start alike together (``prefixes.py``), in file order.

So the upstream budget, the fair share and the per-batch cap are exact across
processes and hosts. Built with the ORM, each statement cost about 1 ms of
CPU to build and compile; at low upstream latency a dispatcher claims every few
milliseconds (profiled: claims were 60 % of a runner's CPU and delayed the
event loop), so the statements are written once per dispatcher.
"""

import dataclasses
import logging
import time
from datetime import UTC, datetime

from django.db import IntegrityError, connections, models, router, transaction
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from files_app.models import ApiKey

from . import aimd, bulk, fairshare
from .conf import app_settings
from .models import Batch, BatchRequest, BatchStatus, RequestStatus, UpstreamState

logger = logging.getLogger("openai_batches.scheduler")

# A claim gives every batch its places in up to this many passes: a batch whose rows
# are all in backoff returns fewer than it was given, and the rest go to the others.
ALLOCATION_PASSES = 3


@dataclasses.dataclass
class Claim:
    """What one claim leased, and the upstream's state it saw."""

    rows: list  # [(pk, batch_id, attempts, body)], body the request body's JSON text as stored (sent as it is)
    batches: dict  # batch_id -> (endpoint, model) of the batches rows were leased from
    limit: int = 0  # the upstream's concurrency limit after this claim's feedback
    in_flight: int = 0  # live leases of the upstream before this claim, the caller's unflushed rows excluded
    usable: int = 0  # the most that could be in flight now: the limit, or less when the batches want less
    runnable: int = 0  # batches with lines left


def _aware(value):
    """A datetime column read by raw SQL: SQLite gives naive UTC (or text), PostgreSQL aware."""
    if value is None or isinstance(value, datetime) and value.tzinfo:
        return value
    if isinstance(value, str):
        value = parse_datetime(value)
    return value.replace(tzinfo=UTC)


# What fair share needs of a batch (fairshare.Candidate), read by the claims and by queue_of.
BATCH_SCHEDULING_FIELDS = ("expires_at", "in_progress_at", "created_at", "total_requests", "completed_requests", "failed_requests")


class Claimer:
    """The SQL of one dispatcher's claims, built once."""

    def __init__(self, owner):
        self.owner = owner
        self.alias = router.db_for_write(BatchRequest)
        self.known_upstreams = set()
        connection = connections[self.alias]
        quote = connection.ops.quote_name
        request, batch, state, key = BatchRequest._meta, Batch._meta, UpstreamState._meta, ApiKey._meta

        def column(meta, name):
            return quote(meta.get_field(name).column)

        def columns(meta, *names, prefix=""):
            return ", ".join(prefix + column(meta, name) for name in names)

        table = quote(request.db_table)
        pk, batch_id, status, lease_expires_at, not_before = (
            column(request, name) for name in ("id", "batch", "status", "lease_expires_at", "not_before")
        )
        lock = " FOR UPDATE" if connection.features.has_select_for_update else ""
        self.state_fields = ("concurrency_limit", "latency_ms", "baseline_latency_ms", "successes_since_increase", "last_decrease_at")
        self.state_sql = (
            f"SELECT {columns(state, *self.state_fields)} FROM {quote(state.db_table)} WHERE {column(state, 'base_url')} = %s{lock}"
        )
        self.state_update_sql = (
            f"UPDATE {quote(state.db_table)} SET "
            + ", ".join(f"{column(state, name)} = %s" for name in (*self.state_fields, "updated_at"))
            + f" WHERE {column(state, 'base_url')} = %s"
        )
        self.batch_fields = ("id", "owner", *BATCH_SCHEDULING_FIELDS, "endpoint", "model")
        self.batches_sql = (
            f"SELECT {columns(batch, *self.batch_fields, prefix='b.')}, k.{column(key, 'weight')} "
            f"FROM {quote(batch.db_table)} b LEFT JOIN {quote(key.db_table)} k ON k.{quote(key.pk.column)} = b.{column(batch, 'api_key')} "
            f"WHERE b.{column(batch, 'status')} = %s AND b.{column(batch, 'upstream')} = %s"
        )
        self.leases_sql = (
            f"SELECT {batch_id}, SUM(CASE WHEN {lease_expires_at} > %s THEN 1 ELSE 0 END), COUNT(*) FROM {table} "
            f"WHERE {batch_id} IN ({{ids}}) AND {status} = %s GROUP BY {batch_id}"
        )
        self.lapsed_sql = f"SELECT {pk} FROM {table} WHERE {batch_id} = %s AND {status} = %s AND {lease_expires_at} <= %s LIMIT %s"
        self.pending_sql = (
            f"SELECT {pk} FROM {table} WHERE {batch_id} = %s AND {status} = %s AND ({not_before} IS NULL OR {not_before} <= %s) "
            f"ORDER BY {column(request, 'prefix_key')}, {column(request, 'line')} LIMIT %s"
        )
        # Rows are picked by primary key alone: with batch_id too, SQLite walks the batch's whole index.
        self.update_sql = (
            f"UPDATE {table} SET {status} = %s, {column(request, 'lease_owner')} = %s, {lease_expires_at} = %s, "
            f"{column(request, 'attempts')} = {column(request, 'attempts')} + 1, {not_before} = NULL, {column(request, 'started_at')} = %s "
            f"WHERE {pk} IN ({{ids}}) AND (({status} = %s AND ({not_before} IS NULL OR {not_before} <= %s)) "
            f"OR ({status} = %s AND {lease_expires_at} <= %s))"
        )
        self.claimed_sql = (
            f"SELECT {pk}, {batch_id}, {column(request, 'attempts')}, {column(request, 'body')} FROM {table} "
            f"WHERE {pk} IN ({{ids}}) AND {column(request, 'lease_owner')} = %s AND {status} = %s"
        )

    def ensure_upstream(self, base_url):
        """Create the upstream's state row the first time it is seen."""
        if base_url in self.known_upstreams:
            return
        try:
            with transaction.atomic(using=self.alias):
                UpstreamState.objects.using(self.alias).get_or_create(
                    base_url=base_url,
                    defaults={"concurrency_limit": min(app_settings.UPSTREAM_INITIAL_IN_FLIGHT, app_settings.UPSTREAM_MAX_IN_FLIGHT)},
                )
        except IntegrityError:  # another dispatcher created it first
            pass
        self.known_upstreams.add(base_url)

    def claim(self, base_url, *, wanted, unflushed, feedback, now, lease_until):
        """Lease up to ``wanted`` rows of batches routed to ``base_url`` until ``lease_until``.

        ``unflushed``: ``{batch_id: n}``, the caller's finished calls whose results
        are not written yet (their rows still hold leases but are not in flight).
        ``feedback``: an ``aimd.Feedback`` of the caller's calls since its last
        claim on this upstream, applied here (the caller starts a new one)."""
        self.ensure_upstream(base_url)
        connection = connections[self.alias]
        at, until = connection.ops.adapt_datetimefield_value(now), connection.ops.adapt_datetimefield_value(lease_until)
        ceiling = app_settings.UPSTREAM_MAX_IN_FLIGHT
        cap = app_settings.MAX_CONCURRENT_REQUESTS_PER_BATCH
        with transaction.atomic(using=self.alias), connection.cursor() as cursor:
            bulk.relax_commit(self.alias)
            cursor.execute(self.state_sql, [base_url])
            row = cursor.fetchone()
            if row is None:  # deleted meanwhile: recreated on the next claim
                self.known_upstreams.discard(base_url)
                return Claim([], {})
            limit = aimd.Limit(*row)
            cursor.execute(self.batches_sql, [BatchStatus.IN_PROGRESS, base_url])
            found = cursor.fetchall()
            candidates, info = {}, {}
            for pk, owner, expires_at, started_at, created_at, total, completed, failed, endpoint, model, weight in found:
                expires_at, started_at = _aware(expires_at), _aware(started_at)
                remaining = total - completed - failed
                if remaining <= 0:
                    continue
                at_risk = fairshare.will_miss_window(
                    total=total, done=completed + failed, started_at=started_at, expires_at=expires_at, now=now
                )
                candidates[pk] = fairshare.Candidate(pk, owner, weight or 1, 0, remaining, cap, expires_at, _aware(created_at), at_risk)
                info[pk] = (endpoint, model)
            lapsed = {}
            if candidates:
                ids = list(candidates)
                cursor.execute(self.leases_sql.format(ids=", ".join(["%s"] * len(ids))), [at, *ids, RequestStatus.RUNNING])
                for pk, live, leased in cursor.fetchall():
                    candidates[pk].live = max(0, int(live or 0) - unflushed.get(pk, 0))
                    lapsed[pk] = leased - int(live or 0)
            in_flight = sum(candidate.live for candidate in candidates.values())
            demand = in_flight + sum(c.headroom for c in candidates.values())
            self._apply(
                cursor, base_url, limit, feedback, ceiling=ceiling, saturated=demand >= limit.concurrency_limit, in_flight=in_flight
            )
            usable = min(limit.concurrency_limit, demand)
            # A claim bringing refusals (429/503...) adds no call: the upstream is full right now, and a
            # refused call frees its place at once, so refilling it would be refused too (a storm of 429s
            # between two cuts). The places wait for the next claim, after a call that succeeded.
            room = 0 if feedback.congestion else limit.concurrency_limit - in_flight
            ids = self._pick(cursor, candidates, lapsed, min(wanted, room), at)
            claim = Claim([], {}, limit=limit.concurrency_limit, in_flight=in_flight, usable=usable, runnable=len(candidates))
            if not ids:
                return claim
            placeholders = ", ".join(["%s"] * len(ids))
            cursor.execute(
                self.update_sql.format(ids=placeholders),
                [RequestStatus.RUNNING, self.owner, until, at, *ids, RequestStatus.PENDING, at, RequestStatus.RUNNING, at],
            )
            cursor.execute(self.claimed_sql.format(ids=placeholders), [*ids, self.owner, RequestStatus.RUNNING])
            for pk, batch_pk, attempts, body in cursor.fetchall():
                claim.rows.append((pk, batch_pk, attempts, body))
                claim.batches[batch_pk] = info[batch_pk]
            return claim

    def _pick(self, cursor, candidates, lapsed, budget, at):
        """Ids of rows to lease: ``budget`` places divided by ``fairshare.allocate``."""
        ids = []
        for _ in range(ALLOCATION_PASSES):
            if budget <= 0:
                break
            allocation = fairshare.allocate(list(candidates.values()), budget)
            short = False
            for batch_pk, places in allocation.items():
                picked = []
                if lapsed.get(batch_pk):
                    cursor.execute(self.lapsed_sql, [batch_pk, RequestStatus.RUNNING, at, places])
                    picked = [pk for (pk,) in cursor.fetchall()]
                    lapsed[batch_pk] -= len(picked)
                if len(picked) < places:
                    cursor.execute(self.pending_sql, [batch_pk, RequestStatus.PENDING, at, places - len(picked)])
                    picked += [pk for (pk,) in cursor.fetchall()]
                candidate = candidates[batch_pk]
                candidate.live += len(picked)
                if len(picked) < places:  # the rest is in backoff or leased: nothing more from it now
                    candidate.remaining = candidate.live
                    short = True
                ids += picked
                budget -= len(picked)
            if not short:
                break
        return ids

    def _apply(self, cursor, base_url, limit, feedback, *, ceiling, saturated, in_flight):
        before = limit.concurrency_limit
        reason = limit.apply(feedback, now=time.time(), ceiling=ceiling, saturated=saturated, in_flight=in_flight)
        if not feedback and limit.concurrency_limit == before:
            return
        values = [getattr(limit, name) for name in self.state_fields]
        cursor.execute(self.state_update_sql, [*values, connections[self.alias].ops.adapt_datetimefield_value(timezone.now()), base_url])
        if limit.concurrency_limit != before:
            logger.info(
                "upstream.limit base_url=%s limit=%d previous=%d reason=%s in_flight=%d latency_ms=%.0f baseline_ms=%.0f",
                base_url,
                limit.concurrency_limit,
                before,
                reason or "ceiling",
                in_flight,
                limit.latency_ms or 0,
                limit.baseline_latency_ms or 0,
            )


def queue_of(base_url, now=None):
    """The runnable batches of one upstream as the next claim would see them, for the
    admin (the ORM, no lock): ``(candidates, state)``; ``state`` is the upstream's
    ``UpstreamState`` row or None before its first claim."""
    now = now or timezone.now()
    state = UpstreamState.objects.filter(base_url=base_url).first()
    cap = app_settings.MAX_CONCURRENT_REQUESTS_PER_BATCH
    batches = Batch.objects.filter(status=BatchStatus.IN_PROGRESS, upstream=base_url).values_list(
        "pk", "owner_id", "api_key__weight", *BATCH_SCHEDULING_FIELDS
    )
    live = dict(
        BatchRequest.objects.filter(batch__status=BatchStatus.IN_PROGRESS, batch__upstream=base_url)
        .live_leases(now)
        .order_by()
        .values_list("batch_id")
        .annotate(models.Count("pk"))
    )
    candidates = []
    for pk, owner, weight, expires_at, started_at, created_at, total, completed, failed in batches:
        done = completed + failed
        if total - done <= 0:
            continue
        at_risk = fairshare.will_miss_window(total=total, done=done, started_at=started_at, expires_at=expires_at, now=now)
        candidates.append(fairshare.Candidate(pk, owner, weight or 1, live.get(pk, 0), total - done, cap, expires_at, created_at, at_risk))
    return candidates, state
