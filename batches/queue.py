"""Enqueueing work on django-q2: the one way every task of ``batches.tasks`` is queued.

Tasks are grouped by batch id, so the django-q2 admin pages list a batch's
tasks together. Enqueueing waits for the surrounding transaction to commit:
with the Redis broker a task could otherwise run before its row exists.
``robust``: a broker error is logged, not raised into the caller (which has
committed already); every task's work is found again by ``tasks.sweep``.
"""

from django.db import transaction
from django_q.tasks import async_task


def enqueue(task, arg=None, *, group=None):
    """Queue ``batches.tasks.<task>(arg)`` on commit; ``group`` defaults to ``arg`` (a batch id)."""
    args = (arg,) if arg else ()
    name = f"{task}:{arg}" if arg else task
    group = group if group is not None else arg
    transaction.on_commit(lambda: async_task(f"batches.tasks.{task}", *args, group=group, task_name=name), robust=True)
