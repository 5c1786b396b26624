"""The JSON parser of the /v1 API: DRF's, with the limits an internet-facing API needs."""

import json
import math

from django.conf import settings
from rest_framework import exceptions
from rest_framework.parsers import JSONParser

from .errors import OpenAIError, request_too_large


def _finite_float(text):
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number out of range: {text[:40]}")
    return value


def _reject_constant(name):
    raise ValueError(f"{name} is not valid JSON")


def has_unstorable_text(value):
    """True if a string (key or value) in a parsed JSON document holds a NUL character or
    an unpaired surrogate ("\\ud800"): PostgreSQL cannot store either, and a surrogate
    cannot even be encoded into a UTF-8 response."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item or (not item.isascii() and not _encodable(item)):
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def _encodable(text):
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class OpenAIJSONParser(JSONParser):
    """DRF's JSON parser with the limits an internet-facing API needs.

    DRF reads the request stream itself, so Django's DATA_UPLOAD_MAX_MEMORY_SIZE
    never applies: the body is read up to that size and refused past it. JSON
    nested deeper than the interpreter can parse, non-finite numbers (NaN,
    Infinity, 1e400), NUL characters and unpaired surrogates are 400s.
    """

    def parse(self, stream, media_type=None, parser_context=None):
        parser_context = parser_context or {}
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        raw = stream.read() if limit is None else stream.read(limit + 1)
        if limit is not None and len(raw) > limit:
            raise request_too_large()
        encoding = parser_context.get("encoding") or settings.DEFAULT_CHARSET
        try:
            data = json.loads(raw.decode(encoding), parse_constant=_reject_constant, parse_float=_finite_float)
        except (ValueError, LookupError, RecursionError) as exc:
            raise exceptions.ParseError(f"JSON parse error - {type(exc).__name__}")
        if has_unstorable_text(data):
            raise OpenAIError(
                "The request body contains a NUL character (\\u0000) or an unpaired surrogate (\\ud800-\\udfff), which are not supported.",
                code="invalid_value",
            )
        return data
