"""System checks of the batches app's settings, the task queue and the upstream (``manage.py check``)."""

import math
import os

from django.conf import settings
from django.core.checks import Error, Tags, Warning, register
from django.utils.module_loading import import_string

from files_app.checks import check_ttl
from files_app.conf import SETTING_NAME

from .conf import RETIRED, app_settings
from .endpoints import ENDPOINTS, PASS_THROUGH_ENDPOINTS
from .field_rules import is_int
from .quotas import QUOTA_FIELDS
from .windows import parse_window

# django-q2 brokers that re-deliver a task `retry` seconds after it was pulled
# unless it was acknowledged (Redis is at-most-once and never re-delivers).
REDELIVERING_BROKERS = ("orm", "sqs", "mongo", "ironmq", "disque_nodes")


@register(Tags.compatibility)
def check_settings(app_configs, **kwargs):
    """The batches app's keys of ``OPENAI_BATCHES``."""
    # (Without files_app in INSTALLED_APPS, Django fails before checks run: batches' models need its File.)
    user = getattr(settings, SETTING_NAME, None) or {}
    if not isinstance(user, dict):
        return []  # files_app's check reports openai_batches.E001
    messages = []
    if "django_q" not in settings.INSTALLED_APPS:
        messages.append(Error("'django_q' must be in INSTALLED_APPS.", id="openai_batches.E003"))
    for key in (
        "UPSTREAM_MAX_IN_FLIGHT",
        "UPSTREAM_INITIAL_IN_FLIGHT",
        "MAX_CONCURRENT_REQUESTS_PER_BATCH",
        "DISPATCHERS",
        "MAX_ATTEMPTS",
        "EMBEDDINGS_BUNDLE_SIZE",
    ):
        value = getattr(app_settings, key)
        if not isinstance(value, int) or value < 1:
            messages.append(Error(f"{SETTING_NAME}[{key!r}] must be a positive integer, got {value!r}.", id="openai_batches.E004"))
    drain = app_settings.CANCEL_DRAIN_SECONDS
    if isinstance(drain, bool) or not isinstance(drain, int | float) or not math.isfinite(drain) or drain < 0:
        messages.append(
            Error(f"{SETTING_NAME}['CANCEL_DRAIN_SECONDS'] must be a number of seconds >= 0, got {drain!r}.", id="openai_batches.E004")
        )
    messages.extend(check_ttl("DEFAULT_OUTPUT_FILE_TTL", app_settings.DEFAULT_OUTPUT_FILE_TTL))
    messages.extend(check_default_quotas(app_settings.DEFAULT_QUOTAS))
    for key, replacement in RETIRED.items():
        if key in user:
            messages.append(
                Warning(f"{SETTING_NAME}[{key!r}] is no longer used: {replacement}.", hint="Remove it.", id="openai_batches.W005")
            )
    messages.extend(check_completion_windows(app_settings.COMPLETION_WINDOWS, app_settings.COMPLETION_WINDOW_SECONDS))
    messages.extend(check_client_class(app_settings.UPSTREAM_CLIENT_CLASS))
    messages.extend(check_extra_endpoints())
    if not upstream_configured():
        messages.append(
            Warning(
                "No upstream configured: batches will fail validation.",
                hint="Set OPENAI_BATCHES['UPSTREAM_BASE_URL'] (e.g. BATCHES_UPSTREAM_BASE_URL in the environment).",
                id="openai_batches.W001",
            )
        )
    messages.extend(check_endpoint_routes(app_settings.MODELS))
    return messages


@register(Tags.compatibility)
def check_queue_settings(app_configs, **kwargs):
    """django-q2's Q_CLUSTER against what the batch tasks need."""
    if not isinstance(getattr(settings, SETTING_NAME, None) or {}, dict):
        return []  # files_app's check reports openai_batches.E001
    q_cluster = getattr(settings, "Q_CLUSTER", None) or {}
    return check_q_cluster(q_cluster) + check_dispatchers(q_cluster)


QUOTA_KEYS = tuple(field.upper() for field in QUOTA_FIELDS)


def check_default_quotas(quotas):
    name = f"{SETTING_NAME}['DEFAULT_QUOTAS']"
    if not isinstance(quotas, dict):
        return [Error(f"{name} must be a dict, got {quotas!r}.", id="openai_batches.E006")]
    errors = []
    for key, value in quotas.items():
        if key not in QUOTA_KEYS:
            errors.append(Error(f"Unknown key {key!r} in {name}.", hint=f"Known keys: {', '.join(QUOTA_KEYS)}.", id="openai_batches.E006"))
        elif value is not None and (not is_int(value) or value < 0):
            errors.append(Error(f"{name}[{key!r}] must be None (unlimited) or an integer >= 0, got {value!r}.", id="openai_batches.E006"))
    return errors


def check_dispatchers(q):
    workers = q.get("workers") or os.cpu_count() or 4
    dispatchers = app_settings.DISPATCHERS
    if q.get("sync") or not isinstance(dispatchers, int) or dispatchers < workers:
        return []
    return [
        Warning(
            f"{SETTING_NAME}['DISPATCHERS'] ({dispatchers}) is not below Q_CLUSTER['workers'] ({workers}): while batches run, "
            "dispatchers can hold every worker and new batches wait for validation, finished ones for finalization.",
            hint="Keep DISPATCHERS below the workers of one cluster (with several hosts, up to one per host less than its workers).",
            id="openai_batches.W006",
        )
    ]


def check_completion_windows(windows, override_seconds):
    messages = []
    bad = [w for w in windows if parse_window(w) is None] if isinstance(windows, (list, tuple)) else None
    if not windows or bad is None or bad:
        messages.append(
            Error(
                f"{SETTING_NAME}['COMPLETION_WINDOWS'] must be a non-empty list of windows such as '24h', got {windows!r}.",
                hint="Each window is a positive whole number followed by m (minutes), h (hours) or d (days), e.g. ['1h', '24h', '7d'].",
                id="openai_batches.E020",
            )
        )
    if override_seconds is not None and (not is_int(override_seconds) or override_seconds < 1):
        messages.append(
            Error(
                f"{SETTING_NAME}['COMPLETION_WINDOW_SECONDS'] must be None or a positive integer, got {override_seconds!r}.",
                id="openai_batches.E021",
            )
        )
    return messages


def check_client_class(path):
    """UPSTREAM_CLIENT_CLASS must import and have the client interface (batches/upstream.py)."""
    try:
        client_class = import_string(path)
    except ImportError as exc:
        problem = f"cannot be imported ({exc})"
    else:
        missing = [name for name in ("post", "close") if not callable(getattr(client_class, name, None))]
        if not missing:
            return []
        problem = f"has no {' or '.join(missing)}()"
    return [
        Error(
            f"{SETTING_NAME}['UPSTREAM_CLIENT_CLASS'] {path!r} {problem}.",
            hint="Use 'batches.upstream.AiohttpClient' (the default) or 'batches.upstream.OpenAIClient'.",
            id="openai_batches.E030",
        )
    ]


def check_extra_endpoints():
    extra = app_settings.EXTRA_ENDPOINTS
    if isinstance(extra, (list, tuple)) and all(endpoint in PASS_THROUGH_ENDPOINTS for endpoint in extra):
        return []
    return [
        Error(
            f"{SETTING_NAME}['EXTRA_ENDPOINTS'] must be a list of pass-through batch endpoints, got {extra!r}.",
            hint=f"Known: {', '.join(PASS_THROUGH_ENDPOINTS)}.",
            id="openai_batches.E013",
        )
    ]


def check_endpoint_routes(table):
    """A MODELS entry's "endpoints" maps batch endpoints to routes (dicts); anything else would be ignored."""
    endpoints = tuple(ENDPOINTS)
    errors = []
    for model, entry in table.items() if isinstance(table, dict) else ():
        routes = entry.get("endpoints") if isinstance(entry, dict) else None
        if routes is None:
            continue
        valid = isinstance(routes, dict) and all(name in endpoints and isinstance(route, dict) for name, route in routes.items())
        if not valid:
            errors.append(
                Error(
                    f"{SETTING_NAME}['MODELS'][{model!r}]['endpoints'] must map batch endpoints to routes, got {routes!r}.",
                    hint=f'e.g. {{"/v1/embeddings": {{"base_url": "http://10.0.0.2/v1"}}}}; endpoints: {", ".join(endpoints)}.',
                    id="openai_batches.E031",
                )
            )
    return errors


def upstream_configured():
    """A default upstream, or a MODELS routing table that names a base_url for every model."""
    if app_settings.UPSTREAM_BASE_URL:
        return True
    table = app_settings.MODELS
    return isinstance(table, dict) and bool(table) and all(isinstance(entry, dict) and entry.get("base_url") for entry in table.values())


def minimum_retry(timeout, workers, queue_limit):
    """How long a pulled task can go unacknowledged without having died.

    A cluster pulls up to ``queue_limit`` tasks into memory; the last of them
    waits for ``ceil((queue_limit + 1) / workers)`` rounds of tasks that may
    each run ``timeout`` seconds, then runs for up to ``timeout`` itself.
    """
    return timeout * (1 + math.ceil((queue_limit + 1) / workers))


def check_q_cluster(q):
    if q.get("sync"):
        return []  # tasks run inline: nothing is queued, nothing re-delivered
    timeout = q.get("timeout")
    if not timeout:
        return [
            Warning(
                "Q_CLUSTER has no 'timeout'" + ("" if q else " (Q_CLUSTER is not set)") + ": a hung task is never stopped, "
                "and a re-delivering broker runs long batch tasks again while they still run.",
                hint="Set Q_CLUSTER['timeout'] (e.g. 600, above OPENAI_BATCHES['RUN_SLICE_SECONDS'] + 60) and a 'retry' "
                "that covers it (see docs/settings.md).",
                id="openai_batches.W004",
            )
        ]
    messages = []
    if timeout < app_settings.RUN_SLICE_SECONDS + 60:
        messages.append(
            Error(
                f"Q_CLUSTER['timeout'] ({timeout}) must exceed OPENAI_BATCHES['RUN_SLICE_SECONDS'] + 60 "
                f"({app_settings.RUN_SLICE_SECONDS + 60:g}).",
                hint="A run task hands its batch back to the queue after RUN_SLICE_SECONDS; a shorter timeout kills it mid-slice.",
                id="openai_batches.E012",
            )
        )
    if not any(broker in q for broker in REDELIVERING_BROKERS):
        return messages
    retry = q.get("retry", 60)
    workers = q.get("workers") or os.cpu_count() or 4
    queue_limit = q.get("queue_limit", workers**2)
    if retry <= timeout:
        messages.append(
            Error(
                f"Q_CLUSTER['retry'] ({retry}) must be larger than Q_CLUSTER['timeout'] ({timeout}).",
                hint="django-q2 re-delivers a task 'retry' seconds after it was pulled; a smaller value runs tasks "
                "twice while they still run.",
                id="openai_batches.E011",
            )
        )
    elif retry <= (minimum := minimum_retry(timeout, workers, queue_limit)):
        messages.append(
            Warning(
                f"Q_CLUSTER['retry'] ({retry}) is too small for 'timeout' {timeout} with {workers} workers and a queue_limit of "
                f"{queue_limit}: a task waiting in a worker's queue can be re-delivered before it even starts.",
                hint=f"Set 'retry' above timeout * (1 + ceil((queue_limit + 1) / workers)) = {minimum}, or lower 'queue_limit'.",
                id="openai_batches.W003",
            )
        )
    return messages
