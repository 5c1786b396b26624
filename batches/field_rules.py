"""Rules for the fields of a batch request body, per OpenAI's schemas.

A rule is ``check(value, param)`` returning OpenAI's 400 error body, or None
when the value is fine; ``batches/endpoints.py`` says which field of which
endpoint follows which rule. ``null`` means "not given" for every optional
field, as in OpenAI's schemas. Messages follow OpenAI's wording and codes. A
request that breaks a rule reaches no upstream: the 400 goes to the error file.
"""

import json
import math

# JSON values OpenAI accepts for ``prompt`` / ``input``, beyond plain strings.
TEXT_INPUT_SHAPES = "a string, an array of strings, an array of tokens or an array of token arrays"


def bad(message, param, code="invalid_value"):
    return {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": code}}


def json_type(value):
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


def is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _wrong_type(param, expected, value):
    return bad(f"Invalid type for '{param}': expected {expected}, but got {json_type(value)} instead.", param, "invalid_type")


def integer(minimum=None, maximum=None):
    return _ranged(minimum, maximum, integral=True)


def number(minimum=None, maximum=None):
    return _ranged(minimum, maximum, integral=False)


def _ranged(minimum, maximum, *, integral):
    kind = "integer" if integral else "decimal"

    def check(value, param):
        if integral and not is_int(value):
            return _wrong_type(param, "an integer", value)
        if not _is_number(value):
            return _wrong_type(param, "a decimal", value)
        if minimum is not None and value < minimum:
            return bad(
                f"Invalid '{param}': {kind} below minimum value. Expected a value >= {minimum}, but got {value} instead.",
                param,
                f"{kind}_below_min_value",
            )
        if maximum is not None and value > maximum:
            return bad(
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
            return bad(f"Invalid value: {json.dumps(value)}. Supported values are: {supported}.", param)
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
        return bad(
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


# OpenAI's metadata: at most 16 string pairs (a batch's own metadata also caps the lengths: batches/serializers.py).
MAX_METADATA_PAIRS = 16
MAX_METADATA_KEY = 64
MAX_METADATA_VALUE = 512


def metadata(value, param):
    if not isinstance(value, dict):
        return _wrong_type(param, "an object", value)
    if len(value) > MAX_METADATA_PAIRS:
        return bad(
            f"Invalid '{param}': too many properties. Expected an object with at most {MAX_METADATA_PAIRS} properties, "
            f"but got {len(value)} instead.",
            param,
            "object_above_max_properties",
        )
    for key, item in value.items():
        if not isinstance(item, str):
            return _wrong_type(f"{param}.{key}", "a string", item)
    return None


def is_token_array(value):
    return isinstance(value, list) and bool(value) and all(is_int(t) and t >= 0 for t in value)


def text_input(*, allow_empty_string, max_items=2048):
    """string | [string] | [int] | [[int]] — what completions' ``prompt`` and embeddings' ``input`` accept."""

    def check(value, param):
        if isinstance(value, str):
            if not value and not allow_empty_string:
                return bad(f"Invalid '{param}': empty string. Expected a string with minimum length 1.", param, "empty_string")
            return None
        if not isinstance(value, list) or not value:
            if value == []:
                return bad(f"Invalid '{param}': empty array. Expected an array with minimum length 1.", param, "empty_array")
            return _wrong_type(param, TEXT_INPUT_SHAPES, value)
        if is_token_array(value):
            return None
        if all(isinstance(v, str) for v in value):
            if not allow_empty_string:
                for index, item in enumerate(value):
                    if not item:
                        return bad(
                            f"Invalid '{param}[{index}]': empty string. Expected a string with minimum length 1.",
                            f"{param}[{index}]",
                            "empty_string",
                        )
        elif not all(is_token_array(v) for v in value):
            return bad(f"Invalid '{param}': expected {TEXT_INPUT_SHAPES}, not a mix.", param, "invalid_type")
        if len(value) > max_items:
            return bad(
                f"Invalid '{param}': array too long. Expected an array with maximum length {max_items}, "
                f"but got an array with length {len(value)} instead.",
                param,
                "array_above_max_length",
            )
        return None

    return check


def _content_parts(parts, param):
    if not parts:
        return bad(f"Invalid '{param}': empty array. Expected an array with minimum length 1.", param, "empty_array")
    for index, part in enumerate(parts):
        part_param = f"{param}[{index}]"
        if not isinstance(part, dict):
            return _wrong_type(part_param, "an object", part)
        if not isinstance(part.get("type"), str):
            return bad(f"Missing required parameter: '{part_param}.type'.", f"{part_param}.type", "missing_required_parameter")
        if part["type"] in ("text", "input_text", "output_text") and not isinstance(part.get("text"), str):
            return bad(f"Missing required parameter: '{part_param}.text'.", f"{part_param}.text", "missing_required_parameter")
    return None


CHAT_ROLES = ("system", "developer", "user", "assistant", "tool", "function")
RESPONSES_MESSAGE_ROLES = ("system", "developer", "user", "assistant")


def _message(message, param, roles):
    """One chat message (or Responses input message): role, content and the fields its role needs."""
    if not isinstance(message, dict):
        return _wrong_type(param, "an object", message)
    role = message.get("role")
    if role is None:
        return bad(f"Missing required parameter: '{param}.role'.", f"{param}.role", "missing_required_parameter")
    if role not in roles:
        supported = ", ".join(f"'{r}'" for r in roles)
        return bad(f"Invalid value: {json.dumps(role)}. Supported values are: {supported}.", f"{param}.role")
    content = message.get("content")
    if content is None:
        if role == "assistant" and (message.get("tool_calls") or message.get("function_call")):
            return None
        return bad(f"Missing required parameter: '{param}.content'.", f"{param}.content", "missing_required_parameter")
    if isinstance(content, list):
        problem = _content_parts(content, f"{param}.content")
        if problem:
            return problem
    elif not isinstance(content, str):
        return _wrong_type(f"{param}.content", "a string or an array of content parts", content)
    required = {"tool": "tool_call_id", "function": "name"}.get(role)
    if required and not isinstance(message.get(required), str):
        return bad(f"Missing required parameter: '{param}.{required}'.", f"{param}.{required}", "missing_required_parameter")
    return None


def chat_messages(value, param):
    if not isinstance(value, list):
        return _wrong_type(param, "an array", value)
    if not value:
        return bad(
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
        return bad(f"Invalid '{param}': empty array. Expected an array with minimum length 1.", param, "empty_array")
    if all(isinstance(v, str) for v in value):
        return None
    for index, part in enumerate(value):
        part_param = f"{param}[{index}]"
        if not isinstance(part, dict):
            return bad(f"Invalid '{param}': expected an array of strings or an array of content parts, not a mix.", param, "invalid_type")
        kind = part.get("type")
        if kind not in ("text", "image_url"):
            return bad(f"Invalid value: {json.dumps(kind)}. Supported values are: 'text', 'image_url'.", f"{part_param}.type")
        if kind == "text" and not isinstance(part.get("text"), str):
            return bad(f"Missing required parameter: '{part_param}.text'.", f"{part_param}.text", "missing_required_parameter")
        image = part.get("image_url")
        if kind == "image_url" and not (isinstance(image, dict) and isinstance(image.get("url"), str)):
            return bad(
                f"Missing required parameter: '{part_param}.image_url.url'.", f"{part_param}.image_url.url", "missing_required_parameter"
            )
    return None
