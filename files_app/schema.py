"""OpenAPI description of /v1/files for drf-spectacular, in OpenAI's shapes.

drf-spectacular is optional: ``FilesAppConfig.ready()`` imports this module only
when it is installed. The views build plain dicts, so the shapes are declared
here with response serializers and attached through an ``OpenApiViewExtension``
(the views themselves stay free of schema code).
"""

from drf_spectacular.extensions import OpenApiAuthenticationExtension, OpenApiSerializerFieldExtension, OpenApiViewExtension
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiExample,
    OpenApiParameter,
    extend_schema,
    extend_schema_field,
    extend_schema_view,
    inline_serializer,
)
from rest_framework import serializers

from .api.serializers import string_enum
from .models import UPLOADABLE_PURPOSES, File, FilePurpose, Upload, UploadStatus
from .serializers import MAX_EXPIRES_AFTER, MIN_EXPIRES_AFTER, UploadCompleteSerializer, UploadCreateSerializer


class OpenAIFieldSchema(OpenApiSerializerFieldExtension):
    """The request bodies are the views' serializers (``files_app.api.serializers``):
    each field says what it accepts."""

    target_class = "files_app.api.serializers.OpenAIField"
    match_subclasses = True

    def map_serializer_field(self, auto_schema, direction):
        return self.target.openapi_schema()


class ErrorSerializer(serializers.Serializer):
    message = serializers.CharField()
    type = serializers.CharField()
    param = serializers.CharField(allow_null=True)
    code = serializers.CharField(allow_null=True)


class ErrorResponseSerializer(serializers.Serializer):
    """OpenAI's error envelope, on every 4xx and 5xx."""

    error = ErrorSerializer()


# Errors any authenticated, throttled route can answer.
COMMON_ERRORS = {401: ErrorResponseSerializer, 429: ErrorResponseSerializer}


def errors(*statuses):
    return {**COMMON_ERRORS, **{status: ErrorResponseSerializer for status in statuses}}


def enum(values, **kwargs):
    """A string field limited to ``values``, described inline.

    Wrapped in ``allOf`` (``string_enum``) so drf-spectacular's enum post-processing
    leaves it alone: it would otherwise hoist every choice set into a shared
    component and warn about the name collisions of fields like ``object``.
    """

    @extend_schema_field(string_enum(values))
    class EnumField(serializers.CharField):
        pass

    return EnumField(**kwargs)


def path_id(description):
    return OpenApiParameter("id", OpenApiTypes.STR, OpenApiParameter.PATH, description=description)


class OpenAIFileSerializer(serializers.Serializer):
    id = serializers.CharField()
    object = enum(["file"])
    bytes = serializers.IntegerField()
    created_at = serializers.IntegerField(help_text="Unix seconds.")
    expires_at = serializers.IntegerField(allow_null=True, help_text="Unix seconds; null when the file does not expire.")
    filename = serializers.CharField()
    purpose = enum(FilePurpose.values)
    status = enum(["uploaded", "processed", "error"])
    status_details = serializers.CharField(allow_null=True)


CREATE_FILE_REQUEST = inline_serializer(
    name="CreateFileRequest",
    fields={
        "file": serializers.FileField(help_text="Batch input files must be JSONL named *.jsonl."),
        "purpose": enum(UPLOADABLE_PURPOSES),
        "expires_after[anchor]": enum(["created_at"], required=False),
        "expires_after[seconds]": serializers.IntegerField(min_value=MIN_EXPIRES_AFTER, max_value=MAX_EXPIRES_AFTER, required=False),
    },
)

DELETE_FILE_RESPONSE = inline_serializer(
    name="DeleteFileResponse",
    fields={
        "id": serializers.CharField(),
        "object": enum(["file"]),
        "deleted": serializers.BooleanField(),
    },
)

FILE_ID = path_id("The file's id (file-...).")

documented_file_views = extend_schema_view(
    create=extend_schema(
        operation_id="createFile",
        summary="Upload a file",
        request={"multipart/form-data": CREATE_FILE_REQUEST},
        responses={200: OpenAIFileSerializer, **errors(400, 413, 415)},
        examples=[
            OpenApiExample(
                "A user data file", value={"file": "hello\n", "purpose": "user_data"}, request_only=True, media_type="multipart/form-data"
            )
        ],
    ),
    list=extend_schema(
        operation_id="listFiles",
        summary="List files",
        parameters=[
            OpenApiParameter("purpose", OpenApiTypes.STR, description="Only files with this purpose."),
        ],
        responses={200: OpenAIFileSerializer(many=True), **errors(400)},
    ),
    retrieve=extend_schema(
        operation_id="retrieveFile",
        summary="Retrieve a file",
        parameters=[FILE_ID],
        responses={200: OpenAIFileSerializer, **errors(400, 404)},
    ),
    destroy=extend_schema(
        operation_id="deleteFile", summary="Delete a file", parameters=[FILE_ID], responses={200: DELETE_FILE_RESPONSE, **errors(400, 404)}
    ),
    content=extend_schema(
        operation_id="downloadFile",
        summary="Retrieve a file's content",
        parameters=[FILE_ID],
        responses={(200, "application/octet-stream"): OpenApiTypes.BINARY, **errors(400, 404)},
    ),
)


def replace_view(view_class, documented, model):
    """A schema-only subclass of ``view_class``: the declared shapes and a queryset
    that needs no user."""

    class Documented(view_class):
        def get_queryset(self):
            return model.objects.none()

    Documented.__name__ = Documented.__qualname__ = view_class.__name__
    return documented(Documented)


class FileViewSetSchema(OpenApiViewExtension):
    target_class = "files_app.views.FileViewSet"

    def view_replacement(self):
        return replace_view(self.target_class, documented_file_views, File)


class OpenAIUploadSerializer(serializers.Serializer):
    id = serializers.CharField()
    object = enum(["upload"])
    bytes = serializers.IntegerField()
    created_at = serializers.IntegerField(help_text="Unix seconds.")
    expires_at = serializers.IntegerField(help_text="Unix seconds: an hour after created_at.")
    filename = serializers.CharField()
    purpose = enum(FilePurpose.values)
    status = enum(UploadStatus.values)
    file = OpenAIFileSerializer(allow_null=True, help_text="The File made of the parts, once completed.")


class OpenAIUploadPartSerializer(serializers.Serializer):
    id = serializers.CharField()
    object = enum(["upload.part"])
    created_at = serializers.IntegerField(help_text="Unix seconds.")
    upload_id = serializers.CharField()


ADD_PART_REQUEST = inline_serializer(name="AddUploadPartRequest", fields={"data": serializers.FileField(help_text="At most 64 MB.")})

UPLOAD_ID = path_id("The upload's id (upload_...).")

documented_upload_views = extend_schema_view(
    create=extend_schema(
        operation_id="createUpload",
        summary="Start an upload in parts",
        request=UploadCreateSerializer,
        responses={200: OpenAIUploadSerializer, **errors(400, 413, 415)},
    ),
    parts=extend_schema(
        operation_id="addUploadPart",
        summary="Add a part to an upload",
        parameters=[UPLOAD_ID],
        request={"multipart/form-data": ADD_PART_REQUEST},
        responses={200: OpenAIUploadPartSerializer, **errors(400, 404, 409, 413, 415)},
    ),
    complete=extend_schema(
        operation_id="completeUpload",
        summary="Complete an upload: its parts become a file",
        parameters=[UPLOAD_ID],
        request=UploadCompleteSerializer,
        responses={200: OpenAIUploadSerializer, **errors(400, 404, 409, 413, 415)},
    ),
    cancel=extend_schema(
        operation_id="cancelUpload",
        summary="Cancel an upload",
        parameters=[UPLOAD_ID],
        request=None,
        responses={200: OpenAIUploadSerializer, **errors(400, 404, 409)},
    ),
)


class UploadViewSetSchema(OpenApiViewExtension):
    target_class = "files_app.upload_views.UploadViewSet"

    def view_replacement(self):
        return replace_view(self.target_class, documented_upload_views, Upload)


class ApiKeyAuthenticationScheme(OpenApiAuthenticationExtension):
    target_class = "files_app.api.authentication.ApiKeyAuthentication"
    name = "ApiKeyAuth"

    def get_security_definition(self, auto_schema):
        return {"type": "http", "scheme": "bearer", "description": "An API key: 'Authorization: Bearer sk-batch-...'."}
