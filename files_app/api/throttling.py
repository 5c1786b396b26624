"""Per-API-key throttling of the /v1 API (OPENAI_BATCHES["THROTTLE_RATE"])."""

from rest_framework.throttling import SimpleRateThrottle

from ..conf import app_settings


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
