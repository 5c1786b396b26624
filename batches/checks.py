from django.conf import settings
from django.core.checks import Error, Tags, Warning, register

from files_app.conf import app_settings


@register(Tags.compatibility)
def check_queue_settings(app_configs, **kwargs):
    messages = []
    if "files_app" not in settings.INSTALLED_APPS:
        messages.append(Error("'files_app' must be in INSTALLED_APPS next to 'batches'.", id="openai_batches.E010"))
    q = getattr(settings, "Q_CLUSTER", {}) or {}
    timeout, retry = q.get("timeout"), q.get("retry", 60)
    if timeout is not None and retry is not None and retry <= timeout:
        messages.append(
            Error(
                f"Q_CLUSTER['retry'] ({retry}) must be larger than Q_CLUSTER['timeout'] ({timeout}).",
                hint="django-q2 re-delivers a task 'retry' seconds after it was pulled; a smaller value runs tasks twice while they still run.",
                id="openai_batches.E011",
            )
        )
    if timeout is not None and timeout < app_settings.RUN_SLICE_SECONDS + 60:
        messages.append(
            Error(
                f"Q_CLUSTER['timeout'] ({timeout}) must exceed OPENAI_BATCHES['RUN_SLICE_SECONDS'] + 60.",
                id="openai_batches.E012",
            )
        )
    if not app_settings.UPSTREAM_BASE_URL and not app_settings.MODELS:
        messages.append(
            Warning(
                "No upstream configured: batches will fail validation.",
                hint="Set OPENAI_BATCHES['UPSTREAM_BASE_URL'] (e.g. BATCHES_UPSTREAM_BASE_URL in the environment).",
                id="openai_batches.W001",
            )
        )
    return messages
