"""Usage and upstream latency, counted as lines finish (batches/usage.py), and the
admin dashboard's entry."""

from django.conf import settings
from django.db import models

from .batch import Batch


class UsageDay(models.Model):
    """Requests and tokens of one owner on one UTC day, per endpoint and model."""

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="openai_batch_usage")
    day = models.DateField()
    endpoint = models.CharField(max_length=64)
    model = models.CharField(max_length=255, blank=True, default="")
    succeeded_requests = models.PositiveBigIntegerField(default=0)
    failed_requests = models.PositiveBigIntegerField(default=0)
    input_tokens = models.PositiveBigIntegerField(default=0)
    output_tokens = models.PositiveBigIntegerField(default=0)
    cached_tokens = models.PositiveBigIntegerField(default=0)
    reasoning_tokens = models.PositiveBigIntegerField(default=0)

    class Meta:
        verbose_name = "usage per day"
        verbose_name_plural = "usage per day"
        ordering = ["-day", "owner", "endpoint", "model"]
        constraints = [
            models.UniqueConstraint(fields=["owner", "day", "endpoint", "model"], name="usageday_unique_owner_day_endpoint_model")
        ]
        indexes = [models.Index(fields=["day"])]

    def __str__(self):
        return f"{self.owner} {self.day} {self.model}"


class Dashboard(Batch):
    """The admin's operations dashboard (batches/dashboard.py). A proxy model only so
    that the page has its entry, /admin/batches/dashboard/, in the admin index."""

    class Meta:
        proxy = True
        verbose_name = verbose_name_plural = "dashboard"


class ThroughputMinute(models.Model):
    """Requests finished in one minute, all batches together (the admin dashboard's charts)."""

    minute = models.DateTimeField(unique=True)
    succeeded_requests = models.PositiveBigIntegerField(default=0)
    failed_requests = models.PositiveBigIntegerField(default=0)

    class Meta:
        ordering = ["-minute"]

    def __str__(self):
        return f"{self.minute:%Y-%m-%d %H:%M}"


class UpstreamLatency(models.Model):
    """One bucket of the upstream call duration histogram: calls whose duration
    fell in (previous bound, ``le``] seconds, and the sum of their durations."""

    upstream = models.CharField(max_length=255, help_text="The upstream's base URL.")
    status_class = models.CharField(max_length=8, help_text='"2xx", "4xx", "5xx", or "error" when no response came.')
    le = models.CharField(max_length=16, help_text='Upper bound in seconds, or "+Inf".')
    count = models.PositiveBigIntegerField(default=0)
    sum_seconds = models.FloatField(default=0.0)

    class Meta:
        verbose_name_plural = "upstream latency"
        constraints = [models.UniqueConstraint(fields=["upstream", "status_class", "le"], name="upstreamlatency_unique_bucket")]

    def __str__(self):
        return f"{self.upstream} {self.status_class} le={self.le}"
