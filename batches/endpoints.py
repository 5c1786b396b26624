"""The batch endpoints, one ``Endpoint`` entry each: adding an endpoint is one entry here.

Validation (``validation.py``), the rate limiter's TPM estimate (``ratelimit.py``),
the create view (``views.py``), the system checks and the OpenAPI schema all read
this table.
"""

from collections.abc import Callable
from typing import NamedTuple

from . import field_rules as rules
from .conf import app_settings


class RequiredField(NamedTuple):
    name: str
    types: tuple  # accepted JSON types (Python classes) for the field's value
    expected: str  # how the message names them


class Endpoint(NamedTuple):
    path: str
    # Body fields a line must have: missing or mistyped fails the whole batch.
    required: tuple
    # Body field -> rule (``field_rules``): a request breaking one is answered with
    # OpenAI's 400 in the error file. Fields not listed pass through untouched.
    fields: dict
    # Body fields that cap the output, first found wins: the TPM estimate adds it (times n).
    output_token_fields: tuple = ()
    # Body fields that may stand in for a missing required ``input`` (the context comes from elsewhere).
    input_alternatives: tuple = ()
    # True: each input (string or token array) counts against MAX_EMBEDDING_INPUTS_PER_BATCH.
    counts_embedding_inputs: bool = False
    # A rule across fields: body -> OpenAI's 400 error body or None.
    check_body: Callable | None = None
    # True: off unless listed in EXTRA_ENDPOINTS; only the universal rules are checked
    # (a JSON object body naming the one model of the file), the body goes upstream as it is.
    pass_through: bool = False

    @property
    def model_required(self):
        return any(field.name == "model" for field in self.required)


MODEL = RequiredField("model", (str,), "a string")

# Sampling fields shared by chat and completions.
SAMPLING_FIELDS = {
    "temperature": rules.number(0, 2),
    "top_p": rules.number(0, 1),
    "presence_penalty": rules.number(-2, 2),
    "frequency_penalty": rules.number(-2, 2),
    "n": rules.integer(1, 128),
    "seed": rules.integer(),
    "stop": rules.stop_sequences,
    "logit_bias": rules.logit_bias,
    "user": rules.string,
    "stream": rules.boolean,
}


def best_of_covers_n(body):
    best_of, n = body.get("best_of"), body.get("n")
    if rules.is_int(best_of) and rules.is_int(n) and best_of < n:
        return rules.bad(f"best_of must be greater than or equal to n, but got best_of={best_of} and n={n}.", "best_of")
    return None


ENDPOINTS = {
    endpoint.path: endpoint
    for endpoint in (
        Endpoint(
            "/v1/chat/completions",
            required=(MODEL, RequiredField("messages", (list,), "an array of messages")),
            fields={
                "model": rules.string,
                "messages": rules.chat_messages,
                **SAMPLING_FIELDS,
                "max_tokens": rules.integer(1),
                "max_completion_tokens": rules.integer(1),
                "logprobs": rules.boolean,
                "top_logprobs": rules.integer(0, 20),
                "response_format": rules.obj,
                "tools": rules.array_of_objects,
                "tool_choice": rules.string_or_object,
                "parallel_tool_calls": rules.boolean,
                "store": rules.boolean,
                "metadata": rules.metadata,
                "reasoning_effort": rules.string,
                "service_tier": rules.string,
            },
            output_token_fields=("max_completion_tokens", "max_tokens"),
        ),
        Endpoint(
            "/v1/completions",
            required=(MODEL, RequiredField("prompt", (str, list), rules.TEXT_INPUT_SHAPES)),
            fields={
                "model": rules.string,
                "prompt": rules.text_input(allow_empty_string=True),
                **SAMPLING_FIELDS,
                # Completions accept max_tokens 0 (with echo, to score a prompt).
                "max_tokens": rules.integer(0),
                "best_of": rules.integer(0, 20),
                "logprobs": rules.integer(0, 5),
                "echo": rules.boolean,
                "suffix": rules.string,
            },
            output_token_fields=("max_tokens",),
            check_body=best_of_covers_n,
        ),
        Endpoint(
            "/v1/embeddings",
            required=(MODEL, RequiredField("input", (str, list), rules.TEXT_INPUT_SHAPES)),
            fields={
                "model": rules.string,
                "input": rules.text_input(allow_empty_string=False),
                "encoding_format": rules.one_of("float", "base64"),
                "dimensions": rules.integer(1),
                "user": rules.string,
            },
            counts_embedding_inputs=True,
        ),
        Endpoint(
            "/v1/responses",
            required=(MODEL, RequiredField("input", (str, list), "a string or an array of input items")),
            fields={
                "model": rules.string,
                "input": rules.responses_input,
                "instructions": rules.string,
                # OpenAI's Responses API rejects fewer than 16 output tokens.
                "max_output_tokens": rules.integer(16),
                "temperature": rules.number(0, 2),
                "top_p": rules.number(0, 1),
                "top_logprobs": rules.integer(0, 20),
                "tools": rules.array_of_objects,
                "tool_choice": rules.string_or_object,
                "parallel_tool_calls": rules.boolean,
                "max_tool_calls": rules.integer(1),
                "previous_response_id": rules.string,
                "conversation": rules.string_or_object,
                "store": rules.boolean,
                "stream": rules.boolean,
                "truncation": rules.one_of("auto", "disabled"),
                "text": rules.obj,
                "reasoning": rules.obj,
                "prompt": rules.obj,
                "metadata": rules.metadata,
                "user": rules.string,
                "service_tier": rules.string,
            },
            output_token_fields=("max_output_tokens",),
            # The context may come from a stored response, a conversation or a stored
            # prompt template instead of ``input`` (the SDK makes ``input`` optional).
            input_alternatives=("previous_response_id", "conversation", "prompt"),
        ),
        Endpoint(
            "/v1/moderations",
            # The model is optional: the upstream picks its default moderation model.
            required=(RequiredField("input", (str, list), "a string, an array of strings or an array of content parts"),),
            fields={"model": rules.string, "input": rules.moderation_input},
        ),
        Endpoint("/v1/images/generations", required=(MODEL,), fields={"model": rules.string}, pass_through=True),
        Endpoint("/v1/images/edits", required=(MODEL,), fields={"model": rules.string}, pass_through=True),
    )
}

SUPPORTED_ENDPOINTS = tuple(path for path, endpoint in ENDPOINTS.items() if not endpoint.pass_through)
PASS_THROUGH_ENDPOINTS = tuple(path for path, endpoint in ENDPOINTS.items() if endpoint.pass_through)
# Every endpoint's output caps, in table order (a body only has its own endpoint's).
OUTPUT_TOKEN_FIELDS = tuple(dict.fromkeys(field for endpoint in ENDPOINTS.values() for field in endpoint.output_token_fields))


def enabled_endpoints():
    """The batch endpoints this site accepts: the text endpoints, then EXTRA_ENDPOINTS."""
    return SUPPORTED_ENDPOINTS + tuple(e for e in app_settings.EXTRA_ENDPOINTS if e in PASS_THROUGH_ENDPOINTS)
