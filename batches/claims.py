"""Claiming a batch's requests for a runner: its hottest database work, in plain SQL.

At low upstream latency a runner claims every few milliseconds. Built with the
ORM, a claim was six queries whose construction and compilation cost about
1 ms of CPU each: profiled at 0 ms latency, claims were 60 % of a runner's own
CPU, and the GIL they held delayed the event loop's responses, so at 50 ms
latency a window of 64 delivered half of its 1,280 requests a second. The same
statements, written once per runner, cost a small fraction of that.

The rows claimed are those ``BatchRequestQuerySet.claimable`` describes: rows
whose lease ran out (a dead runner's) first, then pending rows past their
backoff in file order, never more than the per-batch window counting every
runner's live leases. The batch row is locked while counting (PostgreSQL), or
the whole database is (SQLite's IMMEDIATE transactions), so the limit holds
across processes and hosts.
"""

from django.db import connections, router, transaction

from . import bulk
from .models import Batch, BatchRequest, BatchStatus, RequestStatus


class Claimer:
    """The SQL of one runner's claims on one batch."""

    def __init__(self, batch_id, owner):
        self.batch_id = batch_id
        self.owner = owner
        self.alias = router.db_for_write(BatchRequest)
        connection = connections[self.alias]
        quote = connection.ops.quote_name
        request, batch = BatchRequest._meta, Batch._meta

        def column(name):
            return quote(request.get_field(name).column)

        table = quote(request.db_table)
        pk, batch_id, status, lease_expires_at, not_before = (
            column(name) for name in ("id", "batch", "status", "lease_expires_at", "not_before")
        )
        lock = " FOR UPDATE" if connection.features.has_select_for_update else ""
        self.status_sql = (
            f"SELECT {quote(batch.get_field('status').column)} FROM {quote(batch.db_table)} WHERE {quote(batch.pk.column)} = %s{lock}"
        )
        self.live_sql = f"SELECT COUNT(*) FROM {table} WHERE {batch_id} = %s AND {status} = %s AND {lease_expires_at} > %s"
        self.lapsed_sql = f"SELECT {pk} FROM {table} WHERE {batch_id} = %s AND {status} = %s AND {lease_expires_at} <= %s LIMIT %s"
        self.pending_sql = (
            f"SELECT {pk} FROM {table} WHERE {batch_id} = %s AND {status} = %s AND ({not_before} IS NULL OR {not_before} <= %s) "
            f"ORDER BY {column('line')} LIMIT %s"
        )
        # Rows are picked by primary key alone: with batch_id too, SQLite walks the batch's whole index.
        self.update_sql = (
            f"UPDATE {table} SET {status} = %s, {column('lease_owner')} = %s, {lease_expires_at} = %s, "
            f"{column('attempts')} = {column('attempts')} + 1, {not_before} = NULL, {column('started_at')} = %s "
            f"WHERE {pk} IN ({{ids}}) AND (({status} = %s AND ({not_before} IS NULL OR {not_before} <= %s)) "
            f"OR ({status} = %s AND {lease_expires_at} <= %s))"
        )
        self.claimed_sql = (
            f"SELECT {pk}, {column('attempts')}, {column('body')} FROM {table} "
            f"WHERE {pk} IN ({{ids}}) AND {column('lease_owner')} = %s AND {status} = %s"
        )
        self.body_field = request.get_field("body")

    def claim(self, wanted, *, window, unflushed, now, lease_until):
        """Lease up to ``wanted`` rows until ``lease_until``; returns ``[(pk, attempts, body)]``.

        ``unflushed``: the caller's finished calls whose results are not written
        yet; their rows still hold leases but are not in flight."""
        connection = connections[self.alias]
        at, until = connection.ops.adapt_datetimefield_value(now), connection.ops.adapt_datetimefield_value(lease_until)
        with transaction.atomic(using=self.alias), connection.cursor() as cursor:
            bulk.relax_commit(self.alias)
            cursor.execute(self.status_sql, [self.batch_id])
            row = cursor.fetchone()
            if row is None or row[0] != BatchStatus.IN_PROGRESS:
                return []
            cursor.execute(self.live_sql, [self.batch_id, RequestStatus.RUNNING, at])
            allowed = min(wanted, window - cursor.fetchone()[0] + unflushed)
            if allowed <= 0:
                return []
            cursor.execute(self.lapsed_sql, [self.batch_id, RequestStatus.RUNNING, at, allowed])
            ids = [pk for (pk,) in cursor.fetchall()]
            if len(ids) < allowed:
                cursor.execute(self.pending_sql, [self.batch_id, RequestStatus.PENDING, at, allowed - len(ids)])
                ids += [pk for (pk,) in cursor.fetchall()]
            if not ids:
                return []
            placeholders = ", ".join(["%s"] * len(ids))
            cursor.execute(
                self.update_sql.format(ids=placeholders),
                [RequestStatus.RUNNING, self.owner, until, at, *ids, RequestStatus.PENDING, at, RequestStatus.RUNNING, at],
            )
            cursor.execute(self.claimed_sql.format(ids=placeholders), [*ids, self.owner, RequestStatus.RUNNING])
            return [(pk, attempts, self.body_field.from_db_value(body, None, connection)) for pk, attempts, body in cursor.fetchall()]
