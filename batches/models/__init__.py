"""The batches app's models, one module per concern; every model (and the names
other modules use) is importable from ``batches.models``, as migrations expect.

- ``batch``: ``Batch`` and its per-line ``BatchRequest`` rows, statuses, and the
  life of a batch (its docstring).
- ``webhooks``: webhook endpoints and the delivery log.
- ``usage``: usage per owner and day, throughput and upstream latency (metrics, dashboard).
- ``scheduling``: rate-limit buckets, each upstream's adaptive limit, dispatcher slots.
"""

from .batch import (
    CANCELLABLE_STATUSES,
    STATUS_TIMESTAMP_FIELDS,
    TERMINAL_STATUSES,
    Batch,
    BatchQuerySet,
    BatchRequest,
    BatchRequestQuerySet,
    BatchStatus,
    RequestStatus,
    new_batch_id,
    request_public_id,
    to_unix,
)
from .scheduling import DispatcherSlot, RateLimitBucket, UpstreamState
from .usage import Dashboard, ThroughputMinute, UpstreamLatency, UsageDay
from .webhooks import (
    DeliveryStatus,
    WebhookDelivery,
    WebhookDeliveryQuerySet,
    WebhookEndpoint,
    WebhookEndpointQuerySet,
    WebhookEventType,
    new_webhook_endpoint_id,
    new_webhook_secret,
)

__all__ = [
    "CANCELLABLE_STATUSES",
    "STATUS_TIMESTAMP_FIELDS",
    "TERMINAL_STATUSES",
    "Batch",
    "BatchQuerySet",
    "BatchRequest",
    "BatchRequestQuerySet",
    "BatchStatus",
    "Dashboard",
    "DeliveryStatus",
    "DispatcherSlot",
    "RateLimitBucket",
    "RequestStatus",
    "ThroughputMinute",
    "UpstreamLatency",
    "UpstreamState",
    "UsageDay",
    "WebhookDelivery",
    "WebhookDeliveryQuerySet",
    "WebhookEndpoint",
    "WebhookEndpointQuerySet",
    "WebhookEventType",
    "new_batch_id",
    "request_public_id",
    "new_webhook_endpoint_id",
    "new_webhook_secret",
    "to_unix",
]
