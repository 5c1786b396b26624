"""Public object ids in OpenAI's shapes (``file-…``, ``batch_…``)."""

import secrets


def make_id(prefix: str, nbytes: int = 12) -> str:
    return f"{prefix}{secrets.token_hex(nbytes)}"
