"""What the pipeline's parts share: its settings, its counters, and where it reports latencies."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from bridge.agent.publisher import Message
from bridge.records import DomainRecord

if TYPE_CHECKING:
    from bridge.agent.listing import ListedDomain
    from bridge.agent.snapshot import DomainSnapshot, SnapshotRequest


@dataclass(frozen=True)
class PipelineConfig:
    host: str
    domains_topic: str
    hosts_topic: str
    resync_interval: float
    heartbeat_interval: float
    batch_size: int = 256
    snapshot_readers: int = 4
    """Snapshot reads in parallel (each is several libvirt round-trips)."""
    not_found_retry: float = 0.5
    """Seconds to keep retrying ``Domain not found`` for a domain whose events don't say it is gone."""
    max_clock_skew: float = 0.05
    """Seconds host clocks may differ by; a claim's version is taken that far ahead (the version rule)."""
    control_topic: str | None = None
    """Where re-assertion requests go (:mod:`bridge.agent.reassert`); None: not sent."""
    heartbeats_topic: str | None = None
    """Where heartbeats go (a HostRecord without its inventory); None: on the hosts topic, each one
    repeating the inventory."""

    @property
    def host_record_interval(self) -> float:
        """How often the full HostRecord is refreshed: every heartbeat when heartbeats share its topic,
        else once per resync interval (status changes and new inventories go out at once)."""
        if self.heartbeats_topic is None:
            return self.heartbeat_interval
        return max(self.heartbeat_interval, self.resync_interval)


@dataclass
class PipelineStats:
    """Counters of the ``pipeline`` thread; written only there, read by the agent's status (a snapshot
    of ints and dicts, so a torn read is at worst one update behind)."""

    records: int = 0
    deleted: int = 0
    resyncs_completed: int = 0
    resyncs_deferred: int = 0
    """Scheduled resyncs put off while Kafka was unreachable (each runs once it answers)."""
    events_published: int = 0
    events_not_owned: int = 0
    events_coalesced: int = 0
    """Events that shared their record with an earlier event (a record of n events adds n - 1)."""
    records_by_kind: dict[str, int] = field(default_factory=dict)
    events_published_by_id: dict[str, int] = field(default_factory=dict)
    last_resync_seconds: float | None = None
    """The latest completed resync, from its ``listed_at`` to its inventory."""
    last_resync_completed_at: float | None = None
    """Seconds since the epoch."""
    last_resync_listed_at: float | None = None
    """When the latest completed resync read its listing (seconds since the epoch, the agent's clock)."""
    owned_domains: int = 0
    """Domains in the latest inventory."""
    handed_off_domains: int = 0
    incoming_domains: int = 0


class RecordSink(Protocol):
    """Where the pipeline's parts send their messages (:class:`bridge.agent.publisher.Publisher`)."""

    def publish(self, messages: Sequence[Message], on_done: Callable[[], None],
                on_position: Callable[[int, int], None] | None = None) -> None:
        """Produce ``messages`` in order; ``on_done`` runs once, after every one is acknowledged;
        ``on_position(partition, offset)`` where the first landed, when it is."""

    def kafka_problem(self) -> str | None:
        """Why Kafka looks unreachable now, or None."""


class PipelineObserver(Protocol):
    """Where latencies are observed (the agent's metrics); called from the pipeline's threads."""

    def snapshot_read(self, seconds: float) -> None: ...

    def record_acked(self, record: DomainRecord) -> None: ...


class SnapshotSource(Protocol):
    """Where snapshots come from (:class:`bridge.agent.snapshot.SnapshotReader`); called from the
    ``snapshot-reader`` threads, but :meth:`forget`."""

    def read_many(self, requests: Sequence[SnapshotRequest]) -> Sequence[DomainSnapshot | Exception | None]:
        """The domains now, in the order asked: each a snapshot, None if libvirt says it does not
        exist, or the libvirt error to retry; raises ConnectionLost (retried too). A ``for_listing``
        request is a listing's RESYNC record's read, whose ``PAUSED/MIGRATION`` or ``PAUSED/STARTING_UP``
        snapshot carries the migration job too."""

    def forget(self, uuid: str) -> None:
        """The domain is gone (a DELETED record is being published)."""

    def reads_job(self, uuid: str) -> bool:
        """The listing's read of ``uuid`` will read its migration job too (listed ``PAUSED/MIGRATION``
        or ``PAUSED/STARTING_UP``)."""

    def prime(self, conn: Any, listed: Iterable[ListedDomain]) -> None:
        """A listing just read ``listed`` on ``conn``: keep what spares its RESYNC reads round-trips."""
