"""Every status change of a batch, in one place.

Transitions are conditional UPDATEs (``WHERE status IN (...)``), so concurrent
workers, the API and the sweeper can race without double transitions: exactly
one caller wins and gets ``True``. Each change is logged on one line and sent
as a signal after commit.
"""

import logging
import os
import socket
import uuid
from datetime import timedelta

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from . import slots, windows
from .conf import app_settings
from .models import CANCELLABLE_STATUSES, STATUS_TIMESTAMP_FIELDS, TERMINAL_STATUSES, Batch, BatchRequest, BatchStatus
from .queue import enqueue
from .signals import batch_finished, batch_status_changed
from .upstream import route_for

logger = logging.getLogger("openai_batches.lifecycle")


def worker_id():
    """Identifies this process (and one task run within it) as a lease owner."""
    return f"{socket.gethostname()[:30]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def transition(batch_id, from_statuses, to_status, **fields):
    """Move a batch from one of ``from_statuses`` to ``to_status``; True if this call did it."""
    now = timezone.now()
    stamp = STATUS_TIMESTAMP_FIELDS[to_status] if to_status != BatchStatus.VALIDATING else None
    if stamp:
        fields.setdefault(stamp, now)
    for from_status in from_statuses:
        updated = Batch.objects.filter(pk=batch_id, status=from_status).update(status=to_status, **fields)
        if updated:
            logger.info("batch.status batch_id=%s from=%s to=%s", batch_id, from_status, to_status)
            transaction.on_commit(lambda f=from_status: _announce(batch_id, f, to_status))
            return True
    return False


def _announce(batch_id, old_status, new_status):
    batch = Batch.objects.filter(pk=batch_id).first()
    if batch is None:
        return
    batch_status_changed.send(sender=Batch, batch=batch, old_status=old_status, new_status=new_status)
    if new_status in TERMINAL_STATUSES:
        batch_finished.send(sender=Batch, batch=batch)


# --- creation -----------------------------------------------------------------


def create_batch(**fields):
    """Store a new batch in ``validating`` and queue its validation."""
    now = timezone.now()
    batch = Batch(created_at=now, **fields)
    batch.expires_at = now + timedelta(seconds=windows.window_seconds(batch.completion_window))
    batch.save(force_insert=True)
    logger.info(
        "batch.created batch_id=%s owner=%s endpoint=%s input_file_id=%s", batch.id, batch.owner_id, batch.endpoint, batch.input_file_id
    )
    enqueue("validate_batch", batch.id)
    return batch


# --- validation outcome ---------------------------------------------------------


def start_processing(batch_id, *, total, model, failed_requests=0, estimated_prompt_tokens=0):
    """validating -> in_progress once every line is stored as a request row; the
    batch joins its upstream's queue (``upstream``: the base URL its requests route to)."""
    endpoint = Batch.objects.filter(pk=batch_id).values_list("endpoint", flat=True).first()
    started = transition(
        batch_id,
        [BatchStatus.VALIDATING],
        BatchStatus.IN_PROGRESS,
        total_requests=total,
        failed_requests=failed_requests,
        estimated_prompt_tokens=estimated_prompt_tokens,
        model=model,
        upstream=route_for(model, endpoint).base_url,
        lease_owner=None,
        lease_expires_at=None,
    )
    if started:
        slots.ensure_dispatching()
    return started


def finish_processing(batch_id):
    """in_progress -> finalizing once no line is pending or running; queues the finalization.

    One query decides, so a retry written meanwhile by another dispatcher cannot
    slip between two checks."""
    if BatchRequest.objects.filter(batch_id=batch_id).unfinished().exists():
        return False
    if transition(batch_id, [BatchStatus.IN_PROGRESS], BatchStatus.FINALIZING):
        enqueue("finalize_batch", batch_id)
        return True
    return False


def fail_validation(batch_id, errors):
    return transition(batch_id, [BatchStatus.VALIDATING], BatchStatus.FAILED, errors=errors, lease_owner=None, lease_expires_at=None)


# --- cancel and expiry ------------------------------------------------------------


def request_cancel(batch):
    """API/admin cancel: ``cancelling`` now; workers stop and finalize to ``cancelled``."""
    if transition(batch.id, CANCELLABLE_STATUSES, BatchStatus.CANCELLING):
        enqueue("finalize_batch", batch.id)
        return True
    return False


def expire_if_due(batch_id, now=None):
    """Past ``expires_at``, unfinished work stops; finalize writes what is done and marks it expired."""
    now = now or timezone.now()
    due = Batch.objects.filter(pk=batch_id, expires_at__lte=now).exists()
    if due and transition(batch_id, [BatchStatus.VALIDATING, BatchStatus.IN_PROGRESS], BatchStatus.FINALIZING):
        enqueue("finalize_batch", batch_id)
        return True
    return False


# --- batch-level leases (validation, finalization) ---------------------------------


def acquire_batch_lease(batch_id, owner, statuses):
    """Exclusive right to validate or finalize this batch, for LEASE_SECONDS."""
    now = timezone.now()
    return bool(
        Batch.objects.filter(pk=batch_id, status__in=statuses)
        .filter(Q(lease_owner__isnull=True) | Q(lease_owner=owner) | Q(lease_expires_at__lte=now))
        .update(lease_owner=owner, lease_expires_at=now + timedelta(seconds=app_settings.LEASE_SECONDS))
    )


def release_batch_lease(batch_id, owner):
    Batch.objects.filter(pk=batch_id, lease_owner=owner).update(lease_owner=None, lease_expires_at=None)
