"""The last stage of streaming: version, persist, produce (:class:`RecordWriter`).

A batch whose snapshot was read becomes a record here. Its version comes from the clock (a claim's
``--max-clock-skew`` ahead, see :mod:`bridge.core.version_clock`); the persisted bound in the state
store covers it, a lease ahead, *before* it is produced, so a crash can never make a version repeat
(:mod:`bridge.agent.state_store`); then the record, and a tombstone after ``DELETED``, go to Kafka
with their CloudEvents headers. The domain's next batch waits for the ack, which the work queue hands
back to the pipeline thread. Runs on the pipeline thread, but for the ack callback.
"""

from __future__ import annotations

from collections.abc import Callable

from bridge.agent.pipeline_config import PipelineConfig, PipelineObserver, PipelineStats, RecordSink, SnapshotSource
from bridge.agent.publisher import Message
from bridge.agent.reassert import KeyPositions
from bridge.agent.resync import Resync
from bridge.agent.snapshot import DomainSnapshot
from bridge.agent.state_store import VERSION_LEASE_US, StateStore
from bridge.agent.work_queue import WorkQueue
from bridge.core.coalescer import Batch
from bridge.core.version_clock import Clock, VersionClock
from bridge.records import AgentInfo, DomainRecord, RecordKind
from bridge.serde import RecordCodec, cloud_events


class RecordWriter:
    """Versions, persists and produces the records of ready batches. Owned by the streamer."""

    def __init__(self, config: PipelineConfig, queue: WorkQueue, reader: SnapshotSource, store: StateStore,
                 publisher: RecordSink, codec: RecordCodec, clock: VersionClock, resync: Resync,
                 stats: PipelineStats, agent_info: Callable[[], AgentInfo], now: Clock,
                 save_roles: Callable[[], None], observer: PipelineObserver | None) -> None:
        self._cfg = config
        self._queue = queue
        self._reader = reader
        self._store = store
        self._publisher = publisher
        self._codec = codec
        self._clock = clock
        self._resync = resync
        self._stats = stats
        self._agent_info = agent_info
        self._now = now
        self._save_roles = save_roles
        self._observer = observer
        self.claims: set[str] = set()
        """UUIDs whose next record takes them over from another host (filled by the ownership filter)."""
        self.outrank: set[str] = set()
        """UUIDs whose next record must sort above another host's, as a claim's does, without being
        one (a re-assertion another host asked for, :mod:`bridge.agent.reassert`)."""
        self._lease = 0  # the persisted bound above every version issued (see bridge.agent.state_store)
        self.positions = KeyPositions()
        """Where each domain's latest acknowledged record landed (for :mod:`bridge.agent.reassert`)."""

    def commit(self, ready: list[tuple[Batch, DomainSnapshot | None]]) -> None:
        """Version every ready batch, persist the highest version (one fsync for all), produce."""
        if not ready:
            return
        records = [self._record(batch, snap) for batch, snap in ready]
        top = max(r.version for r in records)
        if top + VERSION_LEASE_US // 2 >= self._lease:
            # Durable before producing: the persisted bound covers every version of this group and a
            # lease beyond (renewed half way, so most groups need no fsync at all).
            self._lease = max(top, self._now()) + VERSION_LEASE_US
            self._store.raise_floor(self._lease)
        self._save_roles()
        for record, (batch, _snap) in zip(records, ready, strict=True):
            if record.kind is RecordKind.DELETED:
                self._reader.forget(record.uuid)
            self._publish(record, batch.resync_id)

    def _record(self, batch: Batch, snap: DomainSnapshot | None) -> DomainRecord:
        claim = batch.uuid in self.claims or batch.uuid in self.outrank
        self.claims.discard(batch.uuid)
        self.outrank.discard(batch.uuid)
        version = self._clock.tick(ahead=int(self._cfg.max_clock_skew * 1e6) if claim else 0)
        if snap is None:
            self._resync.dropped(batch)
        else:
            self._resync.assigned(batch, version)
        agent = self._agent_info()
        if snap is None:
            return DomainRecord(
                uuid=batch.uuid, name=batch.name, host=self._cfg.host, version=version,
                kind=RecordKind.DELETED, agent=agent, observed_at=self._now(), events=batch.events,
                events_elided=batch.elided,
            )
        return DomainRecord(
            uuid=batch.uuid, name=snap.name, host=self._cfg.host, version=version,
            kind=RecordKind.EVENT if batch.events else RecordKind.RESYNC, agent=agent,
            observed_at=snap.observed_at, events=batch.events, events_elided=batch.elided,
            state=snap.state, reason=snap.reason, active=snap.active, persistent=snap.persistent,
            xml=snap.xml, resync_id=batch.resync_id,
        )

    def _publish(self, record: DomainRecord, resync_id: str | None) -> None:
        key = record.uuid.encode()
        messages = [Message(self._cfg.domains_topic, key, self._codec.encode_domain(record),
                            cloud_events.domain_headers(record))]
        if record.kind is RecordKind.DELETED:
            messages.append(Message(self._cfg.domains_topic, key, None, cloud_events.tombstone_headers(record)))
            self._stats.deleted += 1
        self._stats.records += 1
        self._stats.events_published += len(record.events)
        self._stats.events_coalesced += max(0, len(record.events) - 1)
        by_kind, by_id = self._stats.records_by_kind, self._stats.events_published_by_id
        by_kind[record.kind.value] = by_kind.get(record.kind.value, 0) + 1
        for event in record.events:
            by_id[event.id] = by_id.get(event.id, 0) + 1
        self._publisher.publish(messages, lambda: self._acked(record, resync_id),
                                lambda partition, offset: self._landed(record, partition, offset))

    def _landed(self, record: DomainRecord, partition: int, offset: int) -> None:
        # On the delivery thread, before _acked: the position is known once the domain is free again.
        if record.kind is RecordKind.DELETED:
            self.positions.forget(record.uuid)
        else:
            self.positions.note(record.uuid, partition, offset, record.version)

    def _acked(self, record: DomainRecord, resync_id: str | None) -> None:
        # On the delivery thread: the work queue is thread-safe, and the observer says so too.
        self._queue.done(record.uuid, resync_id)
        if self._observer is not None:
            self._observer.record_acked(record)
