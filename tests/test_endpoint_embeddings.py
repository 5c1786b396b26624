"""/v1/embeddings batches through the live stack, output parsed with the SDK's
``CreateEmbeddingResponse``; also the two ways nothing succeeds (every request
rejected, the file rejected at validation)."""

import base64
import struct

import pytest
from openai.types import CreateEmbeddingResponse

from tests.live_batches import check_batch_fields, create_and_wait, error_lines, output_bodies, usage_of

pytestmark = pytest.mark.live

ENDPOINT = "/v1/embeddings"


def embedding_line(custom_id, value, **body):
    return {"custom_id": custom_id, "method": "POST", "url": ENDPOINT, "body": {"model": "fake-embed", "input": value, **body}}


def test_embeddings_batch_output_parses_as_embedding_responses(live_client):
    lines = [
        embedding_line("string", "the quick brown fox"),
        embedding_line("strings", ["one", "two", "three"]),
        embedding_line("tokens", [10, 20, 30]),
        embedding_line("token-arrays", [[1, 2], [3]]),
        embedding_line("base64", "packed", encoding_format="base64"),
    ]
    batch = create_and_wait(live_client, ENDPOINT, lines)
    raw = check_batch_fields(live_client, batch, model="fake-embed", total=5, completed=5, failed=0)

    bodies = output_bodies(live_client, batch)
    assert set(bodies) == {line["custom_id"] for line in lines}
    # base64 vectors stay strings on the wire (the SDK decodes them itself), so only float bodies parse as the type.
    responses = {custom_id: CreateEmbeddingResponse.model_validate(body) for custom_id, body in bodies.items() if custom_id != "base64"}
    expected_vectors = {"string": 1, "strings": 3, "tokens": 1, "token-arrays": 2}
    for custom_id, count in expected_vectors.items():
        response = responses[custom_id]
        assert response.object == "list" and response.model == "fake-embed"
        assert [item.index for item in response.data] == list(range(count))
        assert all(item.object == "embedding" and item.embedding and isinstance(item.embedding[0], float) for item in response.data)
    packed = base64.b64decode(bodies["base64"]["data"][0]["embedding"])
    assert len(struct.unpack(f"<{len(packed) // 4}f", packed)) == len(responses["string"].data[0].embedding)

    usage = raw["usage"]
    assert (usage["input_tokens"], usage["output_tokens"]) == usage_of(bodies.values())
    assert usage["output_tokens"] == 0 and usage["total_tokens"] == usage["input_tokens"] > 0


def test_embeddings_batch_where_every_request_is_rejected_has_no_output_file(live_client):
    lines = [
        embedding_line("empty-string", ""),
        embedding_line("empty-array", []),
        embedding_line("mixed", ["text", 5]),
        embedding_line("dimensions-zero", "x", dimensions=0),
    ]
    batch = create_and_wait(live_client, ENDPOINT, lines)
    raw = check_batch_fields(live_client, batch, model="fake-embed", total=4, completed=0, failed=4)
    assert raw["output_file_id"] is None

    failures = error_lines(live_client, batch)
    assert {custom_id: line["response"]["body"]["error"]["code"] for custom_id, line in failures.items()} == {
        "empty-string": "empty_string",
        "empty-array": "empty_array",
        "mixed": "invalid_type",
        "dimensions-zero": "integer_below_min_value",
    }
    assert raw["usage"]["total_tokens"] == 0


def test_embeddings_file_with_schema_errors_fails_at_validation(live_client):
    lines = [
        embedding_line("ok", "fine"),
        embedding_line("object-input", {"text": "no"}),
        {"custom_id": "no-input", "method": "POST", "url": ENDPOINT, "body": {"model": "fake-embed"}},
        embedding_line("streamed", "x", stream=True),
    ]
    batch = create_and_wait(live_client, ENDPOINT, lines)
    raw = check_batch_fields(live_client, batch, status="failed", model=None, total=0, completed=0, failed=0)
    assert [(e["code"], e["param"], e["line"]) for e in raw["errors"]["data"]] == [
        ("invalid_request", "body.input", 2),
        ("invalid_request", "body.input", 3),
        ("streaming_unsupported", "body.stream", 4),
    ]
    assert batch.errors.data[0].line == 2  # the SDK's own Errors type reads them too
    assert raw["usage"] is None
