"""The /v1 API conventions both apps share, one concern per module (as DRF splits them):

* ``errors``: OpenAI's error envelope, ``OpenAIError``, the exception handler, the /v1 404.
* ``authentication``: bearer API keys.
* ``parsers``: the JSON parser (size limit, NUL characters, unpaired surrogates, non-finite numbers).
* ``negotiation``: JSON only, whatever the Accept header says.
* ``throttling``: the per-key rate (THROTTLE_RATE).
* ``pagination``: OpenAI's cursor lists.
* ``request_ids``: the ``x-request-id`` response header (a middleware).
* ``viewsets``: ``OpenAIViewSet``, the base of every /v1 viewset, with all of the above set on it.
"""

from .errors import OpenAIError, api_not_found, not_found
from .pagination import parse_limit
from .parsers import has_unstorable_text
from .viewsets import OpenAIViewSet

__all__ = ["OpenAIError", "OpenAIViewSet", "api_not_found", "has_unstorable_text", "not_found", "parse_limit"]
