"""The request bodies of /v1/batches and /v1/webhooks, with OpenAI's errors
(``files_app.api.serializers``)."""

from rest_framework import serializers

from files_app.api.serializers import OpenAIField, OpenAISerializer, StringField, StringListField, choices_text, invalid, string_enum
from files_app.models import File
from files_app.serializers import MAX_EXPIRES_AFTER, MIN_EXPIRES_AFTER

from . import field_rules, windows
from .endpoints import enabled_endpoints
from .models import WebhookEventType
from .webhooks import UnsafeURL, check_url

# Output files take the bounds of any file's expires_after (OpenAI's).
OUTPUT_EXPIRES_AFTER_RANGE = (MIN_EXPIRES_AFTER, MAX_EXPIRES_AFTER)
MAX_IDEMPOTENCY_KEY_LENGTH = 255
MAX_URL_LENGTH = 2048


def raise_rule_error(problem):
    """A ``field_rules`` error body as the serializer error at the same ``param``."""
    error = problem["error"]
    raise invalid(error["message"], error["code"], *error["param"].split(".", 1)[1:])


class MetadataField(OpenAIField):
    """OpenAI's metadata (``field_rules.metadata``: up to 16 string pairs), with the
    lengths of keys and values capped as for a batch's own metadata."""

    def to_internal_value(self, data):
        problem = field_rules.metadata(data, self.field_name)
        if problem:
            raise_rule_error(problem)
        for key, value in data.items():
            if len(key) > field_rules.MAX_METADATA_KEY:
                raise invalid(
                    f"Invalid '{self.field_name}': key '{key[:80]}' is too long. Expected a key with maximum length "
                    f"{field_rules.MAX_METADATA_KEY}, but got a key with length {len(key)} instead.",
                    "string_above_max_length",
                    key[:80],
                )
            if len(value) > field_rules.MAX_METADATA_VALUE:
                raise invalid(
                    f"Invalid '{self.field_name}.{key}': string too long. Expected a string with maximum length "
                    f"{field_rules.MAX_METADATA_VALUE}, but got a string with length {len(value)} instead.",
                    "string_above_max_length",
                    key,
                )
        return data

    def openapi_schema(self):
        pairs, key, value = field_rules.MAX_METADATA_PAIRS, field_rules.MAX_METADATA_KEY, field_rules.MAX_METADATA_VALUE
        return {
            "type": "object",
            "maxProperties": pairs,
            "additionalProperties": {"type": "string", "maxLength": value},
            "description": f"Up to {pairs} string pairs (keys up to {key}, values up to {value} characters).",
        }


class OutputExpiresAfterField(OpenAIField):
    """``{"anchor": "created_at", "seconds": N}``: how long the batch's output files are kept."""

    def to_internal_value(self, data):
        param = self.field_name
        if not isinstance(data, dict) or data.get("anchor") != "created_at":
            raise invalid(f'Invalid \'{param}\': expected {{"anchor": "created_at", "seconds": N}}.', "invalid_value")
        seconds = data.get("seconds")
        if not field_rules.is_int(seconds):
            raise invalid(f"Invalid type for '{param}.seconds': expected an integer.", "invalid_type", "seconds")
        low, high = OUTPUT_EXPIRES_AFTER_RANGE
        if not low <= seconds <= high:
            raise invalid(f"Invalid '{param}.seconds': expected an integer between {low} and {high}.", "integer_out_of_range", "seconds")
        return seconds

    def openapi_schema(self):
        low, high = OUTPUT_EXPIRES_AFTER_RANGE
        return {
            "type": "object",
            "properties": {"anchor": string_enum(["created_at"]), "seconds": {"type": "integer", "minimum": low, "maximum": high}},
            "required": ["anchor", "seconds"],
        }


class IdempotencyKeyField(OpenAIField):
    """The body's ``idempotency_key`` (the serializer puts the ``Idempotency-Key`` header in its place)."""

    def to_internal_value(self, data):
        if not isinstance(data, str) or not 0 < len(data) <= MAX_IDEMPOTENCY_KEY_LENGTH:
            raise invalid(
                f"Invalid '{self.field_name}': expected a string of 1 to {MAX_IDEMPOTENCY_KEY_LENGTH} characters.", "invalid_value"
            )
        return data

    def openapi_schema(self):
        return {"type": "string", "minLength": 1, "maxLength": MAX_IDEMPOTENCY_KEY_LENGTH}


class BatchCreateSerializer(OpenAISerializer):
    """The body of POST /v1/batches."""

    # Validated with context={"request": request}: the Idempotency-Key header wins over the body.

    input_file_id = StringField(max_length=File._meta.get_field("id").max_length, help_text="A file with purpose 'batch'.")
    endpoint = StringField(choices=enabled_endpoints, help_text="The images endpoints only where EXTRA_ENDPOINTS lists them.")
    completion_window = StringField(
        choices=windows.allowed_windows,
        help_text="'24h' (OpenAI's only value), or any value of the site's OPENAI_BATCHES['COMPLETION_WINDOWS'].",
    )
    metadata = MetadataField(required=False, allow_null=True)
    output_expires_after = OutputExpiresAfterField(required=False, allow_null=True)
    idempotency_key = IdempotencyKeyField(required=False, help_text="Or the Idempotency-Key header, which wins.")

    def validate(self, attrs):
        """The ``Idempotency-Key`` header wins over the body field (which must still be well-formed)."""
        header = self.context["request"].headers.get("Idempotency-Key")
        if header:
            try:
                attrs["idempotency_key"] = self.fields["idempotency_key"].to_internal_value(header)
            except serializers.ValidationError as exc:
                raise serializers.ValidationError({"idempotency_key": exc.detail}) from None
        return attrs


class WebhookUrlField(StringField):
    """A URL that may receive webhooks (``webhooks.check_url``: public addresses only, ...)."""

    def to_internal_value(self, data):
        url = super().to_internal_value(data)
        if len(url) > MAX_URL_LENGTH:
            raise invalid(f"Invalid '{self.field_name}': longer than {MAX_URL_LENGTH} characters.", "invalid_value")
        try:
            check_url(url)
        except UnsafeURL as exc:
            raise invalid(str(exc), "invalid_url") from None
        return url

    def openapi_schema(self):
        return {"type": "string", "format": "uri", "maxLength": MAX_URL_LENGTH}


class EventTypesField(StringListField):
    """At least one of the webhook event types; repeats are dropped."""

    def to_internal_value(self, data):
        event_types = super().to_internal_value(data)
        if not event_types:
            raise invalid(f"Invalid '{self.field_name}': expected at least one event type.", "invalid_value")
        for event_type in event_types:
            if event_type not in WebhookEventType.values:
                raise invalid(
                    f"Invalid value: '{event_type}'. Supported values are: {choices_text(WebhookEventType.values)}.", "invalid_value"
                )
        return list(dict.fromkeys(event_types))

    def openapi_schema(self):
        return {"type": "array", "items": string_enum(WebhookEventType.values), "minItems": 1}


class WebhookEndpointCreateSerializer(OpenAISerializer):
    """The body of POST /v1/webhooks."""

    url = WebhookUrlField()
    event_types = EventTypesField()
