import importlib.util

from django.apps import AppConfig


class BatchesConfig(AppConfig):
    name = "batches"
    label = "batches"
    verbose_name = "OpenAI batches"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from . import checks, receivers  # noqa: F401  (system checks, django-q2 hooks)

        if importlib.util.find_spec("drf_spectacular"):
            from . import schema  # noqa: F401  (OpenAPI shapes of /v1/batches; drf-spectacular is optional)
        from .signals import batch_finished
        from .webhooks import queue_batch_event

        batch_finished.connect(queue_batch_event, dispatch_uid="batches.webhooks.queue_batch_event")
