"""Shared scheduling state: upstream rate limits (batches/ratelimit.py), each upstream's
adaptive in-flight limit (batches/claims.py, batches/aimd.py) and the dispatchers'
places (batches/slots.py, batches/runner/)."""

from django.db import models
from django.utils import timezone


class RateLimitBucket(models.Model):
    """Shared state of one upstream rate limit, so every worker on every host draws
    from one budget: per dimension, the GCRA "theoretical arrival time" (Unix
    seconds), the moment from which the limit has its full burst available again."""

    key = models.CharField(primary_key=True, max_length=255, help_text='"model:<id>" or "upstream:<base url>".')
    requests_tat = models.FloatField(default=0.0)
    tokens_tat = models.FloatField(default=0.0)

    def __str__(self):
        return self.key


# --- Scheduling (batches/claims.py, batches/aimd.py, batches/runner/) ---------------------------


class UpstreamState(models.Model):
    """The adaptive in-flight limit of one upstream (one base URL of the MODELS
    routing table), shared by every dispatcher on every host: each claim locks
    this row, folds in what its calls saw (``batches/aimd.py``) and counts the
    live leases of the upstream's batches against ``concurrency_limit``.
    In flight now = live leases of batches whose ``upstream`` is ``base_url``."""

    base_url = models.CharField(max_length=255, unique=True)
    concurrency_limit = models.PositiveIntegerField(help_text="Requests in flight allowed now (AIMD, at most UPSTREAM_MAX_IN_FLIGHT).")
    latency_ms = models.FloatField(null=True, blank=True, help_text="Recent latency of successful calls.")
    baseline_latency_ms = models.FloatField(null=True, blank=True, help_text="The upstream's latency when not loaded.")
    successes_since_increase = models.PositiveIntegerField(default=0)
    last_decrease_at = models.FloatField(null=True, blank=True, help_text="Unix time of the last cut; empty while in slow start.")
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        verbose_name = "upstream"
        ordering = ["base_url"]

    def __str__(self):
        return self.base_url


class DispatcherSlot(models.Model):
    """One of the DISPATCHERS places for a running dispatcher, held under a lease
    (renewed every heartbeat), so a fixed number of django-q2 workers dispatch
    cluster-wide and the others stay free for validation, finalization and webhooks."""

    slot = models.PositiveSmallIntegerField(primary_key=True)
    owner = models.CharField(max_length=64, null=True, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["slot"]

    def __str__(self):
        return f"dispatcher {self.slot}"
