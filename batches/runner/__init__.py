"""Sending the requests of every running batch to the upstreams (the ``dispatch`` task).

docs/scheduling.md explains the scheduler as a whole, with a diagram.

* ``dispatcher``: ``Dispatcher``, the claim / send / collect / write loop of one dispatch task.
* ``outcome``: ``DispatchOutcome``, why a dispatcher stops (the task's result).
* ``results``: ``ResultWriter``, outcomes written back in bulk under the dispatcher's leases;
  retry backoff, back-pressure.
* ``breaker``: ``CircuitBreaker``, pausing one upstream while it looks down.
* ``shutdown``: ``WorkerShutdown``, a worker process's graceful shutdown.
* ``djangoq``: the one reliance on django-q2 internals (the cluster's stop event).

Around it: ``batches/claims.py`` (the claim transaction), ``batches/fairshare.py``
(who gets the free places), ``batches/aimd.py`` (each upstream's adaptive limit),
``batches/slots.py`` (how many dispatchers run), ``batches/ratelimit.py`` (RPM/TPM).
"""

from .dispatcher import Dispatcher
from .outcome import DispatchOutcome

__all__ = ["Dispatcher", "DispatchOutcome"]
