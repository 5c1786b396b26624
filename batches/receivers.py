"""Hooks into django-q2: a starting worker prepares for a graceful shutdown and
sweeps for work left by dead ones."""

from django.dispatch import receiver
from django_q.signals import post_spawn


@receiver(post_spawn)
def sweep_on_worker_start(sender, proc_name, **kwargs):
    from .queue import enqueue
    from .runner.shutdown import worker_shutdown

    # post_spawn also fires for each task run inline (sync mode): only cluster workers act.
    if worker_shutdown.install():
        enqueue("sweep_after_worker_start")
