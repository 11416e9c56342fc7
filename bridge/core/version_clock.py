"""The hybrid logical clock that gives every record its version.

DESIGN.md's rule is ``max(last_version_for_this_uuid + 1, now_in_microseconds)``. This clock applies
it host-wide: ``max(last_version_issued_by_this_agent + 1, now)``. That value is never below the
per-UUID one, so every promise of the rule holds, and it adds one more: a ``listed_at`` taken before a
resync listing is below every version issued after it, even when the wall clock steps back. Consumers
rely on that to tell a domain created during the listing from one that vanished before it.

The clock is pure: the wall clock is injected and persistence is the caller's job (see
:class:`bridge.agent.state_store.StateStore`); :meth:`VersionClock.restore` seeds it from the state
directory so a restart never repeats or lowers a version, and lifts it above the version a
re-assertion request names (:mod:`bridge.agent.reassert`), so this host's next record sorts above it.
"""

from __future__ import annotations

import time
from collections.abc import Callable

Clock = Callable[[], int]
"""Returns the current time in microseconds since the epoch."""


def wall_clock_micros() -> int:
    """The real wall clock, in microseconds."""
    return time.time_ns() // 1_000


class VersionClock:
    """Issues strictly increasing versions; not thread-safe (owned by the pipeline thread)."""

    def __init__(self, now: Clock = wall_clock_micros, floor: int = 0) -> None:
        self._now = now
        self._last = floor

    @property
    def last(self) -> int:
        """The highest version issued (or restored) so far."""
        return self._last

    def restore(self, floor: int) -> None:
        """Never issue a version at or below ``floor``: the bound persisted before a restart, or a
        version another host published (a hybrid logical clock's receive rule, :mod:`bridge.agent.reassert`)."""
        self._last = max(self._last, floor)

    def tick(self, ahead: int = 0) -> int:
        """The next version: ``max(last + 1, now + ahead)``.

        ``ahead`` (µs) is for a record that takes a domain over from another host (a migration's claim):
        with host clocks within ``ahead`` of each other, it sorts above everything the previous owner
        published, however short the gap between the two hosts' records (see :mod:`bridge.core.ownership`).
        """
        self._last = max(self._last + 1, self._now() + ahead)
        return self._last
