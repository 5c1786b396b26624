"""Webhooks: endpoints and the delivery log (sent by batches/webhooks.py)."""

import base64
import secrets

from django.conf import settings
from django.db import models
from django.utils import timezone

from files_app.ids import make_id

from .batch import to_unix


class WebhookEventType(models.TextChoices):
    BATCH_COMPLETED = "batch.completed"
    BATCH_FAILED = "batch.failed"
    BATCH_CANCELLED = "batch.cancelled"
    BATCH_EXPIRED = "batch.expired"


def new_webhook_endpoint_id():
    return make_id("whep_", 16)


def new_webhook_secret():
    # Standard Webhooks form: "whsec_" + base64 of the HMAC key. The OpenAI SDK's
    # webhooks.unwrap() decodes it the same way.
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


class WebhookEndpointQuerySet(models.QuerySet):
    def owned_by(self, user):
        return self.filter(owner=user)


class WebhookEndpoint(models.Model):
    """A URL that receives signed events about its owner's batches."""

    id = models.CharField(primary_key=True, max_length=64, default=new_webhook_endpoint_id, editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="openai_webhook_endpoints")
    url = models.URLField(max_length=2048)
    event_types = models.JSONField(default=list, help_text='Event types sent to this URL, e.g. ["batch.completed"].')
    # Stored as is because signing needs the key; shown to the user only once, at creation.
    secret = models.CharField(max_length=128, default=new_webhook_secret, editable=False)
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    objects = WebhookEndpointQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["owner", "created_at"])]

    def __str__(self):
        return f"{self.id} ({self.url})"

    def wants(self, event_type):
        return self.enabled and event_type in self.event_types

    def to_openai(self, *, with_secret=False):
        data = {
            "id": self.id,
            "object": "webhook_endpoint",
            "url": self.url,
            "event_types": self.event_types,
            "enabled": self.enabled,
            "created_at": to_unix(self.created_at),
        }
        if with_secret:
            data["secret"] = self.secret
        return data


class DeliveryStatus(models.TextChoices):
    PENDING = "pending"
    SENDING = "sending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class WebhookDeliveryQuerySet(models.QuerySet):
    def for_sweep(self, now):
        """Pending attempts due (again) and attempts whose worker vanished mid-request."""
        return self.filter(status__in=(DeliveryStatus.PENDING, DeliveryStatus.SENDING), next_attempt_at__lte=now)


class WebhookDelivery(models.Model):
    """One attempt to deliver one event to one endpoint: the delivery log.

    A failed attempt adds the next attempt as a new row, so every attempt keeps
    its status code, latency and error.
    """

    endpoint = models.ForeignKey(WebhookEndpoint, on_delete=models.CASCADE, related_name="deliveries")
    event_id = models.CharField(max_length=64, db_index=True, help_text="Also the webhook-id header: the same on every attempt.")
    event_type = models.CharField(max_length=32, choices=WebhookEventType.choices)
    batch_id = models.CharField(max_length=64, db_index=True)
    payload = models.TextField(help_text="The exact JSON body that is signed and sent.")
    attempt = models.PositiveSmallIntegerField(default=1)
    status = models.CharField(max_length=16, choices=DeliveryStatus.choices, default=DeliveryStatus.PENDING)
    next_attempt_at = models.DateTimeField(
        null=True,
        blank=True,
        help_text="Pending: when the sweeper (re)queues this attempt. Sending: when it counts as lost. Failed: when the retry is due.",
    )
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    attempted_at = models.DateTimeField(null=True, blank=True)
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    latency_ms = models.PositiveIntegerField(null=True, blank=True)
    error = models.TextField(blank=True, default="")

    objects = WebhookDeliveryQuerySet.as_manager()

    class Meta:
        verbose_name_plural = "webhook deliveries"
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["status", "next_attempt_at"])]

    def __str__(self):
        return f"{self.event_id} -> {self.endpoint_id} #{self.attempt}"

    def add_attempt(self, *, attempt, next_attempt_at):
        """Store another attempt of this delivery's event to its endpoint (a retry or a resend)."""
        return WebhookDelivery.objects.create(
            endpoint_id=self.endpoint_id,
            event_id=self.event_id,
            event_type=self.event_type,
            batch_id=self.batch_id,
            payload=self.payload,
            attempt=attempt,
            next_attempt_at=next_attempt_at,
        )
