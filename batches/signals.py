"""Extension points for host sites.

``batch_status_changed(sender=Batch, batch, old_status, new_status)``
    Sent after every committed status change.
``batch_finished(sender=Batch, batch)``
    Sent once when a batch reaches completed, failed, expired or cancelled.
"""

from django.dispatch import Signal

batch_status_changed = Signal()
batch_finished = Signal()
