"""Settings of the files_app app, and the lazy settings object both apps use.

Both apps read one namespaced dict, ``settings.OPENAI_BATCHES``; each app owns
its keys (``DEFAULTS`` here, ``batches/conf.py`` for the batches app), every key
with a documented default. Values are read on each access (never snapshotted at
import), so ``override_settings(OPENAI_BATCHES={...})`` works in tests.

    from files_app.conf import app_settings
    app_settings.MAX_UPLOAD_BYTES
"""

from django.conf import settings

SETTING_NAME = "OPENAI_BATCHES"

# Every key an installed app declared, with its default: what check E002 accepts.
KNOWN_KEYS = {}


class AppSettings:
    """Lazy view over one app's keys of ``settings.OPENAI_BATCHES``, with their defaults."""

    def __init__(self, defaults):
        self.defaults = defaults
        KNOWN_KEYS.update(defaults)

    def __getattr__(self, name):
        if name not in self.defaults:
            raise AttributeError(f"Unknown {SETTING_NAME} setting: {name!r}")
        user = getattr(settings, SETTING_NAME, None) or {}
        return user.get(name, self.defaults[name])


DEFAULTS = {
    # --- Files ---
    # Largest file: one POST /v1/files, or the parts of one /v1/uploads Upload together.
    "MAX_UPLOAD_BYTES": 512 * 1024 * 1024,
    # Retention, as OpenAI: purpose=batch uploads expire this many seconds after upload
    # unless the upload says expires_after. None keeps them. (Output files: batches/conf.py.)
    "DEFAULT_INPUT_FILE_TTL": 30 * 24 * 3600,
    # Which STORAGES alias holds file contents (S3 works through django-storages).
    "STORAGE_ALIAS": "default",
    # --- API ---
    # DRF throttle rate per API key, e.g. "600/min"; None disables throttling.
    "THROTTLE_RATE": None,
}

app_settings = AppSettings(DEFAULTS)
