"""Request ids: every response carries one, as OpenAI's do."""

import secrets


class RequestIdMiddleware:
    """Every response carries ``x-request-id`` (the SDK exposes it as ``_request_id``)."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        request_id = f"req_{secrets.token_hex(16)}"
        response = self.get_response(request)
        response.headers.setdefault("x-request-id", request_id)
        return response
