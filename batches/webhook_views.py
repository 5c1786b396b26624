"""/v1/webhooks: our extension for registering webhook endpoints (see docs/webhooks.md)."""

import logging

from rest_framework.response import Response

from files_app.api.pagination import OpenAICursorPagination
from files_app.api.viewsets import ListMixin, OpenAIViewSet, RetrieveMixin

from .models import WebhookEndpoint
from .serializers import WebhookEndpointCreateSerializer

logger = logging.getLogger("openai_batches.api")


class WebhookEndpointPagination(OpenAICursorPagination):
    item_name = "endpoint"


class WebhookEndpointViewSet(ListMixin, RetrieveMixin, OpenAIViewSet):
    """Create, list, retrieve and delete the caller's webhook endpoints."""

    object_name = "WebhookEndpoint"
    pagination_class = WebhookEndpointPagination

    def get_queryset(self):
        return WebhookEndpoint.objects.owned_by(self.request.user)

    def create(self, request):
        serializer = WebhookEndpointCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        endpoint = WebhookEndpoint.objects.create(owner=request.user, **serializer.validated_data)
        logger.info(
            "webhook_endpoint.created endpoint_id=%s owner=%s event_types=%s", endpoint.id, request.user.pk, ",".join(endpoint.event_types)
        )
        # The only time the secret leaves the server.
        return Response(endpoint.to_openai(with_secret=True))

    def destroy(self, request, pk=None):
        endpoint = self.get_object()
        endpoint.delete()
        logger.info("webhook_endpoint.deleted endpoint_id=%s owner=%s", pk, request.user.pk)
        return Response({"id": pk, "object": "webhook_endpoint.deleted", "deleted": True})
