import logging
import re
import unicodedata

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
from .models import UPLOADABLE_PURPOSES, File, FilePurpose, uploaded_file_expiry
from .uploads import CappedTemporaryFileUploadHandler

logger = logging.getLogger("openai_batches.files")

# OpenAI's bounds for expires_after[seconds]: 1 hour .. 30 days.
MIN_EXPIRES_AFTER = 3600
MAX_EXPIRES_AFTER = 30 * 24 * 3600


MAX_FILENAME_LENGTH = 255  # File.filename's column width


def clean_filename(name: str) -> str:
    """Keep the client's filename for display only: no directories, no control or
    format characters (bidi overrides, zero-width), no line separators, no leading
    dots; a long name keeps its extension."""
    name = unicodedata.normalize("NFC", name or "")
    name = re.split(r"[\\/]", name)[-1]
    name = "".join(ch for ch in name if unicodedata.category(ch)[0] != "C" and unicodedata.category(ch) not in ("Zl", "Zp"))
    name = name.strip().lstrip(".").strip()
    if len(name) > MAX_FILENAME_LENGTH:
        stem, dot, extension = name.rpartition(".")
        if dot and stem and len(extension) <= 16:
            name = f"{stem[: MAX_FILENAME_LENGTH - len(extension) - 1]}.{extension}"
        else:
            name = name[:MAX_FILENAME_LENGTH]
    return name or "upload"


def parse_expires_after(data, *, param="expires_after"):
    """``expires_after[anchor]=created_at`` + ``expires_after[seconds]=N`` -> seconds or None."""
    anchor = data.get(f"{param}[anchor]")
    seconds = data.get(f"{param}[seconds]")
    if anchor is None and seconds is None:
        return None
    return checked_expires_after(anchor, seconds, param=param)


def checked_expires_after(anchor, seconds, *, param="expires_after"):
    """OpenAI's file expiry policy (anchor ``created_at``, 1 hour..30 days) -> seconds."""
    if anchor != "created_at":
        raise OpenAIError(f"Invalid '{param}.anchor': expected 'created_at'.", param=f"{param}.anchor", code="invalid_value")
    try:
        if isinstance(seconds, (bool, float)):
            raise TypeError
        seconds = int(seconds)
    except (TypeError, ValueError):
        raise OpenAIError(f"Invalid '{param}.seconds': expected an integer.", param=f"{param}.seconds", code="invalid_type")
    if not MIN_EXPIRES_AFTER <= seconds <= MAX_EXPIRES_AFTER:
        raise OpenAIError(
            f"Invalid '{param}.seconds': must be between {MIN_EXPIRES_AFTER} and {MAX_EXPIRES_AFTER}.",
            param=f"{param}.seconds",
            code="integer_out_of_range",
        )
    return seconds


def check_purpose(purpose, param="purpose"):
    if not purpose:
        raise OpenAIError(f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter")
    if purpose not in UPLOADABLE_PURPOSES:
        raise OpenAIError(
            f"Invalid value for '{param}': '{purpose}'. Supported values are: {', '.join(repr(p) for p in UPLOADABLE_PURPOSES)}.",
            param=param,
            code="invalid_value",
        )


def check_batch_filename(purpose, filename, *, param):
    if purpose == FilePurpose.BATCH and not filename.lower().endswith(".jsonl"):
        raise OpenAIError("Invalid file format for Batch API. Must be .jsonl", param=param, code="invalid_file_format")


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
            data, files = request.data, request.FILES
        except (StopUpload, ParseError):
            data = files = None
        if any(getattr(h, "too_large", False) for h in request._request.upload_handlers):
            limit_mb = app_settings.MAX_UPLOAD_BYTES // (1024 * 1024)
            raise OpenAIError(
                f"File is too large. The maximum file size is {limit_mb} MB.", status_code=413, param="file", code="file_too_large"
            )
        if data is None:
            raise OpenAIError("Could not parse multipart form data.", param="file", code="invalid_request")
        upload = files.get("file")
        if upload is None:
            raise OpenAIError("Missing required parameter: 'file'.", param="file", code="missing_required_parameter")
        purpose = data.get("purpose")
        check_purpose(purpose)
        filename = clean_filename(upload.name)
        check_batch_filename(purpose, filename, param="file")
        now = timezone.now()
        obj = File(
            owner=request.user,
            filename=filename,
            purpose=purpose,
            bytes=upload.size,
            created_at=now,
            expires_at=uploaded_file_expiry(purpose, now, parse_expires_after(data)),
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
