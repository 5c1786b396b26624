"""OpenAI's error envelope ``{"error": {"message", "type", "param", "code"}}``:
the exception that carries it, DRF's exception handler that renders every error
in it, and the 404 of unknown /v1 routes."""

import logging

from django.conf import settings
from django.core.exceptions import PermissionDenied, RequestDataTooBig, SuspiciousOperation
from django.http import Http404, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.settings import api_settings

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
        # A request body's serializer (serializers.py): its first error, at the field's path.
        param, detail = first_error(exc.detail)
        body = error_body(str(detail), param=param, code=getattr(detail, "code", None))
        status_code = exc.status_code
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
        body = server_error_body()
        status_code = 500
    if status_code >= 500:
        body["error"]["type"] = "server_error"
    return Response(body, status=status_code, headers=headers)


def first_error(detail):
    """The first error of a serializer's (nested) errors, and its path as OpenAI's ``param``
    (``metadata.key``; None for an error of the whole body)."""
    path = []
    while isinstance(detail, (dict, list)):
        if isinstance(detail, list):
            detail = detail[0]
        else:
            key, detail = next(iter(detail.items()))
            if key != api_settings.NON_FIELD_ERRORS_KEY:
                path.append(str(key))
    return ".".join(path) or None, detail


def request_too_large():
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    return OpenAIError(
        f"The request body is too large. The maximum is {limit} bytes.", status_code=413, param=None, code="request_too_large"
    )


def server_error_body():
    return error_body("The server had an error while processing your request.", type="server_error")


def api_server_error(request, *args, **kwargs):
    """A site's ``handler500`` for its /v1 routes (errors outside DRF's views, in a
    middleware say): OpenAI's 500 body, not an HTML page."""
    return JsonResponse(server_error_body(), status=500)


@csrf_exempt  # API clients send no CSRF token: a POST must get the 404 body, not a 403 page
def api_not_found(request, *args, **kwargs):
    """Catch-all for unknown /v1 routes: OpenAI's 404 body, not Django's HTML page."""
    body = error_body(f"Invalid URL ({request.method} {request.path})")
    return JsonResponse(body, status=404)
