"""What operators do to batches, and what they need to know about the workers.

The admin actions call these; every status change still goes through
``batches.lifecycle`` (the same code paths as the API), and new batches are
created with ``lifecycle.create_batch`` so they are validated and run like any
batch a client submits.

* ``cancel``: the API's cancel.
* ``force_finish``: end a cancelling (or expired, ``finalizing``) batch now instead of
  letting its calls in flight drain for CANCEL_DRAIN_SECONDS.
* ``retry_failed_requests``: a new batch from the failed, cancelled and expired
  lines of a finished batch (same owner, endpoint, metadata), linked to it by
  ``retry_of``.
* ``rerun``: a new batch from the same input file, for a batch that failed for
  a reason outside its input (e.g. the upstream was unreachable at validation).
* ``worker_health``: whether a django-q2 cluster is serving the queue.
"""

import json
import logging
import tempfile
from dataclasses import dataclass, field
from datetime import timedelta

from django.core.cache.backends.dummy import DummyCache
from django.core.cache.backends.locmem import LocMemCache
from django.core.files import File as DjangoFile
from django.db import transaction
from django.utils import timezone
from django_q.brokers import Broker, get_broker
from django_q.conf import Conf
from django_q.models import OrmQ, Task
from django_q.status import Stat

from files_app.models import File, FilePurpose

from . import lifecycle, output
from .models import CANCELLABLE_STATUSES, Batch, BatchStatus, RequestStatus

logger = logging.getLogger("openai_batches.operations")

RETRYABLE_REQUEST_STATUSES = (RequestStatus.FAILED, RequestStatus.CANCELLED, RequestStatus.EXPIRED)
# Batches whose rows are final: retrying their failed lines cannot race a worker.
RETRYABLE_BATCH_STATUSES = (BatchStatus.COMPLETED, BatchStatus.CANCELLED, BatchStatus.EXPIRED)
SPOOL_BYTES = 1024 * 1024


class NotAllowed(Exception):
    """The operation does not apply to this batch; the message says why."""


# --- cancel -----------------------------------------------------------------------


def cancel_refusal(batch):
    """Why ``batch`` cannot be cancelled, or None when it can."""
    if batch.status in CANCELLABLE_STATUSES:
        return None
    if batch.status in (BatchStatus.CANCELLING, BatchStatus.CANCELLED):
        return f"already {batch.status}"
    return f"status is {batch.status}"


def cancel(batch, actor=None):
    """Cancel like ``POST /v1/batches/{id}/cancel``; True if this call started the cancel."""
    cancelled = lifecycle.request_cancel(batch)
    if cancelled:
        logger.info("batch.cancel_requested batch_id=%s actor=%s via=admin", batch.id, _actor(actor))
    return cancelled


def force_finish_refusal(batch):
    """Why ``batch`` cannot be force-finished, or None when it can."""
    if batch.status in (BatchStatus.CANCELLING, BatchStatus.FINALIZING):
        return None
    return f"status is {batch.status}"


def force_finish(batch, actor=None):
    """Finalize ``batch`` now: calls still in flight end as ``batch_cancelled`` (or
    ``batch_expired``) and their late results are discarded. True if this call ended it."""
    finished = output.finalize_batch(batch.id, force=True)
    if finished:
        logger.info("batch.force_finished batch_id=%s actor=%s via=admin", batch.id, _actor(actor))
    return finished


# --- retry failed requests ----------------------------------------------------------


def retryable_requests(batch):
    return batch.requests.filter(status__in=RETRYABLE_REQUEST_STATUSES)


def retry_refusal(batch, retryable_count=None):
    """Why the failed lines of ``batch`` cannot be retried, or None when they can.

    ``retryable_count`` may be passed when the caller annotated it already.
    """
    if batch.status not in RETRYABLE_BATCH_STATUSES:
        return f"status is {batch.status}; only completed, cancelled or expired batches have final results"
    if retryable_count is None:
        retryable_count = retryable_requests(batch).count()
    if not retryable_count:
        return "no failed, cancelled or expired requests"
    return None


def retry_failed_requests(batch, actor=None, api_key=None):
    """A new batch (validated and run as usual) from the lines of ``batch`` that did not succeed.

    ``api_key``: the key that asked for it through the API (its quotas apply to the new batch)."""
    refusal = retry_refusal(batch)
    if refusal:
        raise NotAllowed(refusal)
    lines = 0
    with tempfile.SpooledTemporaryFile(SPOOL_BYTES) as spool:
        rows = retryable_requests(batch).order_by("line").only("custom_id", "body")
        for row in rows.iterator(chunk_size=2000):
            record = {"custom_id": row.custom_id, "method": "POST", "url": batch.endpoint, "body": row.body}
            spool.write((json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n").encode())
            lines += 1
        size = spool.tell()
        spool.seek(0)
        input_file = File(owner_id=batch.owner_id, filename=f"{batch.id}_retry.jsonl", purpose=FilePurpose.BATCH, bytes=size)
        input_file.content.save(input_file.filename, DjangoFile(spool), save=False)
    try:
        with transaction.atomic():
            input_file.save()
            retry = _create_like(batch, input_file.id, api_key=api_key)
    except Exception:
        input_file.content.delete(save=False)  # no row refers to it
        raise
    logger.info(
        "batch.retry_created batch_id=%s retry_of=%s requests=%d input_file_id=%s actor=%s",
        retry.id,
        batch.id,
        lines,
        input_file.id,
        _actor(actor),
    )
    return retry


# --- re-run -------------------------------------------------------------------------


def rerun_refusal(batch, input_file_exists=None):
    """Why ``batch`` cannot be re-run, or None when it can."""
    if batch.status != BatchStatus.FAILED:
        return f"status is {batch.status}; only failed batches are re-run"
    if batch.errors and all(error.get("line") is not None for error in batch.errors):
        return "its input file has invalid lines; re-running it would fail the same way"
    if input_file_exists is None:
        input_file_exists = File.objects.live().filter(pk=batch.input_file_id, owner_id=batch.owner_id).exists()
    if not input_file_exists:
        return f"input file {batch.input_file_id} no longer exists"
    return None


def rerun(batch, actor=None):
    """A new batch from the same input file as the failed ``batch``."""
    refusal = rerun_refusal(batch)
    if refusal:
        raise NotAllowed(refusal)
    with transaction.atomic():
        again = _create_like(batch, batch.input_file_id)
    logger.info(
        "batch.rerun_created batch_id=%s retry_of=%s input_file_id=%s actor=%s", again.id, batch.id, batch.input_file_id, _actor(actor)
    )
    return again


def _create_like(batch, input_file_id, api_key=None):
    """``api_key``: the key that asked (through the API); else (the admin) the original
    batch's, so the new batch keeps its owner's weight in the fair share and its quotas."""
    return lifecycle.create_batch(
        api_key_id=api_key.pk if api_key else batch.api_key_id,
        owner_id=batch.owner_id,
        input_file_id=input_file_id,
        endpoint=batch.endpoint,
        completion_window=batch.completion_window,
        metadata=batch.metadata,
        output_expires_after=batch.output_expires_after,
        retry_of=batch,
    )


def _actor(user):
    return getattr(user, "pk", None)


# --- worker health --------------------------------------------------------------------

# A task finished this recently means a cluster is alive.
RECENT_ACTIVITY = timedelta(minutes=5)
# Queued tasks nobody pulled for this long mean no cluster is serving the queue.
UNCLAIMED_TASK_AGE = timedelta(minutes=1)


@dataclass
class WorkerHealth:
    ok: bool
    summary: str
    clusters: list = field(default_factory=list)

    @property
    def start_command(self):
        return "python manage.py qcluster"


def worker_health(now=None):
    """Whether a django-q2 cluster serves this site's queue, from the evidence available.

    Clusters publish a heartbeat (``Stat``) every guard cycle, in Redis for the
    Redis broker and in the Django cache otherwise. When that store is shared
    with this process its absence is conclusive. With the ORM broker and a
    per-process cache (the default) the heartbeat is invisible here, so the
    evidence is the queue itself: a recently finished or pulled task means a
    cluster works; tasks left unclaimed, or unfinished batches with no task
    activity, mean none does.
    """
    now = now or timezone.now()
    broker = get_broker()
    try:
        clusters = [stat for stat in Stat.get_all(broker=broker) if str(stat.status) != str(Conf.STOPPED)]
    except Exception as exc:  # the broker itself is unreachable (e.g. Redis down)
        logger.warning("workers.stat_unavailable error=%s", type(exc).__name__)
        return WorkerHealth(False, f"The task broker ({broker.info()}) cannot be reached: {type(exc).__name__}.")
    if clusters:
        hosts = sorted({stat.host for stat in clusters})
        return WorkerHealth(True, f"{len(clusters)} cluster(s) running on {', '.join(hosts)}.", clusters)
    # Brokers that keep stats themselves (Redis) share them; the others use the Django cache.
    stats_in_broker = type(broker).get_stats is not Broker.get_stats
    heartbeat_visible = stats_in_broker or (broker.cache is not None and not isinstance(broker.cache, (LocMemCache, DummyCache)))
    if heartbeat_visible:
        return WorkerHealth(False, "No django-q2 cluster is running: queued batch work will not be processed.")

    last_finished = Task.objects.order_by("-stopped").values_list("stopped", flat=True).first()
    if last_finished and last_finished >= now - RECENT_ACTIVITY:
        return WorkerHealth(True, f"A task finished at {last_finished:%Y-%m-%d %H:%M:%S %Z}.")
    if Conf.ORM:
        queue = OrmQ.objects.using(Conf.ORM).filter(key=broker.list_key)
        # The ORM broker locks a pulled task until pulled_at + retry; one pulled
        # less than a task timeout ago may still be running on a live worker.
        if Conf.TIMEOUT and queue.filter(lock__gt=now + timedelta(seconds=Conf.RETRY - Conf.TIMEOUT)).exists():
            return WorkerHealth(True, "A cluster is running a task.")
        unclaimed = queue.filter(lock__lte=now - UNCLAIMED_TASK_AGE).count()
        if unclaimed:
            return WorkerHealth(False, f"{unclaimed} queued task(s) have waited over {_minutes(UNCLAIMED_TASK_AGE)} for a worker.")
    unfinished = Batch.objects.unfinished().count()
    if unfinished:
        return WorkerHealth(False, f"{unfinished} unfinished batch(es), and no task has finished in the last {_minutes(RECENT_ACTIVITY)}.")
    return WorkerHealth(True, "No work is waiting.")


def _minutes(delta):
    minutes = int(delta.total_seconds() // 60)
    return f"{minutes} minute{'s' if minutes != 1 else ''}"
