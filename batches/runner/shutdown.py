"""A worker process's graceful shutdown, as its runners see it."""

import os
import signal
import threading

from .djangoq import cluster_stop_event


class WorkerShutdown:
    """Tells the runners of a django-q2 worker process that the process is going away.

    django-q2 stops workers in one of two ways, neither of which a task notices:

    * SIGTERM (or Ctrl-C) to the cluster's main process only (``docker stop``,
      Kubernetes, supervisor, ``make run``): workers get no signal. The sentinel
      queues STOP pills behind the tasks it already fetched and waits for the
      running ones however long they take, until the orchestrator's SIGKILL.
      The cluster's stop event (``djangoq.cluster_stop_event``) is its
      "stopping" flag.
    * SIGTERM to every process (systemd's default KillMode): the sentinel leaves
      workers at SIG_DFL, so they would die on the spot with calls in flight.

    ``install()`` (from the post_spawn hook, in the worker) covers both; a runner
    that sees ``requested()`` stops claiming, lets in-flight calls finish for
    SHUTDOWN_GRACE_SECONDS, writes their results, hands the rest back and
    re-enqueues its batch, so a restart repeats no upstream call.
    """

    def __init__(self):
        self.signalled = threading.Event()
        self.cluster_stopping = None
        self.active_runners = 0

    def install(self):
        """Hook into this worker process; False when not in a cluster worker (a task run inline, sync mode)."""
        self.cluster_stopping = cluster_stop_event()
        if self.cluster_stopping is None:
            return False
        signal.signal(signal.SIGTERM, self.on_sigterm)
        return True

    def in_cluster(self):
        """True in a django-q2 cluster worker (after ``install()``)."""
        return self.cluster_stopping is not None

    def requested(self):
        return self.signalled.is_set() or bool(self.cluster_stopping is not None and self.cluster_stopping.is_set())

    def on_sigterm(self, signum, frame):
        self.signalled.set()
        if not self.active_runners:
            self.exit()  # nothing of ours in flight: stop the way django-q2 would have

    def exit_if_signalled(self):
        """After a run, a worker that got SIGTERM itself ends: its sentinel may be gone."""
        if self.signalled.is_set():
            self.exit()

    @staticmethod
    def exit():
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)


# This worker process's shutdown state (one per process: the runners of its tasks share it).
worker_shutdown = WorkerShutdown()
