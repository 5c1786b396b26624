from django.conf import settings
from django.core.checks import Error, Tags, register

from .conf import DEFAULTS, SETTING_NAME


@register(Tags.compatibility)
def check_settings(app_configs, **kwargs):
    errors = []
    user = getattr(settings, SETTING_NAME, {})
    if not isinstance(user, dict):
        return [Error(f"settings.{SETTING_NAME} must be a dict.", id="openai_batches.E001")]
    for key in user:
        if key not in DEFAULTS:
            errors.append(
                Error(f"Unknown key {key!r} in settings.{SETTING_NAME}.", hint=f"Known keys: {', '.join(DEFAULTS)}.", id="openai_batches.E002")
            )
    for app in ("rest_framework", "django_q"):
        if app not in settings.INSTALLED_APPS:
            errors.append(Error(f"{app!r} must be in INSTALLED_APPS.", id="openai_batches.E003"))
    for key in ("MAX_CONCURRENT_BATCHES", "MAX_CONCURRENT_REQUESTS_PER_BATCH", "MAX_ATTEMPTS", "RUN_TASKS_PER_BATCH"):
        value = user.get(key, DEFAULTS[key])
        if not isinstance(value, int) or value < 1:
            errors.append(Error(f"{SETTING_NAME}[{key!r}] must be a positive integer, got {value!r}.", id="openai_batches.E004"))
    return errors
