"""Checking batch input lines, per OpenAI's rules.

Two kinds of problems, reported the way OpenAI reports them:

* ``LineError`` (validation time): the line cannot become a request at all —
  invalid UTF-8 or JSON, a missing or malformed ``custom_id`` / ``method`` /
  ``url`` / ``body``, a url that does not match the endpoint, ``stream: true``,
  a required body field (``model``, ``messages``, ``prompt``, ``input``) that is
  missing or of the wrong JSON type, a second model in the file. Any of these
  fails the whole batch with ``errors.data`` (code, message, param such as
  ``body.messages``, 1-based line); nothing is sent upstream.
* ``request_problem()`` (per request): the line is a well-formed request that
  breaks the endpoint's schema (``max_tokens: -1``, ``temperature: 3``, an
  unknown message role, an empty embeddings input...). OpenAI answers those one
  request at a time, so the line goes to the error file as a 400 with OpenAI's
  error body, and is never sent upstream (some servers, e.g. llama.cpp, would
  accept ``max_tokens: -1``).

Fields the schema does not know are passed through untouched: self-hosted
upstreams (vLLM, llama.cpp) accept extra sampling parameters such as ``top_k``.
"""

import json
import math
import re
from typing import NamedTuple

from files_app.api import has_unstorable_text

from .conf import app_settings

SUPPORTED_ENDPOINTS = (
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/responses",
    "/v1/moderations",
)

# Endpoints OpenAI's batch accepts that a site may enable with EXTRA_ENDPOINTS: only the
# universal rules are checked (a JSON object body naming the one model of the file), and
# the body goes to the upstream as it is.
PASS_THROUGH_ENDPOINTS = (
    "/v1/images/generations",
    "/v1/images/edits",
)


def enabled_endpoints():
    """The batch endpoints this site accepts: the text endpoints, then EXTRA_ENDPOINTS."""
    return SUPPORTED_ENDPOINTS + tuple(e for e in app_settings.EXTRA_ENDPOINTS if e in PASS_THROUGH_ENDPOINTS)


UNSTORABLE_ESCAPE = re.compile(r"\\u(?:0000|[dD][89a-fA-F])")

MAX_CUSTOM_ID_LENGTH = 512  # BatchRequest.custom_id's column width

# JSON values OpenAI accepts for ``prompt`` / ``input``, beyond plain strings.
TEXT_INPUT_SHAPES = "a string, an array of strings, an array of tokens or an array of token arrays"


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


class RequiredField(NamedTuple):
    name: str
    types: tuple  # accepted JSON types (Python classes) for the field's value
    expected: str  # how the message names them


# Body fields a line must have, per endpoint; missing or mistyped -> the batch fails.
REQUIRED_BODY_FIELDS = {
    "/v1/chat/completions": (RequiredField("model", (str,), "a string"), RequiredField("messages", (list,), "an array of messages")),
    "/v1/completions": (RequiredField("model", (str,), "a string"), RequiredField("prompt", (str, list), TEXT_INPUT_SHAPES)),
    "/v1/embeddings": (RequiredField("model", (str,), "a string"), RequiredField("input", (str, list), TEXT_INPUT_SHAPES)),
    # ``input`` may be left out when the context comes from elsewhere (RESPONSES_INPUT_SOURCES).
    "/v1/responses": (
        RequiredField("model", (str,), "a string"),
        RequiredField("input", (str, list), "a string or an array of input items"),
    ),
    # The model is optional: the upstream picks its default moderation model.
    "/v1/moderations": (RequiredField("input", (str, list), "a string, an array of strings or an array of content parts"),),
    **{endpoint: (RequiredField("model", (str,), "a string"),) for endpoint in PASS_THROUGH_ENDPOINTS},
}


# A /v1/responses body may take its context from a stored response, a conversation or a
# stored prompt template instead of ``input`` (the SDK makes ``input`` optional).
RESPONSES_INPUT_SOURCES = ("previous_response_id", "conversation", "prompt")


def _error(message, code, param, line_no):
    return LineError(code, message, param, line_no)


def _reject_constant(name):
    # Python's json accepts NaN and Infinity; JSON (and PostgreSQL's jsonb) does not.
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text):
    value = float(text)
    if not math.isfinite(value):  # 1e400 would become Infinity
        raise ValueError(f"{text} is out of range")
    return value


class LineValidator:
    """Validates one input file line by line, remembering what spans lines
    (custom_id uniqueness, the single model per file, the embeddings input count)."""

    def __init__(self, endpoint):
        self.endpoint = endpoint
        self.custom_ids = set()
        self.model = None
        self.model_line = None  # 1-based line of the first request naming the model
        self.model_seen = False
        self.embedding_inputs = 0
        self.max_embedding_inputs = app_settings.MAX_EMBEDDING_INPUTS_PER_BATCH

    def check(self, line_no, raw):
        """Return ``(ValidLine | None, [LineError])`` for one raw line (bytes, no newline)."""
        try:
            # A byte order mark (Windows editors write one) may start the file.
            text = raw.decode("utf-8-sig" if line_no == 1 else "utf-8")
        except UnicodeDecodeError:
            return None, [_error("This line is not valid UTF-8 text.", "invalid_json_line", None, line_no)]
        try:
            record = json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
        except (ValueError, RecursionError):
            return None, [_error("This line is not parseable as valid JSON.", "invalid_json_line", None, line_no)]
        if not isinstance(record, dict):
            return None, [_error("Each line must be a JSON object.", "invalid_json_line", None, line_no)]
        # \u0000 and unpaired \ud800-\udfff escapes decode to text no database column (or UTF-8 file) can hold.
        if UNSTORABLE_ESCAPE.search(text) and has_unstorable_text(record):
            return None, [
                _error(
                    "This line contains a NUL character or an unpaired surrogate, which is not supported.",
                    "invalid_json_line",
                    None,
                    line_no,
                )
            ]

        errors = self._check_envelope(line_no, record)
        body = record.get("body")
        if body is None:
            errors.append(_error("Missing required parameter: 'body'.", "missing_required_parameter", "body", line_no))
            return None, errors
        if not isinstance(body, dict):
            errors.append(
                _error(f"Invalid type for 'body': expected an object, but got {_json_type(body)} instead.", "invalid_type", "body", line_no)
            )
            return None, errors
        errors.extend(self._check_body(line_no, body))
        if errors:
            return None, errors
        return ValidLine(line_no, record["custom_id"], body, request_problem(self.endpoint, body)), []

    def _check_envelope(self, line_no, record):
        errors = []
        custom_id = record.get("custom_id")
        if custom_id is None:
            errors.append(_error("Missing required parameter: 'custom_id'.", "missing_required_parameter", "custom_id", line_no))
        elif not isinstance(custom_id, str):
            errors.append(
                _error(
                    f"Invalid type for 'custom_id': expected a string, but got {_json_type(custom_id)} instead.",
                    "invalid_type",
                    "custom_id",
                    line_no,
                )
            )
        elif not custom_id:
            errors.append(_error("Invalid 'custom_id': empty string. Expected a non-empty string.", "invalid_value", "custom_id", line_no))
        elif len(custom_id) > MAX_CUSTOM_ID_LENGTH:
            errors.append(
                _error(
                    f"Invalid 'custom_id': string too long. Expected at most {MAX_CUSTOM_ID_LENGTH} characters.",
                    "invalid_value",
                    "custom_id",
                    line_no,
                )
            )
        elif custom_id in self.custom_ids:
            errors.append(
                _error(f"The custom_id '{custom_id}' is used more than once in this file.", "duplicate_custom_id", "custom_id", line_no)
            )
        else:
            self.custom_ids.add(custom_id)

        method = record.get("method")
        if method is None:
            errors.append(_error("Missing required parameter: 'method'.", "missing_required_parameter", "method", line_no))
        elif method != "POST":
            errors.append(_error(f"Invalid 'method': {json.dumps(method)}. Only POST is supported.", "invalid_value", "method", line_no))

        url = record.get("url")
        if url is None:
            errors.append(_error("Missing required parameter: 'url'.", "missing_required_parameter", "url", line_no))
        elif url != self.endpoint:
            errors.append(
                _error(
                    f"The URL provided for this request does not match the batch endpoint '{self.endpoint}'.", "invalid_url", "url", line_no
                )
            )
        return errors

    def _check_body(self, line_no, body):
        errors = []
        if body.get("stream") is True:
            errors.append(_error("Streaming is not supported in the Batch API.", "streaming_unsupported", "body.stream", line_no))
        for field in REQUIRED_BODY_FIELDS[self.endpoint]:
            value = body.get(field.name)
            param = f"body.{field.name}"
            if value is None:
                if self.endpoint == "/v1/responses" and field.name == "input":
                    if any(body.get(source) is not None for source in RESPONSES_INPUT_SOURCES):
                        continue
                    alternatives = ", ".join(f"'body.{source}'" for source in RESPONSES_INPUT_SOURCES)
                    message = f"Missing required parameter: '{param}' (or one of {alternatives})."
                else:
                    message = f"Missing required parameter: '{param}'."
                errors.append(_error(message, "invalid_request", param, line_no))
            elif not isinstance(value, field.types):
                errors.append(
                    _error(
                        f"Invalid type for '{param}': expected {field.expected}, but got {_json_type(value)} instead.",
                        "invalid_request",
                        param,
                        line_no,
                    )
                )
        errors.extend(self._check_model(line_no, body.get("model")))
        if self.endpoint == "/v1/embeddings" and not errors:
            errors.extend(self._count_embedding_inputs(line_no, body["input"]))
        return errors

    def _check_model(self, line_no, model):
        # Moderations may omit the model (the upstream picks its default); elsewhere a
        # missing or mistyped model was already reported with the required fields.
        required = any(field.name == "model" for field in REQUIRED_BODY_FIELDS[self.endpoint])
        if model is not None and not isinstance(model, str):
            if required:
                return []
            return [
                _error(
                    f"Invalid type for 'body.model': expected a string, but got {_json_type(model)} instead.",
                    "invalid_request",
                    "body.model",
                    line_no,
                )
            ]
        if model is None and required:
            return []
        if model == "":
            return [_error("Invalid 'body.model': empty string. Expected a model name.", "invalid_request", "body.model", line_no)]
        if not self.model_seen:
            self.model, self.model_line, self.model_seen = model, line_no, True
        elif model != self.model:
            return [
                _error(
                    f"All requests in a batch must use the same model; this line uses {_model_name(model)} "
                    f"but the first request uses {_model_name(self.model)}.",
                    "mismatched_model",
                    "body.model",
                    line_no,
                )
            ]
        return []

    def _count_embedding_inputs(self, line_no, value):
        # OpenAI caps an embeddings batch at 50,000 inputs across all its requests.
        before = self.embedding_inputs
        self.embedding_inputs += len(value) if isinstance(value, list) and value and not _is_token_array(value) else 1
        if before <= self.max_embedding_inputs < self.embedding_inputs:
            return [
                _error(
                    f"An embeddings batch may contain at most {self.max_embedding_inputs} inputs across all requests.",
                    "too_many_embedding_inputs",
                    "body.input",
                    line_no,
                )
            ]
        return []


def _model_name(model):
    return f"'{model}'" if model is not None else "no model"


# --- per-request schema rules (the request reaches no upstream; a 400 goes to the error file) ---
#
# Each endpoint has a table: body field -> check(value, param) returning OpenAI's
# error body or None. ``null`` means "not given" for every optional field, as in
# OpenAI's schemas. Messages follow OpenAI's wording and codes.


def _bad(message, param, code="invalid_value"):
    return {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": code}}


def _json_type(value):
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a decimal"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _wrong_type(param, expected, value):
    return _bad(f"Invalid type for '{param}': expected {expected}, but got {_json_type(value)} instead.", param, "invalid_type")


def integer(minimum=None, maximum=None):
    return _ranged(minimum, maximum, integral=True)


def number(minimum=None, maximum=None):
    return _ranged(minimum, maximum, integral=False)


def _ranged(minimum, maximum, *, integral):
    kind = "integer" if integral else "decimal"

    def check(value, param):
        if integral and not _is_int(value):
            return _wrong_type(param, "an integer", value)
        if not _is_number(value):
            return _wrong_type(param, "a decimal", value)
        if minimum is not None and value < minimum:
            return _bad(
                f"Invalid '{param}': {kind} below minimum value. Expected a value >= {minimum}, but got {value} instead.",
                param,
                f"{kind}_below_min_value",
            )
        if maximum is not None and value > maximum:
            return _bad(
                f"Invalid '{param}': {kind} above maximum value. Expected a value <= {maximum}, but got {value} instead.",
                param,
                f"{kind}_above_max_value",
            )
        return None

    return check


def boolean(value, param):
    return None if isinstance(value, bool) else _wrong_type(param, "a boolean", value)


def string(value, param):
    return None if isinstance(value, str) else _wrong_type(param, "a string", value)


def obj(value, param):
    return None if isinstance(value, dict) else _wrong_type(param, "an object", value)


def one_of(*choices):
    def check(value, param):
        if not isinstance(value, str):
            return _wrong_type(param, "a string", value)
        if value not in choices:
            supported = ", ".join(f"'{c}'" for c in choices)
            return _bad(f"Invalid value: {json.dumps(value)}. Supported values are: {supported}.", param)
        return None

    return check


def array_of_objects(value, param):
    if not isinstance(value, list):
        return _wrong_type(param, "an array", value)
    for index, item in enumerate(value):
        if not isinstance(item, dict):
            return _wrong_type(f"{param}[{index}]", "an object", item)
    return None


def string_or_object(value, param):
    return None if isinstance(value, (str, dict)) else _wrong_type(param, "a string or an object", value)


def stop_sequences(value, param):
    if isinstance(value, str):
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        return _wrong_type(param, "a string or an array of strings", value)
    if len(value) > 4:
        return _bad(
            f"Invalid '{param}': array too long. Expected an array with maximum length 4, but got an array with "
            f"length {len(value)} instead.",
            param,
            "array_above_max_length",
        )
    return None


def logit_bias(value, param):
    if not isinstance(value, dict):
        return _wrong_type(param, "an object", value)
    for token, bias in value.items():
        problem = number(-100, 100)(bias, f"{param}.{token}")
        if problem:
            return problem
    return None


def metadata(value, param):
    if not isinstance(value, dict):
        return _wrong_type(param, "an object", value)
    if len(value) > 16:
        return _bad(
            f"Invalid '{param}': too many properties. Expected an object with at most 16 properties, but got {len(value)} instead.",
            param,
            "object_above_max_properties",
        )
    for key, item in value.items():
        if not isinstance(item, str):
            return _wrong_type(f"{param}.{key}", "a string", item)
    return None


def _is_token_array(value):
    return isinstance(value, list) and bool(value) and all(_is_int(t) and t >= 0 for t in value)


def text_input(*, allow_empty_string, max_items=2048):
    """string | [string] | [int] | [[int]] — what completions' ``prompt`` and embeddings' ``input`` accept."""

    def check(value, param):
        if isinstance(value, str):
            if not value and not allow_empty_string:
                return _bad(f"Invalid '{param}': empty string. Expected a string with minimum length 1.", param, "empty_string")
            return None
        if not isinstance(value, list) or not value:
            if value == []:
                return _bad(f"Invalid '{param}': empty array. Expected an array with minimum length 1.", param, "empty_array")
            return _wrong_type(param, TEXT_INPUT_SHAPES, value)
        if _is_token_array(value):
            return None
        if all(isinstance(v, str) for v in value):
            if not allow_empty_string:
                for index, item in enumerate(value):
                    if not item:
                        return _bad(
                            f"Invalid '{param}[{index}]': empty string. Expected a string with minimum length 1.",
                            f"{param}[{index}]",
                            "empty_string",
                        )
        elif not all(_is_token_array(v) for v in value):
            return _bad(f"Invalid '{param}': expected {TEXT_INPUT_SHAPES}, not a mix.", param, "invalid_type")
        if len(value) > max_items:
            return _bad(
                f"Invalid '{param}': array too long. Expected an array with maximum length {max_items}, "
                f"but got an array with length {len(value)} instead.",
                param,
                "array_above_max_length",
            )
        return None

    return check


def _content_parts(parts, param):
    if not parts:
        return _bad(f"Invalid '{param}': empty array. Expected an array with minimum length 1.", param, "empty_array")
    for index, part in enumerate(parts):
        part_param = f"{param}[{index}]"
        if not isinstance(part, dict):
            return _wrong_type(part_param, "an object", part)
        if not isinstance(part.get("type"), str):
            return _bad(f"Missing required parameter: '{part_param}.type'.", f"{part_param}.type", "missing_required_parameter")
        if part["type"] in ("text", "input_text", "output_text") and not isinstance(part.get("text"), str):
            return _bad(f"Missing required parameter: '{part_param}.text'.", f"{part_param}.text", "missing_required_parameter")
    return None


CHAT_ROLES = ("system", "developer", "user", "assistant", "tool", "function")
RESPONSES_MESSAGE_ROLES = ("system", "developer", "user", "assistant")


def _message(message, param, roles):
    """One chat message (or Responses input message): role, content and the fields its role needs."""
    if not isinstance(message, dict):
        return _wrong_type(param, "an object", message)
    role = message.get("role")
    if role is None:
        return _bad(f"Missing required parameter: '{param}.role'.", f"{param}.role", "missing_required_parameter")
    if role not in roles:
        supported = ", ".join(f"'{r}'" for r in roles)
        return _bad(f"Invalid value: {json.dumps(role)}. Supported values are: {supported}.", f"{param}.role")
    content = message.get("content")
    if content is None:
        if role == "assistant" and (message.get("tool_calls") or message.get("function_call")):
            return None
        return _bad(f"Missing required parameter: '{param}.content'.", f"{param}.content", "missing_required_parameter")
    if isinstance(content, list):
        problem = _content_parts(content, f"{param}.content")
        if problem:
            return problem
    elif not isinstance(content, str):
        return _wrong_type(f"{param}.content", "a string or an array of content parts", content)
    required = {"tool": "tool_call_id", "function": "name"}.get(role)
    if required and not isinstance(message.get(required), str):
        return _bad(f"Missing required parameter: '{param}.{required}'.", f"{param}.{required}", "missing_required_parameter")
    return None


def chat_messages(value, param):
    if not isinstance(value, list):
        return _wrong_type(param, "an array", value)
    if not value:
        return _bad(
            f"Invalid '{param}': empty array. Expected an array with minimum length 1, but got an empty array instead.",
            param,
            "empty_array",
        )
    for index, message in enumerate(value):
        problem = _message(message, f"{param}[{index}]", CHAT_ROLES)
        if problem:
            return problem
    return None


def responses_input(value, param):
    if isinstance(value, str):
        return None
    if not isinstance(value, list):
        return _wrong_type(param, "a string or an array of input items", value)
    for index, item in enumerate(value):
        item_param = f"{param}[{index}]"
        if not isinstance(item, dict):
            return _wrong_type(item_param, "an object", item)
        kind = item.get("type", "message")
        if not isinstance(kind, str):
            return _wrong_type(f"{item_param}.type", "a string", kind)
        if kind == "message":
            problem = _message(item, item_param, RESPONSES_MESSAGE_ROLES)
            if problem:
                return problem
    return None


def moderation_input(value, param):
    if isinstance(value, str):
        return None
    if not isinstance(value, list):
        return _wrong_type(param, "a string, an array of strings or an array of content parts", value)
    if not value:
        return _bad(f"Invalid '{param}': empty array. Expected an array with minimum length 1.", param, "empty_array")
    if all(isinstance(v, str) for v in value):
        return None
    for index, part in enumerate(value):
        part_param = f"{param}[{index}]"
        if not isinstance(part, dict):
            return _bad(f"Invalid '{param}': expected an array of strings or an array of content parts, not a mix.", param, "invalid_type")
        kind = part.get("type")
        if kind not in ("text", "image_url"):
            return _bad(f"Invalid value: {json.dumps(kind)}. Supported values are: 'text', 'image_url'.", f"{part_param}.type")
        if kind == "text" and not isinstance(part.get("text"), str):
            return _bad(f"Missing required parameter: '{part_param}.text'.", f"{part_param}.text", "missing_required_parameter")
        image = part.get("image_url")
        if kind == "image_url" and not (isinstance(image, dict) and isinstance(image.get("url"), str)):
            return _bad(
                f"Missing required parameter: '{part_param}.image_url.url'.", f"{part_param}.image_url.url", "missing_required_parameter"
            )
    return None


# Sampling fields shared by chat and completions.
SAMPLING_FIELDS = {
    "temperature": number(0, 2),
    "top_p": number(0, 1),
    "presence_penalty": number(-2, 2),
    "frequency_penalty": number(-2, 2),
    "n": integer(1, 128),
    "seed": integer(),
    "stop": stop_sequences,
    "logit_bias": logit_bias,
    "user": string,
    "stream": boolean,
}

ENDPOINT_FIELDS = {
    "/v1/chat/completions": {
        "model": string,
        "messages": chat_messages,
        **SAMPLING_FIELDS,
        "max_tokens": integer(1),
        "max_completion_tokens": integer(1),
        "logprobs": boolean,
        "top_logprobs": integer(0, 20),
        "response_format": obj,
        "tools": array_of_objects,
        "tool_choice": string_or_object,
        "parallel_tool_calls": boolean,
        "store": boolean,
        "metadata": metadata,
        "reasoning_effort": string,
        "service_tier": string,
    },
    "/v1/completions": {
        "model": string,
        "prompt": text_input(allow_empty_string=True),
        **SAMPLING_FIELDS,
        # Completions accept max_tokens 0 (with echo, to score a prompt).
        "max_tokens": integer(0),
        "best_of": integer(0, 20),
        "logprobs": integer(0, 5),
        "echo": boolean,
        "suffix": string,
    },
    "/v1/embeddings": {
        "model": string,
        "input": text_input(allow_empty_string=False),
        "encoding_format": one_of("float", "base64"),
        "dimensions": integer(1),
        "user": string,
    },
    "/v1/responses": {
        "model": string,
        "input": responses_input,
        "instructions": string,
        # OpenAI's Responses API rejects fewer than 16 output tokens.
        "max_output_tokens": integer(16),
        "temperature": number(0, 2),
        "top_p": number(0, 1),
        "top_logprobs": integer(0, 20),
        "tools": array_of_objects,
        "tool_choice": string_or_object,
        "parallel_tool_calls": boolean,
        "max_tool_calls": integer(1),
        "previous_response_id": string,
        "conversation": string_or_object,
        "store": boolean,
        "stream": boolean,
        "truncation": one_of("auto", "disabled"),
        "text": obj,
        "reasoning": obj,
        "prompt": obj,
        "metadata": metadata,
        "user": string,
        "service_tier": string,
    },
    "/v1/moderations": {
        "model": string,
        "input": moderation_input,
    },
    **{endpoint: {"model": string} for endpoint in PASS_THROUGH_ENDPOINTS},
}


def request_problem(endpoint, body):
    """OpenAI's 400 error body if this request breaks the endpoint's schema, else None.

    Only the first problem is reported, as OpenAI does for one request.
    """
    for field, check in ENDPOINT_FIELDS[endpoint].items():
        value = body.get(field)
        if value is None:
            continue
        problem = check(value, field)
        if problem:
            return problem
    if body.get("stream_options") is not None and not body.get("stream"):
        return _bad("The 'stream_options' parameter is only allowed when 'stream' is enabled.", "stream_options")
    if endpoint == "/v1/completions":
        best_of, n = body.get("best_of"), body.get("n")
        if _is_int(best_of) and _is_int(n) and best_of < n:
            return _bad(f"best_of must be greater than or equal to n, but got best_of={best_of} and n={n}.", "best_of")
    return None
