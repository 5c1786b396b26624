import importlib.util

from django.apps import AppConfig


class FilesAppConfig(AppConfig):
    name = "files_app"
    label = "files_app"
    verbose_name = "OpenAI files"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from . import checks  # noqa: F401  (registers system checks)

        if importlib.util.find_spec("drf_spectacular"):
            from . import schema  # noqa: F401  (OpenAPI shapes of /v1/files; drf-spectacular is optional)
