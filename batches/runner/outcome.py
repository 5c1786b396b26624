"""What a run task ends with, and why a runner stops."""

import enum


class RunOutcome(enum.StrEnum):
    """The result of one ``run_batch`` task (stored by django-q2 as its value)."""

    # The runner never started.
    NOT_RUNNING = "not_running"  # the batch is not in progress (any more)
    NO_SLOT = "no_slot"  # MAX_CONCURRENT_BATCHES are running: the slot holder enqueues this batch later
    # Stop reasons that leave the batch going on.
    ALL_DONE = "all_done"  # every row is finished: this runner finalizes
    SLICE_OVER = "slice_over"  # RUN_SLICE_SECONDS used: another run task carries on
    SHUTDOWN = "shutdown"  # the worker is stopping: re-enqueued for the next one
    LOST_SLOT = "lost_slot"  # the batch's slot lapsed: re-enqueued to wait for one
    OTHERS_RUNNING = "others_running"  # only rows live runners hold are left: they finalize
    REDUNDANT = "redundant"  # enough other runners serve the batch: they carry on
    # Stop reasons that end the batch's processing: the runner finalizes it.
    EXPIRED = "expired"  # the batch's completion window passed
    BATCH_LEFT_IN_PROGRESS = "batch_left_in_progress"  # cancelled, finalized elsewhere or deleted
    # The task's result after a stop that ended the batch's processing.
    STOPPED = "stopped"

    @property
    def batch_goes_on(self):
        """True when the batch keeps being processed after this runner stopped."""
        return self in _BATCH_GOES_ON


_BATCH_GOES_ON = frozenset(
    {
        RunOutcome.ALL_DONE,
        RunOutcome.SLICE_OVER,
        RunOutcome.SHUTDOWN,
        RunOutcome.LOST_SLOT,
        RunOutcome.OTHERS_RUNNING,
        RunOutcome.REDUNDANT,
    }
)
