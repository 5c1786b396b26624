"""The request bodies of /v1/files and /v1/uploads, with OpenAI's errors
(``files_app.api.serializers``)."""

import re
import unicodedata

from django.core.files.uploadedfile import UploadedFile
from rest_framework.fields import empty
from rest_framework.utils import html

from .api.serializers import IntegerField, OpenAIField, OpenAISerializer, StringField, StringListField, invalid, string_enum
from .conf import app_settings
from .models import UPLOADABLE_PURPOSES, FilePurpose

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


class PurposeField(StringField):
    """What the file is for: one of the purposes a client may upload."""

    invalid_choice = "Invalid value for '{param}': '{value}'. Supported values are: {choices}."

    def __init__(self, **kwargs):
        super().__init__(choices=UPLOADABLE_PURPOSES, **kwargs)


class FileExpiresAfterField(OpenAIField):
    """OpenAI's file expiry policy, ``{"anchor": "created_at", "seconds": N}`` (a form
    sends ``expires_after[anchor]`` and ``expires_after[seconds]``) with N from 1 hour
    to 30 days: the file's lifetime in seconds."""

    def get_value(self, dictionary):
        if html.is_html_input(dictionary):
            anchor, seconds = (dictionary.get(f"{self.field_name}[{part}]") for part in ("anchor", "seconds"))
            return empty if anchor is None and seconds is None else {"anchor": anchor, "seconds": seconds}
        return super().get_value(dictionary)

    def to_internal_value(self, data):
        if not isinstance(data, dict):
            raise self.wrong_type("an object")
        param = self.field_name
        if data.get("anchor") != "created_at":
            raise invalid(f"Invalid '{param}.anchor': expected 'created_at'.", "invalid_value", "anchor")
        seconds = data.get("seconds")
        try:
            if isinstance(seconds, (bool, float)):
                raise TypeError
            seconds = int(seconds)
        except (TypeError, ValueError):
            raise invalid(f"Invalid '{param}.seconds': expected an integer.", "invalid_type", "seconds") from None
        if not MIN_EXPIRES_AFTER <= seconds <= MAX_EXPIRES_AFTER:
            raise invalid(
                f"Invalid '{param}.seconds': must be between {MIN_EXPIRES_AFTER} and {MAX_EXPIRES_AFTER}.",
                "integer_out_of_range",
                "seconds",
            )
        return seconds

    def openapi_schema(self):
        return {
            "type": "object",
            "properties": {
                "anchor": string_enum(["created_at"]),
                "seconds": {"type": "integer", "minimum": MIN_EXPIRES_AFTER, "maximum": MAX_EXPIRES_AFTER},
            },
            "required": ["anchor", "seconds"],
        }


class UploadedFileField(OpenAIField):
    """The file part of a multipart body."""

    def to_internal_value(self, data):
        if not isinstance(data, UploadedFile):
            raise self.missing()
        return data


def named(data, name, *, param):
    """``data`` with ``filename``, the cleaned ``name``; batch input files must be named
    ``*.jsonl`` (``param``: the field that names the file)."""
    data["filename"] = clean_filename(name)
    if data["purpose"] == FilePurpose.BATCH and not data["filename"].lower().endswith(".jsonl"):
        raise invalid("Invalid file format for Batch API. Must be .jsonl", "invalid_file_format", param)
    return data


class FileCreateSerializer(OpenAISerializer):
    """The body of POST /v1/files (multipart; the schema's CreateFileRequest spells its form fields)."""

    file = UploadedFileField()
    purpose = PurposeField()
    expires_after = FileExpiresAfterField(required=False)

    def validate(self, data):
        return named(data, data["file"].name, param="file")


class UploadCreateSerializer(OpenAISerializer):
    """The body of POST /v1/uploads."""

    bytes = IntegerField(min_value=1, max_value=lambda: app_settings.MAX_UPLOAD_BYTES, help_text="The size of the whole file.")
    filename = StringField(help_text="Batch input files must be named *.jsonl.")
    mime_type = StringField(help_text="e.g. application/jsonl")
    purpose = PurposeField()
    expires_after = FileExpiresAfterField(required=False, help_text="Expiry of the File the upload becomes.")

    def validate_mime_type(self, mime_type):
        if len(mime_type) > 255 or "/" not in mime_type:
            raise invalid(f"Invalid 'mime_type': '{mime_type[:80]}' is not a MIME type.", "invalid_value")
        return mime_type

    def validate(self, data):
        return named(data, data["filename"], param="filename")


class UploadCompleteSerializer(OpenAISerializer):
    """The body of POST /v1/uploads/{id}/complete."""

    part_ids = StringListField(help_text="The parts, in file order.")
    md5 = StringField(required=False, help_text="Checked against the joined bytes.")
