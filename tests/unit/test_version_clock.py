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


def test_a_claim_is_versioned_ahead_by_the_skew_bound_and_later_versions_keep_increasing():
    now = [1_000_000]
    clock = VersionClock(lambda: now[0])
    assert clock.tick() == 1_000_000
    claim = clock.tick(ahead=50_000)
    assert claim == 1_050_000
    # The wall clock has not caught up yet: the next versions continue above the claim.
    assert clock.tick() == 1_050_001
    now[0] = 2_000_000
    assert clock.tick() == 2_000_000


def test_a_claim_beats_the_previous_owners_last_version_under_any_skew_within_the_bound():
    # Host A published its last record at real time t (its clock `skew` ahead); B claims 1 µs later on
    # its own clock. Within the bound, B's claim sorts above A's last record, however short the gap.
    bound, t = 50_000, 5_000_000

    def at(micros: int) -> VersionClock:
        return VersionClock(lambda: micros)

    for skew in (-bound + 1, -1, 0, 1, bound - 1):
        a_last = at(t + skew).tick()
        assert at(t + 1).tick(ahead=bound) > a_last, skew
        if skew > 1:  # without the margin, a clock behind A's by more than the gap loses the claim
            assert at(t + 1).tick() < a_last, skew
