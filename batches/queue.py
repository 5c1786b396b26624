"""Enqueueing batch work on django-q2.

Tasks are grouped by batch id, so the django-q2 admin pages list a batch's
tasks together. Enqueueing waits for the surrounding transaction to commit:
with the Redis broker a task could otherwise run before its batch exists.
"""

from django.db import transaction
from django_q.tasks import async_task


def enqueue(task, batch_id=None):
    args = (batch_id,) if batch_id else ()
    name = f"{task}:{batch_id}" if batch_id else task

    transaction.on_commit(lambda: async_task(f"batches.tasks.{task}", *args, group=batch_id, task_name=name))
