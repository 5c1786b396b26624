"""Input validation: LineValidator and request_problem as units, then
tasks.validate_batch on stored files (with the fake upstream for the model check)."""

import json

import pytest

from batches import tasks
from batches.models import Batch, BatchRequest, BatchStatus, RequestStatus
from batches.validation import LineValidator, request_problem
from tests.conftest import chat_line, run_batches

CHAT = "/v1/chat/completions"


def raw(record):
    return (record if isinstance(record, str) else json.dumps(record)).encode()


def without(record, *keys):
    return {k: v for k, v in record.items() if k not in keys}


def with_body(**changes):
    line = chat_line("r1")
    body = {**line["body"], **changes}
    return {**line, "body": {k: v for k, v in body.items() if v is not ...}}


# --- LineValidator: one line at a time ----------------------------------------------------

LINE_ERRORS = [
    # (id, raw line, expected (code, param) list)
    ("not_json", "{nope", [("invalid_json_line", None)]),
    ("truncated_json", '{"custom_id": "a"', [("invalid_json_line", None)]),
    ("json_array", "[1, 2]", [("invalid_json_line", None)]),
    ("json_string", '"text"', [("invalid_json_line", None)]),
    ("missing_custom_id", without(chat_line("a"), "custom_id"), [("missing_required_parameter", "custom_id")]),
    ("null_custom_id", {**chat_line("a"), "custom_id": None}, [("missing_required_parameter", "custom_id")]),
    ("empty_custom_id", {**chat_line("a"), "custom_id": ""}, [("invalid_value", "custom_id")]),
    ("numeric_custom_id", {**chat_line("a"), "custom_id": 7}, [("invalid_type", "custom_id")]),
    ("missing_method", without(chat_line("a"), "method"), [("missing_required_parameter", "method")]),
    ("method_get", {**chat_line("a"), "method": "GET"}, [("invalid_value", "method")]),
    ("method_lowercase", {**chat_line("a"), "method": "post"}, [("invalid_value", "method")]),
    ("missing_url", without(chat_line("a"), "url"), [("missing_required_parameter", "url")]),
    ("other_url", {**chat_line("a"), "url": "/v1/embeddings"}, [("invalid_url", "url")]),
    ("url_without_v1", {**chat_line("a"), "url": "/chat/completions"}, [("invalid_url", "url")]),
    ("missing_body", without(chat_line("a"), "body"), [("missing_required_parameter", "body")]),
    ("body_not_object", {**chat_line("a"), "body": "hi"}, [("invalid_type", "body")]),
    ("messages_not_array", with_body(messages="hi"), [("invalid_request", "body.messages")]),
    ("stream_true", with_body(stream=True), [("streaming_unsupported", "body.stream")]),
    ("missing_model", with_body(model=...), [("invalid_request", "body.model")]),
    ("null_model", with_body(model=None), [("invalid_request", "body.model")]),
    ("model_not_string", with_body(model=5), [("invalid_request", "body.model")]),
    ("missing_messages", with_body(messages=...), [("invalid_request", "body.messages")]),
    (
        "several_problems",
        {"custom_id": "a", "method": "GET", "url": "/v1/x", "body": {"stream": True}},
        [
            ("invalid_value", "method"),
            ("invalid_url", "url"),
            ("streaming_unsupported", "body.stream"),
            ("invalid_request", "body.model"),
            ("invalid_request", "body.messages"),
        ],
    ),
]


@pytest.mark.parametrize("line, expected", [case[1:] for case in LINE_ERRORS], ids=[case[0] for case in LINE_ERRORS])
def test_line_errors(line, expected):
    valid, errors = LineValidator(CHAT).check(7, raw(line))
    assert valid is None
    assert [(e.code, e.param) for e in errors] == expected
    assert all(e.line == 7 and e.message for e in errors)


def test_invalid_utf8_is_an_invalid_json_line():
    valid, errors = LineValidator(CHAT).check(1, b'{"custom_id": "\xff"}')
    assert valid is None
    assert [(e.code, e.line) for e in errors] == [("invalid_json_line", 1)]


def test_valid_line():
    line = chat_line("r1", max_tokens=5)
    valid, errors = LineValidator(CHAT).check(3, raw(line))
    assert errors == []
    assert (valid.line, valid.custom_id, valid.body, valid.problem) == (3, "r1", line["body"], None)


def test_duplicate_custom_id_is_reported_on_the_second_line():
    validator = LineValidator(CHAT)
    assert validator.check(1, raw(chat_line("same")))[1] == []
    valid, errors = validator.check(2, raw(chat_line("same")))
    assert valid is None
    assert [(e.code, e.param, e.line) for e in errors] == [("duplicate_custom_id", "custom_id", 2)]


def test_one_model_per_file():
    validator = LineValidator(CHAT)
    validator.check(1, raw(chat_line("a", model="fake-model")))
    valid, errors = validator.check(2, raw(chat_line("b", model="other-model")))
    assert valid is None
    assert [(e.code, e.param, e.line) for e in errors] == [("mismatched_model", "body.model", 2)]
    assert validator.model == "fake-model"


def test_endpoint_specific_required_fields():
    line = {"custom_id": "e", "method": "POST", "url": "/v1/embeddings", "body": {"model": "fake-embed"}}
    _, errors = LineValidator("/v1/embeddings").check(1, raw(line))
    assert [(e.code, e.param) for e in errors] == [("invalid_request", "body.input")]
    moderation = {"custom_id": "m", "method": "POST", "url": "/v1/moderations", "body": {"input": "text"}}
    valid, errors = LineValidator("/v1/moderations").check(1, raw(moderation))
    assert errors == [] and valid.problem is None


# --- request_problem: per-request schema rules (a 400 in the error file) ----------------------

REQUEST_PROBLEMS = [
    # (id, body changes, param, code) — code None means the request is fine
    ("max_tokens_negative", {"max_tokens": -1}, "max_tokens", "integer_below_min_value"),
    ("max_tokens_zero", {"max_tokens": 0}, "max_tokens", "integer_below_min_value"),
    ("max_tokens_float", {"max_tokens": 1.5}, "max_tokens", "invalid_type"),
    ("max_tokens_bool", {"max_tokens": True}, "max_tokens", "invalid_type"),
    ("max_completion_tokens_zero", {"max_completion_tokens": 0}, "max_completion_tokens", "integer_below_min_value"),
    ("temperature_high", {"temperature": 2.5}, "temperature", "decimal_above_max_value"),
    ("temperature_string", {"temperature": "hot"}, "temperature", "invalid_type"),
    ("top_p_negative", {"top_p": -0.1}, "top_p", "decimal_below_min_value"),
    ("n_zero", {"n": 0}, "n", "integer_below_min_value"),
    ("logprobs_not_bool", {"logprobs": 3}, "logprobs", "invalid_type"),
    ("messages_empty", {"messages": []}, "messages", "empty_array"),
    ("messages_not_list", {"messages": "hi"}, "messages", "invalid_type"),
    ("message_not_object", {"messages": ["hi"]}, "messages[0]", "invalid_type"),
    ("message_bad_role", {"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role", "invalid_value"),
    (
        "message_no_content",
        {"messages": [{"role": "user", "content": "x"}, {"role": "user"}]},
        "messages[1].content",
        "missing_required_parameter",
    ),
    ("message_content_number", {"messages": [{"role": "user", "content": 5}]}, "messages[0].content", "invalid_type"),
    ("ok_plain", {}, None, None),
    ("ok_limits", {"max_tokens": 1, "temperature": 0, "top_p": 1, "n": 2, "logprobs": True}, None, None),
    ("ok_assistant_tool_call", {"messages": [{"role": "assistant", "tool_calls": [{"id": "t"}]}]}, None, None),
    ("ok_content_parts", {"messages": [{"role": "user", "content": [{"type": "text", "text": "x"}]}]}, None, None),
]


@pytest.mark.parametrize("changes, param, code", [c[1:] for c in REQUEST_PROBLEMS], ids=[c[0] for c in REQUEST_PROBLEMS])
def test_request_problem_for_chat(changes, param, code):
    problem = request_problem(CHAT, with_body(**changes)["body"])
    if code is None:
        assert problem is None
    else:
        assert problem["error"]["param"] == param
        assert problem["error"]["code"] == code
        assert problem["error"]["type"] == "invalid_request_error"
        assert problem["error"]["message"]


@pytest.mark.parametrize(
    "endpoint, body, param",
    [
        ("/v1/embeddings", {"model": "m", "input": ""}, "input"),
        ("/v1/embeddings", {"model": "m", "input": [1.5]}, "input"),
        ("/v1/embeddings", {"model": "m", "input": "x", "dimensions": 0}, "dimensions"),
        ("/v1/completions", {"model": "m", "prompt": {"a": 1}}, "prompt"),
        ("/v1/completions", {"model": "m", "prompt": "x", "logprobs": 6}, "logprobs"),
        ("/v1/moderations", {"input": 5}, "input"),
        ("/v1/responses", {"model": "m", "input": 5}, "input"),
        ("/v1/responses", {"model": "m", "input": "x", "max_output_tokens": 0}, "max_output_tokens"),
    ],
)
def test_request_problem_for_other_endpoints(endpoint, body, param):
    assert request_problem(endpoint, body)["error"]["param"] == param


def test_a_line_with_a_request_problem_is_still_valid():
    valid, errors = LineValidator(CHAT).check(1, raw(chat_line("a", max_tokens=-1)))
    assert errors == []
    assert valid.problem["error"]["param"] == "max_tokens"


# --- validate_batch on stored files -----------------------------------------------------------


@pytest.fixture
def validate(make_batch, upstream):
    """``validate(lines_or_bytes, **batch_fields)`` -> the batch after tasks.validate_batch."""

    def do(lines, **fields):
        batch = make_batch(lines, **fields)
        outcome = tasks.validate_batch(batch.id)
        batch.refresh_from_db()
        batch.outcome = outcome
        return batch

    return do


def errors_of(batch):
    assert batch.status == BatchStatus.FAILED, batch.status
    assert batch.failed_at is not None
    data = batch.to_openai()["errors"]["data"]
    assert all(set(e) == {"code", "message", "param", "line"} and e["message"] for e in data)
    return [(e["code"], e["param"], e["line"]) for e in data]


FILE_ERRORS = [
    # (id, lines, expected errors (code, param, line))
    ("invalid_json", [chat_line("a"), "{oops", chat_line("c")], [("invalid_json_line", None, 2)]),
    ("missing_custom_id", [chat_line("a"), without(chat_line("b"), "custom_id")], [("missing_required_parameter", "custom_id", 2)]),
    ("missing_method", [without(chat_line("a"), "method")], [("missing_required_parameter", "method", 1)]),
    ("missing_url", [chat_line("a"), chat_line("b"), without(chat_line("c"), "url")], [("missing_required_parameter", "url", 3)]),
    ("missing_body", [without(chat_line("a"), "body")], [("missing_required_parameter", "body", 1)]),
    ("method_not_post", [{**chat_line("a"), "method": "PUT"}], [("invalid_value", "method", 1)]),
    ("url_not_endpoint", [chat_line("a"), {**chat_line("b"), "url": "/v1/completions"}], [("invalid_url", "url", 2)]),
    ("duplicate_custom_id", [chat_line("a"), chat_line("b"), chat_line("a")], [("duplicate_custom_id", "custom_id", 3)]),
    ("stream_true", [chat_line("a", stream=True)], [("streaming_unsupported", "body.stream", 1)]),
    ("missing_model", [chat_line("a"), with_body(model=...)], [("invalid_request", "body.model", 2)]),
    ("missing_messages", [with_body(messages=...)], [("invalid_request", "body.messages", 1)]),
    ("mismatched_model", [chat_line("a"), chat_line("b", model="other-model")], [("mismatched_model", "body.model", 2)]),
    (
        "blank_lines_count",
        ["", chat_line("a"), "   ", "", "{bad"],
        [("invalid_json_line", None, 5)],
    ),
    (
        "every_error_is_reported",
        ["{bad", chat_line("a"), {**chat_line("b"), "method": "GET"}, chat_line("a")],
        [("invalid_json_line", None, 1), ("invalid_value", "method", 3), ("duplicate_custom_id", "custom_id", 4)],
    ),
]


@pytest.mark.parametrize("lines, expected", [c[1:] for c in FILE_ERRORS], ids=[c[0] for c in FILE_ERRORS])
def test_validation_fails_the_batch(validate, upstream, lines, expected):
    batch = validate(lines)
    assert batch.outcome == "failed"
    assert errors_of(batch) == expected
    assert batch.request_counts() == {"total": 0, "completed": 0, "failed": 0}
    assert not BatchRequest.objects.filter(batch=batch).exists()
    assert upstream.stats()["by_path"].get("/v1/chat/completions", 0) == 0


def test_deleted_input_file_fails_the_batch(make_batch, upstream):
    batch = make_batch([chat_line("a")])
    batch.input_file.delete()
    assert tasks.validate_batch(batch.id) == "failed"
    batch.refresh_from_db()
    assert errors_of(batch) == [("invalid_request", "input_file_id", None)]
    assert batch.input_file_id  # still reported after the file is gone


def test_input_file_content_gone_from_storage_fails_the_batch(make_batch, upstream):
    batch = make_batch([chat_line("a")])
    batch.input_file.content.storage.delete(batch.input_file.content.name)
    assert tasks.validate_batch(batch.id) == "failed"
    batch.refresh_from_db()
    assert errors_of(batch) == [("invalid_request", "input_file_id", None)]


def test_unknown_model_is_model_not_found_on_the_first_line_naming_it(validate):
    batch = validate(["", chat_line("a", model="no-such-model"), chat_line("b", model="no-such-model")])
    assert errors_of(batch) == [("model_not_found", "body.model", 2)]
    assert batch.errors[0]["message"] == "The provided model 'no-such-model' is not supported by the Batch API."


def test_models_allow_list_decides_without_asking_the_upstream(validate, settings, upstream):
    settings.OPENAI_BATCHES = {**settings.OPENAI_BATCHES, "MODELS": ["fake-model"]}
    assert errors_of(validate([chat_line("a", model="other-model")])) == [("model_not_found", "body.model", 1)]
    assert validate([chat_line("a", model="fake-model")]).status == BatchStatus.IN_PROGRESS
    assert upstream.stats()["by_path"].get("/v1/models", 0) == 0


@pytest.mark.parametrize("content", [b"", b"\n\n", b"  \r\n\t\n"])
def test_empty_file_fails_the_batch(validate, content):
    assert errors_of(validate(content)) == [("empty_file", "input_file_id", None)]


def test_valid_file_becomes_in_progress_with_one_row_per_line(validate):
    lines = [chat_line("a"), chat_line("b", content="second"), chat_line("c")]
    batch = validate(lines)
    assert batch.outcome == "in_progress"
    assert batch.status == BatchStatus.IN_PROGRESS
    assert batch.in_progress_at is not None
    assert batch.model == "fake-model"
    assert batch.request_counts() == {"total": 3, "completed": 0, "failed": 0}
    rows = list(BatchRequest.objects.filter(batch=batch).order_by("line"))
    assert [(r.line, r.custom_id, r.status) for r in rows] == [(1, "a", "pending"), (2, "b", "pending"), (3, "c", "pending")]
    assert [r.body for r in rows] == [line["body"] for line in lines]


def test_blank_lines_are_skipped_but_counted(validate):
    content = b"\n" + json.dumps(chat_line("a")).encode() + b"\n\n   \n" + json.dumps(chat_line("b")).encode()
    batch = validate(content)
    assert batch.status == BatchStatus.IN_PROGRESS
    assert list(BatchRequest.objects.filter(batch=batch).values_list("line", "custom_id")) == [(2, "a"), (5, "b")]


def test_crlf_line_endings_are_accepted(validate):
    content = b"".join(json.dumps(chat_line(cid)).encode() + b"\r\n" for cid in ("a", "b", "c"))
    batch = validate(content)
    assert batch.status == BatchStatus.IN_PROGRESS
    assert batch.total_requests == 3


def test_unicode_line_separators_inside_json_are_not_line_breaks(validate):
    content = json.dumps(chat_line("a", content="one\u2028two\u0085three"), ensure_ascii=False).encode() + b"\n"
    batch = validate(content)
    assert batch.status == BatchStatus.IN_PROGRESS
    assert BatchRequest.objects.get(batch=batch).body["messages"][0]["content"] == "one\u2028two\u0085three"


def test_request_problems_become_failed_rows_never_sent_upstream(validate, upstream):
    lines = [
        chat_line("ok1"),
        chat_line("neg", max_tokens=-1),
        with_body(messages=[]) | {"custom_id": "empty"},
        chat_line("ok2"),
    ]
    batch = validate(lines)
    assert batch.status == BatchStatus.IN_PROGRESS
    assert batch.request_counts() == {"total": 4, "completed": 0, "failed": 2}
    failed = {r.custom_id: r for r in BatchRequest.objects.filter(batch=batch, status=RequestStatus.FAILED)}
    assert set(failed) == {"neg", "empty"}
    assert failed["neg"].status_code == 400
    assert failed["neg"].response_body["error"]["param"] == "max_tokens"
    assert failed["neg"].error["code"] == "integer_below_min_value"
    assert failed["empty"].response_body["error"]["param"] == "messages"

    assert run_batches() == "idle"
    batch.refresh_from_db()
    assert batch.status == BatchStatus.COMPLETED
    assert batch.request_counts() == {"total": 4, "completed": 2, "failed": 2}
    stats = upstream.stats()
    assert stats["by_path"]["/v1/chat/completions"] == 2
    assert set(stats["content_counts"]) == {"hello"}
    error_lines = [json.loads(line) for line in batch.error_file.content.open("rb")]
    assert {line["custom_id"]: line["response"]["status_code"] for line in error_lines} == {"neg": 400, "empty": 400}


def test_error_count_is_capped(validate, settings):
    settings.OPENAI_BATCHES = {**settings.OPENAI_BATCHES, "MAX_VALIDATION_ERRORS": 3}
    batch = validate(["{bad"] * 10)
    assert errors_of(batch) == [("invalid_json_line", None, n) for n in (1, 2, 3)]


def test_too_many_requests(validate, settings):
    settings.OPENAI_BATCHES = {**settings.OPENAI_BATCHES, "MAX_REQUESTS_PER_BATCH": 2}
    batch = validate([chat_line("a"), chat_line("b"), "", chat_line("c")])
    assert errors_of(batch) == [("too_many_requests", None, 4)]


def test_input_file_too_large(validate, settings):
    settings.OPENAI_BATCHES = {**settings.OPENAI_BATCHES, "MAX_INPUT_FILE_BYTES": 10}
    assert errors_of(validate([chat_line("a")])) == [("file_too_large", "input_file_id", None)]


def test_validating_twice_is_harmless(make_batch, upstream):
    batch = make_batch([chat_line("a"), chat_line("b")])
    assert tasks.validate_batch(batch.id) == "in_progress"
    assert tasks.validate_batch(batch.id) == "skipped"
    assert BatchRequest.objects.filter(batch=batch).count() == 2


def test_validation_of_a_cancelled_batch_is_skipped(make_batch, upstream):
    batch = make_batch([chat_line("a")])
    Batch.objects.filter(pk=batch.id).update(status=BatchStatus.CANCELLING)
    assert tasks.validate_batch(batch.id) == "skipped"
    assert not BatchRequest.objects.filter(batch=batch).exists()
