"""django-q2 task entry points. Each is idempotent: django-q2 delivers at least
once (ORM broker) or at most once (Redis), and the sweeper re-enqueues anything
whose lease went stale, so running any of these twice is harmless."""

import logging
from datetime import timedelta

from django.db.models import Q
from django.utils import timezone

from files_app.models import File, Upload

from . import lifecycle, webhooks
from .conf import app_settings
from .input_validation import InputValidation
from .models import Batch, BatchRequest, BatchStatus
from .output import finalize_batch as _finalize_batch
from .queue import enqueue
from .runner import BatchRunner

logger = logging.getLogger("openai_batches.tasks")


def validate_batch(batch_id):
    owner = lifecycle.worker_id()
    if not lifecycle.acquire_batch_lease(batch_id, owner, [BatchStatus.VALIDATING]):
        return "skipped"
    try:
        outcome = InputValidation(batch_id, owner).run()
    finally:
        lifecycle.release_batch_lease(batch_id, owner)
    if outcome == "interrupted":
        _finalize_batch(batch_id)  # cancelled or expired while validating
    return outcome


def run_batch(batch_id):
    return str(BatchRunner(batch_id).run())  # the plain value: django-q2 pickles task results


def finalize_batch(batch_id):
    return _finalize_batch(batch_id)


def deliver_webhook(delivery_id):
    return webhooks.deliver(delivery_id)


def sweep():
    """Scheduled every minute (and at worker start): recover everything a dead
    worker or a lost broker message left behind."""
    now = timezone.now()
    stale = now - timedelta(seconds=app_settings.LEASE_SECONDS)
    found = {"expired": 0, "validate": 0, "run": 0, "finalize": 0, "files": 0, "uploads": 0}
    for batch_id in Batch.objects.filter(status__in=[BatchStatus.VALIDATING, BatchStatus.IN_PROGRESS], expires_at__lte=now).values_list(
        "pk", flat=True
    ):
        found["expired"] += lifecycle.expire_if_due(batch_id, now)
    lease_free = Q(lease_owner__isnull=True) | Q(lease_expires_at__lte=now)
    for batch_id in Batch.objects.filter(lease_free, status=BatchStatus.VALIDATING, created_at__lte=stale).values_list("pk", flat=True):
        enqueue("validate_batch", batch_id)
        found["validate"] += 1
    slot_free = Q(slot_expires_at__isnull=True) | Q(slot_expires_at__lte=now)
    waiting_for_slot = Batch.objects.filter(slot_free, status=BatchStatus.IN_PROGRESS, in_progress_at__lte=stale).order_by("created_at")
    for batch_id in waiting_for_slot.values_list("pk", flat=True)[: app_settings.MAX_CONCURRENT_BATCHES]:
        enqueue("run_batch", batch_id)
        found["run"] += 1
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
    runners' slots and leases look alive for up to LEASE_SECONDS, so ``sweep``
    alone would leave their batches to a later round: give every running batch a
    runner now. It takes the rows over as their leases lapse, and steps aside
    where live runners already serve the batch (``BatchRunner.outnumbered``)."""
    found = sweep()
    for batch_id in Batch.objects.filter(status=BatchStatus.IN_PROGRESS, slot_expires_at__gt=timezone.now()).values_list("pk", flat=True):
        enqueue("run_batch", batch_id)
        found["run"] += 1
    return found
