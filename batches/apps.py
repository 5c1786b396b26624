from django.apps import AppConfig


class BatchesConfig(AppConfig):
    name = "batches"
    label = "batches"
    verbose_name = "OpenAI batches"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from . import checks, receivers  # noqa: F401  (system checks, django-q2 hooks)
