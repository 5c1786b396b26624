"""Quotas per API key: what one key may have queued, so one team cannot fill the queue.

Each quota is a field of ``files_app.ApiKey``; an empty field falls back to the
site-wide ``OPENAI_BATCHES["DEFAULT_QUOTAS"]``, and a missing default means
unlimited. Two are checked when a batch is created (the API answers 429):

* ``max_active_batches``: unfinished batches created with the key;
* ``max_batch_creations_per_hour``: batches created with the key in the last
  60 minutes (with ``Retry-After``: when the oldest of them leaves the window).

Two are checked at validation, once the input file's size is known (the batch
fails, as OpenAI fails a batch over its enqueued-token limit):

* ``max_enqueued_requests``: requests across the key's unfinished batches
  (``request_limit_exceeded``);
* ``max_enqueued_prompt_tokens``: their prompt tokens, estimated at about four
  characters a token (``token_limit_exceeded``).

The create checks hold a row lock on the key (PostgreSQL; SQLite serialises
writers anyway), so concurrent creates cannot both take the last slot. The
enqueued checks count batches already past validation: two batches of one key
validated at the same moment may together exceed the limit once.
"""

import math
from datetime import timedelta

from django.db.models import Sum
from django.utils import timezone

from files_app.api import OpenAIError
from files_app.models import ApiKey

from .conf import app_settings
from .models import Batch, BatchStatus
from .validation import LineError

QUOTA_FIELDS = ("max_active_batches", "max_batch_creations_per_hour", "max_enqueued_requests", "max_enqueued_prompt_tokens")
CREATION_WINDOW = timedelta(hours=1)


def limit(api_key, field):
    """The key's own quota, else the site default; None means unlimited."""
    value = getattr(api_key, field)
    if value is None:
        value = (app_settings.DEFAULT_QUOTAS or {}).get(field.upper())
    return value


def check_create(api_key, now=None):
    """Raise a 429 ``OpenAIError`` when ``api_key`` may not create a batch now.

    Call inside the transaction that creates the batch: it locks the key's row."""
    if api_key is None:
        return
    api_key = ApiKey.objects.select_for_update().get(pk=api_key.pk)
    now = now or timezone.now()
    batches = Batch.objects.created_with(api_key)
    max_active = limit(api_key, "max_active_batches")
    if max_active is not None:
        active = batches.unfinished().count()
        if active >= max_active:
            raise OpenAIError(
                f"This API key has {active} active batches and may have at most {max_active}. "
                "Wait for one to finish, or cancel one, before creating another.",
                status_code=429,
                type="requests",
                code="active_batch_limit_exceeded",
                headers={"x-should-retry": "false"},
            )
    per_hour = limit(api_key, "max_batch_creations_per_hour")
    if per_hour is not None:
        recent = list(batches.filter(created_at__gt=now - CREATION_WINDOW).order_by("-created_at").values_list("created_at", flat=True))
        if len(recent) >= per_hour:
            # The slot frees when the per_hour-th newest creation leaves the window.
            frees_at = recent[per_hour - 1] + CREATION_WINDOW if per_hour else now + CREATION_WINDOW
            wait = max(1, math.ceil((frees_at - now).total_seconds()))
            raise OpenAIError(
                f"Rate limit reached for batch creations on this API key: limit {per_hour} per hour, used {len(recent)}. "
                f"Please try again in {wait} seconds.",
                status_code=429,
                type="requests",
                code="rate_limit_exceeded",
                headers={"Retry-After": str(wait)},
            )


def enqueued_problems(batch, requests, prompt_tokens):
    """Validation errors for ``batch`` (not yet counted anywhere) when adding ``requests``
    requests and ``prompt_tokens`` estimated prompt tokens would exceed its key's quotas."""
    if batch.api_key_id is None:
        return []
    api_key = ApiKey.objects.get(pk=batch.api_key_id)
    others = Batch.objects.created_with(api_key).unfinished().exclude(pk=batch.pk).exclude(status=BatchStatus.VALIDATING)
    problems = []
    max_requests = limit(api_key, "max_enqueued_requests")
    if max_requests is not None:
        enqueued = others.aggregate(n=Sum("total_requests"))["n"] or 0
        if enqueued + requests > max_requests:
            problems.append(
                LineError(
                    "request_limit_exceeded",
                    f"Enqueued request limit reached for this API key: limit {max_requests}, currently enqueued {enqueued} "
                    f"in unfinished batches; this batch has {requests}. Wait for batches to finish, or split the file.",
                    None,
                    None,
                )
            )
    max_tokens = limit(api_key, "max_enqueued_prompt_tokens")
    if max_tokens is not None:
        enqueued = others.aggregate(n=Sum("estimated_prompt_tokens"))["n"] or 0
        if enqueued + prompt_tokens > max_tokens:
            problems.append(
                LineError(
                    "token_limit_exceeded",
                    f"Enqueued token limit reached for this API key: limit {max_tokens} prompt tokens, currently enqueued "
                    f"{enqueued} in unfinished batches; this batch has {prompt_tokens} (estimated at 4 characters a token). "
                    "Wait for batches to finish, or split the file.",
                    None,
                    None,
                )
            )
    return problems
