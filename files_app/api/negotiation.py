"""Content negotiation of the /v1 API."""

from rest_framework.negotiation import BaseContentNegotiation


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
