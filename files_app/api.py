"""The /v1 API's shared policies: OpenAI error envelope, auth, pagination.

Everything here is set on ``OpenAIViewSet`` so the host site's REST_FRAMEWORK
settings are left alone.
"""

import logging

from django.core.exceptions import PermissionDenied
from django.db.models import Q
from django.http import Http404, JsonResponse
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

    if isinstance(exc, OpenAIError):
        body, status_code, headers = {"error": exc.error}, exc.status_code, exc.headers
    elif isinstance(exc, (exceptions.NotAuthenticated, exceptions.AuthenticationFailed)):
        message = str(exc.detail) if isinstance(exc, exceptions.AuthenticationFailed) else (
            "You didn't provide an API key. Send 'Authorization: Bearer <key>'."
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
    parser_classes = [JSONParser]
    renderer_classes = [JSONRenderer]
    content_negotiation_class = IgnoreAcceptNegotiation
    pagination_class = None

    def get_exception_handler(self):
        return exception_handler

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
            f"Invalid 'limit': integer below minimum value or above maximum value. Expected a value between 1 and {max_limit}, but got {limit} instead.",
            param="limit",
            code="integer_out_of_range",
        )
    return limit


def api_not_found(request, *args, **kwargs):
    """Catch-all for unknown /v1 routes: OpenAI's 404 body, not Django's HTML page."""
    body = error_body(f"Invalid URL ({request.method} {request.path})")
    return JsonResponse(body, status=404)
