"""The one place that relies on django-q2 internals (tests/test_djangoq_coupling.py
fails when django-q2 changes what this relies on).

A cluster worker is forked (``multiprocessing`` "fork" context) from
``Sentinel.spawn_process``, so the forked process's stack still holds that
method's frame, whose ``self`` is the ``Sentinel``; ``Sentinel.stop_event`` is
the cluster's "stopping" flag. django-q2 offers no public way to see it from a
worker.
"""

import sys


def cluster_stop_event():
    """The stop event of the django-q2 cluster whose sentinel forked this process, if any."""
    try:
        from django_q.cluster import Sentinel
    except ImportError:  # pragma: no cover - django-q2 is a dependency
        return None
    frame = sys._getframe(1)
    while frame is not None:
        candidate = frame.f_locals.get("self")
        if isinstance(candidate, Sentinel):
            return candidate.stop_event
        frame = frame.f_back
    return None
