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
from .endpoints import ENDPOINTS
from .field_rules import bad, is_token_array, json_type

UNSTORABLE_ESCAPE = re.compile(r"\\u(?:0000|[dD][89a-fA-F])")

MAX_CUSTOM_ID_LENGTH = 512  # BatchRequest.custom_id's column width


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
        self.spec = ENDPOINTS[endpoint]
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
                _error(f"Invalid type for 'body': expected an object, but got {json_type(body)} instead.", "invalid_type", "body", line_no)
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
                    f"Invalid type for 'custom_id': expected a string, but got {json_type(custom_id)} instead.",
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
        for field in self.spec.required:
            value = body.get(field.name)
            param = f"body.{field.name}"
            if value is None:
                if field.name == "input" and self.spec.input_alternatives:
                    if any(body.get(source) is not None for source in self.spec.input_alternatives):
                        continue
                    alternatives = ", ".join(f"'body.{source}'" for source in self.spec.input_alternatives)
                    message = f"Missing required parameter: '{param}' (or one of {alternatives})."
                else:
                    message = f"Missing required parameter: '{param}'."
                errors.append(_error(message, "invalid_request", param, line_no))
            elif not isinstance(value, field.types):
                errors.append(
                    _error(
                        f"Invalid type for '{param}': expected {field.expected}, but got {json_type(value)} instead.",
                        "invalid_request",
                        param,
                        line_no,
                    )
                )
        errors.extend(self._check_model(line_no, body.get("model")))
        if self.spec.counts_embedding_inputs and not errors:
            errors.extend(self._count_embedding_inputs(line_no, body["input"]))
        return errors

    def _check_model(self, line_no, model):
        # Moderations may omit the model (the upstream picks its default); elsewhere a
        # missing or mistyped model was already reported with the required fields.
        if model is not None and not isinstance(model, str):
            if self.spec.model_required:
                return []
            return [
                _error(
                    f"Invalid type for 'body.model': expected a string, but got {json_type(model)} instead.",
                    "invalid_request",
                    "body.model",
                    line_no,
                )
            ]
        if model is None and self.spec.model_required:
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
        self.embedding_inputs += len(value) if isinstance(value, list) and value and not is_token_array(value) else 1
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


def request_problem(endpoint, body):
    """OpenAI's 400 error body if this request breaks the endpoint's schema, else None.

    Only the first problem is reported, as OpenAI does for one request.
    """
    spec = ENDPOINTS[endpoint]
    for field, check in spec.fields.items():
        value = body.get(field)
        if value is None:
            continue
        problem = check(value, field)
        if problem:
            return problem
    if body.get("stream_options") is not None and not body.get("stream"):
        return bad("The 'stream_options' parameter is only allowed when 'stream' is enabled.", "stream_options")
    if spec.check_body:
        return spec.check_body(body)
    return None
