"""Upstream rate limits (requests and tokens per minute) shared by every worker on every host.

Limits come from ``OPENAI_BATCHES["RATE_LIMITS"]``::

    {"gpt-4o-mini": {"rpm": 500, "tpm": 200_000},   # this model, its own budget
     "*": {"rpm": 600}}                              # every other model, per upstream base URL

Each limit is one ``RateLimitBucket`` row holding GCRA state (the "virtual
scheduling" form of a token bucket): the time from which the bucket is full
again. A runner takes permits for the requests it is about to send in one short
transaction on that row, so any number of processes draw from one budget and
the database serialises them (a row lock on PostgreSQL, the IMMEDIATE write
lock on SQLite). Hosts must keep their clocks in sync (NTP), as leases need anyway.

A burst of one second's worth of the limit may go at once; after that permits
are spaced so that no window of ``WINDOW_SECONDS`` holds more than the limit.
That window is one second longer than the upstream's minute, so network jitter
between taking a permit and the request arriving cannot push a minute over.
"""

import hashlib
import math
import time

from django.db import IntegrityError, transaction

from .conf import app_settings
from .endpoints import OUTPUT_TOKEN_FIELDS
from .field_rules import is_int
from .models import RateLimitBucket

WINDOW_SECONDS = 61.0
KEY_MAX_LENGTH = 255


class Rate:
    """One per-minute limit in GCRA form.

    ``tat`` ("theoretical arrival time", Unix seconds) is when the bucket would be
    full again; a cost of ``c`` moves it ``c * interval`` into the future, and a
    cost fits while ``tat`` stays within ``capacity`` of now.
    """

    def __init__(self, per_minute):
        self.per_minute = per_minute
        self.burst = max(1.0, per_minute / 60)
        # burst + floor(W / interval) <= per_minute for every window W < WINDOW_SECONDS.
        self.interval = WINDOW_SECONDS / max(1.0, per_minute - self.burst + 1)
        self.capacity = self.burst * self.interval

    def take(self, tat, now, cost):
        """The new ``tat`` if ``cost`` fits at ``now``, else None."""
        start = max(tat, now)
        if cost > self.burst:
            # Larger than a full bucket (a long prompt against a small TPM): it goes
            # alone once the bucket is full, and later requests wait for the refill.
            return start + cost * self.interval if tat <= now else None
        after = start + cost * self.interval
        return after if after - now <= self.capacity + 1e-9 else None

    def wait(self, tat, now, cost):
        """Seconds until ``cost`` would fit."""
        if cost > self.burst:
            return max(0.0, tat - now)
        return max(0.0, tat + cost * self.interval - self.capacity - now)


class Limiter:
    """Permits for one limited model or upstream, drawn from its database row."""

    def __init__(self, key, rpm=None, tpm=None):
        self.key = key
        self.requests = Rate(rpm) if rpm else None
        self.tokens = Rate(tpm) if tpm else None

    def __repr__(self):
        return f"Limiter({self.key!r}, rpm={self.requests and self.requests.per_minute}, tpm={self.tokens and self.tokens.per_minute})"

    @property
    def counts_tokens(self):
        return self.tokens is not None

    @property
    def burst_requests(self):
        """How many requests may go at once: a sensible claim size for a runner."""
        return max(1, int(self.requests.burst)) if self.requests else None

    def acquire(self, costs):
        """Take permits for as many of ``costs`` (token estimates, in sending order) as fit now.

        Returns ``(granted, wait)``: the first ``granted`` requests may be sent;
        ``wait`` is how many seconds until the next one would fit (0 when all did).
        """
        if not costs:
            return 0, 0.0
        with transaction.atomic():
            bucket = RateLimitBucket.objects.select_for_update().filter(pk=self.key).first()
            if bucket is None:
                bucket = self._create_bucket()
            # Read the clock only once the row is ours: a permit is timed by when it was granted.
            now = time.time()
            requests_tat, tokens_tat = bucket.requests_tat, bucket.tokens_tat
            granted, wait = 0, 0.0
            for cost in costs:
                next_requests = self.requests.take(requests_tat, now, 1) if self.requests else requests_tat
                next_tokens = self.tokens.take(tokens_tat, now, cost) if self.tokens else tokens_tat
                if next_requests is None or next_tokens is None:
                    wait = max(
                        self.requests.wait(requests_tat, now, 1) if self.requests else 0.0,
                        self.tokens.wait(tokens_tat, now, cost) if self.tokens else 0.0,
                    )
                    break
                requests_tat, tokens_tat, granted = next_requests, next_tokens, granted + 1
            if granted:
                RateLimitBucket.objects.filter(pk=self.key).update(requests_tat=requests_tat, tokens_tat=tokens_tat)
        return granted, wait

    def _create_bucket(self):
        try:
            with transaction.atomic():
                return RateLimitBucket.objects.create(key=self.key)
        except IntegrityError:  # another process created it first
            return RateLimitBucket.objects.select_for_update().get(pk=self.key)


def limiter_for(model, route):
    """The limiter for requests to ``model`` via ``route`` (an ``upstream.Route``), or None when unlimited."""
    limits = app_settings.RATE_LIMITS or {}
    if model in limits:
        key, limit = f"model:{model}", limits[model]
    elif "*" in limits:
        key, limit = f"upstream:{route.base_url}", limits["*"]
    else:
        return None
    rpm, tpm = (limit or {}).get("rpm"), (limit or {}).get("tpm")
    if not rpm and not tpm:
        return None
    if len(key) > KEY_MAX_LENGTH:
        key = key[: KEY_MAX_LENGTH - 41] + ":" + hashlib.sha1(key.encode()).hexdigest()
    return Limiter(key, rpm=rpm, tpm=tpm)


def estimate_tokens(body):
    """What a request counts against a TPM limit before it is sent, as OpenAI estimates
    it: its text at about four characters a token, plus the output cap times ``n``."""
    output_cap = next((body[f] for f in OUTPUT_TOKEN_FIELDS if _positive_int(body.get(f))), 0)
    choices = body.get("n") if _positive_int(body.get("n")) else 1
    return estimate_prompt_tokens(body) + output_cap * choices


def estimate_prompt_tokens(body):
    """The input side of ``estimate_tokens``: the request's text at about four characters a token."""
    return math.ceil((_text_length(body) - _text_length(body.get("model"))) / 4)


def _positive_int(value):
    return is_int(value) and value > 0


def _text_length(value):
    """Characters of every string in ``value``, through nested dicts and lists. A loop, not
    recursive generators: validation estimates every line (profiled at 3 % of its CPU)."""
    total, pending = 0, [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            total += len(item)
        elif isinstance(item, dict):
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return total
