"""Request bodies checked by DRF serializers whose errors are OpenAI's.

Each field raises its error with OpenAI's message and ``code``; the exception
handler (``errors.py``) renders the first error of a serializer as OpenAI's
envelope, with the field's path as ``param`` (``metadata.key``,
``expires_after.seconds``; a body that is not an object has ``param: null``).
A view validates with ``serializer.is_valid(raise_exception=True)``. Each field
also says what it accepts as JSON schema (``openapi_schema()``), which
``files_app/schema.py`` hands to drf-spectacular: the OpenAPI request bodies are
these serializers.
"""

from collections.abc import Mapping

from rest_framework import serializers
from rest_framework.fields import empty
from rest_framework.settings import api_settings


def invalid(message, code, *path):
    """The error of a field (or, with ``path``, of a part of it: ``metadata`` → ``metadata.key``)."""
    detail = message
    for key in reversed(path):
        detail = {key: detail}
    return serializers.ValidationError(detail, code=code)


def string_enum(values):
    """A string limited to ``values``, in ``allOf`` so that drf-spectacular's enum
    post-processing leaves it inline (it would hoist each set into a component)."""
    return {"type": "string", "allOf": [{"enum": list(values)}]}


def choices_text(values):
    return ", ".join(repr(value) for value in values)


class OpenAISerializer(serializers.Serializer):
    """A request body: a JSON object (or form) of OpenAI fields."""

    def to_internal_value(self, data):
        if not isinstance(data, Mapping):
            raise invalid("The request body must be a JSON object.", "invalid_type", api_settings.NON_FIELD_ERRORS_KEY)
        return super().to_internal_value(data)


class OpenAIField(serializers.Field):
    """A body field with OpenAI's errors. Required fields are missing when absent or null
    (strings also when empty); optional ones are None when absent or null."""

    blank_is_missing = False

    def __init__(self, **kwargs):
        kwargs.setdefault("allow_null", kwargs.get("required") is False)  # the schema then says so: `nullable`
        super().__init__(**kwargs)

    def validate_empty_values(self, data):
        missing = data is empty or data is None or (self.blank_is_missing and self.required and data == "")
        if not missing:
            return False, data
        if self.required:
            raise self.missing()
        return True, None

    def to_representation(self, value):
        return value

    def openapi_schema(self):
        """What the field accepts, as OpenAPI (JSON) schema."""
        raise NotImplementedError

    def missing(self):
        return invalid(f"Missing required parameter: '{self.field_name}'.", "missing_required_parameter")

    def wrong_type(self, expected):
        return invalid(f"Invalid type for '{self.field_name}': expected {expected}.", "invalid_type")


class StringField(OpenAIField):
    """A JSON string; ``choices`` (values, or a callable that returns them, read on each
    request) are the values it may take."""

    blank_is_missing = True
    invalid_choice = "Invalid value: '{value}'. Supported values are: {choices}."

    def __init__(self, *, max_length=None, choices=None, **kwargs):
        super().__init__(**kwargs)
        self.max_length, self.choices = max_length, choices

    def to_internal_value(self, data):
        if not isinstance(data, str):
            raise self.wrong_type("a string")
        if self.max_length is not None and len(data) > self.max_length:
            raise invalid(
                f"Invalid '{self.field_name}': string too long. Expected a string with maximum length {self.max_length}, "
                f"but got a string with length {len(data)} instead.",
                "string_above_max_length",
            )
        choices = self.current_choices()
        if choices is not None and data not in choices:
            raise invalid(self.invalid_choice.format(param=self.field_name, value=data, choices=choices_text(choices)), "invalid_value")
        return data

    def current_choices(self):
        return self.choices() if callable(self.choices) else self.choices

    def openapi_schema(self):
        choices = self.current_choices()
        schema = string_enum(choices) if choices is not None else {"type": "string"}
        return {**schema, "maxLength": self.max_length} if self.max_length is not None else schema


class StringListField(OpenAIField):
    """A JSON array of strings."""

    def to_internal_value(self, data):
        if not isinstance(data, list) or not all(isinstance(item, str) for item in data):
            raise self.wrong_type("an array of strings")
        return data

    def openapi_schema(self):
        return {"type": "array", "items": {"type": "string"}}


class IntegerField(OpenAIField):
    """A JSON integer (not a boolean, not a string of digits), from ``min_value`` to
    ``max_value`` (a number, or a callable that returns it, read on each request)."""

    blank_is_missing = True

    def __init__(self, *, min_value=None, max_value=None, **kwargs):
        super().__init__(**kwargs)
        self.min_value, self.max_value = min_value, max_value

    def bounds(self):
        return self.min_value, self.max_value() if callable(self.max_value) else self.max_value

    def to_internal_value(self, data):
        if not isinstance(data, int) or isinstance(data, bool):
            raise self.wrong_type("an integer")
        low, high = self.bounds()
        if (low is not None and data < low) or (high is not None and data > high):
            raise invalid(
                f"Invalid '{self.field_name}': expected a value between {low} and {high}, but got {data} instead.", "integer_out_of_range"
            )
        return data

    def openapi_schema(self):
        low, high = self.bounds()
        bounds = {"minimum": low, "maximum": high}
        return {"type": "integer", **{key: value for key, value in bounds.items() if value is not None}}
