"""Which waiting batch a validation task takes (batches/input_validation.py ``take_next``):
the smallest input first, so a small batch is not queued behind large ones."""

from datetime import timedelta

from batches import tasks
from batches.input_validation import VALIDATION_AGING_SECONDS
from batches.models import Batch, BatchStatus
from tests.conftest import chat_line


def lines(count):
    return [chat_line(f"r{i}", f"question {i}") for i in range(count)]


def status(batch):
    return Batch.objects.values_list("status", flat=True).get(pk=batch.pk)


def test_a_task_validates_the_smallest_waiting_batch_first(make_batch, upstream):
    large = [make_batch(lines(40)) for _ in range(3)]
    small = make_batch(lines(2))
    assert tasks.validate_batch(large[0].id) == "in_progress"  # the first large batch's task...
    assert status(small) == BatchStatus.IN_PROGRESS  # ...took the small one, queued last
    assert [status(batch) for batch in large] == [BatchStatus.VALIDATING] * 3


def test_every_batch_is_validated_by_one_task_each(make_batch, upstream):
    batches = [make_batch(lines(count)) for count in (30, 10, 20)]
    for batch in batches:  # the tasks, in the order they were queued
        assert tasks.validate_batch(batch.id) == "in_progress"
    assert tasks.validate_batch(batches[0].id) == "skipped"  # a duplicate delivery finds nothing left
    assert {status(batch) for batch in batches} == {BatchStatus.IN_PROGRESS}


def test_equal_sizes_keep_the_task_on_its_own_batch(make_batch, upstream):
    first, second = make_batch(lines(5)), make_batch(lines(5))
    tasks.validate_batch(second.id)
    assert (status(first), status(second)) == (BatchStatus.VALIDATING, BatchStatus.IN_PROGRESS)


def test_a_batch_waiting_long_goes_before_smaller_ones(make_batch, upstream):
    large, small = make_batch(lines(40)), make_batch(lines(2))
    Batch.objects.filter(pk=large.pk).update(created_at=large.created_at - timedelta(seconds=VALIDATION_AGING_SECONDS + 1))
    tasks.validate_batch(small.id)
    assert (status(large), status(small)) == (BatchStatus.IN_PROGRESS, BatchStatus.VALIDATING)


def test_a_batch_being_validated_elsewhere_is_left_alone(make_batch, upstream):
    small, large = make_batch(lines(2)), make_batch(lines(40))
    Batch.objects.filter(pk=small.pk).update(lease_owner="other:1:x", lease_expires_at=small.created_at + timedelta(minutes=5))
    tasks.validate_batch(small.id)
    assert (status(small), status(large)) == (BatchStatus.VALIDATING, BatchStatus.IN_PROGRESS)
