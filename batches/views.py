import hashlib
import json
import logging

from django.db import IntegrityError, transaction
from django.http import StreamingHttpResponse
from rest_framework.decorators import action
from rest_framework.response import Response

from files_app.api import OpenAIError
from files_app.api.pagination import OpenAICursorPagination, parse_limit
from files_app.api.viewsets import ListMixin, OpenAIViewSet, RetrieveMixin
from files_app.models import File, FilePurpose

from . import lifecycle, operations, quotas
from .models import Batch, BatchStatus, RequestStatus
from .output import result_line, result_rows
from .serializers import BatchCreateSerializer

logger = logging.getLogger("openai_batches.api")

# GET /v1/batches/{id}/results?status=...: which finished rows each value selects.
RESULT_STATUSES = {
    "completed": (RequestStatus.SUCCEEDED,),
    "failed": (RequestStatus.FAILED, RequestStatus.CANCELLED, RequestStatus.EXPIRED),
}
MAX_RESULTS_LIMIT = 10_000


class BatchPagination(OpenAICursorPagination):
    item_name = "batch"


class BatchViewSet(ListMixin, RetrieveMixin, OpenAIViewSet):
    """/v1/batches: create, retrieve, list, cancel (OpenAI's wire format)."""

    object_name = "Batch"
    pagination_class = BatchPagination

    def get_queryset(self):
        return Batch.objects.owned_by(self.request.user)

    def create(self, request):
        serializer = BatchCreateSerializer(data=request.data, context={"request": request})
        serializer.is_valid(raise_exception=True)
        fields = dict(serializer.validated_data)
        idempotency_key = fields.pop("idempotency_key")
        input_file_id = fields["input_file_id"]
        # A file this owner cannot see (missing, deleted, expired, someone else's) is not a
        # create error, as at OpenAI: the batch is created and fails validation with one
        # message for every case, so nothing tells one owner about another's files.
        input_file = File.objects.owned_by(request.user).live().filter(pk=input_file_id).first()
        if input_file is not None and input_file.purpose != FilePurpose.BATCH:
            raise OpenAIError(
                f"The input file {input_file.id} has purpose '{input_file.purpose}'; batch input files must have purpose 'batch'.",
                param="input_file_id",
                code="invalid_value",
            )

        fingerprint = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()
        if idempotency_key:
            existing = self.get_queryset().filter(idempotency_key=idempotency_key).first()
            if existing:
                return self._replay(existing, fingerprint)
        try:
            with transaction.atomic():
                quotas.check_create(request.auth)
                batch = lifecycle.create_batch(
                    owner=request.user, api_key=request.auth, idempotency_key=idempotency_key, request_fingerprint=fingerprint, **fields
                )
        except IntegrityError:
            # A concurrent create with the same key won the unique constraint.
            existing = self.get_queryset().filter(idempotency_key=idempotency_key).first()
            if existing is None:
                raise
            return self._replay(existing, fingerprint)
        return Response(batch.to_openai())

    def _replay(self, existing, fingerprint):
        if existing.request_fingerprint != fingerprint:
            raise OpenAIError(
                "This idempotency key was already used with different parameters.",
                status_code=409,
                param="idempotency_key",
                code="idempotency_key_reused",
                headers={"x-should-retry": "false"},
            )
        return Response(existing.to_openai())

    @action(detail=True, methods=["post"])
    def cancel(self, request, pk=None):
        batch = self.get_object()
        lifecycle.request_cancel(batch)
        batch.refresh_from_db()
        if batch.status not in (BatchStatus.CANCELLING, BatchStatus.CANCELLED):
            raise OpenAIError(
                f"Cannot cancel a batch with status '{batch.status}'.",
                status_code=409,
                code="batch_not_cancellable",
                headers={"x-should-retry": "false"},
            )
        logger.info("batch.cancel_requested batch_id=%s owner=%s status=%s", batch.id, request.user.pk, batch.status)
        return Response(batch.to_openai())

    @action(detail=True, methods=["get"])
    def results(self, request, pk=None):
        """Every request finished so far, as output/error file lines (JSONL) in input order.

        An extension: OpenAI only has the files, at the end. ``X-Incomplete: true``
        while the batch can still change; ``X-Has-More`` tells whether ``limit``
        cut the page (the next page starts ``after`` its last line's custom_id)."""
        batch = self.get_object()
        params = request.query_params
        status = params.get("status")
        if status is not None and status not in RESULT_STATUSES:
            raise OpenAIError(
                f"Invalid 'status': expected one of {', '.join(repr(s) for s in RESULT_STATUSES)}, got {status!r}.",
                param="status",
                code="invalid_value",
            )
        rows = batch.requests.filter(status__in=RESULT_STATUSES[status] if status else sum(RESULT_STATUSES.values(), ()))
        if "custom_id" in params:
            custom_id = params["custom_id"]
            if not batch.requests.filter(custom_id=custom_id).exists():
                raise OpenAIError(f"No request with custom_id '{custom_id}' in batch {batch.id}.", status_code=404, param="custom_id")
            rows = rows.filter(custom_id=custom_id)
        after = params.get("after")
        if after is not None:
            after_line = batch.requests.filter(custom_id=after).values_list("line", flat=True).first()
            if after_line is None:
                raise OpenAIError(
                    f"Invalid 'after': no request with custom_id '{after}' in this batch.", param="after", code="invalid_value"
                )
            rows = rows.filter(line__gt=after_line)
        rows = result_rows(rows.order_by("line"))
        has_more = False
        if "limit" in params:
            limit = parse_limit(params["limit"], MAX_RESULTS_LIMIT)
            page = list(rows[: limit + 1])
            has_more = len(page) > limit
            lines = map(result_line, page[:limit])
        else:
            lines = map(result_line, rows.iterator(chunk_size=2000))
        response = StreamingHttpResponse(lines, content_type="application/jsonl")
        response["X-Incomplete"] = "false" if batch.is_terminal else "true"
        response["X-Has-More"] = "true" if has_more else "false"
        return response

    @action(detail=True, methods=["post"])
    def retry(self, request, pk=None):
        """A new batch from this batch's failed, cancelled and expired lines (what the
        admin's "Retry failed requests" action makes), linked by ``retry_of``."""
        batch = self.get_object()
        refusal = operations.retry_refusal(batch)
        if refusal:
            raise OpenAIError(
                f"Cannot retry the failed requests of batch {batch.id}: {refusal}.",
                status_code=409,
                code="batch_not_retryable",
                headers={"x-should-retry": "false"},
            )
        with transaction.atomic():
            quotas.check_create(request.auth)
            retry = operations.retry_failed_requests(batch, actor=request.user, api_key=request.auth)
        return Response(retry.to_openai())
