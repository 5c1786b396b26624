"""What a dispatch task ends with."""

import enum


class DispatchOutcome(enum.StrEnum):
    """The result of one ``dispatch`` task (stored by django-q2 as its value)."""

    NO_SLOT = "no_slot"  # DISPATCHERS live dispatchers run already: they serve every batch
    IDLE = "idle"  # no batch has work left that live dispatchers do not hold
    SLICE_OVER = "slice_over"  # RUN_SLICE_SECONDS used: a new dispatch task carries on
    SHUTDOWN = "shutdown"  # the worker is stopping: re-enqueued for the next one
    LOST_SLOT = "lost_slot"  # stalled past its lease: re-enqueued
