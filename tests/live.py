"""A real deployment for end-to-end tests and benchmarks: gunicorn + qcluster
processes against a fresh database, in front of the fake upstream.

    with LiveStack(upstream_url=...) as stack:
        client = stack.client()          # openai.OpenAI pointed at the stack
        stack.kill_workers(signal.SIGKILL); stack.start_workers()

The database is a fresh SQLite file by default; with ``TEST_DATABASE_URL``
(postgres://...) a fresh PostgreSQL database is created and dropped. With
``BATCHES_REDIS_URL`` set, the broker is Redis under a queue name of its own.
Never the pytest-django test database: a qcluster must not share it.
"""

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

import openai

ROOT = Path(__file__).resolve().parent.parent


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(predicate, timeout, interval=0.1, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(interval)
    raise TimeoutError(f"Timed out after {timeout}s waiting for {what}")


class FreshDatabase:
    """A DATABASE_URL for one stack, created (and later dropped) on demand."""

    def __init__(self, workdir):
        base = os.environ.get("TEST_DATABASE_URL", "")
        self.pg_name = None
        if base.startswith(("postgres://", "postgresql://")):
            import psycopg

            self.admin_url = base
            self.pg_name = f"live_{secrets.token_hex(6)}"
            with psycopg.connect(base, autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{self.pg_name}"')
            parts = urllib.parse.urlsplit(base)
            self.url = urllib.parse.urlunsplit(parts._replace(path=f"/{self.pg_name}"))
        else:
            self.url = f"sqlite:///{workdir / 'db.sqlite3'}"

    def drop(self):
        if self.pg_name:
            import psycopg

            with psycopg.connect(self.admin_url, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{self.pg_name}" WITH (FORCE)')


class LiveStack:
    def __init__(self, upstream_url, *, workers=2, worker_processes=1, web_workers=2, env=None, workdir=None):
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="live-stack-"))
        self.upstream_url = upstream_url
        self.worker_count = workers
        self.worker_processes = worker_processes
        self.web_workers = web_workers
        self.extra_env = dict(env or {})
        self.port = free_port()
        self.web = None
        self.workers = []
        self.db = None
        self.api_key = None

    @property
    def base_url(self):
        return f"http://127.0.0.1:{self.port}/v1"

    def env(self, **more):
        env = dict(os.environ)
        env.update(
            DJANGO_SETTINGS_MODULE="project.settings",
            VAR_DIR=str(self.workdir),
            DATABASE_URL=self.db.url,
            BATCHES_UPSTREAM_BASE_URL=self.upstream_url,
            BATCHES_WORKERS=str(self.worker_count),
            BATCHES_Q_NAME=f"live_{self.port}",
            PYTHONUNBUFFERED="1",
        )
        env.pop("BATCHES_Q_SYNC", None)
        env.update(self.extra_env)
        env.update(more)
        return env

    def manage(self, *args):
        result = subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=self.env(), capture_output=True, text=True, timeout=300)
        if result.returncode:
            raise RuntimeError(f"manage.py {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
        return result.stdout

    def start(self):
        self.db = FreshDatabase(self.workdir)
        self.manage("migrate", "--no-input", "-v0")
        self.api_key = self.manage("create_api_key", "live-user").strip().splitlines()[-1]
        self.web_log = open(self.workdir / "web.log", "ab")
        self.web = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gunicorn",
                "project.wsgi",
                "-b",
                f"127.0.0.1:{self.port}",
                "-w",
                str(self.web_workers),
                "--threads",
                "4",
                "--graceful-timeout",
                "5",
            ],
            cwd=ROOT,
            env=self.env(),
            stdout=self.web_log,
            stderr=subprocess.STDOUT,
        )
        self.start_workers()
        wait_until(self._web_ready, 30, what="the web server")
        return self

    def _web_ready(self):
        if self.web.poll() is not None:
            raise RuntimeError(f"web server exited: {self.log('web')[-2000:]}")
        try:
            urllib.request.urlopen(f"{self.base_url}/models", timeout=1)
        except urllib.error.HTTPError:
            return True  # any HTTP answer means it is serving
        except OSError:
            return False
        return True

    def start_workers(self, count=None):
        for _ in range(count or self.worker_processes):
            log = open(self.workdir / f"worker{len(self.workers)}.log", "ab")
            self.workers.append(
                subprocess.Popen(
                    [sys.executable, "manage.py", "qcluster"],
                    cwd=ROOT,
                    env=self.env(),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )

    def kill_workers(self, sig=signal.SIGKILL):
        """SIGKILL hits every worker process (the cluster and its children) at once;
        other signals go to the cluster, which stops its children itself."""
        for proc in self.workers:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, sig) if sig == signal.SIGKILL else proc.send_signal(sig)
                except ProcessLookupError:
                    pass
        for proc in self.workers:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.workers = []

    def client(self, **kwargs):
        kwargs.setdefault("max_retries", 2)
        return openai.OpenAI(base_url=self.base_url, api_key=self.api_key, **kwargs)

    def log(self, name="worker0"):
        path = self.workdir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self):
        self.kill_workers(signal.SIGTERM)
        if self.web and self.web.poll() is None:
            self.web.terminate()
            try:
                self.web.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.web.kill()
        if self.db:
            self.db.drop()
        if not os.environ.get("KEEP_LIVE_STACK"):
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def wait_for_batch(client, batch_id, timeout=120, statuses=("completed", "failed", "cancelled", "expired")):
    def done():
        batch = client.batches.retrieve(batch_id)
        return batch if batch.status in statuses else None

    return wait_until(done, timeout, interval=0.25, what=f"batch {batch_id} to reach {statuses}")


def dispatcher_processes(stack, batch_ids):
    """{(cluster log, worker pid)} of the dispatchers that sent rows of these batches."""
    found = set()
    for cluster in (f"worker{n}" for n in range(stack.worker_processes)):
        for line in stack.log(cluster).splitlines():
            if "dispatcher.batch_joined" in line and any(f"batch_id={batch_id} " in line for batch_id in batch_ids):
                owner = line.split(" owner=", 1)[1].split()[0]  # host:pid:run
                found.add((cluster, int(owner.split(":")[1])))
    return found
