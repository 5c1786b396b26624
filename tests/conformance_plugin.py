"""Fixtures for the customer's acceptance suite (../shared/conformance), which
is run unmodified against a live stack:

    python -m pytest -p no:cacheprovider -p no:django -p tests.conformance_plugin ../shared/conformance/test_batches.py

The upstream is the fake one by default; ``CONFORMANCE_UPSTREAM_URL`` and
``CONFORMANCE_MODEL`` point it at a real model server instead.
"""

import io
import json
import os
import time
from contextlib import contextmanager

import pytest

from tests.fake_upstream import FakeUpstream
from tests.live import LiveStack

TERMINAL = {"completed", "failed", "cancelled", "expired"}


@pytest.fixture(scope="session")
def live_stack():
    upstream = None
    url = os.environ.get("CONFORMANCE_UPSTREAM_URL")
    if not url:
        upstream = FakeUpstream(latency_ms=20, models=["fake-model"]).start()
        url = upstream.base_url
    stack = LiveStack(url).start()
    yield stack
    stack.stop()
    if upstream:
        upstream.stop()


@pytest.fixture(scope="session")
def openai_client(live_stack):
    return live_stack.client()


@pytest.fixture(scope="session")
def text_model_id():
    return os.environ.get("CONFORMANCE_MODEL", "fake-model")


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
        message = f"Batch {batch_id} did not reach {sorted(expected)} within {max_wait_time}s"
        if timeout_action == "skip":
            pytest.skip(message)
        pytest.fail(message)


@pytest.fixture
def batch_helper(openai_client):
    return BatchHelper(openai_client)
