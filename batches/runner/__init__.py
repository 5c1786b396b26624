"""Running a batch's requests against the upstream (the ``run_batch`` task).

* ``batch_runner``: ``BatchRunner``, the claim / send / write loop of one run task.
* ``outcome``: ``RunOutcome``, why a runner stops and what the task returns.
* ``results``: ``ResultWriter``, outcomes written back in bulk under the runner's leases; retry backoff.
* ``breaker``: ``CircuitBreaker``, pausing a batch while the upstream looks down.
* ``shutdown``: ``WorkerShutdown``, a worker process's graceful shutdown.
* ``djangoq``: the one reliance on django-q2 internals (the cluster's stop event).
"""

from .batch_runner import BatchRunner
from .outcome import RunOutcome

__all__ = ["BatchRunner", "RunOutcome"]
