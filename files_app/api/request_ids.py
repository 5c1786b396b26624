import secrets


class RequestIdMiddleware:
    """Every response carries ``x-request-id`` (the SDK exposes it as ``_request_id``)."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        request_id = f"req_{secrets.token_hex(16)}"
        request.openai_request_id = request_id
        response = self.get_response(request)
        response.headers.setdefault("x-request-id", request_id)
        return response
