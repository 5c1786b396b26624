"""OpenAPI description of /v1/batches (and /v1/webhooks) for drf-spectacular,
in OpenAI's shapes. Optional like ``files_app.schema``: ``BatchesConfig.ready()``
imports it only when drf-spectacular is installed."""

from drf_spectacular.extensions import OpenApiViewExtension
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_view, inline_serializer
from rest_framework import serializers

from files_app.schema import enum, errors, path_id, replace_view

from .models import Batch, BatchStatus, WebhookEndpoint, WebhookEventType
from .serializers import BatchCreateSerializer, MetadataField, WebhookEndpointCreateSerializer
from .views import MAX_RESULTS_LIMIT, RESULT_STATUSES


class BatchErrorSerializer(serializers.Serializer):
    code = serializers.CharField()
    message = serializers.CharField()
    param = serializers.CharField(allow_null=True)
    line = serializers.IntegerField(allow_null=True)


class BatchErrorsSerializer(serializers.Serializer):
    object = enum(["list"])
    data = BatchErrorSerializer(many=True)


class RequestCountsSerializer(serializers.Serializer):
    total = serializers.IntegerField()
    completed = serializers.IntegerField()
    failed = serializers.IntegerField()


class BatchUsageSerializer(serializers.Serializer):
    input_tokens = serializers.IntegerField()
    input_tokens_details = inline_serializer("BatchUsageInputTokensDetails", fields={"cached_tokens": serializers.IntegerField()})
    output_tokens = serializers.IntegerField()
    output_tokens_details = inline_serializer("BatchUsageOutputTokensDetails", fields={"reasoning_tokens": serializers.IntegerField()})
    total_tokens = serializers.IntegerField()


def unix_time(help_text=""):
    return serializers.IntegerField(allow_null=True, help_text=f"Unix seconds. {help_text}".strip())


class BatchSerializer(serializers.Serializer):
    id = serializers.CharField()
    object = enum(["batch"])
    endpoint = serializers.CharField()
    model = serializers.CharField(allow_null=True)
    errors = BatchErrorsSerializer(allow_null=True)
    input_file_id = serializers.CharField()
    completion_window = serializers.CharField()
    status = enum(BatchStatus.values)
    output_file_id = serializers.CharField(allow_null=True)
    error_file_id = serializers.CharField(allow_null=True)
    created_at = serializers.IntegerField(help_text="Unix seconds.")
    in_progress_at = unix_time()
    expires_at = unix_time()
    finalizing_at = unix_time()
    completed_at = unix_time()
    failed_at = unix_time()
    expired_at = unix_time()
    cancelling_at = unix_time()
    cancelled_at = unix_time()
    request_counts = RequestCountsSerializer()
    usage = BatchUsageSerializer(allow_null=True)
    metadata = MetadataField(allow_null=True)  # the request's field, in its response shape


IDEMPOTENCY_KEY = OpenApiParameter(
    "Idempotency-Key",
    OpenApiTypes.STR,
    OpenApiParameter.HEADER,
    description="Replays the first batch created with this key (same parameters) instead of creating another.",
)
BATCH_ID = path_id("The batch's id (batch_...).")

documented_batch_views = extend_schema_view(
    create=extend_schema(
        operation_id="createBatch",
        summary="Create a batch",
        request=BatchCreateSerializer,
        parameters=[IDEMPOTENCY_KEY],
        responses={200: BatchSerializer, **errors(400, 404, 409, 413, 415)},
    ),
    list=extend_schema(
        operation_id="listBatches",
        summary="List batches",
        responses={200: BatchSerializer(many=True), **errors(400)},
    ),
    retrieve=extend_schema(
        operation_id="retrieveBatch",
        summary="Retrieve a batch",
        parameters=[BATCH_ID],
        responses={200: BatchSerializer, **errors(400, 404)},
    ),
    results=extend_schema(
        operation_id="retrieveBatchResults",
        summary="Stream the results finished so far (extension)",
        description=(
            "Every request of the batch that has finished, as JSONL lines in the output/error file shape, in input order. "
            "Header X-Incomplete is 'true' while the batch is not in a terminal status; X-Has-More is 'true' when "
            "'limit' cut the page (continue with after=<the last line's custom_id>)."
        ),
        parameters=[
            BATCH_ID,
            OpenApiParameter("custom_id", OpenApiTypes.STR, description="Only this request's line (404 if the batch has no such request)."),
            OpenApiParameter(
                "status", {"type": "string", "enum": list(RESULT_STATUSES)}, description="Only succeeded or only failed lines."
            ),
            OpenApiParameter("after", OpenApiTypes.STR, description="The custom_id of the last line of the previous page."),
            OpenApiParameter(
                "limit", {"type": "integer", "minimum": 1, "maximum": MAX_RESULTS_LIMIT}, description="Page size (default: all)."
            ),
        ],
        responses={(200, "application/jsonl"): OpenApiTypes.BINARY, **errors(400, 404)},
    ),
    retry=extend_schema(
        operation_id="retryBatch",
        summary="Retry the failed requests as a new batch (extension)",
        description=(
            "Creates a batch from this batch's failed, cancelled and expired lines (same endpoint and metadata, retry_of "
            "set). 409 while the batch is not completed, cancelled or expired, or when nothing failed."
        ),
        parameters=[BATCH_ID],
        request=None,
        responses={200: BatchSerializer, **errors(400, 404, 409)},
    ),
    cancel=extend_schema(
        operation_id="cancelBatch",
        summary="Cancel a batch",
        parameters=[BATCH_ID],
        request=None,
        responses={200: BatchSerializer, **errors(400, 404, 409)},
    ),
)


class BatchViewSetSchema(OpenApiViewExtension):
    target_class = "batches.views.BatchViewSet"

    def view_replacement(self):
        return replace_view(self.target_class, documented_batch_views, Batch)


# --- /v1/webhooks (our extension, see docs/webhooks.md) ---------------------------


class WebhookEndpointSerializer(serializers.Serializer):
    id = serializers.CharField()
    object = enum(["webhook_endpoint"])
    url = serializers.CharField()
    event_types = serializers.ListField(child=enum(WebhookEventType.values))
    enabled = serializers.BooleanField()
    created_at = serializers.IntegerField(help_text="Unix seconds.")
    secret = serializers.CharField(required=False, help_text="The signing secret, returned once: by the create call.")


WEBHOOK_ENDPOINT_ID = path_id("The webhook endpoint's id (whep_...).")

documented_webhook_views = extend_schema_view(
    create=extend_schema(
        operation_id="createWebhookEndpoint",
        summary="Register a webhook endpoint",
        request=WebhookEndpointCreateSerializer,
        responses={200: WebhookEndpointSerializer, **errors(400, 413, 415)},
    ),
    list=extend_schema(
        operation_id="listWebhookEndpoints",
        summary="List webhook endpoints",
        responses={200: WebhookEndpointSerializer(many=True), **errors(400)},
    ),
    retrieve=extend_schema(
        operation_id="retrieveWebhookEndpoint",
        summary="Retrieve a webhook endpoint",
        parameters=[WEBHOOK_ENDPOINT_ID],
        responses={200: WebhookEndpointSerializer, **errors(400, 404)},
    ),
    destroy=extend_schema(
        operation_id="deleteWebhookEndpoint",
        summary="Delete a webhook endpoint",
        parameters=[WEBHOOK_ENDPOINT_ID],
        responses={
            200: inline_serializer(
                "DeleteWebhookEndpointResponse",
                fields={
                    "id": serializers.CharField(),
                    "object": enum(["webhook_endpoint.deleted"]),
                    "deleted": serializers.BooleanField(),
                },
            ),
            **errors(400, 404),
        },
    ),
)


class WebhookEndpointViewSetSchema(OpenApiViewExtension):
    target_class = "batches.webhook_views.WebhookEndpointViewSet"

    def view_replacement(self):
        return replace_view(self.target_class, documented_webhook_views, WebhookEndpoint)
