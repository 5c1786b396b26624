"""/v1/webhooks: our extension for registering webhook endpoints (see docs/webhooks.md)."""

import logging

from rest_framework.response import Response

from files_app.api import OpenAIError
from files_app.api.pagination import OpenAICursorPagination
from files_app.api.viewsets import ListMixin, OpenAIViewSet, RetrieveMixin

from .models import WebhookEndpoint, WebhookEventType
from .webhooks import UnsafeURL, check_url

logger = logging.getLogger("openai_batches.api")

MAX_URL_LENGTH = 2048


def parse_url(data):
    url = data.get("url")
    if url in (None, ""):
        raise OpenAIError("Missing required parameter: 'url'.", param="url", code="missing_required_parameter")
    if not isinstance(url, str):
        raise OpenAIError("Invalid type for 'url': expected a string.", param="url", code="invalid_type")
    if len(url) > MAX_URL_LENGTH:
        raise OpenAIError(f"Invalid 'url': longer than {MAX_URL_LENGTH} characters.", param="url", code="invalid_value")
    try:
        check_url(url)
    except UnsafeURL as exc:
        raise OpenAIError(str(exc), param="url", code="invalid_url") from None
    return url


def parse_event_types(data):
    event_types = data.get("event_types")
    if event_types is None:
        raise OpenAIError("Missing required parameter: 'event_types'.", param="event_types", code="missing_required_parameter")
    if not isinstance(event_types, list) or not all(isinstance(t, str) for t in event_types):
        raise OpenAIError("Invalid type for 'event_types': expected an array of strings.", param="event_types", code="invalid_type")
    if not event_types:
        raise OpenAIError("Invalid 'event_types': expected at least one event type.", param="event_types", code="invalid_value")
    for event_type in event_types:
        if event_type not in WebhookEventType.values:
            raise OpenAIError(
                f"Invalid value: '{event_type}'. Supported values are: {', '.join(repr(t) for t in WebhookEventType.values)}.",
                param="event_types",
                code="invalid_value",
            )
    return list(dict.fromkeys(event_types))


class WebhookEndpointPagination(OpenAICursorPagination):
    item_name = "endpoint"


class WebhookEndpointViewSet(ListMixin, RetrieveMixin, OpenAIViewSet):
    """Create, list, retrieve and delete the caller's webhook endpoints."""

    object_name = "WebhookEndpoint"
    pagination_class = WebhookEndpointPagination

    def get_queryset(self):
        return WebhookEndpoint.objects.owned_by(self.request.user)

    def create(self, request):
        data = request.data
        if not isinstance(data, dict):
            raise OpenAIError("The request body must be a JSON object.", code="invalid_type")
        url = parse_url(data)
        event_types = parse_event_types(data)
        endpoint = WebhookEndpoint.objects.create(owner=request.user, url=url, event_types=event_types)
        logger.info("webhook_endpoint.created endpoint_id=%s owner=%s event_types=%s", endpoint.id, request.user.pk, ",".join(event_types))
        # The only time the secret leaves the server.
        return Response(endpoint.to_openai(with_secret=True))

    def destroy(self, request, pk=None):
        endpoint = self.get_object()
        endpoint.delete()
        logger.info("webhook_endpoint.deleted endpoint_id=%s owner=%s", pk, request.user.pk)
        return Response({"id": pk, "object": "webhook_endpoint.deleted", "deleted": True})
