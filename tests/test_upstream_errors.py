"""The codes a request gets when the upstream never answered (docs/compatibility.md: Output and error
files): ``upstream_timeout`` and ``upstream_unreachable``, with ``response: null``."""

import asyncio

import aiohttp
import pytest

from batches import upstream


class FailingClient:
    api_key = "sk-upstream-secret"

    def __init__(self, exc):
        self.exc = exc

    async def post(self, path, body):
        raise self.exc


@pytest.mark.parametrize(
    "exc, code",
    [
        (TimeoutError(), "upstream_timeout"),
        (ConnectionRefusedError(111, "Connection refused"), "upstream_unreachable"),
        (ConnectionResetError(104, "Connection reset by peer"), "upstream_unreachable"),
        (aiohttp.ClientConnectorError(None, OSError(-2, "Name or service not known")), "upstream_unreachable"),
        (aiohttp.ServerDisconnectedError(), "upstream_unreachable"),
    ],
)
def test_connection_level_failures_are_retried_with_a_documented_code(exc, code):
    outcome = asyncio.run(upstream.send(FailingClient(exc), "/v1/chat/completions", {"model": "m"}))
    assert (outcome.kind, outcome.connection_error, outcome.status_code) == ("retry", True, None)
    assert outcome.error["code"] == code and outcome.error["message"]
    assert "sk-upstream-secret" not in outcome.error["message"]
