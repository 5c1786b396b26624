"""Prefix-aware dispatch order: lines that start alike are sent close together.

vLLM and llama.cpp keep the attention state of recent prompt prefixes (vLLM's
automatic prefix caching, llama.cpp's slot cache), so a request whose prompt
starts like one served moments before skips most of its prefill. A batch mixing
several system prompts, sent in file order, keeps evicting them. Each request row
gets a ``prefix_key`` at validation, a hash of how its prompt starts (llm-d's batch
gateway orders by a hash of the system prompt the same way), and claims take a
batch's pending rows by ``(prefix_key, line)`` (``claims.py``).

Only the order *within* a batch changes: how many rows each batch gets (fair
share, deadlines) is decided before, and output files stay in input order.
"""

import hashlib
import json

# How much of the prompt decides the group: about 128 tokens, a few cache blocks.
PREFIX_CHARS = 512
PREFIX_TOKENS = 128


def prefix_key(endpoint, body):
    """A signed 64-bit hash of how this request's prompt starts; 0 where order does not matter."""
    lead = _chat_lead(body) if endpoint == "/v1/chat/completions" else _prompt_lead(body) if endpoint == "/v1/completions" else None
    if lead is None:
        return 0
    digest = hashlib.blake2b(lead.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def _chat_lead(body):
    """The first message when more follow (a system prompt, few-shot examples or a shared
    document lead them): its role and start. A lone message is the whole request, so
    lines differ from their start and keep file order."""
    messages = body.get("messages")
    if not isinstance(messages, list) or len(messages) < 2 or not isinstance(messages[0], dict):
        return None
    first = messages[0]
    content = first.get("content")
    text = content if isinstance(content, str) else json.dumps(content, sort_keys=True)
    return f"{first.get('role')}\n{text[:PREFIX_CHARS]}"


def _prompt_lead(body):
    """The start of a prompt longer than PREFIX_CHARS (PREFIX_TOKENS tokens): a long prompt
    opens with shared instructions or context; short ones keep file order."""
    prompt = body.get("prompt")
    if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int):
        prompt = prompt[0]  # several prompts (or token arrays): the first one starts the request
    if isinstance(prompt, str) and len(prompt) > PREFIX_CHARS:
        return prompt[:PREFIX_CHARS]
    if isinstance(prompt, list) and len(prompt) > PREFIX_TOKENS:
        return json.dumps(prompt[:PREFIX_TOKENS])
    return None
