"""The streaming part of the pipeline: batches of a domain's events become versioned records.

For each batch (at most one record in flight per domain, see :mod:`bridge.core.coalescer`):

1. the ownership rules see every event in arrival order; events for a domain this host does not own
   are counted and logged, never published;
2. the domain's snapshot is read *after* those events, several domains side by side on the
   ``snapshot-reader`` threads; ``Domain not found`` is retried briefly unless the events say the
   domain is gone, and the retry stops early when newer events arrive (they join the batch);
3. a version comes from the clock and is persisted (one fsynced transaction per round of batches)
   *before* producing, so a crash can never make a version repeat; a record that takes the domain
   over from another host is versioned ``--max-clock-skew`` ahead;
4. the record is produced (plus a tombstone after ``DELETED``); the domain's next batch waits for the
   ack, which the work queue hands back to the pipeline thread.

Owned by the pipeline; runs on its thread, but for the snapshot reads.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import libvirt
from tenacity import RetryError, Retrying, retry_if_result, stop_after_delay, wait_exponential

from bridge.agent.libvirt_session import ConnectionLost, one_line
from bridge.agent.pipeline_config import PipelineConfig, PipelineObserver, PipelineStats
from bridge.agent.publisher import Message, Publisher
from bridge.agent.resync import Resync
from bridge.agent.snapshot import DomainSnapshot, SnapshotReader
from bridge.agent.state_store import StateStore
from bridge.agent.work_queue import WorkQueue
from bridge.core.coalescer import Batch
from bridge.core.ownership import Ownership, Verdict
from bridge.core.version_clock import Clock, VersionClock
from bridge.records import AgentInfo, DomainEvent, DomainRecord, RecordKind
from bridge.serde import RecordCodec, cloud_events

log = logging.getLogger(__name__)

# Lifecycle events after which "Domain not found" means the domain is really gone.
_GONE_AFTER = {"UNDEFINED", "STOPPED"}


class Streamer:
    """Turns batches into records; owns the ``snapshot-reader`` pool (closed by :meth:`close`)."""

    def __init__(
        self,
        config: PipelineConfig,
        queue: WorkQueue,
        reader: SnapshotReader,
        store: StateStore,
        publisher: Publisher,
        codec: RecordCodec,
        clock: VersionClock,
        ownership: Ownership,
        resync: Resync,
        stats: PipelineStats,
        agent_info: Callable[[], AgentInfo],
        now: Clock,
        save_roles: Callable[[], None],
        sleep: Callable[[float], object],
        observer: PipelineObserver | None = None,
    ) -> None:
        self._cfg = config
        self._queue = queue
        self._reader = reader
        self._store = store
        self._publisher = publisher
        self._codec = codec
        self._clock = clock
        self._ownership = ownership
        self._resync = resync
        self._stats = stats
        self._agent_info = agent_info
        self._now = now
        self._save_roles = save_roles
        self._sleep = sleep
        self._observer = observer
        self._claims: set[str] = set()  # UUIDs whose next record takes them over from another host
        self._read_pool = ThreadPoolExecutor(config.snapshot_readers, thread_name_prefix="snapshot-reader")

    def close(self) -> None:
        """Stop the snapshot readers (after the pipeline thread has stopped)."""
        self._read_pool.shutdown(wait=True)

    def process(self, batches: list[Batch]) -> None:
        """One round: filter, read the snapshots, version and persist, produce."""
        # Ownership sees every event in arrival order, so filtering stays on this thread; only the
        # libvirt reads, the slow part (several round-trips each), run side by side.
        owned = [b for b in (self._owned_events(batch) for batch in batches) if b is not None]
        reads = list(self._read_pool.map(self._read, [b.uuid for b in owned]))
        ready: list[tuple[Batch, DomainSnapshot | None]] = []
        for i, (batch, read) in enumerate(zip(owned, reads, strict=True)):
            try:
                if isinstance(read, Exception):
                    raise read
                outcome = self._prepare(batch, read)
            except ConnectionLost:
                # Give the work back (ownership already applied to it) and wait for the reconnect.
                for rest in owned[i:]:
                    self._queue.requeue(rest)
                log.warning("libvirt connection lost; %d domain(s) wait for the reconnect", len(owned) - i)
                break
            except libvirt.libvirtError as exc:
                log.warning("reading %s failed: %s; will retry", batch.uuid, one_line(exc))
                self._queue.requeue(batch)
                continue
            if outcome is not None:
                ready.append(outcome)
        if not ready:
            return
        records = [self._record(batch, snap) for batch, snap in ready]
        self._store.save(
            {r.uuid: r.version for r in records},
            deleted=[r.uuid for r in records if r.kind is RecordKind.DELETED],
        )
        self._save_roles()
        for record, (batch, _snap) in zip(records, ready, strict=True):
            self._publish(record, batch.resync_id)

    # -- ownership ----------------------------------------------------------------------------------

    def _filter_events(self, batch: Batch) -> Batch:
        """Feed every event to the ownership rules, in order; keep the ones to publish."""
        kept: list[DomainEvent] = []
        for event in batch.events:
            silent = not self._ownership.owns(batch.uuid)
            verdict = self._ownership.on_event(batch.uuid, event)
            if verdict is Verdict.PUBLISH:
                kept.append(event)
                if silent:
                    # A claim (a migration's destination, or a source taking a domain back): the
                    # record must sort above the other host's last one, on that host's clock.
                    self._claims.add(batch.uuid)
            else:
                self._stats.events_not_owned += 1
                log.info("not publishing %s %s for %s (%s): %s", event.id, event.label(), batch.name or "?",
                         batch.uuid, verdict.value)
        return replace(batch, events=tuple(kept))

    def _owned_events(self, batch: Batch) -> Batch | None:
        """The batch to publish, or None (its domain is done) when there is nothing to publish."""
        filtered = self._filter_events(batch)
        if not self._ownership.owns(batch.uuid):
            if filtered.events:
                # Received while owned, but the domain was handed off before its snapshot could be
                # read: publishing now could put a stale host's word above the new owner's.
                self._stats.events_not_owned += len(filtered.events)
                log.info("%d event(s) for %s were overtaken by its hand-off; not published",
                         len(filtered.events), batch.uuid)
            self._resync.dropped(batch)
            self._queue.done(batch.uuid)
            return None
        if not filtered.events and batch.resync_id is None:
            self._queue.done(batch.uuid)
            return None
        return filtered

    # -- the snapshot -------------------------------------------------------------------------------

    def _read(self, uuid: str) -> DomainSnapshot | Exception | None:
        started = time.monotonic()
        try:
            return self._reader.read(uuid)
        except (ConnectionLost, libvirt.libvirtError) as exc:
            return exc
        finally:
            if self._observer is not None:
                self._observer.snapshot_read(time.monotonic() - started)

    def _prepare(self, batch: Batch, snap: DomainSnapshot | None) -> tuple[Batch, DomainSnapshot | None] | None:
        """Complete the snapshot read of an owned batch; None when nothing is to be published."""
        if snap is None and not implies_gone(batch.events):
            snap, batch = self._retry_not_found(batch)
        if snap is None and not batch.events:
            # Listed by a resync, gone before its record: its own events will report the delete.
            self._resync.dropped(batch)
            self._queue.done(batch.uuid)
            return None
        if not self._ownership.owns(batch.uuid):
            self._resync.dropped(batch)
            self._queue.done(batch.uuid)
            return None
        return batch, snap

    def _retry_not_found(self, batch: Batch) -> tuple[DomainSnapshot | None, Batch]:
        """The seed's point 2: a fresh domain may not be readable yet. Retry briefly."""
        state = {"batch": batch}

        def attempt() -> DomainSnapshot | None:
            more = self._queue.take_more(batch.uuid)
            if more is not None:
                extra = self._filter_events(more).events
                current = state["batch"]
                state["batch"] = replace(current, events=current.events + extra,
                                         elided=current.elided + more.elided, name=more.name or current.name,
                                         resync_id=more.resync_id or current.resync_id)
            if implies_gone(state["batch"].events):
                return None  # newer events say it is gone: stop retrying
            return self._reader.read(batch.uuid)

        def keep_trying(snap: DomainSnapshot | None) -> bool:
            return snap is None and not implies_gone(state["batch"].events)

        retrying = Retrying(
            stop=stop_after_delay(self._cfg.not_found_retry),
            wait=wait_exponential(multiplier=0.005, max=0.1),
            retry=retry_if_result(keep_trying),
            sleep=self._wait,
        )
        try:
            snap = retrying(attempt)
        except RetryError:
            snap = None
        return snap, state["batch"]

    def _wait(self, seconds: float) -> None:
        self._sleep(seconds)  # the pipeline's stop event: a shutdown cuts the retry short

    # -- the record ---------------------------------------------------------------------------------

    def _record(self, batch: Batch, snap: DomainSnapshot | None) -> DomainRecord:
        claim = batch.uuid in self._claims
        self._claims.discard(batch.uuid)
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
        self._publisher.publish(messages, lambda: self._acked(record, resync_id))

    def _acked(self, record: DomainRecord, resync_id: str | None) -> None:
        # On the delivery thread: the work queue is thread-safe, and the observer says so too.
        self._queue.done(record.uuid, resync_id)
        if self._observer is not None:
            self._observer.record_acked(record)


def implies_gone(events: tuple[DomainEvent, ...]) -> bool:
    """True if the last lifecycle event of ``events`` says the domain no longer exists here."""
    for event in reversed(events):
        if event.id == "LIFECYCLE":
            return event.type in _GONE_AFTER
    return False
