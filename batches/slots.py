"""The DISPATCHERS places: how many django-q2 workers dispatch at once, cluster-wide.

A dispatcher holds one ``DispatcherSlot`` row under a lease (owner + expiry,
renewed every ``RENEW_SECONDS``), the way request rows are held. The other workers stay
free for validation, finalization and webhooks, so a new batch is validated and
served within a second or two however much work is queued.
"""

import logging
import time
from datetime import timedelta

from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from .conf import app_settings
from .models import Batch, BatchStatus, DispatcherSlot
from .queue import enqueue

logger = logging.getLogger("openai_batches.dispatcher")

POLL_SECONDS = 0.5
# A live dispatcher renews its slot this often, so a starting worker soon knows it is alive.
RENEW_SECONDS = 1.0


def _lease():
    return timedelta(seconds=app_settings.LEASE_SECONDS)


def _free(now):
    return Q(owner__isnull=True) | Q(lease_expires_at__lte=now)


def acquire(owner, *, takeover=False):
    """One free slot for ``owner`` (its number), or None when DISPATCHERS live dispatchers hold them all.

    ``takeover`` (a worker just started, maybe after a crash): wait until either
    every holder renewed its slot (all alive: None) or a slot lapsed (its holder
    died: take it), instead of leaving a dead dispatcher's batches to the minute sweep."""
    count = app_settings.DISPATCHERS
    existing = set(DispatcherSlot.objects.filter(slot__lt=count).values_list("slot", flat=True))
    for slot in range(count):
        if slot not in existing:
            try:
                with transaction.atomic():
                    DispatcherSlot.objects.create(slot=slot)
            except IntegrityError:  # another dispatcher created it first
                pass
    deadline = time.monotonic() + app_settings.LEASE_SECONDS + 1
    seen = None
    while True:
        now = timezone.now()
        for slot in range(count):
            if DispatcherSlot.objects.filter(_free(now), slot=slot).update(owner=owner, lease_expires_at=now + _lease(), started_at=now):
                return slot
        if not takeover or time.monotonic() > deadline:
            return None
        held = dict(DispatcherSlot.objects.filter(slot__lt=count).values_list("slot", "lease_expires_at"))
        if seen is not None and all(held.get(slot) and seen[slot] and held[slot] > seen[slot] for slot in seen):
            return None  # every holder renewed its lease: all alive
        seen = seen or held
        time.sleep(POLL_SECONDS)


def renew(slot, owner):
    """Extend ``owner``'s lease on ``slot``; False when it lost it (it stalled past its lease)."""
    now = timezone.now()
    return bool(DispatcherSlot.objects.filter(slot=slot, owner=owner).update(lease_expires_at=now + _lease()))


def release(slot, owner):
    DispatcherSlot.objects.filter(slot=slot, owner=owner).update(owner=None, lease_expires_at=None)


def live_count(now=None):
    now = now or timezone.now()
    return DispatcherSlot.objects.filter(slot__lt=app_settings.DISPATCHERS, owner__isnull=False, lease_expires_at__gt=now).count()


def ensure_dispatching():
    """Queue a dispatch task unless DISPATCHERS live dispatchers already run (they see new work by themselves)."""
    missing = app_settings.DISPATCHERS - live_count()
    for _ in range(max(0, missing)):
        enqueue("dispatch")
    return max(0, missing)


def work_waiting():
    """True when some batch is in progress (after a dispatcher left: did work arrive meanwhile?)."""
    return Batch.objects.filter(status=BatchStatus.IN_PROGRESS).exists()
