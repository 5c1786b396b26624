"""System checks: each misconfiguration is reported with its id, and the shipped
and documented settings pass clean."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from batches.checks import check_queue_settings, minimum_retry
from batches.checks import check_settings as check_batch_settings
from files_app.checks import check_settings

ROOT = Path(__file__).resolve().parent.parent
LOCMEM = "django.core.cache.backends.locmem.LocMemCache"
REDIS = "django.core.cache.backends.redis.RedisCache"
DUMMY = "django.core.cache.backends.dummy.DummyCache"
GOOD_Q_CLUSTER = {"orm": "default", "workers": 2, "queue_limit": 4, "timeout": 600, "retry": 2460}


def ids(messages):
    return sorted(message.id for message in messages)


def all_ids():
    return ids(check_settings(None) + check_batch_settings(None) + check_queue_settings(None))


@pytest.fixture
def configured(settings):
    """Settings that pass every check; tests break one thing at a time."""
    settings.OPENAI_BATCHES = {"UPSTREAM_BASE_URL": "http://127.0.0.1:9/v1"}
    settings.Q_CLUSTER = dict(GOOD_Q_CLUSTER)
    settings.CACHES = {"default": {"BACKEND": LOCMEM}}
    return settings


def test_good_settings_pass_clean(configured):
    assert all_ids() == []


# --- OPENAI_BATCHES itself -----------------------------------------------------------


def test_settings_must_be_a_dict(configured):
    configured.OPENAI_BATCHES = [("UPSTREAM_BASE_URL", "http://x/v1")]
    assert "openai_batches.E001" in all_ids()


def test_unknown_key_is_an_error_naming_it(configured):
    configured.OPENAI_BATCHES = {**configured.OPENAI_BATCHES, "UPSTREAM_URL": "http://x/v1"}
    (error,) = [m for m in check_settings(None) if m.id == "openai_batches.E002"]
    assert "UPSTREAM_URL" in error.msg


@pytest.mark.parametrize("key", ["UPSTREAM_MAX_IN_FLIGHT", "MAX_CONCURRENT_REQUESTS_PER_BATCH", "DISPATCHERS"])
@pytest.mark.parametrize("value", [0, -1, "4", 2.5, None])
def test_concurrency_must_be_a_positive_integer(configured, key, value):
    configured.OPENAI_BATCHES = {**configured.OPENAI_BATCHES, key: value}
    assert ids(check_batch_settings(None)) == ["openai_batches.E004"]


@pytest.mark.parametrize("key, replacement", [("MAX_CONCURRENT_BATCHES", "UPSTREAM_MAX_IN_FLIGHT"), ("RUN_TASKS_PER_BATCH", "DISPATCHERS")])
def test_retired_keys_warn_and_name_what_replaced_them(configured, key, replacement):
    configured.OPENAI_BATCHES = {**configured.OPENAI_BATCHES, key: 4}
    (warning,) = check_batch_settings(None)
    assert warning.id == "openai_batches.W005"
    assert key in warning.msg and replacement in warning.msg


def test_as_many_dispatchers_as_workers_is_a_warning(configured):
    configured.OPENAI_BATCHES = {**configured.OPENAI_BATCHES, "DISPATCHERS": 2}
    configured.Q_CLUSTER = {**configured.Q_CLUSTER, "workers": 2}
    assert "openai_batches.W006" in all_ids()
    configured.Q_CLUSTER = {**configured.Q_CLUSTER, "workers": 3}
    assert "openai_batches.W006" not in all_ids()


# --- throttling and the cache ------------------------------------------------------------


@pytest.mark.parametrize("rate", ["ten per minute", "0/min", "5/fortnight", "5/", 100])
def test_malformed_throttle_rate_is_an_error(configured, rate):
    configured.OPENAI_BATCHES = {**configured.OPENAI_BATCHES, "THROTTLE_RATE": rate}
    assert ids(check_settings(None)) == ["openai_batches.E005"]


@pytest.mark.parametrize("backend", [LOCMEM, DUMMY])
def test_throttling_on_a_process_local_cache_is_a_warning(configured, backend):
    configured.CACHES = {"default": {"BACKEND": backend}}
    configured.OPENAI_BATCHES = {**configured.OPENAI_BATCHES, "THROTTLE_RATE": "600/min"}
    (warning,) = check_settings(None)
    assert warning.id == "openai_batches.W002"
    assert backend.rsplit(".", 1)[-1] in warning.msg


def test_throttling_on_a_shared_cache_passes(configured):
    configured.CACHES = {"default": {"BACKEND": REDIS, "LOCATION": "redis://127.0.0.1:6379"}}
    configured.OPENAI_BATCHES = {**configured.OPENAI_BATCHES, "THROTTLE_RATE": "600/min"}
    assert check_settings(None) == []


def test_locmem_cache_without_throttling_passes(configured):
    # Nothing else in the apps counts in the cache.
    assert check_settings(None) == []


# --- Q_CLUSTER ---------------------------------------------------------------------------


def test_retry_formula_matches_the_design_notes():
    # retry > timeout * (1 + ceil((queue_limit + 1) / workers))
    assert minimum_retry(600, 2, 4) == 600 * (1 + 3)
    assert minimum_retry(600, 4, 16) == 600 * (1 + 5)
    assert minimum_retry(100, 1, 1) == 100 * (1 + 2)


def test_retry_not_above_timeout_is_an_error(configured):
    configured.Q_CLUSTER = {**GOOD_Q_CLUSTER, "retry": 600}
    assert ids(check_queue_settings(None)) == ["openai_batches.E011"]


def test_retry_below_the_queue_formula_is_a_warning_with_the_minimum(configured):
    configured.Q_CLUSTER = {**GOOD_Q_CLUSTER, "retry": 1860}  # > timeout, < 600 * 4
    (warning,) = check_queue_settings(None)
    assert warning.id == "openai_batches.W003"
    assert "2400" in warning.hint


def test_retry_just_above_the_formula_passes(configured):
    configured.Q_CLUSTER = {**GOOD_Q_CLUSTER, "retry": 2401}
    assert check_queue_settings(None) == []


def test_default_queue_limit_is_workers_squared(configured):
    # django-q2's default queue_limit (workers ** 2) makes the formula stricter.
    configured.Q_CLUSTER = {"orm": "default", "workers": 4, "timeout": 600, "retry": 2460}
    (warning,) = check_queue_settings(None)
    assert warning.id == "openai_batches.W003"
    assert str(minimum_retry(600, 4, 16)) in warning.hint


def test_missing_timeout_is_a_warning(configured):
    configured.Q_CLUSTER = {"orm": "default", "workers": 2}
    assert ids(check_queue_settings(None)) == ["openai_batches.W004"]


def test_missing_q_cluster_is_a_warning_that_says_so(configured):
    del configured.Q_CLUSTER
    (warning,) = check_queue_settings(None)
    assert warning.id == "openai_batches.W004"
    assert "not set" in warning.msg


def test_timeout_shorter_than_a_run_slice_is_an_error(configured):
    configured.OPENAI_BATCHES = {**configured.OPENAI_BATCHES, "RUN_SLICE_SECONDS": 300}
    configured.Q_CLUSTER = {**GOOD_Q_CLUSTER, "timeout": 300, "retry": 1500}
    assert ids(check_queue_settings(None)) == ["openai_batches.E012"]


def test_redis_broker_never_redelivers_so_retry_is_not_checked(configured):
    configured.Q_CLUSTER = {"redis": "redis://127.0.0.1:6379", "workers": 2, "timeout": 600, "retry": 60}
    assert check_queue_settings(None) == []


def test_sync_mode_is_not_checked(configured):
    configured.Q_CLUSTER = {"sync": True}
    assert check_queue_settings(None) == []


# --- the upstream --------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["batches.upstream.NoSuchClient", "no_such_module.Client", "batches.upstream.Route"])
def test_an_upstream_client_class_that_is_not_a_client_is_an_error(configured, path):
    configured.OPENAI_BATCHES = {**configured.OPENAI_BATCHES, "UPSTREAM_CLIENT_CLASS": path}
    assert all_ids() == ["openai_batches.E030"]


@pytest.mark.parametrize("path", ["batches.upstream.AiohttpClient", "batches.upstream.OpenAIClient"])
def test_both_upstream_clients_pass(configured, path):
    configured.OPENAI_BATCHES = {**configured.OPENAI_BATCHES, "UPSTREAM_CLIENT_CLASS": path}
    assert all_ids() == []


def test_no_upstream_is_a_warning(configured):
    configured.OPENAI_BATCHES = {}
    assert ids(check_batch_settings(None)) == ["openai_batches.W001"]


def test_routing_table_with_a_base_url_per_model_is_an_upstream(configured):
    configured.OPENAI_BATCHES = {"MODELS": {"a": {"base_url": "http://a/v1"}, "b": {"base_url": "http://b/v1", "api_key": "k"}}}
    assert check_batch_settings(None) == []


@pytest.mark.parametrize("models", [["a", "b"], {"a": {"base_url": "http://a/v1"}, "b": {}}, {}])
def test_models_without_a_base_url_for_each_is_no_upstream(configured, models):
    configured.OPENAI_BATCHES = {"MODELS": models}
    assert ids(check_batch_settings(None)) == ["openai_batches.W001"]


def test_routing_table_may_send_one_endpoint_of_a_model_elsewhere(configured):
    configured.OPENAI_BATCHES = {"MODELS": {"m": {"base_url": "http://a/v1", "endpoints": {"/v1/embeddings": {"base_url": "http://b/v1"}}}}}
    assert all_ids() == []


@pytest.mark.parametrize("routes", [{"/v1/embedding": {"base_url": "http://b/v1"}}, {"/v1/embeddings": "http://b/v1"}, ["/v1/embeddings"]])
def test_endpoint_routes_that_would_be_ignored_are_an_error(configured, routes):
    configured.OPENAI_BATCHES = {"MODELS": {"m": {"base_url": "http://a/v1", "endpoints": routes}}}
    assert all_ids() == ["openai_batches.E031"]


# --- through manage.py check ------------------------------------------------------------------


def manage_check(tmp_path, settings_body, *args):
    (tmp_path / "check_settings.py").write_text(settings_body)
    env = {
        **os.environ,
        "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}",
        "DJANGO_SETTINGS_MODULE": "check_settings",
        "VAR_DIR": str(tmp_path / "var"),
        "BATCHES_UPSTREAM_BASE_URL": "http://127.0.0.1:9/v1",
    }
    return subprocess.run([sys.executable, "manage.py", "check", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_project_settings_pass_manage_py_check_clean(tmp_path):
    result = manage_check(tmp_path, "from project.settings import *\n", "--fail-level", "WARNING")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "openai_batches" not in result.stdout + result.stderr


@pytest.mark.parametrize("app", ["rest_framework", "django_q"])
def test_missing_required_app_fails_manage_py_check(tmp_path, app):
    body = f"from project.settings import *\nINSTALLED_APPS = [a for a in INSTALLED_APPS if a != {app!r}]\n"
    result = manage_check(tmp_path, body)
    assert result.returncode != 0
    assert "openai_batches.E003" in result.stderr
    assert f"'{app}' must be in INSTALLED_APPS" in result.stderr


# --- completion windows -------------------------------------------------------------------


@pytest.mark.parametrize("windows", [["1h", "24h", "7d"], ("90m",), ["24h"]])
def test_well_formed_completion_windows_pass(configured, windows):
    configured.OPENAI_BATCHES = {**configured.OPENAI_BATCHES, "COMPLETION_WINDOWS": windows}
    assert all_ids() == []


@pytest.mark.parametrize("windows", [[], ["24h", "1 day"], ["0h"], ["24"], "24h", None, [24]])
def test_malformed_completion_windows_are_an_error(configured, windows):
    configured.OPENAI_BATCHES = {**configured.OPENAI_BATCHES, "COMPLETION_WINDOWS": windows}
    assert all_ids() == ["openai_batches.E020"]


@pytest.mark.parametrize("seconds", [0, -5, 1.5, "60", True])
def test_window_seconds_override_must_be_a_positive_integer(configured, seconds):
    configured.OPENAI_BATCHES = {**configured.OPENAI_BATCHES, "COMPLETION_WINDOW_SECONDS": seconds}
    assert all_ids() == ["openai_batches.E021"]


# --- the settings reference is complete --------------------------------------------------------------


def test_every_setting_and_environment_variable_is_documented():
    from batches.conf import DEFAULTS as BATCHES_DEFAULTS
    from files_app.conf import DEFAULTS as FILES_DEFAULTS

    reference = (ROOT / "docs" / "settings.md").read_text()
    undocumented = [key for key in [*FILES_DEFAULTS, *BATCHES_DEFAULTS] if f"| `{key}` |" not in reference]
    assert undocumented == [], "add these OPENAI_BATCHES keys to docs/settings.md"
    settings_source = (ROOT / "project" / "settings.py").read_text()
    variables = set(re.findall(r"""(?:environ\.get|env_bool|env_int|env_float)\(\s*["']([A-Z0-9_]+)["']""", settings_source))
    assert "DJANGO_SECRET_KEY" in variables  # the pattern finds them
    missing = sorted(name for name in variables if f"`{name}`" not in reference)
    assert missing == [], "add these environment variables to docs/settings.md"
