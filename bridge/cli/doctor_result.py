"""One line of ``doctor``'s report, and the rule constants its checks share."""

from __future__ import annotations

from dataclasses import dataclass

TOMBSTONE_RESYNCS = 3
"""``delete.retention.ms`` must be at least this many resync intervals (see :mod:`bridge.cli.doctor`)."""
OK, WARN, FAIL, SKIP = "ok", "WARN", "FAIL", "skip"


@dataclass(frozen=True)
class Result:
    status: str
    check: str
    detail: str
    fix: str = ""

    def line(self) -> str:
        text = f"{self.status:<4}  {self.check}: {self.detail}"
        return f"{text}. Fix: {self.fix}" if self.fix and self.status in (WARN, FAIL) else text
