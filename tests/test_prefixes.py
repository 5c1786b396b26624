"""The prefix key a request row gets at validation (batches/prefixes.py)."""

from batches.prefixes import PREFIX_CHARS, PREFIX_TOKENS, prefix_key

CHAT, COMPLETIONS, EMBEDDINGS = "/v1/chat/completions", "/v1/completions", "/v1/embeddings"


def chat(*messages):
    return {"model": "m", "messages": [{"role": role, "content": content} for role, content in messages]}


def test_chat_lines_with_one_system_prompt_share_a_key_whatever_follows():
    first = prefix_key(CHAT, chat(("system", "You are terse."), ("user", "one")))
    assert first == prefix_key(CHAT, chat(("system", "You are terse."), ("user", "two"), ("assistant", "2"), ("user", "three")))
    assert first != prefix_key(CHAT, chat(("system", "You are verbose."), ("user", "one")))
    assert first != prefix_key(CHAT, chat(("user", "You are terse."), ("user", "one")))  # the role counts


def test_a_long_shared_opening_decides_the_group_not_the_end():
    document = "The contract between the parties reads as follows. " * 20
    assert len(document) > PREFIX_CHARS
    question = chat(("user", document + "Who pays?"), ("user", "Answer briefly."))
    assert prefix_key(CHAT, question) == prefix_key(CHAT, chat(("user", document + "When?"), ("user", "Answer briefly.")))
    opening = "Classify the sentiment of the review below. " * 20
    assert prefix_key(COMPLETIONS, {"prompt": opening + "a"}) == prefix_key(COMPLETIONS, {"prompt": [opening + "b", "c"]})


def test_structured_content_and_long_token_prompts_have_keys():
    parts = [{"type": "text", "text": "Describe:"}]
    assert prefix_key(CHAT, chat(("user", parts), ("user", "a"))) == prefix_key(CHAT, chat(("user", list(parts)), ("user", "b")))
    tokens = list(range(PREFIX_TOKENS + 1))
    assert prefix_key(COMPLETIONS, {"prompt": tokens}) == prefix_key(COMPLETIONS, {"prompt": [tokens, [4]]})
    assert prefix_key(COMPLETIONS, {"prompt": tokens}) != prefix_key(COMPLETIONS, {"prompt": [7, *tokens]})


def test_lines_that_are_their_own_prompt_keep_file_order():
    assert prefix_key(CHAT, chat(("user", "What is 2 + 2?"))) == 0
    assert prefix_key(COMPLETIONS, {"prompt": "Once upon a time"}) == 0
    assert prefix_key(EMBEDDINGS, {"model": "m", "input": "text"}) == 0
    assert prefix_key(CHAT, {"model": "m", "messages": []}) == 0


def test_keys_fit_a_signed_64_bit_column():
    key = prefix_key(CHAT, chat(("system", "x"), ("user", "y")))
    assert -(2**63) <= key < 2**63 and key != 0
