"""Every validation rule of the Batch API, one row each, with its code, param and line.

Three kinds of rows:

* ``FailsBatch``: the input file is checked by ``tasks.validate_batch``; the batch
  ends ``failed`` with exactly these ``errors.data`` entries (code, param, line)
  and no request rows.
* ``FailsRequest``: the file is valid but some lines break their endpoint's
  schema; the batch goes ``in_progress`` and those lines are stored as failed
  requests with OpenAI's 400 error body (they are never sent upstream).
* ``ApiError``: a call to the API is refused with OpenAI's error envelope and an
  ``x-request-id`` header (create-time checks store no batch).
"""

import io
import json
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from rest_framework.test import APIClient

from batches import tasks
from batches.models import Batch, BatchRequest, BatchStatus, RequestStatus
from tests.conftest import chat_line, jsonl

pytestmark = pytest.mark.django_db

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
EMBEDDINGS = "/v1/embeddings"
RESPONSES = "/v1/responses"
MODERATIONS = "/v1/moderations"

VALID_BODY = {
    CHAT: {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]},
    COMPLETIONS: {"model": "fake-model", "prompt": "hi"},
    EMBEDDINGS: {"model": "fake-embed", "input": "hi"},
    RESPONSES: {"model": "fake-model", "input": "hi"},
    MODERATIONS: {"model": "fake-model", "input": "hi"},
}


def line(custom_id, endpoint=CHAT, **body):
    """A valid line for ``endpoint``; ``body`` overrides fields (``None`` drops one)."""
    merged = {**VALID_BODY[endpoint], **body}
    return {"custom_id": custom_id, "method": "POST", "url": endpoint, "body": {k: v for k, v in merged.items() if v is not None}}


def envelope(custom_id="a", **overrides):
    """A chat line with envelope fields overridden (``...`` drops one)."""
    record = {**chat_line(custom_id), **overrides}
    return {k: v for k, v in record.items() if v is not ...}


def raw(*lines, newline=b"\n"):
    """Bytes of a file: dicts become JSON, bytes are written as they are."""
    return b"".join((json.dumps(item).encode() if isinstance(item, dict) else item) + newline for item in lines)


@dataclass
class FailsBatch:
    content: bytes | list
    errors: list  # [(code, param, line)] in errors.data order
    endpoint: str = CHAT
    settings: dict = field(default_factory=dict)
    delete_input: bool = False


@dataclass
class FailsRequest:
    content: bytes | list
    failed: list  # [(line, code, param)] rows answered locally with a 400
    endpoint: str = CHAT
    pending: tuple = (1,)  # lines that stay pending (will be sent upstream)


@dataclass
class ApiError:
    call: Callable  # (ctx) -> response
    status: int
    code: str | None
    param: str | None
    message: str | None = None  # a substring of error.message
    headers: dict = field(default_factory=dict)


def create_batch(**overrides):
    def call(ctx):
        payload = {"input_file_id": ctx.input_file().id, "endpoint": CHAT, "completion_window": "24h", **overrides}
        return ctx.api.post("/v1/batches", payload, format="json")

    return call


def create_with_file(**file_kwargs):
    def call(ctx):
        other = ctx.make_file([chat_line("a")], owner=ctx.api.user, **file_kwargs)
        return ctx.api.post("/v1/batches", {"input_file_id": other.id, "endpoint": CHAT, "completion_window": "24h"}, format="json")

    return call


def cancel_finished(status):
    def call(ctx):
        batch = ctx.make_batch([chat_line("a")], owner=ctx.api.user)
        Batch.objects.filter(pk=batch.id).update(status=status)
        return ctx.api.post(f"/v1/batches/{batch.id}/cancel")

    return call


def get(path, **params):
    return lambda ctx: ctx.api.get(path, params)


def upload_named(filename):
    def call(ctx):
        handle = io.BytesIO(jsonl([chat_line("a")]))
        handle.name = filename
        return ctx.api.post("/v1/files", {"file": handle, "purpose": "batch"}, format="multipart")

    return call


SEVENTEEN_PAIRS = {f"k{i}": "v" for i in range(17)}
TWO_INPUTS = ["one", "two"]

RULES = {
    # --- the file as a whole ---
    "empty file": FailsBatch(b"", [("empty_file", "input_file_id", None)]),
    "only blank lines is empty": FailsBatch(b"\n  \n\r\n", [("empty_file", "input_file_id", None)]),
    "more than MAX_REQUESTS_PER_BATCH requests": FailsBatch(
        [chat_line(f"r{i}") for i in range(4)], [("too_many_requests", None, 4)], settings={"MAX_REQUESTS_PER_BATCH": 3}
    ),
    "input file over MAX_INPUT_FILE_BYTES": FailsBatch(
        [chat_line("a"), chat_line("b")], [("file_too_large", "input_file_id", None)], settings={"MAX_INPUT_FILE_BYTES": 100}
    ),
    "input file deleted before validation": FailsBatch([chat_line("a")], [("invalid_request", "input_file_id", None)], delete_input=True),
    "more than one model in a file": FailsBatch(
        [chat_line("a"), chat_line("b", model="other-model"), chat_line("c")], [("mismatched_model", "body.model", 2)]
    ),
    "moderations: a model on some lines only": FailsBatch(
        [line("a", MODERATIONS, model=None), line("b", MODERATIONS)], [("mismatched_model", "body.model", 2)], endpoint=MODERATIONS
    ),
    "model not served by the upstream": FailsBatch([chat_line("a", model="no-such-model")], [("model_not_found", "body.model", 1)]),
    "embeddings: more than MAX_EMBEDDING_INPUTS_PER_BATCH inputs": FailsBatch(
        [line("a", EMBEDDINGS, input=TWO_INPUTS), line("b", EMBEDDINGS, input=TWO_INPUTS), line("c", EMBEDDINGS, input=TWO_INPUTS)],
        [("too_many_embedding_inputs", "body.input", 2)],
        endpoint=EMBEDDINGS,
        settings={"MAX_EMBEDDING_INPUTS_PER_BATCH": 3},
    ),
    # --- line syntax ---
    "invalid UTF-8": FailsBatch(raw(chat_line("a"), b'{"custom_id": "\xff\xfe"}'), [("invalid_json_line", None, 2)]),
    "invalid JSON": FailsBatch(raw(chat_line("a"), b'{"custom_id": "b",'), [("invalid_json_line", None, 2)]),
    "JSON that is not an object": FailsBatch(raw(b"[1, 2]"), [("invalid_json_line", None, 1)]),
    "NaN is not JSON": FailsBatch(raw(b'{"custom_id": "a", "x": NaN}'), [("invalid_json_line", None, 1)]),
    "a number too large for a double is not JSON": FailsBatch(
        raw(chat_line("a", temperature=1), b'{"custom_id": "b", "x": 1e400}'), [("invalid_json_line", None, 2)]
    ),
    "blank lines are skipped but counted": FailsBatch(raw(chat_line("a"), b"", b"   ", b"not json"), [("invalid_json_line", None, 4)]),
    "CRLF line endings are accepted": FailsBatch(
        raw(chat_line("a"), chat_line("b"), b"", envelope("c", url="/v1/embeddings"), newline=b"\r\n"),
        [("invalid_url", "url", 4)],
    ),
    # --- the line's envelope ---
    "custom_id missing": FailsBatch([envelope(custom_id=...)], [("missing_required_parameter", "custom_id", 1)]),
    "custom_id null": FailsBatch([envelope(custom_id=None)], [("missing_required_parameter", "custom_id", 1)]),
    "custom_id not a string": FailsBatch([envelope(custom_id=7)], [("invalid_type", "custom_id", 1)]),
    "custom_id empty": FailsBatch([envelope(custom_id="")], [("invalid_value", "custom_id", 1)]),
    "custom_id too long": FailsBatch([envelope(custom_id="x" * 513)], [("invalid_value", "custom_id", 1)]),
    "custom_id duplicated": FailsBatch([chat_line("a"), chat_line("b"), chat_line("a")], [("duplicate_custom_id", "custom_id", 3)]),
    "method missing": FailsBatch([envelope(method=...)], [("missing_required_parameter", "method", 1)]),
    "method not POST": FailsBatch([envelope(method="GET")], [("invalid_value", "method", 1)]),
    "url missing": FailsBatch([envelope(url=...)], [("missing_required_parameter", "url", 1)]),
    "url not the batch endpoint": FailsBatch([envelope(url="/v1/embeddings")], [("invalid_url", "url", 1)]),
    "body missing": FailsBatch([envelope(body=...)], [("missing_required_parameter", "body", 1)]),
    "body not an object": FailsBatch([envelope(body=["model", "fake-model"])], [("invalid_type", "body", 1)]),
    "body.stream true": FailsBatch([chat_line("a", stream=True)], [("streaming_unsupported", "body.stream", 1)]),
    # --- required body fields, per endpoint ---
    "chat: body.model missing": FailsBatch([line("a", model=None)], [("invalid_request", "body.model", 1)]),
    "chat: body.model not a string": FailsBatch([line("a", model=["fake-model"])], [("invalid_request", "body.model", 1)]),
    "chat: body.model empty": FailsBatch([line("a", model="")], [("invalid_request", "body.model", 1)]),
    "chat: body.messages missing": FailsBatch([line("a", messages=None)], [("invalid_request", "body.messages", 1)]),
    "chat: body.messages not an array": FailsBatch([line("a", messages="hi")], [("invalid_request", "body.messages", 1)]),
    "completions: body.prompt missing": FailsBatch(
        [line("a", COMPLETIONS, prompt=None)], [("invalid_request", "body.prompt", 1)], endpoint=COMPLETIONS
    ),
    "completions: body.prompt a number": FailsBatch(
        [line("a", COMPLETIONS, prompt=3)], [("invalid_request", "body.prompt", 1)], endpoint=COMPLETIONS
    ),
    "embeddings: body.input missing": FailsBatch(
        [line("a", EMBEDDINGS, input=None)], [("invalid_request", "body.input", 1)], endpoint=EMBEDDINGS
    ),
    "embeddings: body.input an object": FailsBatch(
        [line("a", EMBEDDINGS, input={"text": "hi"})], [("invalid_request", "body.input", 1)], endpoint=EMBEDDINGS
    ),
    "responses: body.input missing": FailsBatch(
        [line("a", RESPONSES, input=None)], [("invalid_request", "body.input", 1)], endpoint=RESPONSES
    ),
    "responses: previous_response_id, conversation or prompt instead of input": FailsRequest(
        [
            line("from-previous", RESPONSES, input=None, previous_response_id="resp_1"),
            line("from-conversation", RESPONSES, input=None, conversation="conv_1"),
            line("from-conversation-object", RESPONSES, input=None, conversation={"id": "conv_1"}),
            line("from-prompt", RESPONSES, input=None, prompt={"id": "pmpt_1"}),
            line("bad-conversation", RESPONSES, input=None, conversation=5),
        ],
        [(5, "invalid_type", "conversation")],
        RESPONSES,
        pending=(1, 2, 3, 4),
    ),
    "responses: none of input, previous_response_id, conversation, prompt": FailsBatch(
        [line("ok", RESPONSES, input=None, prompt={"id": "pmpt_1"}), line("a", RESPONSES, input=None, previous_response_id=None)],
        [("invalid_request", "body.input", 2)],
        endpoint=RESPONSES,
    ),
    "moderations: body.input missing": FailsBatch(
        [line("a", MODERATIONS, input=None)], [("invalid_request", "body.input", 1)], endpoint=MODERATIONS
    ),
    "moderations: body.model not a string": FailsBatch(
        [line("a", MODERATIONS, model=5)], [("invalid_request", "body.model", 1)], endpoint=MODERATIONS
    ),
    # --- collecting errors ---
    "all errors are collected, several per line": FailsBatch(
        raw(envelope("a", method="GET", url="/v1/completions"), chat_line("b"), b"{", envelope(custom_id=...)),
        [
            ("invalid_value", "method", 1),
            ("invalid_url", "url", 1),
            ("invalid_json_line", None, 3),
            ("missing_required_parameter", "custom_id", 4),
        ],
    ),
    "errors are capped at MAX_VALIDATION_ERRORS": FailsBatch(
        raw(*[b"{"] * 5), [("invalid_json_line", None, 1), ("invalid_json_line", None, 2)], settings={"MAX_VALIDATION_ERRORS": 2}
    ),
    # --- per-request schema rules: 400 in the error file, batch goes on ---
    "a UTF-8 byte order mark is accepted": FailsRequest(
        b"\xef\xbb\xbf" + raw(chat_line("ok"), chat_line("bad", n=0)), [(2, "integer_below_min_value", "n")]
    ),
    "CRLF line endings: requests stored without the CR": FailsRequest(
        raw(chat_line("ok"), chat_line("bad", max_tokens=-1), newline=b"\r\n"), [(2, "integer_below_min_value", "max_tokens")]
    ),
    "chat: max_tokens -1": FailsRequest([chat_line("ok"), chat_line("bad", max_tokens=-1)], [(2, "integer_below_min_value", "max_tokens")]),
    "chat: max_tokens 0": FailsRequest([chat_line("ok"), chat_line("bad", max_tokens=0)], [(2, "integer_below_min_value", "max_tokens")]),
    "chat: max_tokens a string": FailsRequest([chat_line("ok"), chat_line("bad", max_tokens="10")], [(2, "invalid_type", "max_tokens")]),
    "chat: max_completion_tokens 0": FailsRequest(
        [chat_line("ok"), chat_line("bad", max_completion_tokens=0)], [(2, "integer_below_min_value", "max_completion_tokens")]
    ),
    "chat: n 0": FailsRequest([chat_line("ok"), chat_line("bad", n=0)], [(2, "integer_below_min_value", "n")]),
    "chat: n 1.5": FailsRequest([chat_line("ok"), chat_line("bad", n=1.5)], [(2, "invalid_type", "n")]),
    "chat: temperature above 2": FailsRequest(
        [chat_line("ok"), chat_line("bad", temperature=2.5)], [(2, "decimal_above_max_value", "temperature")]
    ),
    "chat: temperature below 0": FailsRequest(
        [chat_line("ok"), chat_line("bad", temperature=-0.1)], [(2, "decimal_below_min_value", "temperature")]
    ),
    "chat: temperature a boolean": FailsRequest(
        [chat_line("ok"), chat_line("bad", temperature=True)], [(2, "invalid_type", "temperature")]
    ),
    "chat: top_p above 1": FailsRequest([chat_line("ok"), chat_line("bad", top_p=1.5)], [(2, "decimal_above_max_value", "top_p")]),
    "chat: presence_penalty below -2": FailsRequest(
        [chat_line("ok"), chat_line("bad", presence_penalty=-3)], [(2, "decimal_below_min_value", "presence_penalty")]
    ),
    "chat: top_logprobs above 20": FailsRequest(
        [chat_line("ok"), chat_line("bad", top_logprobs=21)], [(2, "integer_above_max_value", "top_logprobs")]
    ),
    "chat: logprobs not a boolean": FailsRequest([chat_line("ok"), chat_line("bad", logprobs=3)], [(2, "invalid_type", "logprobs")]),
    "chat: more than 4 stop sequences": FailsRequest(
        [chat_line("ok"), chat_line("bad", stop=list("abcde"))], [(2, "array_above_max_length", "stop")]
    ),
    "chat: logit_bias out of range": FailsRequest(
        [chat_line("ok"), chat_line("bad", logit_bias={"50256": -101})], [(2, "decimal_below_min_value", "logit_bias.50256")]
    ),
    "chat: stream not a boolean": FailsRequest([chat_line("ok"), chat_line("bad", stream="yes")], [(2, "invalid_type", "stream")]),
    "chat: stream_options without stream": FailsRequest(
        [chat_line("ok"), chat_line("bad", stream_options={"include_usage": True})], [(2, "invalid_value", "stream_options")]
    ),
    "chat: messages empty": FailsRequest([chat_line("ok"), line("bad", messages=[])], [(2, "empty_array", "messages")]),
    "chat: message role unknown": FailsRequest(
        [chat_line("ok"), line("bad", messages=[{"role": "bot", "content": "hi"}])], [(2, "invalid_value", "messages[0].role")]
    ),
    "chat: message content missing": FailsRequest(
        [chat_line("ok"), line("bad", messages=[{"role": "system", "content": "x"}, {"role": "user"}])],
        [(2, "missing_required_parameter", "messages[1].content")],
    ),
    "chat: tool message without tool_call_id": FailsRequest(
        [chat_line("ok"), line("bad", messages=[{"role": "tool", "content": "42"}])],
        [(2, "missing_required_parameter", "messages[0].tool_call_id")],
    ),
    "chat: content part without type": FailsRequest(
        [chat_line("ok"), line("bad", messages=[{"role": "user", "content": [{"text": "hi"}]}])],
        [(2, "missing_required_parameter", "messages[0].content[0].type")],
    ),
    "completions: max_tokens -1 (0 is allowed)": FailsRequest(
        [line("ok", COMPLETIONS, max_tokens=0), line("bad", COMPLETIONS, max_tokens=-1)],
        [(2, "integer_below_min_value", "max_tokens")],
        COMPLETIONS,
    ),
    "completions: best_of below n": FailsRequest(
        [line("ok", COMPLETIONS), line("bad", COMPLETIONS, n=3, best_of=2)], [(2, "invalid_value", "best_of")], COMPLETIONS
    ),
    "completions: logprobs above 5": FailsRequest(
        [line("ok", COMPLETIONS), line("bad", COMPLETIONS, logprobs=6)], [(2, "integer_above_max_value", "logprobs")], COMPLETIONS
    ),
    "completions: prompt mixing strings and tokens": FailsRequest(
        [line("ok", COMPLETIONS, prompt=[[1, 2], [3]]), line("bad", COMPLETIONS, prompt=["a", 1])],
        [(2, "invalid_type", "prompt")],
        COMPLETIONS,
    ),
    "embeddings: input empty string": FailsRequest(
        [line("ok", EMBEDDINGS), line("bad", EMBEDDINGS, input="")], [(2, "empty_string", "input")], EMBEDDINGS
    ),
    "embeddings: input array with an empty string": FailsRequest(
        [line("ok", EMBEDDINGS, input=["a", "b"]), line("bad", EMBEDDINGS, input=["a", ""])], [(2, "empty_string", "input[1]")], EMBEDDINGS
    ),
    "embeddings: input empty array": FailsRequest(
        [line("ok", EMBEDDINGS), line("bad", EMBEDDINGS, input=[])], [(2, "empty_array", "input")], EMBEDDINGS
    ),
    "embeddings: input of negative tokens": FailsRequest(
        [line("ok", EMBEDDINGS, input=[1, 2, 3]), line("bad", EMBEDDINGS, input=[1, -2])], [(2, "invalid_type", "input")], EMBEDDINGS
    ),
    "embeddings: more than 2048 inputs in one request": FailsRequest(
        [line("ok", EMBEDDINGS), line("bad", EMBEDDINGS, input=["x"] * 2049)], [(2, "array_above_max_length", "input")], EMBEDDINGS
    ),
    "embeddings: encoding_format unknown": FailsRequest(
        [line("ok", EMBEDDINGS, encoding_format="base64"), line("bad", EMBEDDINGS, encoding_format="int8")],
        [(2, "invalid_value", "encoding_format")],
        EMBEDDINGS,
    ),
    "embeddings: dimensions 0": FailsRequest(
        [line("ok", EMBEDDINGS), line("bad", EMBEDDINGS, dimensions=0)], [(2, "integer_below_min_value", "dimensions")], EMBEDDINGS
    ),
    "responses: max_output_tokens below 16": FailsRequest(
        [line("ok", RESPONSES, max_output_tokens=16), line("bad", RESPONSES, max_output_tokens=8)],
        [(2, "integer_below_min_value", "max_output_tokens")],
        RESPONSES,
    ),
    "responses: input item not an object": FailsRequest(
        [line("ok", RESPONSES, input=[{"role": "user", "content": "hi"}]), line("bad", RESPONSES, input=["hi"])],
        [(2, "invalid_type", "input[0]")],
        RESPONSES,
    ),
    "responses: input message role unknown": FailsRequest(
        [line("ok", RESPONSES), line("bad", RESPONSES, input=[{"role": "tool", "content": "hi"}])],
        [(2, "invalid_value", "input[0].role")],
        RESPONSES,
    ),
    "responses: truncation unknown": FailsRequest(
        [line("ok", RESPONSES, truncation="auto"), line("bad", RESPONSES, truncation="middle")],
        [(2, "invalid_value", "truncation")],
        RESPONSES,
    ),
    "moderations: input empty array": FailsRequest(
        [line("ok", MODERATIONS, input=["a", "b"]), line("bad", MODERATIONS, input=[])], [(2, "empty_array", "input")], MODERATIONS
    ),
    "moderations: input part of unknown type": FailsRequest(
        [line("ok", MODERATIONS, input=[{"type": "text", "text": "hi"}]), line("bad", MODERATIONS, input=[{"type": "video"}])],
        [(2, "invalid_value", "input[0].type")],
        MODERATIONS,
    ),
    "several bad requests, each answered": FailsRequest(
        [chat_line("ok"), chat_line("bad1", n=0), chat_line("ok2"), chat_line("bad2", temperature=9)],
        [(2, "integer_below_min_value", "n"), (4, "decimal_above_max_value", "temperature")],
        pending=(1, 3),
    ),
    # --- create-time checks (no batch is stored) ---
    "create: unknown endpoint": ApiError(
        create_batch(endpoint="/v1/images/generations"), 400, "invalid_value", "endpoint", "'/v1/moderations'"
    ),
    "create: completion_window not 24h": ApiError(create_batch(completion_window="48h"), 400, "invalid_value", "completion_window"),
    "create: metadata over 16 pairs": ApiError(create_batch(metadata=SEVENTEEN_PAIRS), 400, "object_above_max_properties", "metadata"),
    "create: metadata key over 64 chars": ApiError(
        create_batch(metadata={"k" * 65: "v"}), 400, "string_above_max_length", "metadata." + "k" * 65
    ),
    "create: metadata value over 512 chars": ApiError(
        create_batch(metadata={"note": "x" * 513}), 400, "string_above_max_length", "metadata.note"
    ),
    "create: metadata value not a string": ApiError(create_batch(metadata={"count": 3}), 400, "invalid_type", "metadata.count"),
    "create: input file of the wrong purpose": ApiError(create_with_file(purpose="fine-tune"), 400, "invalid_value", "input_file_id"),
    "create: input file id longer than any id": ApiError(
        create_batch(input_file_id="file-" + "x" * 64), 400, "string_above_max_length", "input_file_id"
    ),
    "create: output_expires_after below 3600 s": ApiError(
        create_batch(output_expires_after={"anchor": "created_at", "seconds": 3599}),
        400,
        "integer_out_of_range",
        "output_expires_after.seconds",
    ),
    "create: output_expires_after above 30 days": ApiError(
        create_batch(output_expires_after={"anchor": "created_at", "seconds": 2592001}),
        400,
        "integer_out_of_range",
        "output_expires_after.seconds",
    ),
    # --- files and the rest of the API ---
    "upload: batch input not .jsonl": ApiError(
        upload_named("input.json"), 400, "invalid_file_format", "file", "Invalid file format for Batch API. Must be .jsonl"
    ),
    "list batches: unknown after": ApiError(get("/v1/batches", after="batch_nope"), 400, "invalid_value", "after"),
    "list files: unknown after": ApiError(get("/v1/files", after="file-nope"), 400, "invalid_value", "after"),
    "retrieve: unknown batch": ApiError(get("/v1/batches/batch_nope"), 404, None, "id", "No such Batch object: batch_nope"),
    "retrieve: unknown file": ApiError(get("/v1/files/file-nope"), 404, None, "id", "No such File object: file-nope"),
    "content: unknown file": ApiError(get("/v1/files/file-nope/content"), 404, None, "id", "No such File object: file-nope"),
    "no API key": ApiError(lambda ctx: APIClient().get("/v1/batches"), 401, "invalid_api_key", None),
    "unknown route": ApiError(get("/v1/nothing-here"), 404, None, None, "Invalid URL (GET /v1/nothing-here)"),
    "cancel: completed batch": ApiError(
        cancel_finished(BatchStatus.COMPLETED),
        409,
        "batch_not_cancellable",
        None,
        "Cannot cancel a batch with status 'completed'.",
        headers={"x-should-retry": "false"},
    ),
    "cancel: failed batch": ApiError(
        cancel_finished(BatchStatus.FAILED), 409, "batch_not_cancellable", None, headers={"x-should-retry": "false"}
    ),
}


class Context:
    def __init__(self, api, make_file, make_batch):
        self.api, self.make_file, self.make_batch = api, make_file, make_batch

    def input_file(self):
        return self.make_file([chat_line("a")], owner=self.api.user)


def check_batch_failure(rule, make_batch):
    batch = make_batch(rule.content, endpoint=rule.endpoint)
    if rule.delete_input:
        batch.input_file.delete()
    tasks.validate_batch(batch.id)
    batch.refresh_from_db()

    assert batch.status == BatchStatus.FAILED
    assert batch.failed_at is not None
    assert [(e["code"], e["param"], e["line"]) for e in batch.errors] == rule.errors
    assert all(isinstance(e["message"], str) and e["message"] for e in batch.errors)
    assert batch.to_openai()["errors"]["object"] == "list"
    assert not BatchRequest.objects.filter(batch=batch).exists()


def check_request_failures(rule, make_batch, upstream):
    batch = make_batch(rule.content, endpoint=rule.endpoint)
    tasks.validate_batch(batch.id)
    batch.refresh_from_db()

    assert batch.status == BatchStatus.IN_PROGRESS, batch.errors
    assert batch.errors is None
    rows = {row.line: row for row in BatchRequest.objects.filter(batch=batch)}
    failed = [
        (n, r.response_body["error"]["code"], r.response_body["error"]["param"])
        for n, r in sorted(rows.items())
        if r.status == RequestStatus.FAILED
    ]
    assert failed == rule.failed
    for number, _, _ in rule.failed:
        row = rows[number]
        assert row.status_code == 400
        assert row.response_body["error"]["type"] == "invalid_request_error"
        assert row.error == {"code": row.response_body["error"]["code"], "message": row.response_body["error"]["message"]}
        assert row.to_output_line()["response"]["status_code"] == 400
    assert sorted(n for n, r in rows.items() if r.status == RequestStatus.PENDING) == list(rule.pending)
    assert (batch.total_requests, batch.failed_requests) == (len(rows), len(rule.failed))
    assert upstream.stats()["by_path"].get(rule.endpoint, 0) == 0  # nothing was sent upstream while validating


def check_api_error(rule, ctx):
    batches_before = Batch.objects.count()
    response = rule.call(ctx)

    assert response.status_code == rule.status, response.content
    assert response["x-request-id"].startswith("req_")
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["code"], error["param"]) == (rule.code, rule.param)
    assert error["message"] and (rule.message is None or rule.message in error["message"]), error["message"]
    for name, value in rule.headers.items():
        assert response[name] == value
    if rule.status in (400, 404) and response.request["PATH_INFO"] == "/v1/batches":
        assert Batch.objects.count() == batches_before  # a refused create stores nothing


@pytest.mark.parametrize("rule", list(RULES.values()), ids=list(RULES))
def test_validation_rule(rule, upstream, settings, api, make_file, make_batch):
    if getattr(rule, "settings", None):
        settings.OPENAI_BATCHES = {**settings.OPENAI_BATCHES, **rule.settings}
    if isinstance(rule, FailsBatch):
        check_batch_failure(rule, make_batch)
    elif isinstance(rule, FailsRequest):
        check_request_failures(rule, make_batch, upstream)
    else:
        check_api_error(rule, Context(api, make_file, make_batch))
