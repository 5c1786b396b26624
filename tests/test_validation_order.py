"""Which waiting batches a validation task validates (batches/input_validation.py ``take_next``):
those that go before its own (smaller inputs), then its own, so a small batch is not
queued behind large ones."""

from datetime import timedelta

from batches import tasks
from batches.input_validation import VALIDATION_AGING_SECONDS
from batches.models import Batch, BatchStatus
from tests.conftest import chat_line


def lines(count):
    return [chat_line(f"r{i}", f"question {i}") for i in range(count)]


def status(batch):
    return Batch.objects.values_list("status", flat=True).get(pk=batch.pk)


def started(batch):
    return Batch.objects.values_list("in_progress_at", flat=True).get(pk=batch.pk)


def test_a_task_validates_smaller_waiting_batches_before_its_own(make_batch, upstream):
    large = [make_batch(lines(40)) for _ in range(3)]
    small = make_batch(lines(2))
    assert tasks.validate_batch(large[1].id) == "in_progress"  # the second large batch's task...
    assert started(small) < started(large[1])  # ...validated the small one, queued last, first
    assert (status(large[0]), status(large[2])) == (BatchStatus.VALIDATING, BatchStatus.VALIDATING)


def test_a_task_whose_batch_was_validated_meanwhile_does_nothing(make_batch, upstream):
    batches = [make_batch(lines(count)) for count in (30, 10, 20)]
    assert tasks.validate_batch(batches[0].id) == "in_progress"  # 10, 20, then 30 lines
    assert {status(batch) for batch in batches} == {BatchStatus.IN_PROGRESS}
    assert [tasks.validate_batch(batch.id) for batch in batches] == ["skipped"] * 3


def test_equal_sizes_keep_the_task_on_its_own_batch(make_batch, upstream):
    first, second = make_batch(lines(5)), make_batch(lines(5))
    tasks.validate_batch(second.id)
    assert (status(first), status(second)) == (BatchStatus.VALIDATING, BatchStatus.IN_PROGRESS)


def test_a_batch_waiting_long_goes_before_smaller_ones(make_batch, upstream):
    large, small = make_batch(lines(40)), make_batch(lines(2))
    Batch.objects.filter(pk=large.pk).update(created_at=large.created_at - timedelta(seconds=VALIDATION_AGING_SECONDS + 1))
    tasks.validate_batch(small.id)
    assert started(large) < started(small)


def test_a_batch_being_validated_elsewhere_is_left_alone(make_batch, upstream):
    small, large = make_batch(lines(2)), make_batch(lines(40))
    Batch.objects.filter(pk=small.pk).update(lease_owner="other:1:x", lease_expires_at=small.created_at + timedelta(minutes=5))
    assert tasks.validate_batch(small.id) == "skipped"
    assert tasks.validate_batch(large.id) == "in_progress"  # the batch being validated elsewhere is not waited for
    assert status(small) == BatchStatus.VALIDATING
