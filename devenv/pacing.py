"""Spacing operations out at a fixed rate, for workloads and benchmarks."""

from __future__ import annotations

import time


class Pacer:
    """Lets operation ``i`` start at ``start + i / rate``; remembers how far behind it fell."""

    def __init__(self, rate: float) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self._rate = rate
        self._t0 = time.monotonic()
        self.max_behind = 0.0
        """The most seconds an operation started late (the caller could not keep the rate)."""

    def wait_turn(self, i: int) -> None:
        """Return when operation ``i`` is due (at once if it is overdue)."""
        delay = self._t0 + i / self._rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)  # pacing a workload, not waiting for a condition
        else:
            self.max_behind = max(self.max_behind, -delay)
