"""Writing many rows at once, without the ORM's per-row expression building.

``QuerySet.bulk_update`` turns every field of every row into a ``CASE WHEN pk =
... THEN ...`` expression and compiles it in Python: profiled at 0 ms upstream
latency, that was 80 % of a runner's CPU. Here each row is one parameterised
UPDATE, sent with ``executemany`` (SQLite loops in C; psycopg 3 pipelines the
statements in one round trip), and each keeps its own guard (the lease).
"""

import json

from django.db import connections, router, transaction


def update_each(objs, fields, **guard):
    """Like ``QuerySet.filter(**guard).bulk_update(objs, fields)``: save ``fields``
    of every instance in ``objs`` where its row still matches ``guard`` (equality
    on concrete fields). Returns the number of rows changed."""
    if not objs:
        return 0
    model = type(objs[0])
    connection = connections[router.db_for_write(model)]
    targets = [model._meta.get_field(name) for name in fields]
    rows = [(obj.pk, [field.get_db_prep_save(getattr(obj, field.attname), connection) for field in targets]) for obj in objs]
    return update_rows(model, fields, rows, **guard)


def update_rows(model, fields, rows, **guard):
    """``update_each`` from ``(pk, values)`` pairs, ``values`` in ``fields`` order and
    already as the database takes them (``Field.get_db_prep_save``, ``json_text``):
    the dispatcher's result writes build no model instance."""
    if not rows:
        return 0
    connection = connections[router.db_for_write(model)]
    meta = model._meta
    quote = connection.ops.quote_name
    targets = [meta.get_field(name) for name in fields]
    guards = [(meta.get_field(name), value) for name, value in guard.items()]
    sql = "UPDATE {table} SET {assignments} WHERE {pk} = %s{guards}".format(
        table=quote(meta.db_table),
        assignments=", ".join(f"{quote(field.column)} = %s" for field in targets),
        pk=quote(meta.pk.column),
        guards="".join(f" AND {quote(field.column)} = %s" for field, _ in guards),
    )
    guard_params = [field.get_db_prep_value(value, connection) for field, value in guards]
    params = [[*values, pk, *guard_params] for pk, values in rows]
    # One transaction: in autocommit mode SQLite would commit every statement.
    with transaction.atomic(using=connection.alias), connection.cursor() as cursor:
        cursor.executemany(sql, params)
        return cursor.rowcount


class _JsonText(str):
    """JSON that is already encoded."""


class _PassThroughEncoder(json.JSONEncoder):
    def encode(self, o):
        return o if isinstance(o, _JsonText) else super().encode(o)


def json_text(text, connection):
    """``text`` (one JSON document) as a JSON column's parameter, stored as it is:
    what ``JSONField.get_db_prep_save`` gives for its decoded value, without
    decoding and encoding it again."""
    return connection.ops.adapt_json_value(_JsonText(text), _PassThroughEncoder)


def insert_rows(model, fields, rows):
    """Like ``bulk_create`` without returning primary keys, from rows of values in
    ``fields`` order, already as the database takes them (no model instance): one
    INSERT per row, sent with ``executemany``. Columns not in ``fields`` are NULL.
    Validation stores every input line this way."""
    if not rows:
        return
    connection = connections[router.db_for_write(model)]
    meta = model._meta
    quote = connection.ops.quote_name
    sql = "INSERT INTO {table} ({columns}) VALUES ({values})".format(
        table=quote(meta.db_table),
        columns=", ".join(quote(meta.get_field(name).column) for name in fields),
        values=", ".join(["%s"] * len(fields)),
    )
    with transaction.atomic(using=connection.alias), connection.cursor() as cursor:
        cursor.executemany(sql, rows)


def relax_commit(using="default"):
    """Let the current transaction's commit return before its WAL record reaches the
    disk (PostgreSQL's ``synchronous_commit = off``, for this transaction only).

    For the runners' claims and result writes, which commit hundreds of times a
    second: the wait for the disk was most of their time. A database crash can
    lose the last fraction of a second of such commits, never consistency; lost
    claims and results only send those requests again, as after a killed
    worker. Elsewhere (SQLite) a no-op."""
    connection = connections[using]
    if connection.vendor == "postgresql" and connection.in_atomic_block:
        with connection.cursor() as cursor:
            cursor.execute("SET LOCAL synchronous_commit TO OFF")


def increment_each(model, rows):
    """Add to counters, creating their rows as needed: ``rows`` is a list of
    ``(key, amounts)`` dicts, ``key`` matching a unique constraint of ``model``.
    One ``INSERT ... ON CONFLICT DO UPDATE`` per row (SQLite 3.24+, PostgreSQL),
    so concurrent writers on any host never lose an increment."""
    if not rows:
        return
    connection = connections[router.db_for_write(model)]
    meta = model._meta
    quote = connection.ops.quote_name
    key_names, amount_names = list(rows[0][0]), list(rows[0][1])
    key_fields = [meta.get_field(name) for name in key_names]
    amount_fields = [meta.get_field(name) for name in amount_names]
    table = quote(meta.db_table)
    sql = "INSERT INTO {table} ({columns}) VALUES ({values}) ON CONFLICT ({keys}) DO UPDATE SET {updates}".format(
        table=table,
        columns=", ".join(quote(field.column) for field in key_fields + amount_fields),
        values=", ".join(["%s"] * (len(key_fields) + len(amount_fields))),
        keys=", ".join(quote(field.column) for field in key_fields),
        updates=", ".join(
            f"{quote(field.column)} = {table}.{quote(field.column)} + excluded.{quote(field.column)}" for field in amount_fields
        ),
    )
    params = [
        [field.get_db_prep_save(key[name], connection) for name, field in zip(key_names, key_fields)]
        + [field.get_db_prep_save(amounts[name], connection) for name, field in zip(amount_names, amount_fields)]
        for key, amounts in rows
    ]
    with transaction.atomic(using=connection.alias), connection.cursor() as cursor:
        cursor.executemany(sql, params)
