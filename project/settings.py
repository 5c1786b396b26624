"""Settings of the runnable service. Everything comes from the environment
(documented in README.md); the apps themselves only read OPENAI_BATCHES."""

import json
import math
import os
from pathlib import Path

import dj_database_url

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("VAR_DIR", BASE_DIR / "var"))
VAR_DIR.mkdir(parents=True, exist_ok=True)


def env_bool(name, default=False):
    return os.environ.get(name, str(default)).lower() in ("1", "true", "yes", "on")


def env_int(name, default):
    value = os.environ.get(name)
    return default if value is None else int(value)


def env_float(name, default):
    return float(os.environ.get(name, default))


def env_json(name):
    value = os.environ.get(name)
    return json.loads(value) if value else None


def env_rate_limits():
    """BATCHES_RATE_LIMITS (JSON: {"model-id": {"rpm": N, "tpm": N}}), plus
    BATCHES_RPM_LIMIT / BATCHES_TPM_LIMIT for every other model ("*")."""
    limits = json.loads(os.environ.get("BATCHES_RATE_LIMITS") or "{}")
    default = {key: env_int(f"BATCHES_{key.upper()}_LIMIT", 0) for key in ("rpm", "tpm")}
    if any(default.values()):
        limits.setdefault("*", {key: value for key, value in default.items() if value})
    return limits


DEBUG = env_bool("DJANGO_DEBUG")
# The fallback starts with "django-insecure-" so `manage.py check --deploy` flags it.
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY") or "django-insecure-dev-key-set-DJANGO_SECRET_KEY-in-production"
ALLOWED_HOSTS = [h for h in os.environ.get("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1,[::1],testserver").split(",") if h]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "rest_framework",
    "django_q",
    "drf_spectacular",
    "files_app",
    "batches",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "files_app.api.request_ids.RequestIdMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "project.urls"
WSGI_APPLICATION = "project.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        # templates/: this site's own pages (error pages); each app's templates ship inside the app.
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Database: DATABASE_URL, default a SQLite file under var/ in WAL mode ---
# Connections persist (DATABASE_CONN_MAX_AGE seconds, checked before reuse): opening one
# per API request cost PostgreSQL ~10 ms and SQLite its PRAGMAs (docs/benchmarks.md).
DATABASES = {
    "default": dj_database_url.parse(
        os.environ.get("DATABASE_URL") or f"sqlite:///{VAR_DIR / 'db.sqlite3'}",
        conn_max_age=env_int("DATABASE_CONN_MAX_AGE", 60),
        conn_health_checks=True,
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    DATABASES["default"]["OPTIONS"] = {
        # Several processes write (web, workers): WAL lets readers go on while one
        # writes, IMMEDIATE takes the write lock up front instead of failing mid-transaction.
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA busy_timeout=30000;",
        "transaction_mode": "IMMEDIATE",
        "timeout": 30,
    }
    DATABASES["default"]["TEST"] = {"NAME": os.environ.get("TEST_SQLITE_NAME") or None}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = Path(os.environ.get("STATIC_ROOT", VAR_DIR / "static"))
MEDIA_ROOT = Path(os.environ.get("MEDIA_ROOT", VAR_DIR / "media"))
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
}

# Big batch files are uploaded as multipart; the apps cap uploads themselves.
DATA_UPLOAD_MAX_MEMORY_SIZE = 10 * 1024 * 1024
FILE_UPLOAD_MAX_MEMORY_SIZE = 2 * 1024 * 1024

# --- Cache: Redis when configured (shared by every worker host), else local memory ---
REDIS_URL = os.environ.get("BATCHES_REDIS_URL")
if REDIS_URL:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL}}

# --- The apps' own settings ---
OPENAI_BATCHES = {
    "UPSTREAM_BASE_URL": os.environ.get("BATCHES_UPSTREAM_BASE_URL") or None,
    "UPSTREAM_API_KEY": os.environ.get("BATCHES_UPSTREAM_API_KEY", ""),
    "UPSTREAM_CLIENT_CLASS": os.environ.get("BATCHES_UPSTREAM_CLIENT_CLASS") or "batches.upstream.AiohttpClient",
    # JSON; `make run` sets it to route the local model's endpoints (project/local_model.py).
    "MODELS": env_json("BATCHES_MODELS"),
    "UPSTREAM_MAX_IN_FLIGHT": env_int("BATCHES_UPSTREAM_MAX_IN_FLIGHT", 64),
    "UPSTREAM_INITIAL_IN_FLIGHT": env_int("BATCHES_UPSTREAM_INITIAL_IN_FLIGHT", 8),
    "MAX_CONCURRENT_REQUESTS_PER_BATCH": env_int("BATCHES_MAX_CONCURRENT_REQUESTS_PER_BATCH", 64),
    "DISPATCHERS": env_int("BATCHES_DISPATCHERS", 1),
    "MAX_ATTEMPTS": env_int("BATCHES_MAX_ATTEMPTS", 5),
    "RETRY_BACKOFF_BASE": env_float("BATCHES_RETRY_BACKOFF_BASE", 1.0),
    "RETRY_BACKOFF_MAX": env_float("BATCHES_RETRY_BACKOFF_MAX", 60.0),
    "RATE_LIMITS": env_rate_limits(),
    "SHUTDOWN_GRACE_SECONDS": env_float("BATCHES_SHUTDOWN_GRACE_SECONDS", 5.0),
    "CANCEL_DRAIN_SECONDS": env_float("BATCHES_CANCEL_DRAIN_SECONDS", 600.0),
    "LEASE_SECONDS": env_float("BATCHES_LEASE_SECONDS", 60),
    "COMPLETION_WINDOWS": [w.strip() for w in os.environ.get("BATCHES_COMPLETION_WINDOWS", "24h").split(",") if w.strip()],
    "COMPLETION_WINDOW_SECONDS": env_int("BATCHES_COMPLETION_WINDOW_SECONDS", None),
    "UPSTREAM_TIMEOUT": env_float("BATCHES_UPSTREAM_TIMEOUT", 600),
    "EXTRA_ENDPOINTS": [e.strip() for e in os.environ.get("BATCHES_EXTRA_ENDPOINTS", "").split(",") if e.strip()],
    "EMBEDDINGS_BUNDLE_SIZE": env_int("BATCHES_EMBEDDINGS_BUNDLE_SIZE", 32),
    "THROTTLE_RATE": os.environ.get("BATCHES_THROTTLE_RATE") or None,
    "METRICS_TOKEN": os.environ.get("BATCHES_METRICS_TOKEN") or None,
    "WEBHOOKS_ALLOW_PRIVATE": env_bool("BATCHES_WEBHOOKS_ALLOW_PRIVATE"),
}

# --- OpenAPI schema of the /v1 routes (drf-spectacular; served by project/urls.py) ---
REST_FRAMEWORK = {"DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema"}
SPECTACULAR_SETTINGS = {
    "TITLE": "OpenAI-compatible Files and Batches API",
    "DESCRIPTION": "The /v1 routes of the files_app and batches apps, in OpenAI's wire format.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SCHEMA_PATH_PREFIX": "/v1",
}

# --- django-q2 ---
# The broker is the ORM on the same database (transactional with the batch rows),
# or Redis when BATCHES_REDIS_URL is set. retry must exceed timeout by the time a
# task can wait in the workers' in-memory queue (batches/checks.py, minimum_retry); duplicates are
# harmless anyway because all batch work is lease-guarded.
Q_WORKERS = env_int("BATCHES_WORKERS", 2)
Q_CLUSTER = {
    "name": os.environ.get("BATCHES_Q_NAME", "openai_batches"),
    "workers": Q_WORKERS,
    "queue_limit": Q_WORKERS * 2,
    "timeout": 600,
    # timeout * (1 + ceil((queue_limit + 1) / workers)) + a minute (batches/checks.py).
    "retry": 600 * (1 + math.ceil((Q_WORKERS * 2 + 1) / Q_WORKERS)) + 60,
    "max_attempts": 3,
    "ack_failures": True,
    "catch_up": False,
    "save_limit": 1000,
    "poll": 0.1,
    "guard_cycle": 0.5,
    "label": "Task queue",
}
if REDIS_URL:
    Q_CLUSTER["redis"] = REDIS_URL
else:
    Q_CLUSTER["orm"] = "default"
if env_bool("BATCHES_Q_SYNC"):
    Q_CLUSTER["sync"] = True

# --- Security (production defaults; `manage.py check --deploy` clean with DJANGO_DEBUG=0) ---
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
SESSION_COOKIE_HTTPONLY = True
if env_bool("DJANGO_HTTPS"):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = True
    SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = 31536000
    SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("DJANGO_HSTS_INCLUDE_SUBDOMAINS", True)
    SECURE_HSTS_PRELOAD = env_bool("DJANGO_HSTS_PRELOAD", True)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"line": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "line"}},
    "loggers": {
        "openai_batches": {"handlers": ["console"], "level": os.environ.get("BATCHES_LOG_LEVEL", "INFO"), "propagate": False},
        "django_q": {"handlers": ["console"], "level": "WARNING", "propagate": False},
    },
}
