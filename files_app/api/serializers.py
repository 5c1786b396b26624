"""Request bodies checked by DRF serializers whose errors are OpenAI's.

Each field raises its error with OpenAI's message and ``code``; the exception
handler (``errors.py``) renders the first error of a serializer as OpenAI's
envelope, with the field's path as ``param`` (``metadata.key``,
``expires_after.seconds``; a body that is not an object has ``param: null``).
A view validates with ``serializer.is_valid(raise_exception=True)``.
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

    def validate_empty_values(self, data):
        missing = data is empty or data is None or (self.blank_is_missing and self.required and data == "")
        if not missing:
            return False, data
        if self.required:
            raise self.missing()
        return True, None

    def to_representation(self, value):
        return value

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
        choices = self.choices() if callable(self.choices) else self.choices
        if choices is not None and data not in choices:
            raise invalid(self.invalid_choice.format(param=self.field_name, value=data, choices=choices_text(choices)), "invalid_value")
        return data


class StringListField(OpenAIField):
    """A JSON array of strings."""

    def to_internal_value(self, data):
        if not isinstance(data, list) or not all(isinstance(item, str) for item in data):
            raise self.wrong_type("an array of strings")
        return data


class IntegerField(OpenAIField):
    """A JSON integer (not a boolean, not a string of digits)."""

    blank_is_missing = True

    def to_internal_value(self, data):
        if not isinstance(data, int) or isinstance(data, bool):
            raise self.wrong_type("an integer")
        return data
