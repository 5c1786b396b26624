"""A dispatcher's view of one upstream (``batches.runner.lanes.Lane``): how much it claims."""

import pytest

from batches.runner.lanes import Lane


@pytest.fixture
def make_lane():
    def make(*, usable, in_flight=0, ready=0):
        lane = Lane("http://upstream.test/v1")
        lane.usable, lane.in_flight = usable, in_flight
        if ready:
            lane.ready[None] = [(pk, None, 1, "{}", 0) for pk in range(ready)]
        return lane

    return make


def test_a_refill_stays_within_our_part_of_the_places(make_lane):
    lane = make_lane(usable=6, in_flight=1, ready=1)
    assert lane.share(dispatchers=2) == 3
    assert lane.wanted(dispatchers=2, polled=False) == 1
    assert lane.wanted(dispatchers=1, polled=False) == 4


def test_a_poll_may_go_beyond_our_part(make_lane):
    assert make_lane(usable=6, in_flight=6).wanted(dispatchers=2, polled=True) > 0


def test_beyond_our_part_our_unwritten_results_are_not_free_places(make_lane):
    # Counting them would let the dispatcher that refills first take every place (test_scheduling_live).
    assert make_lane(usable=6, in_flight=2).below_share(dispatchers=2)
    assert not make_lane(usable=6, in_flight=2, ready=1).below_share(dispatchers=2)
    assert not make_lane(usable=6, in_flight=6).below_share(dispatchers=2)
    assert make_lane(usable=6, in_flight=5).below_share(dispatchers=1)
