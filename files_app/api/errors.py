"""The /v1 API's shared policies: OpenAI error envelope, auth, pagination.

Everything here is set on ``OpenAIViewSet`` so the host site's REST_FRAMEWORK
settings are left alone.
"""

import json
import logging
import math

from django.conf import settings
from django.core.exceptions import PermissionDenied, RequestDataTooBig, SuspiciousOperation
from django.db.models import Q
from django.http import Http404, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from rest_framework import exceptions, status, viewsets
from rest_framework.negotiation import BaseContentNegotiation
from rest_framework.parsers import JSONParser
from rest_framework.permissions import IsAuthenticated
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response
from rest_framework.throttling import SimpleRateThrottle

from .auth import ApiKeyAuthentication
from .conf import app_settings

logger = logging.getLogger("openai_batches.api")


class OpenAIError(exceptions.APIException):
    """An error rendered as OpenAI's ``{"error": {...}}`` body."""

    def __init__(self, message, *, status_code=400, type="invalid_request_error", param=None, code=None, headers=None):
        super().__init__(detail=message)
        self.status_code = status_code
        self.error = {"message": message, "type": type, "param": param, "code": code}
        self.headers = headers or {}


def not_found(kind, object_id):
    return OpenAIError(f"No such {kind} object: {object_id}", status_code=404, param="id", code=None)


def error_body(message, type="invalid_request_error", param=None, code=None):
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def _first_message(detail):
    """Flatten DRF's nested validation detail into (param, message)."""
    if isinstance(detail, dict):
        for key, value in detail.items():
            param, message = _first_message(value)
            if key == "non_field_errors":
                return param, message
            return (f"{key}.{param}" if param else key), message
    if isinstance(detail, list) and detail:
        return _first_message(detail[0])
    return None, str(detail)


def exception_handler(exc, context):
    """DRF exception handler that speaks OpenAI's error envelope for every status."""
    headers = {}
    if isinstance(exc, Http404):
        exc = OpenAIError("Not found.", status_code=404)
    elif isinstance(exc, PermissionDenied):
        exc = exceptions.PermissionDenied()
    elif isinstance(exc, RequestDataTooBig):
        exc = request_too_large()
    elif isinstance(exc, SuspiciousOperation):
        # Django's own request guards (too many form fields or files, ...): the client's fault.
        exc = OpenAIError(f"Invalid request: {exc}", code="invalid_request")

    if isinstance(exc, OpenAIError):
        body, status_code, headers = {"error": exc.error}, exc.status_code, exc.headers
    elif isinstance(exc, (exceptions.NotAuthenticated, exceptions.AuthenticationFailed)):
        message = (
            str(exc.detail)
            if isinstance(exc, exceptions.AuthenticationFailed)
            else ("You didn't provide an API key. Send 'Authorization: Bearer <key>'.")
        )
        body = error_body(message, code="invalid_api_key")
        status_code = status.HTTP_401_UNAUTHORIZED
        headers["WWW-Authenticate"] = 'Bearer realm="api"'
    elif isinstance(exc, exceptions.Throttled):
        body = error_body("Rate limit reached for requests. Please try again later.", type="requests", code="rate_limit_exceeded")
        status_code = exc.status_code
        if exc.wait is not None:
            headers["Retry-After"] = str(max(1, int(exc.wait + 0.999)))
    elif isinstance(exc, exceptions.ValidationError):
        param, message = _first_message(exc.detail)
        body = error_body(message, param=param, code=getattr(exc, "openai_code", None) or "invalid_value")
        status_code = 400
    elif isinstance(exc, exceptions.ParseError):
        body = error_body(
            "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your "
            "HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON.)"
        )
        status_code = 400
    elif isinstance(exc, exceptions.APIException):
        body = error_body(str(exc.detail), code=exc.get_codes() if isinstance(exc.get_codes(), str) else None)
        status_code = exc.status_code
        if isinstance(exc, exceptions.MethodNotAllowed):
            body["error"]["message"] = f"Method {context['request'].method} not allowed for this route."
    else:
        logger.exception("api.unhandled_exception view=%s", type(context.get("view")).__name__)
        body = error_body("The server had an error while processing your request.", type="server_error")
        status_code = 500
    if status_code >= 500:
        body["error"]["type"] = "server_error"
    return Response(body, status=status_code, headers=headers)


def request_too_large():
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    return OpenAIError(
        f"The request body is too large. The maximum is {limit} bytes.", status_code=413, param=None, code="request_too_large"
    )


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


class IgnoreAcceptNegotiation(BaseContentNegotiation):
    """The API only speaks JSON (and raw bytes for file content).

    The SDK downloads file content with ``Accept: application/binary``; DRF's
    default negotiation would answer 406 to that.
    """

    def select_parser(self, request, parsers):
        for parser in parsers:
            if request.content_type.startswith(parser.media_type.split(";")[0]) or parser.media_type == "*/*":
                return parser
        return None

    def select_renderer(self, request, renderers, format_suffix=None):
        return renderers[0], renderers[0].media_type


class ApiKeyRateThrottle(SimpleRateThrottle):
    scope = "openai_batches"

    def get_rate(self):
        return app_settings.THROTTLE_RATE

    def allow_request(self, request, view):
        # The rate is read on each request so the setting stays live.
        self.rate = self.get_rate()
        if self.rate is None:
            return True
        self.num_requests, self.duration = self.parse_rate(self.rate)
        return super().allow_request(request, view)

    def get_cache_key(self, request, view):
        key = request.auth
        ident = f"key{key.pk}" if key is not None else self.get_ident(request)
        return self.cache_format % {"scope": self.scope, "ident": ident}


class OpenAIViewSet(viewsets.GenericViewSet):
    authentication_classes = [ApiKeyAuthentication]
    permission_classes = [IsAuthenticated]
    throttle_classes = [ApiKeyRateThrottle]
    parser_classes = [OpenAIJSONParser]
    renderer_classes = [JSONRenderer]
    content_negotiation_class = IgnoreAcceptNegotiation
    pagination_class = None
    # No OPTIONS: DRF's metadata for it needs serializers these views do not have.
    http_method_names = [method for method in viewsets.GenericViewSet.http_method_names if method != "options"]

    def get_exception_handler(self):
        return exception_handler

    def initial(self, request, *args, **kwargs):
        super().initial(request, *args, **kwargs)
        # Ids and filters go straight into queries; PostgreSQL rejects NUL characters
        # with a database error, so they are a client error here, on every database.
        for name, values in [*((k, [v]) for k, v in kwargs.items()), *request.query_params.lists()]:
            if "\x00" in name or any("\x00" in str(value) for value in values):
                param = name.replace("\x00", "")
                raise OpenAIError(f"Invalid '{param}': contains a NUL character.", param=param, code="invalid_value")

    def permission_denied(self, request, message=None, code=None):
        # Unauthenticated requests are 401 (DRF would pick 403 in some cases).
        if request.authenticators and not request.successful_authenticator:
            raise exceptions.NotAuthenticated()
        super().permission_denied(request, message=message, code=code)

    def paginate(self, queryset, *, order="desc", after=None, limit=20, max_limit=100, to_openai):
        """OpenAI cursor pagination: ``after`` is the id of the last item of the previous page.

        Items are ordered by (created_at, id) so ties never skip or repeat rows.
        """
        limit = parse_limit(limit, max_limit)
        descending = order != "asc"
        ordering = ["-created_at", "-id"] if descending else ["created_at", "id"]
        queryset = queryset.order_by(*ordering)
        if after:
            cursor = queryset.model.objects.filter(pk__in=queryset.values("pk")).filter(pk=after).first()
            if cursor is None:
                raise OpenAIError(f"Invalid 'after': no object with id '{after}' in this list.", param="after", code="invalid_value")
            op = "lt" if descending else "gt"
            queryset = queryset.filter(
                Q(**{f"created_at__{op}": cursor.created_at}) | Q(created_at=cursor.created_at, **{f"id__{op}": cursor.pk})
            )
        rows = list(queryset[: limit + 1])
        has_more = len(rows) > limit
        data = [to_openai(row) for row in rows[:limit]]
        return Response(
            {
                "object": "list",
                "data": data,
                "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None,
                "has_more": has_more,
            }
        )


def parse_limit(raw, max_limit):
    try:
        limit = int(raw)
    except (TypeError, ValueError):
        raise OpenAIError(f"Invalid 'limit': expected an integer, got '{raw}'.", param="limit", code="invalid_type")
    if not 1 <= limit <= max_limit:
        raise OpenAIError(
            f"Invalid 'limit': integer below minimum value or above maximum value. Expected a value between 1 and "
            f"{max_limit}, but got {limit} instead.",
            param="limit",
            code="integer_out_of_range",
        )
    return limit


@csrf_exempt  # API clients send no CSRF token: a POST must get the 404 body, not a 403 page
def api_not_found(request, *args, **kwargs):
    """Catch-all for unknown /v1 routes: OpenAI's 404 body, not Django's HTML page."""
    body = error_body(f"Invalid URL ({request.method} {request.path})")
    return JsonResponse(body, status=404)
