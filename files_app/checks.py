"""System checks of the ``OPENAI_BATCHES`` dict and of files_app's keys (``manage.py check``)."""

from django.conf import settings
from django.core.checks import Error, Tags, Warning, register
from rest_framework.throttling import SimpleRateThrottle

from .conf import DEFAULTS, KNOWN_KEYS, SETTING_NAME

# Cache backends that keep counters inside one process (or nowhere).
PROCESS_LOCAL_CACHES = {
    "django.core.cache.backends.locmem.LocMemCache": "counts requests in each process separately",
    "django.core.cache.backends.dummy.DummyCache": "stores nothing, so no key is ever throttled",
}


@register(Tags.compatibility)
def check_settings(app_configs, **kwargs):
    """The ``OPENAI_BATCHES`` dict itself, and files_app's keys of it."""
    errors = []
    user = getattr(settings, SETTING_NAME, {})
    if not isinstance(user, dict):
        return [Error(f"settings.{SETTING_NAME} must be a dict.", id="openai_batches.E001")]
    for key in user:
        if key not in KNOWN_KEYS:
            errors.append(
                Error(
                    f"Unknown key {key!r} in settings.{SETTING_NAME}.",
                    hint=f"Known keys: {', '.join(KNOWN_KEYS)}.",
                    id="openai_batches.E002",
                )
            )
    if "rest_framework" not in settings.INSTALLED_APPS:
        errors.append(Error("'rest_framework' must be in INSTALLED_APPS.", id="openai_batches.E003"))
    errors.extend(check_ttl("DEFAULT_INPUT_FILE_TTL", user.get("DEFAULT_INPUT_FILE_TTL", DEFAULTS["DEFAULT_INPUT_FILE_TTL"])))
    errors.extend(check_throttle(user.get("THROTTLE_RATE", DEFAULTS["THROTTLE_RATE"])))
    return errors


def check_ttl(key, value):
    """A file retention setting: a positive number of seconds, or None (keep files)."""
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
        return [
            Error(
                f"{SETTING_NAME}[{key!r}] must be a positive number of seconds or None (keep files), got {value!r}.",
                id="openai_batches.E007",
            )
        ]
    return []


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
