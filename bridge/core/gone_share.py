"""How many of the recent snapshot reads found their domain gone: a share that forgets old reads.

The snapshot reader asks libvirt which domains still exist before reading their XML when most recent
reads found theirs gone, as in a define-undefine churn, where a ``DEFINED`` is usually read after the
domain was undefined (:mod:`bridge.agent.snapshot`). Each read weighs ``decay`` times less with every
read after it, so about the last ten count; a group of reads weighs as many reads in a row, however
large. Pure and not thread-safe (its owner serializes calls), so property tests can hammer it.
"""

from __future__ import annotations


class GoneShare:
    """The decaying share of reads that found their domain gone, and whether it is above ``threshold``."""

    def __init__(self, decay: float = 0.9, threshold: float = 0.5) -> None:
        if not 0 < decay < 1 or not 0 < threshold < 1:
            raise ValueError("decay and threshold must be between 0 and 1")
        self._decay = decay
        self._threshold = threshold
        self._gone = 0.0
        self._reads = 0.0

    def add(self, gone: int, reads: int) -> None:
        """``reads`` more reads (a group), ``gone`` of which found their domain gone."""
        if not 0 <= gone <= reads:
            raise ValueError(f"gone ({gone}) must be between 0 and reads ({reads})")
        if not reads:
            return
        older = self._decay ** reads
        weight = (1 - older) / (1 - self._decay)  # the group's reads, as many in a row
        self._gone = self._gone * older + weight * gone / reads
        self._reads = self._reads * older + weight

    @property
    def share(self) -> float:
        """Of the recent reads' weight, the part that found the domain gone (0 before any read)."""
        # Rounded: float rounding would otherwise let a group of reads that all found their domain gone
        # lower the share by an ulp (0.9999999999999999 -> ...98), and lift it above 1.
        return min(1.0, round(self._gone / self._reads, 12)) if self._reads else 0.0

    @property
    def high(self) -> bool:
        return self.share > self._threshold
