"""What the agent reports about itself: :class:`AgentStatus`, and ``<state-dir>/status.json``.

The same numbers reach the progress log line, ``status.json`` and ``/metrics``
(:mod:`bridge.agent.metrics`); tests and tools wait on ``status.json``, never on log wording.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol


class Threaded(Protocol):
    """A part of the agent that runs a thread of its own."""

    @property
    def alive(self) -> bool: ...


@dataclass(frozen=True)
class AgentStatus:
    """A point-in-time view of the agent's progress (also written to ``status.json``)."""

    records: int
    events_received: int
    events_published: int
    events_not_owned: int
    events_elided: int
    deleted: int
    resyncs_completed: int
    domains_pending: int
    domains_in_flight: int
    oldest_waiting_s: float
    libvirt_connected: bool
    libvirt_reconnects: int
    kafka_redeliveries: int
    kafka_last_error: str | None
    libvirt_connected_at: float | None = None
    """When the current libvirt connection was opened (seconds since the epoch)."""
    resyncs_deferred: int = 0
    """Scheduled resyncs put off while Kafka was unreachable (each runs once it answers)."""
    resync_last_listed_at: float | None = None
    """When the latest completed resync listed the domains: after ``libvirt_connected_at``, it has
    seen everything the current connection shows."""
    events_received_by_id: dict[str, int] = field(default_factory=dict)
    events_published_by_id: dict[str, int] = field(default_factory=dict)
    events_coalesced: int = 0
    records_by_kind: dict[str, int] = field(default_factory=dict)
    resync_last_seconds: float | None = None
    resync_last_completed_at: float | None = None
    kafka_delivery_errors: int = 0
    kafka_client_errors: int = 0
    producer_queue: int = 0
    last_version: int = 0
    owned_domains: int = 0
    handed_off_domains: int = 0
    incoming_domains: int = 0


def threads_health(parts: Mapping[str, Threaded | None]) -> tuple[bool, str]:
    """``/healthz``'s answer for these parts: (True, "ok") while every one runs its thread."""
    if any(part is None for part in parts.values()):
        return False, "not running (starting or stopped)"
    dead = [name for name, part in parts.items() if part is not None and not part.alive]
    if dead:
        return False, f"thread(s) not running: {', '.join(dead)}"
    return True, "ok"


def write_status_file(path: Path, status: AgentStatus, instance_id: str, written_at: int) -> None:
    """Write ``status.json`` atomically (a reader never sees half of it)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({**asdict(status), "instance_id": instance_id, "written_at": written_at}, indent=2))
    os.replace(tmp, path)
