import logging

from django.core.files.uploadhandler import StopUpload
from django.http import FileResponse
from django.utils import timezone
from rest_framework.decorators import action
from rest_framework.exceptions import ParseError
from rest_framework.parsers import MultiPartParser
from rest_framework.response import Response

from .api import OpenAIError
from .api.pagination import OpenAICursorPagination
from .api.viewsets import ListMixin, OpenAIViewSet, RetrieveMixin
from .conf import app_settings
from .models import File, uploaded_file_expiry
from .serializers import FileCreateSerializer
from .uploads import CappedTemporaryFileUploadHandler

logger = logging.getLogger("openai_batches.files")


class FilePagination(OpenAICursorPagination):
    default_limit = max_limit = 10_000
    order_param = "order"
    item_name = "file"


class FileViewSet(ListMixin, RetrieveMixin, OpenAIViewSet):
    """/v1/files: upload, list, retrieve, content, delete (OpenAI's wire format)."""

    object_name = "File"
    pagination_class = FilePagination

    def get_queryset(self):
        return File.objects.owned_by(self.request.user).live()

    def filter_queryset(self, queryset):
        purpose = self.request.query_params.get("purpose")
        return queryset.filter(purpose=purpose) if purpose else queryset

    def get_parsers(self):
        # Uploads are multipart only: DRF's FormParser would read a urlencoded body
        # of any size into memory, past the streaming cap.
        request = getattr(self, "request", None)  # None while drf-spectacular inspects the view
        if getattr(self, "action", None) == "create" or (request is not None and request.method == "POST"):
            return [MultiPartParser()]
        return super().get_parsers()

    def initialize_request(self, request, *args, **kwargs):
        request.upload_handlers = [CappedTemporaryFileUploadHandler(request)]
        return super().initialize_request(request, *args, **kwargs)

    def create(self, request):
        try:
            data = request.data
        except (StopUpload, ParseError):
            data = None
        if any(getattr(h, "too_large", False) for h in request._request.upload_handlers):
            limit_mb = app_settings.MAX_UPLOAD_BYTES // (1024 * 1024)
            raise OpenAIError(
                f"File is too large. The maximum file size is {limit_mb} MB.", status_code=413, param="file", code="file_too_large"
            )
        if data is None:
            raise OpenAIError("Could not parse multipart form data.", param="file", code="invalid_request")
        serializer = FileCreateSerializer(data=data)
        serializer.is_valid(raise_exception=True)
        upload, filename, purpose = (serializer.validated_data[name] for name in ("file", "filename", "purpose"))
        now = timezone.now()
        obj = File(
            owner=request.user,
            filename=filename,
            purpose=purpose,
            bytes=upload.size,
            created_at=now,
            expires_at=uploaded_file_expiry(purpose, now, serializer.validated_data["expires_after"]),
        )
        obj.content.save(filename, upload, save=False)
        obj.save()
        logger.info("file.created file_id=%s owner=%s purpose=%s bytes=%d", obj.id, request.user.pk, purpose, obj.bytes)
        return Response(obj.to_openai())

    def destroy(self, request, pk=None):
        obj = self.get_object()
        obj.delete()
        logger.info("file.deleted file_id=%s owner=%s", pk, request.user.pk)
        return Response({"id": pk, "object": "file", "deleted": True})

    @action(detail=True, methods=["get"])
    def content(self, request, pk=None):
        obj = self.get_object()
        try:
            handle = obj.content.open("rb")
        except (FileNotFoundError, OSError):
            raise OpenAIError(f"The content of file {pk} is no longer available.", status_code=404, param="id")
        # Streams from storage in chunks; never loads the whole file.
        return FileResponse(handle, content_type="application/octet-stream", filename=obj.filename, as_attachment=True)
