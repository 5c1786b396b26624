"""`make run`: migrate, make sure an API key exists, then run the web server
(gunicorn, static files by whitenoise) and a qcluster worker in the foreground.
With no BATCHES_UPSTREAM_BASE_URL (nor BATCHES_MODELS), the local model's servers
(project.local_model) start first and web + worker are pointed at them. Ctrl-C (or SIGTERM) stops everything."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from project import local_model

ROOT = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("VAR_DIR", ROOT / "var"))


def manage(*args, capture=False):
    return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, check=True, text=True, capture_output=capture)


def ensure_api_key():
    """Print a first key on a fresh install; later runs leave keys alone."""
    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
    django.setup()
    from files_app.models import ApiKey

    if ApiKey.objects.exists():
        print("API keys exist already (create another: python manage.py create_api_key USERNAME).")
        return
    out = manage("create_api_key", "admin", "--name", "first key", capture=True).stdout.strip().splitlines()[-1]
    print(f"\n  Your first API key (shown once):\n\n    {out}\n")


def start_local_model():
    """Install (once) and start the local model; it loads while migrations run."""
    model = local_model.LocalModel(VAR_DIR / "local-model.log", os.environ.get("BATCHES_LOCAL_MODEL") or local_model.DEFAULT_MODEL)
    local_model.ensure_installed(VAR_DIR / "local-model-install.log")
    print(f"Starting the local model (llama.cpp, {model.choice.title})...", flush=True)
    model.start()
    # For every child from here on: the web server and the workers route by it.
    os.environ["BATCHES_UPSTREAM_BASE_URL"] = model.base_url
    os.environ["BATCHES_MODELS"] = json.dumps(model.routing_table())
    return model


def wait_for_local_model(model):
    model.wait_until_ready()
    logs = ", ".join(str(server.log_path) for server in model.servers)
    print(
        f"Local model ready at {model.base_url} (loaded in {model.load_seconds:.1f}s; logs: {logs}).\n"
        f'  Batch lines use "model": "{model.alias}" for /v1/chat/completions, /v1/completions and /v1/embeddings.\n'
        "  Set BATCHES_UPSTREAM_BASE_URL to use your own upstream instead."
    )


def main():
    port = os.environ.get("PORT", "8000")
    model = None
    try:
        if not os.environ.get("BATCHES_UPSTREAM_BASE_URL") and not os.environ.get("BATCHES_MODELS"):
            model = start_local_model()
        manage("migrate", "--no-input", "-v0")
        manage("collectstatic", "--no-input", "-v0")
        ensure_api_key()
        if model:
            wait_for_local_model(model)
    except BaseException as exc:  # never leave the model server behind
        if model:
            model.stop()
        if isinstance(exc, local_model.LocalModelError):
            sys.exit(str(exc))
        if isinstance(exc, KeyboardInterrupt):
            sys.exit(130)
        raise
    children = model.processes if model else []

    def stop(*_):
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in children:
            try:
                child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                child.kill()
        sys.exit(0)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    # Own sessions: a terminal's Ctrl-C reaches only this launcher, which signals
    # each child once (a qcluster hit by SIGINT and SIGTERM together orphans its workers).
    children += [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gunicorn",
                "project.wsgi",
                "-b",
                f"0.0.0.0:{port}",
                "-w",
                os.environ.get("WEB_CONCURRENCY", "2"),
                "--threads",
                "4",
                "--access-logfile",
                "-",
            ],
            cwd=ROOT,
            start_new_session=True,
        ),
        subprocess.Popen([sys.executable, "manage.py", "qcluster"], cwd=ROOT, start_new_session=True),
    ]
    print(f"Serving the API on http://127.0.0.1:{port}/v1 and the admin on http://127.0.0.1:{port}/admin/ (Ctrl-C stops).")
    while all(child.poll() is None for child in children):
        time.sleep(0.5)
    print("A server process exited; stopping.", file=sys.stderr)
    stop()


if __name__ == "__main__":
    main()
