"""Bearer-key authentication for the /v1 API."""

from datetime import timedelta

from django.utils import timezone
from rest_framework import authentication, exceptions

from ..models import ApiKey, hash_key

# last_used_at is informational; writing it on every request would serialise
# SQLite writers behind API reads.
LAST_USED_RESOLUTION = timedelta(minutes=1)


class ApiKeyAuthentication(authentication.BaseAuthentication):
    keyword = "Bearer"

    def authenticate(self, request):
        header = authentication.get_authorization_header(request).split()
        if not header:
            return None
        if header[0].lower() != self.keyword.lower().encode() or len(header) != 2:
            raise exceptions.AuthenticationFailed("Incorrect API key format. Send 'Authorization: Bearer <key>'.", code="invalid_api_key")
        try:
            raw = header[1].decode("ascii")
        except UnicodeDecodeError:
            raise exceptions.AuthenticationFailed("Incorrect API key provided.", code="invalid_api_key")
        api_key = ApiKey.objects.active().select_related("user").filter(key_hash=hash_key(raw)).first()
        if api_key is None or not api_key.user.is_active:
            raise exceptions.AuthenticationFailed("Incorrect API key provided.", code="invalid_api_key")
        now = timezone.now()
        if api_key.last_used_at is None or now - api_key.last_used_at > LAST_USED_RESOLUTION:
            ApiKey.objects.filter(pk=api_key.pk).update(last_used_at=now)
        return api_key.user, api_key

    def authenticate_header(self, request):
        # Without this DRF turns 401 into 403, which the SDK maps to the wrong error.
        return 'Bearer realm="api"'
