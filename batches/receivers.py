"""Hooks into django-q2: a starting worker sweeps for work left by dead ones."""

from django.dispatch import receiver
from django_q.signals import post_spawn


@receiver(post_spawn)
def sweep_on_worker_start(sender, proc_name, **kwargs):
    from .queue import enqueue

    enqueue("sweep")
