"""System checks for the settings both apps read (``manage.py check``)."""

from django.conf import settings
from django.core.checks import Error, Tags, Warning, register
from rest_framework.throttling import SimpleRateThrottle

from .conf import DEFAULTS, SETTING_NAME

# Cache backends that keep counters inside one process (or nowhere).
PROCESS_LOCAL_CACHES = {
    "django.core.cache.backends.locmem.LocMemCache": "counts requests in each process separately",
    "django.core.cache.backends.dummy.DummyCache": "stores nothing, so no key is ever throttled",
}


@register(Tags.compatibility)
def check_settings(app_configs, **kwargs):
    errors = []
    user = getattr(settings, SETTING_NAME, {})
    if not isinstance(user, dict):
        return [Error(f"settings.{SETTING_NAME} must be a dict.", id="openai_batches.E001")]
    for key in user:
        if key not in DEFAULTS:
            errors.append(
                Error(
                    f"Unknown key {key!r} in settings.{SETTING_NAME}.", hint=f"Known keys: {', '.join(DEFAULTS)}.", id="openai_batches.E002"
                )
            )
    for app in ("rest_framework", "django_q"):
        if app not in settings.INSTALLED_APPS:
            errors.append(Error(f"{app!r} must be in INSTALLED_APPS.", id="openai_batches.E003"))
    for key in ("MAX_CONCURRENT_BATCHES", "MAX_CONCURRENT_REQUESTS_PER_BATCH", "MAX_ATTEMPTS", "RUN_TASKS_PER_BATCH"):
        value = user.get(key, DEFAULTS[key])
        if not isinstance(value, int) or value < 1:
            errors.append(Error(f"{SETTING_NAME}[{key!r}] must be a positive integer, got {value!r}.", id="openai_batches.E004"))
    for key in ("DEFAULT_INPUT_FILE_TTL", "DEFAULT_OUTPUT_FILE_TTL"):
        value = user.get(key, DEFAULTS[key])
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            errors.append(
                Error(
                    f"{SETTING_NAME}[{key!r}] must be a positive number of seconds or None (keep files), got {value!r}.",
                    id="openai_batches.E007",
                )
            )
    errors.extend(check_throttle(user.get("THROTTLE_RATE", DEFAULTS["THROTTLE_RATE"])))
    errors.extend(check_default_quotas(user.get("DEFAULT_QUOTAS", DEFAULTS["DEFAULT_QUOTAS"])))
    return errors


QUOTA_KEYS = ("MAX_ACTIVE_BATCHES", "MAX_BATCH_CREATIONS_PER_HOUR", "MAX_ENQUEUED_REQUESTS", "MAX_ENQUEUED_PROMPT_TOKENS")


def check_default_quotas(quotas):
    name = f"{SETTING_NAME}['DEFAULT_QUOTAS']"
    if not isinstance(quotas, dict):
        return [Error(f"{name} must be a dict, got {quotas!r}.", id="openai_batches.E006")]
    errors = []
    for key, value in quotas.items():
        if key not in QUOTA_KEYS:
            errors.append(Error(f"Unknown key {key!r} in {name}.", hint=f"Known keys: {', '.join(QUOTA_KEYS)}.", id="openai_batches.E006"))
        elif value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
            errors.append(Error(f"{name}[{key!r}] must be None (unlimited) or an integer >= 0, got {value!r}.", id="openai_batches.E006"))
    return errors


def check_throttle(rate):
    if rate is None:
        return []
    try:
        num_requests, _ = SimpleRateThrottle.parse_rate(None, rate)
    except (AttributeError, TypeError, ValueError, KeyError, IndexError):
        num_requests = 0
    if num_requests < 1:
        return [
            Error(
                f"{SETTING_NAME}['THROTTLE_RATE'] must look like '600/min' (a positive number, '/', then s, min, "
                f"hour or day), got {rate!r}.",
                id="openai_batches.E005",
            )
        ]
    # DRF's throttles count in the default cache.
    backend = getattr(settings, "CACHES", {}).get("default", {}).get("BACKEND", "django.core.cache.backends.locmem.LocMemCache")
    if backend in PROCESS_LOCAL_CACHES:
        return [
            Warning(
                f"{SETTING_NAME}['THROTTLE_RATE'] is set but the default cache ({backend.rsplit('.', 1)[-1]}) "
                f"{PROCESS_LOCAL_CACHES[backend]}: with several web worker processes each key gets more than its rate.",
                hint="Use a shared cache (Redis, Memcached, database) as CACHES['default'], or silence this check "
                "on a single-process site.",
                id="openai_batches.W002",
            )
        ]
    return []
