"""Running one batch end to end through the live stack with the unmodified SDK,
and the checks every endpoint's live test shares (the Batch object's fields and
nullability, output/error file lines)."""

import io
import json
import time

from openai.types import Batch

from tests.conftest import jsonl
from tests.live import wait_for_batch

TIMESTAMPS = ("in_progress_at", "finalizing_at", "completed_at", "failed_at", "expired_at", "cancelling_at", "cancelled_at")


def upload_lines(client, lines, filename="input.jsonl", **kwargs):
    return client.files.create(file=(filename, io.BytesIO(jsonl(lines))), purpose="batch", **kwargs)


def raw_batch(client, batch_id):
    """The Batch as JSON, to tell a null field from a missing one (the SDK cannot)."""
    return client.batches.with_raw_response.retrieve(batch_id).http_response.json()


def create_and_wait(client, endpoint, lines, **create_kwargs):
    """Upload, create, check the just-created Batch, wait for the end; returns the final Batch."""
    input_file = upload_lines(client, lines)
    before = int(time.time())
    created = client.batches.create(input_file_id=input_file.id, endpoint=endpoint, completion_window="24h", **create_kwargs)
    assert created.status == "validating"
    assert created.endpoint == endpoint and created.input_file_id == input_file.id and created.completion_window == "24h"
    assert before - 1 <= created.created_at <= int(time.time()) + 1
    assert created.expires_at == created.created_at + 86400  # set at create, not when processing starts
    assert created.request_counts.model_dump() == {"total": 0, "completed": 0, "failed": 0}
    assert created.errors is None and created.output_file_id is None and created.error_file_id is None
    assert created.usage is None
    return wait_for_batch(client, created.id, timeout=120)


def check_batch_fields(client, batch, *, status="completed", model, total, completed, failed):
    """Every field of OpenAI's Batch is present with the right nullability for a finished batch."""
    raw = raw_batch(client, batch.id)
    assert set(Batch.model_fields) <= set(raw), set(Batch.model_fields) - set(raw)
    assert raw["object"] == "batch" and raw["status"] == status, raw
    assert raw["model"] == model
    assert raw["request_counts"] == {"total": total, "completed": completed, "failed": failed}
    stamps = {name: raw[name] for name in TIMESTAMPS}
    if status == "completed":
        assert raw["errors"] is None
        assert raw["created_at"] <= stamps["in_progress_at"] <= stamps["finalizing_at"] <= stamps["completed_at"]
        assert all(stamps[name] is None for name in ("failed_at", "expired_at", "cancelling_at", "cancelled_at"))
        assert (raw["output_file_id"] is None) == (completed == 0), "output_file_id is null exactly when nothing succeeded"
        assert (raw["error_file_id"] is None) == (failed == 0), "error_file_id is null exactly when nothing failed"
        usage = raw["usage"]
        assert set(usage) == {"input_tokens", "input_tokens_details", "output_tokens", "output_tokens_details", "total_tokens"}
        assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
        assert isinstance(usage["input_tokens_details"]["cached_tokens"], int)
        assert isinstance(usage["output_tokens_details"]["reasoning_tokens"], int)
    else:  # failed at validation
        assert raw["errors"]["object"] == "list" and raw["errors"]["data"]
        assert raw["failed_at"] >= raw["created_at"]
        assert all(stamps[name] is None for name in TIMESTAMPS if name != "failed_at")
        assert raw["output_file_id"] is None and raw["error_file_id"] is None
    return raw


def file_lines(client, file_id):
    """Parsed JSONL lines of a result file, after checking its File object."""
    info = client.files.retrieve(file_id)
    assert info.purpose == "batch_output" and info.filename.endswith(".jsonl") and info.status == "processed"
    content = client.files.content(file_id).content
    assert info.bytes == len(content)
    lines = [json.loads(text) for text in content.decode().splitlines()]
    for line in lines:
        assert set(line) == {"id", "custom_id", "response", "error"}
        assert line["id"].startswith("batch_req_")
    return lines


def output_bodies(client, batch):
    """custom_id -> response body of each succeeded request (status 200, error null)."""
    bodies = {}
    for line in file_lines(client, batch.output_file_id):
        assert line["error"] is None
        assert line["response"]["status_code"] == 200
        assert line["response"]["request_id"]
        bodies[line["custom_id"]] = line["response"]["body"]
    return bodies


def error_lines(client, batch):
    """custom_id -> line of each failed request; failures carry a non-null error (on purpose, see docs/compatibility.md)."""
    lines = {}
    for line in file_lines(client, batch.error_file_id):
        assert line["response"]["status_code"] >= 400
        assert line["response"]["body"]["error"]["message"]
        assert line["error"]["code"] and line["error"]["message"]
        lines[line["custom_id"]] = line
    return lines


def usage_of(bodies):
    """(input, output) tokens summed the way OpenAI reports a batch's usage."""
    input_tokens = output_tokens = 0
    for body in bodies:
        usage = body.get("usage") or {}
        input_tokens += usage.get("input_tokens", usage.get("prompt_tokens", 0))
        output_tokens += usage.get("output_tokens", usage.get("completion_tokens", 0))
    return input_tokens, output_tokens
