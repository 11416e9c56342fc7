"""What an informer counts: :class:`InformerStats` (also read by :mod:`bridge.consumer.metrics`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class InformerStats:
    """Counters since the informer started."""

    applied: int = 0
    """Messages taken into the view (newer than anything seen for their key)."""
    skipped_older: int = 0
    """Domain records not newer than a version already seen: duplicates or out of order."""
    listed_away: int = 0
    """Domain records their host's latest inventory had already listed away."""
    undecodable: int = 0
    """Messages skipped because they are not records of this bridge."""
    unknown_schema: int = 0
    """Records written with a newer, unknown schema and read without the fields it added."""
    legacy_fingerprint: int = 0
    """Records written by 0.1.0, whose single-object fingerprint was byte-reversed (read all the same)."""
    handler_errors: int = 0
    """Exceptions raised by handlers (logged; delivery goes on)."""
