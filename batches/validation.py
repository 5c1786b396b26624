"""Checking batch input lines, per OpenAI's rules.

Two kinds of problems, as OpenAI reports them:

* ``LineError``: the file is wrong (bad JSON, missing custom_id, url that does
  not match the endpoint, ``stream: true``, no model...). Any of these fails the
  whole batch with ``errors.data``; nothing is sent upstream.
* ``request_problem()``: the line is well-formed but the request breaks the
  endpoint's schema (``max_tokens: -1``...). OpenAI answers those per request,
  so the line goes to the error file as a 400 without reaching the upstream.
"""

import json
import math
from typing import NamedTuple

SUPPORTED_ENDPOINTS = (
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/responses",
    "/v1/moderations",
)

# Fields a line's body must have, per endpoint (missing -> batch fails).
REQUIRED_BODY_FIELDS = {
    "/v1/chat/completions": ("model", "messages"),
    "/v1/completions": ("model", "prompt"),
    "/v1/embeddings": ("model", "input"),
    "/v1/responses": ("model", "input"),
    "/v1/moderations": ("input",),
}

MESSAGE_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})


class LineError(NamedTuple):
    code: str
    message: str
    param: str | None
    line: int | None

    def as_dict(self):
        return self._asdict()


class ValidLine(NamedTuple):
    line: int
    custom_id: str
    body: dict
    problem: dict | None  # OpenAI error body for a per-request 400, or None


class LineValidator:
    """Validates one input file line by line, remembering what spans lines
    (custom_id uniqueness, the single model per file)."""

    def __init__(self, endpoint):
        self.endpoint = endpoint
        self.custom_ids = set()
        self.model = None

    def check(self, line_no, raw):
        """Return ``(ValidLine | None, [LineError])`` for one raw line (bytes, no newline)."""
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            return None, [LineError("invalid_json_line", "This line is not valid UTF-8 text.", None, line_no)]
        try:
            record = json.loads(text)
        except (json.JSONDecodeError, RecursionError):
            return None, [
                LineError(
                    "invalid_json_line",
                    "This line is not parseable as valid JSON.",
                    None,
                    line_no,
                )
            ]
        if not isinstance(record, dict):
            return None, [LineError("invalid_json_line", "Each line must be a JSON object.", None, line_no)]

        errors = []
        custom_id = record.get("custom_id")
        if "custom_id" not in record or custom_id is None:
            errors.append(LineError("missing_required_parameter", "Missing required parameter: 'custom_id'.", "custom_id", line_no))
        elif not isinstance(custom_id, str) or not custom_id:
            errors.append(LineError("invalid_value", "'custom_id' must be a non-empty string.", "custom_id", line_no))
        elif len(custom_id) > 512:
            errors.append(LineError("invalid_value", "'custom_id' must be at most 512 characters.", "custom_id", line_no))
        elif custom_id in self.custom_ids:
            errors.append(
                LineError("duplicate_custom_id", f"The custom_id '{custom_id}' is used more than once in this file.", "custom_id", line_no)
            )
        else:
            self.custom_ids.add(custom_id)

        method = record.get("method")
        if method is None:
            errors.append(LineError("missing_required_parameter", "Missing required parameter: 'method'.", "method", line_no))
        elif method != "POST":
            errors.append(LineError("invalid_value", f"Invalid 'method': '{method}'. Only POST is supported.", "method", line_no))

        url = record.get("url")
        if url is None:
            errors.append(LineError("missing_required_parameter", "Missing required parameter: 'url'.", "url", line_no))
        elif url != self.endpoint:
            errors.append(
                LineError(
                    "invalid_url",
                    f"The URL provided for this request does not match the batch endpoint '{self.endpoint}'.",
                    "url",
                    line_no,
                )
            )

        body = record.get("body")
        if body is None:
            errors.append(LineError("missing_required_parameter", "Missing required parameter: 'body'.", "body", line_no))
            return None, errors
        if not isinstance(body, dict):
            errors.append(LineError("invalid_value", "'body' must be a JSON object.", "body", line_no))
            return None, errors

        if body.get("stream") is True:
            errors.append(LineError("streaming_unsupported", "Streaming is not supported in the Batch API.", "body.stream", line_no))
        for field in REQUIRED_BODY_FIELDS.get(self.endpoint, ()):
            if field not in body or body[field] is None:
                errors.append(LineError("invalid_request", f"Missing required parameter: 'body.{field}'.", f"body.{field}", line_no))
        model = body.get("model")
        if model is not None and not isinstance(model, str):
            errors.append(LineError("invalid_request", "'body.model' must be a string.", "body.model", line_no))
        elif isinstance(model, str):
            if self.model is None:
                self.model = model
            elif model != self.model:
                errors.append(
                    LineError(
                        "mismatched_model",
                        f"All requests in a batch must use the same model; this line uses '{model}' "
                        f"but the first line uses '{self.model}'.",
                        "body.model",
                        line_no,
                    )
                )
        if errors:
            return None, errors
        return ValidLine(line_no, custom_id, body, request_problem(self.endpoint, body)), []


# --- per-request schema rules (the request reaches no upstream; a 400 goes to the error file) ---


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value):
    return (isinstance(value, (int, float)) and not isinstance(value, bool)) and math.isfinite(value)


NUMERIC_RANGES = {
    # field: (minimum, maximum, integer only)
    "max_tokens": (1, None, True),
    "max_completion_tokens": (1, None, True),
    "max_output_tokens": (1, None, True),
    "n": (1, 128, True),
    "best_of": (1, 20, True),
    "temperature": (0, 2, False),
    "top_p": (0, 1, False),
    "presence_penalty": (-2, 2, False),
    "frequency_penalty": (-2, 2, False),
    "top_logprobs": (0, 20, True),
    "logprobs": (0, 5, True),  # completions only; chat's logprobs is a boolean (handled below)
    "dimensions": (1, None, True),
}


def _bad(message, param, code="invalid_value"):
    return {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": code}}


def _check_numbers(endpoint, body):
    for field, (low, high, integer) in NUMERIC_RANGES.items():
        if field not in body or body[field] is None:
            continue
        if field == "logprobs" and endpoint != "/v1/completions":
            if not isinstance(body[field], bool):
                return _bad("Invalid type for 'logprobs': expected a boolean.", "logprobs", "invalid_type")
            continue
        value = body[field]
        if integer and not _is_int(value):
            return _bad(f"Invalid type for '{field}': expected an integer, but got {type(value).__name__} instead.", field, "invalid_type")
        if not _is_number(value):
            return _bad(f"Invalid type for '{field}': expected a number.", field, "invalid_type")
        if low is not None and value < low:
            return _bad(
                f"Invalid '{field}': integer below minimum value. Expected a value >= {low}, but got {value} instead."
                if integer
                else f"Invalid '{field}': decimal below minimum value. Expected a value >= {low}, but got {value} instead.",
                field,
                "integer_below_min_value" if integer else "decimal_below_min_value",
            )
        if high is not None and value > high:
            return _bad(
                f"Invalid '{field}': value above maximum. Expected a value <= {high}, but got {value} instead.",
                field,
                "integer_above_max_value" if integer else "decimal_above_max_value",
            )
    return None


def _check_messages(messages):
    if not isinstance(messages, list):
        return _bad("Invalid type for 'messages': expected an array of message objects.", "messages", "invalid_type")
    if not messages:
        return _bad("Invalid 'messages': empty array. Expected an array with minimum length 1.", "messages", "empty_array")
    for index, message in enumerate(messages):
        param = f"messages[{index}]"
        if not isinstance(message, dict):
            return _bad(f"Invalid type for '{param}': expected an object.", param, "invalid_type")
        role = message.get("role")
        if role not in MESSAGE_ROLES:
            return _bad(
                f"Invalid value for '{param}.role': {json.dumps(role)}. Supported values are: {', '.join(sorted(MESSAGE_ROLES))}.",
                f"{param}.role",
            )
        content = message.get("content")
        if content is None and not (role == "assistant" and (message.get("tool_calls") or message.get("function_call"))):
            return _bad(f"Missing required parameter: '{param}.content'.", f"{param}.content", "missing_required_parameter")
        if content is not None and not isinstance(content, (str, list)):
            return _bad(f"Invalid type for '{param}.content': expected a string or an array of content parts.", f"{param}.content", "invalid_type")
    return None


def _is_token_array(value):
    return isinstance(value, list) and bool(value) and all(_is_int(t) and t >= 0 for t in value)


def _check_text_input(value, param, *, allow_empty_string=False):
    """string | [string] | [int] | [[int]] — the shape embeddings and completions accept."""
    if isinstance(value, str):
        if not value and not allow_empty_string:
            return _bad(f"'{param}' cannot be an empty string.", param)
        return None
    if isinstance(value, list) and value:
        if all(isinstance(v, str) for v in value) or _is_token_array(value) or all(_is_token_array(v) for v in value):
            if len(value) > 2048:
                return _bad(f"Invalid '{param}': array too long. Expected at most 2048 items.", param, "array_above_max_length")
            return None
    return _bad(
        f"Invalid type for '{param}': expected a string, an array of strings, an array of tokens or an array of token arrays.",
        param,
        "invalid_type",
    )


def request_problem(endpoint, body):
    """An OpenAI 400 error body if this request breaks the endpoint's schema, else None."""
    problem = _check_numbers(endpoint, body)
    if problem:
        return problem
    if endpoint == "/v1/chat/completions":
        return _check_messages(body.get("messages"))
    if endpoint == "/v1/completions":
        return _check_text_input(body.get("prompt"), "prompt", allow_empty_string=True)
    if endpoint == "/v1/embeddings":
        return _check_text_input(body.get("input"), "input")
    if endpoint == "/v1/moderations":
        value = body.get("input")
        if isinstance(value, str) or (isinstance(value, list) and value and all(isinstance(v, (str, dict)) for v in value)):
            return None
        return _bad("Invalid type for 'input': expected a string, an array of strings or an array of content parts.", "input", "invalid_type")
    if endpoint == "/v1/responses":
        value = body.get("input")
        if isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, dict) for v in value)):
            return None
        return _bad("Invalid type for 'input': expected a string or an array of input items.", "input", "invalid_type")
    return None
