"""/v1/uploads: a large file sent in parts (OpenAI's Uploads API).

``POST /v1/uploads`` announces the file (bytes, filename, mime_type, purpose);
``POST /v1/uploads/{id}/parts`` adds parts of up to 64 MB (multipart ``data``), each
streamed to storage as it arrives; ``POST /v1/uploads/{id}/complete`` joins the
listed parts, in that order, into a ``File`` (streamed from storage to storage, with
the optional md5 checked on the way); ``POST /v1/uploads/{id}/cancel`` gives up. An
upload takes parts for an hour; ``tasks.sweep`` deletes the parts of lapsed ones.
"""

import hashlib
import io
import logging

from django.core.files import File as DjangoFile
from django.core.files.uploadhandler import StopUpload
from django.db import transaction
from django.utils import timezone
from rest_framework.decorators import action
from rest_framework.exceptions import ParseError
from rest_framework.parsers import MultiPartParser
from rest_framework.response import Response

from .api import OpenAIError, OpenAIViewSet
from .conf import app_settings
from .models import MAX_PART_BYTES, UPLOAD_LIFETIME, File, Upload, UploadPart, UploadStatus, uploaded_file_expiry
from .serializers import UploadCompleteSerializer, UploadCreateSerializer
from .uploads import CappedTemporaryFileUploadHandler

logger = logging.getLogger("openai_batches.files")


class PartsReader(io.RawIOBase):
    """The parts' stored bytes one after the other, as one unseekable stream, with a
    running md5: storage backends copy it chunk by chunk, never whole."""

    def __init__(self, parts):
        self.parts = iter(parts)
        self.current = None
        self.md5 = hashlib.md5(usedforsecurity=False)
        self.size = sum(part.bytes for part in parts)  # what storage backends ask a django File for

    def readable(self):
        return True

    def readinto(self, buffer):
        while True:
            if self.current is None:
                part = next(self.parts, None)
                if part is None:
                    return 0
                self.current = part.content.open("rb")
            count = self.current.readinto(buffer)
            if count:
                self.md5.update(memoryview(buffer)[:count])
                return count
            self.current.close()
            self.current = None

    def close(self):
        if self.current is not None:
            self.current.close()
        super().close()


def _state_conflict(upload, doing):
    return OpenAIError(
        f"Cannot {doing} Upload {upload.id} with status '{upload.current_status()}'.",
        status_code=409,
        param="upload_id",
        code="upload_not_pending",
        headers={"x-should-retry": "false"},
    )


class UploadViewSet(OpenAIViewSet):
    """/v1/uploads: create, add parts, complete, cancel (OpenAI's wire format)."""

    object_name = "Upload"

    def get_queryset(self):
        return Upload.objects.owned_by(self.request.user)

    def get_parsers(self):
        # Parts are multipart, spooled to a temporary file under a cap; the rest is JSON.
        # (Parsers are picked before DRF sets self.action; action_map is already there.)
        request = getattr(self, "request", None)  # None while drf-spectacular inspects the view
        method = request.method.lower() if request is not None else None
        if getattr(self, "action", None) == "parts" or getattr(self, "action_map", {}).get(method) == "parts":
            return [MultiPartParser()]
        return super().get_parsers()

    def initialize_request(self, request, *args, **kwargs):
        request.upload_handlers = [CappedTemporaryFileUploadHandler(request, max_bytes=MAX_PART_BYTES)]
        return super().initialize_request(request, *args, **kwargs)

    def create(self, request):
        serializer = UploadCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        now = timezone.now()
        upload = Upload.objects.create(
            owner=request.user,
            filename=data["filename"],
            purpose=data["purpose"],
            bytes=data["bytes"],
            mime_type=data["mime_type"],
            created_at=now,
            expires_at=now + UPLOAD_LIFETIME,
            file_expires_after=data["expires_after"],
        )
        logger.info("upload.created upload_id=%s owner=%s purpose=%s bytes=%d", upload.id, request.user.pk, upload.purpose, upload.bytes)
        return Response(upload.to_openai())

    @action(detail=True, methods=["post"])
    def parts(self, request, pk=None):
        try:
            files = request.FILES
        except (StopUpload, ParseError):
            files = None
        if any(getattr(h, "too_large", False) for h in request._request.upload_handlers):
            raise OpenAIError(
                f"The part is too large. A part may be at most {MAX_PART_BYTES // (1024 * 1024)} MB.",
                status_code=413,
                param="data",
                code="file_too_large",
            )
        if files is None:
            raise OpenAIError("Could not parse multipart form data.", param="data", code="invalid_request")
        data = files.get("data")
        if data is None:
            raise OpenAIError("Missing required parameter: 'data'.", param="data", code="missing_required_parameter")
        upload = self.get_object()
        if upload.current_status() != UploadStatus.PENDING:
            raise _state_conflict(upload, "add a Part to")
        stored = sum(upload.parts.values_list("bytes", flat=True))
        if stored + data.size > app_settings.MAX_UPLOAD_BYTES:
            raise OpenAIError(
                f"The parts of an Upload may add up to at most {app_settings.MAX_UPLOAD_BYTES} bytes.",
                status_code=413,
                param="data",
                code="file_too_large",
            )
        part = UploadPart(upload=upload, bytes=data.size)
        part.content.save(part.id, data, save=False)
        with transaction.atomic():
            # Cancelled, completed or expired while the bytes were stored: the part is not added.
            still_pending = Upload.objects.filter(pk=upload.pk, status=UploadStatus.PENDING, expires_at__gt=timezone.now()).exists()
            if still_pending:
                part.save()
        if not still_pending:
            part.content.delete(save=False)
            upload.refresh_from_db()
            raise _state_conflict(upload, "add a Part to")
        logger.info("upload.part_added upload_id=%s part_id=%s bytes=%d", upload.id, part.id, part.bytes)
        return Response(part.to_openai())

    @action(detail=True, methods=["post"])
    def complete(self, request, pk=None):
        serializer = UploadCompleteSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        part_ids, md5 = serializer.validated_data["part_ids"], serializer.validated_data["md5"]
        upload = self.get_object()
        status = upload.current_status()
        if status == UploadStatus.COMPLETED:
            return Response(upload.to_openai())  # a retried complete whose first answer was lost
        if status != UploadStatus.PENDING:
            raise _state_conflict(upload, "complete")
        if len(set(part_ids)) != len(part_ids):
            raise OpenAIError("Invalid 'part_ids': a Part is listed more than once.", param="part_ids", code="invalid_value")
        parts = {part.id: part for part in upload.parts.filter(pk__in=part_ids)}
        unknown = [part_id for part_id in part_ids if part_id not in parts]
        if unknown:
            raise OpenAIError(f"Invalid 'part_ids': no Part {unknown[0]} in Upload {upload.id}.", param="part_ids", code="invalid_value")
        ordered = [parts[part_id] for part_id in part_ids]
        total = sum(part.bytes for part in ordered)
        if total != upload.bytes:
            raise OpenAIError(
                f"The Parts add up to {total} bytes, but the Upload was created with bytes={upload.bytes}.",
                param="part_ids",
                code="invalid_value",
            )
        now = timezone.now()
        file = File(
            owner_id=upload.owner_id,
            filename=upload.filename,
            purpose=upload.purpose,
            bytes=total,
            created_at=now,
            expires_at=uploaded_file_expiry(upload.purpose, now, upload.file_expires_after),
        )
        reader = PartsReader(ordered)
        with reader:
            file.content.save(upload.filename, DjangoFile(reader), save=False)
        if md5 is not None and reader.md5.hexdigest() != md5.lower():
            file.content.delete(save=False)
            raise OpenAIError(
                f"The md5 checksum of the uploaded bytes is {reader.md5.hexdigest()}, not {md5}.", param="md5", code="invalid_value"
            )
        with transaction.atomic():
            file.save()
            completed = Upload.objects.filter(pk=upload.pk, status=UploadStatus.PENDING).update(status=UploadStatus.COMPLETED, file=file)
            if not completed:
                transaction.set_rollback(True)
        if not completed:  # cancelled (or completed by a concurrent call) meanwhile
            file.content.delete(save=False)
            upload.refresh_from_db()
            if upload.status == UploadStatus.COMPLETED:
                return Response(upload.to_openai())
            raise _state_conflict(upload, "complete")
        upload.refresh_from_db()
        upload.discard_parts()
        logger.info("upload.completed upload_id=%s file_id=%s bytes=%d parts=%d", upload.id, file.id, total, len(ordered))
        return Response(upload.to_openai())

    @action(detail=True, methods=["post"])
    def cancel(self, request, pk=None):
        upload = self.get_object()
        if upload.current_status() == UploadStatus.PENDING:
            Upload.objects.filter(pk=upload.pk, status=UploadStatus.PENDING).update(status=UploadStatus.CANCELLED)
            upload.refresh_from_db()
        if upload.status != UploadStatus.CANCELLED:
            raise _state_conflict(upload, "cancel")
        upload.discard_parts()
        logger.info("upload.cancelled upload_id=%s owner=%s", upload.id, request.user.pk)
        return Response(upload.to_openai())
