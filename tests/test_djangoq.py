"""What batches/runner/djangoq.py relies on in django-q2's internals.

A worker finds its cluster's stop event by walking its own stack up to the
``Sentinel.spawn_process`` frame it was forked from. These tests fail when a
django-q2 upgrade changes any part of that, so the coupling is revisited
instead of graceful shutdown silently degrading to "workers die mid-call".
"""

import inspect
import threading
from unittest import mock

from django_q import cluster, worker

from batches.runner.djangoq import cluster_stop_event


def test_workers_are_forked_so_the_sentinel_frame_is_on_their_stack():
    assert cluster.get_mp_context().get_start_method() == "fork"


def test_the_sentinel_keeps_the_cluster_stop_event():
    assert "stop_event" in inspect.signature(cluster.Sentinel.__init__).parameters
    assert "self.stop_event = stop_event" in inspect.getsource(cluster.Sentinel.__init__)


def test_the_worker_process_is_started_inside_sentinel_spawn_process():
    """``Sentinel.spawn_worker`` starts ``worker`` from ``spawn_process``, whose ``self``
    is the sentinel: a process started there (forked, in production) sees the stop event."""
    stop_event = threading.Event()
    sentinel = cluster.Sentinel.__new__(cluster.Sentinel)  # no broker, no signal handlers
    sentinel.stop_event, sentinel.pool, sentinel.timeout = stop_event, [], 60
    sentinel.task_queue = sentinel.result_queue = None
    found = []

    class Process:
        def __init__(self, target, args, name):
            self.target = target

        def start(self):  # where the fork happens: the child runs on from this stack
            found.append((self.target, cluster_stop_event()))

    with mock.patch.object(cluster, "get_mp_context", return_value=mock.Mock(Process=Process)):
        sentinel.spawn_worker()
    assert found == [(worker.worker, stop_event)]


def test_worker_processes_send_post_spawn_where_the_shutdown_hook_installs():
    assert "post_spawn.send(" in inspect.getsource(worker.worker)


def test_outside_a_cluster_there_is_no_stop_event():
    assert cluster_stop_event() is None
