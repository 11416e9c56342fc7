import itertools

from hypothesis import given
from hypothesis import strategies as st

from bridge.core.version_clock import VersionClock


class StepClock:
    def __init__(self, values):
        self.values = list(values)
        self.i = 0

    def __call__(self):
        v = self.values[min(self.i, len(self.values) - 1)]
        self.i += 1
        return v


@given(st.lists(st.integers(min_value=0, max_value=2**52), min_size=1, max_size=200))
def test_versions_strictly_increase_whatever_the_wall_clock_does(readings):
    clock = VersionClock(StepClock(readings))
    issued = [clock.tick() for _ in readings]
    assert all(b > a for a, b in itertools.pairwise(issued))
    # HLC: never below the wall clock reading of that tick.
    assert all(v >= r for v, r in zip(issued, readings, strict=True))


@given(st.integers(min_value=1, max_value=2**52), st.integers(min_value=0, max_value=2**52))
def test_restore_floor_survives_a_clock_stepped_back(floor, now):
    clock = VersionClock(lambda: now, floor=0)
    clock.restore(floor)
    assert clock.tick() > floor


def test_tracks_wall_clock_when_it_leads():
    clock = VersionClock(StepClock([100, 200, 200, 150]))
    assert [clock.tick() for _ in range(4)] == [100, 200, 201, 202]
