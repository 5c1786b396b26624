"""django-q2 task entry points. Each is idempotent: django-q2 delivers at least
once (ORM broker) or at most once (Redis), and the sweeper re-enqueues anything
whose lease went stale, so running any of these twice is harmless."""

import logging
import time
from datetime import timedelta

from django.db.models import Q
from django.utils import timezone

from files_app.models import File, Upload

from . import lifecycle, slots, webhooks
from .conf import app_settings
from .input_validation import InputValidation, take_next
from .models import Batch, BatchRequest, BatchStatus
from .output import finalize_batch as _finalize_batch
from .queue import enqueue
from .runner import Dispatcher
from .runner.shutdown import worker_shutdown

logger = logging.getLogger("openai_batches.tasks")

# A validation that took longer does not go on dispatching in the same task: the slice and
# its drain keep only about 10 s of the task's timeout spare (batches/runner/dispatcher.py).
IN_PLACE_DISPATCH_SECONDS = 5.0


def validate_batch(batch_id):
    """Validate ``batch_id``, after the waiting batches that go before it (smaller inputs,
    ``input_validation.take_next``): its outcome, or "skipped" when it was not waiting."""
    owner = lifecycle.worker_id()
    started = time.monotonic()
    outcome = "skipped"
    while (taken := take_next(owner, batch_id)) is not None:
        try:
            result = InputValidation(taken, owner).run()
        finally:
            lifecycle.release_batch_lease(taken, owner)
        if result == "interrupted":
            _finalize_batch(taken)  # cancelled or expired while validating
        if taken == batch_id:
            outcome = result
            break
    if outcome == "in_progress" and time.monotonic() - started < IN_PLACE_DISPATCH_SECONDS and _dispatcher_wanted():
        # The dispatch task start_processing queued waits behind the other validations (django-q2
        # runs tasks in order): this worker becomes the dispatcher now, and that task finds no free slot.
        return f"{outcome}; dispatch: {dispatch()}"
    return outcome


def _dispatcher_wanted():
    """In a cluster worker (never in a task run inline: tests, sync mode) while no dispatcher lives,
    with DISPATCHERS 1: several start together from the queued tasks and share the rows from their
    first claim, where one started ahead of them would count itself alone and take every place."""
    return worker_shutdown.in_cluster() and app_settings.DISPATCHERS == 1 and slots.live_count() == 0


def dispatch():
    """Send the requests of every running batch until none is left (docs/scheduling.md)."""
    return str(Dispatcher().run())  # the plain value: django-q2 pickles task results


def dispatch_after_restart():
    """``dispatch``, queued when a worker starts, maybe right after a crash: it waits
    for the slot of a dispatcher that stopped renewing it (``slots.acquire``)."""
    return str(Dispatcher(takeover=True).run())


def finalize_batch(batch_id):
    return _finalize_batch(batch_id)


def deliver_webhook(delivery_id):
    return webhooks.deliver(delivery_id)


def sweep():
    """Scheduled every minute (and at worker start): recover everything a dead
    worker or a lost broker message left behind."""
    now = timezone.now()
    stale = now - timedelta(seconds=app_settings.LEASE_SECONDS)
    found = {"expired": 0, "validate": 0, "dispatch": 0, "finalize": 0, "files": 0, "uploads": 0}
    for batch_id in Batch.objects.filter(status__in=[BatchStatus.VALIDATING, BatchStatus.IN_PROGRESS], expires_at__lte=now).values_list(
        "pk", flat=True
    ):
        found["expired"] += lifecycle.expire_if_due(batch_id, now)
    lease_free = Q(lease_owner__isnull=True) | Q(lease_expires_at__lte=now)
    for batch_id in Batch.objects.filter(lease_free, status=BatchStatus.VALIDATING, created_at__lte=stale).values_list("pk", flat=True):
        enqueue("validate_batch", batch_id)
        found["validate"] += 1
    if Batch.objects.filter(status=BatchStatus.IN_PROGRESS).exists():
        found["dispatch"] = slots.ensure_dispatching()
    for batch_id in Batch.objects.filter(lease_free, status__in=[BatchStatus.FINALIZING, BatchStatus.CANCELLING]).values_list(
        "pk", flat=True
    ):
        if not BatchRequest.objects.filter(batch_id=batch_id).live_leases(now).exists():
            enqueue("finalize_batch", batch_id)
            found["finalize"] += 1
    for expired_file in File.objects.filter(expires_at__lte=now).iterator():
        expired_file.delete()
        found["files"] += 1
    found["uploads"] = Upload.objects.expire_lapsed(now)
    found["webhooks"] = webhooks.sweep_deliveries(now)
    if any(found.values()):
        logger.info("sweep %s", " ".join(f"{k}={v}" for k, v in found.items()))
    return found


def sweep_after_worker_start():
    """A worker (re)started, maybe right after its cluster was killed. The dead
    dispatchers' slots and leases look alive for up to LEASE_SECONDS, so ``sweep``
    alone would leave their batches to a later round: queue dispatchers that
    take over a slot whose holder stops renewing it (``slots.acquire``)."""
    found = sweep()
    if Batch.objects.filter(status=BatchStatus.IN_PROGRESS).exists():
        for _ in range(slots.live_count()):
            enqueue("dispatch_after_restart")
            found["dispatch"] += 1
    return found
