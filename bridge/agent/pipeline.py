"""Snapshot, version, publish: the ``pipeline`` thread.

For each batch of a domain's events (at most one record in flight per domain, see
:mod:`bridge.core.coalescer`) the pipeline:

1. applies the ownership rules to the events in arrival order; events for a domain this host does not
   own are counted and logged, never published;
2. reads the domain's snapshot *after* those events; ``Domain not found`` is retried briefly unless
   the events say the domain is gone, and the retry stops early when newer events arrive (they join
   the batch);
3. takes a version from the clock and persists it (one fsynced transaction per round of batches)
   *before* producing, so a crash can never make a version repeat;
4. produces the record (plus a tombstone after ``DELETED``); the domain's next batch waits for the ack.

Resyncs and heartbeats run on this thread too, since they need the clock and the ownership state.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid as uuid_mod
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Protocol

import libvirt
from tenacity import RetryError, Retrying, retry_if_result, stop_after_delay, wait_exponential

from bridge.agent.libvirt_names import reason_name, state_name
from bridge.agent.libvirt_session import ConnectionLost, LibvirtSession, one_line
from bridge.agent.publisher import Message, Publisher
from bridge.agent.snapshot import DomainSnapshot, SnapshotReader, listed_state
from bridge.agent.state_store import StateStore
from bridge.agent.work_queue import WorkQueue
from bridge.core.coalescer import Batch
from bridge.core.inventory import ResyncTracker
from bridge.core.ownership import Ownership, Role, Verdict
from bridge.core.version_clock import Clock, VersionClock
from bridge.records import AgentInfo, DomainEvent, DomainRecord, HostRecord, HostStatus, RecordKind
from bridge.serde import RecordCodec, cloud_events

log = logging.getLogger(__name__)

# Lifecycle events after which "Domain not found" means the domain is really gone.
_GONE_AFTER = {"UNDEFINED", "STOPPED"}


@dataclass(frozen=True)
class PipelineConfig:
    host: str
    domains_topic: str
    hosts_topic: str
    resync_interval: float
    heartbeat_interval: float
    batch_size: int = 256
    snapshot_readers: int = 4
    """Snapshot reads in parallel (each is five libvirt round-trips)."""
    not_found_retry: float = 0.5
    """Seconds to keep retrying ``Domain not found`` for a domain whose events don't say it is gone."""
    max_clock_skew: float = 0.05
    """Seconds host clocks may differ by; a claim's version is taken that far ahead (the version rule)."""


@dataclass
class PipelineStats:
    records: int = 0
    deleted: int = 0
    resyncs_completed: int = 0
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
    owned_domains: int = 0
    """Domains in the latest inventory."""
    handed_off_domains: int = 0
    incoming_domains: int = 0


class PipelineObserver(Protocol):
    """Where latencies are observed (the agent's metrics); called from the pipeline's threads."""

    def snapshot_read(self, seconds: float) -> None: ...

    def record_acked(self, record: DomainRecord) -> None: ...


class Pipeline:
    """Owns the ``pipeline`` thread, the version clock, the ownership state and the resync tracker."""

    def __init__(
        self,
        config: PipelineConfig,
        queue: WorkQueue,
        session: LibvirtSession,
        reader: SnapshotReader,
        store: StateStore,
        publisher: Publisher,
        codec: RecordCodec,
        agent_info: Callable[[], AgentInfo],
        now: Clock,
        observer: PipelineObserver | None = None,
    ) -> None:
        self._cfg = config
        self._queue = queue
        self._session = session
        self._reader = reader
        self._store = store
        self._publisher = publisher
        self._codec = codec
        self._agent_info = agent_info
        self._now = now
        self.clock = VersionClock(now, floor=store.max_version())
        self.ownership = Ownership(store.ownership_roles())
        self._roles_generation = self.ownership.generation
        self._tracker: ResyncTracker | None = None
        self._host_in_flight = threading.Event()
        self._published_resync_id: str | None = None
        self._announced_status: HostStatus | None = None
        self._claims: set[str] = set()  # UUIDs whose next record takes them over from another host
        self._inventory: HostRecord | None = None
        self._resync_requested = threading.Event()
        self._stop = threading.Event()
        self._drain_deadline: float | None = None
        self._thread: threading.Thread | None = None
        self._read_pool = ThreadPoolExecutor(config.snapshot_readers, thread_name_prefix="snapshot-reader")
        self._next_resync = 0.0
        self._next_heartbeat = 0.0
        self.stats = PipelineStats()
        self._observer = observer
        self._count_roles(self.ownership.remembered())

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> None:
        self._resync_requested.set()
        self._thread = threading.Thread(target=self._run, name="pipeline", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        """The ``pipeline`` thread is running."""
        thread = self._thread
        return thread is not None and thread.is_alive()

    def request_resync(self) -> None:
        """Resync soon (after a reconnect); safe from any thread."""
        self._resync_requested.set()
        self._queue.wake()

    def drain_and_stop(self, deadline: float) -> bool:
        """Publish everything queued (by monotonic ``deadline``), then stop. True if nothing was left."""
        self._drain_deadline = deadline
        self._queue.wake()
        if self._thread is not None:
            self._thread.join(max(0.0, deadline - time.monotonic()) + 5)
        self._stop.set()
        self._queue.wake()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
        return self._queue.idle()

    def stop(self) -> None:
        self._stop.set()
        self._queue.wake()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None
        self._read_pool.shutdown(wait=True)

    def publish_host_status(self, status: HostStatus) -> None:
        """Publish the HostRecord now (used for ``STOPPING`` once the pipeline has stopped)."""
        self._publish_host(status)

    # -- the loop ------------------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._step()
            except Exception:  # keep the agent alive; a bug here must not silently stop publishing
                log.exception("pipeline step failed; continuing")
                self._stop.wait(1.0)

    def _step(self) -> None:
        draining = self._drain_deadline is not None
        if draining and (self._queue.idle() or time.monotonic() >= (self._drain_deadline or 0)):
            self._stop.set()
            return
        self._handle_acks()
        if not self._session.connected:
            # Unreachable is not gone: keep heartbeating the last inventory, flagged, so consumers keep
            # this host's domains (flagged unknown) rather than read the silence as an answer.
            if not draining:
                self._heartbeat(HostStatus.LIBVIRT_UNREACHABLE)
            self._stop.wait(0.1)
            return
        now = time.monotonic()
        if not draining and (self._resync_requested.is_set() or now >= self._next_resync):
            self._resync_requested.clear()
            self._start_resync()
        if not draining:
            self._heartbeat(HostStatus.UP)
        wait = max(0.0, min(self._next_resync, self._next_heartbeat) - time.monotonic())
        batches = self._queue.take(self._cfg.batch_size, timeout=min(wait, 0.5))
        if batches:
            self._process(batches)

    def _process(self, batches: list[Batch]) -> None:
        # Ownership sees every event in arrival order, so filtering stays on this thread; only the
        # libvirt reads, the slow part (five round-trips each), run side by side.
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
        self._save_ownership_roles()
        for record, (batch, _snap) in zip(records, ready, strict=True):
            self._publish(record, batch.resync_id)

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
        if snap is None and not _implies_gone(batch.events):
            snap, batch = self._retry_not_found(batch)
        if snap is None and not batch.events:
            # Listed by a resync, gone before its record: its own events will report the delete.
            self._resync_dropped(batch)
            self._queue.done(batch.uuid)
            return None
        if not self.ownership.owns(batch.uuid):
            self._resync_dropped(batch)
            self._queue.done(batch.uuid)
            return None
        return batch, snap

    def _filter_events(self, batch: Batch) -> Batch:
        """Feed every event to the ownership rules, in order; keep the ones to publish."""
        kept: list[DomainEvent] = []
        for event in batch.events:
            silent = not self.ownership.owns(batch.uuid)
            verdict = self.ownership.on_event(batch.uuid, event)
            if verdict is Verdict.PUBLISH:
                kept.append(event)
                if silent:
                    # A claim (a migration's destination, or a source taking a domain back): the
                    # record must sort above the other host's last one, on that host's clock.
                    self._claims.add(batch.uuid)
            else:
                self.stats.events_not_owned += 1
                log.info("not publishing %s %s for %s (%s): %s", event.id, event.label(), batch.name or "?",
                         batch.uuid, verdict.value)
        return replace(batch, events=tuple(kept))

    def _owned_events(self, batch: Batch) -> Batch | None:
        """The batch to publish, or None (its domain is done) when there is nothing to publish."""
        filtered = self._filter_events(batch)
        if not self.ownership.owns(batch.uuid):
            if filtered.events:
                # Received while owned, but the domain was handed off before its snapshot could be
                # read: publishing now could put a stale host's word above the new owner's.
                self.stats.events_not_owned += len(filtered.events)
                log.info("%d event(s) for %s were overtaken by its hand-off; not published",
                         len(filtered.events), batch.uuid)
            self._resync_dropped(batch)
            self._queue.done(batch.uuid)
            return None
        if not filtered.events and batch.resync_id is None:
            self._queue.done(batch.uuid)
            return None
        return filtered

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
            if _implies_gone(state["batch"].events):
                return None  # newer events say it is gone: stop retrying
            return self._reader.read(batch.uuid)

        def keep_trying(snap: DomainSnapshot | None) -> bool:
            return snap is None and not _implies_gone(state["batch"].events)

        retrying = Retrying(
            stop=stop_after_delay(self._cfg.not_found_retry),
            wait=wait_exponential(multiplier=0.005, max=0.1),
            retry=retry_if_result(keep_trying),
            sleep=self._sleep,
        )
        try:
            snap = retrying(attempt)
        except RetryError:
            snap = None
        return snap, state["batch"]

    def _sleep(self, seconds: float) -> None:
        self._stop.wait(seconds)

    def _record(self, batch: Batch, snap: DomainSnapshot | None) -> DomainRecord:
        claim = batch.uuid in self._claims
        self._claims.discard(batch.uuid)
        version = self.clock.tick(ahead=int(self._cfg.max_clock_skew * 1e6) if claim else 0)
        if self._tracker is not None and batch.resync_id == self._tracker.resync_id:
            if snap is None:
                self._tracker.dropped(batch.uuid)
            else:
                self._tracker.assigned(batch.uuid, version)
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
            self.stats.deleted += 1
        self.stats.records += 1
        self.stats.events_published += len(record.events)
        self.stats.events_coalesced += max(0, len(record.events) - 1)
        by_kind, by_id = self.stats.records_by_kind, self.stats.events_published_by_id
        by_kind[record.kind.value] = by_kind.get(record.kind.value, 0) + 1
        for event in record.events:
            by_id[event.id] = by_id.get(event.id, 0) + 1
        self._publisher.publish(messages, lambda: self._acked(record, resync_id))

    def _acked(self, record: DomainRecord, resync_id: str | None) -> None:
        self._queue.done(record.uuid, resync_id)
        if self._observer is not None:
            self._observer.record_acked(record)

    # -- resync and host records ----------------------------------------------------------------------

    def _start_resync(self) -> None:
        self._next_resync = time.monotonic() + self._cfg.resync_interval
        try:
            conn = self._session.connection()
            listed_at = self.clock.tick()
            # Persist listed_at like any version: after a restart, even with the clock stepped back,
            # new records must sort above the inventory a consumer may still apply.
            self._store.raise_floor(listed_at)
            domains = conn.listAllDomains(0)
            listed: list[str] = []
            owned: list[str] = []
            for dom in domains:
                uuid = dom.UUIDString()
                listed.append(uuid)
                # PAUSED/MIGRATION is an incoming migration only if the domain's job says so: a
                # domain restored paused from a save image shows the same pair (see ownership).
                state, reason, job = listed_state(dom)
                active = dom.ID() != -1  # carried by the listing reply, like the snapshot's
                if self.ownership.on_listed(uuid, state_name(state), reason_name(state, reason), active, job=job):
                    owned.append(uuid)
        except ConnectionLost:
            self._resync_requested.set()
            return
        except Exception as exc:
            log.warning("resync listing failed: %s; retrying after reconnect", one_line(exc))
            self._session.mark_lost()
            self._resync_requested.set()
            return
        self.ownership.forget_absent(listed, listed_at=self._now())
        self._save_ownership_roles()
        resync_id = uuid_mod.uuid4().hex
        self._tracker = ResyncTracker(resync_id, listed_at, owned)
        log.info("resync %s: %d domains listed, %d owned here", resync_id[:8], len(listed), len(owned))
        self._queue.request_resync(owned, resync_id)
        self._finish_resync_if_complete()

    def _handle_acks(self) -> None:
        for uuid, resync_id in self._queue.drain_acks():
            if self._tracker is not None and self._tracker.resync_id == resync_id:
                self._tracker.acked(uuid)
        self._finish_resync_if_complete()

    def _resync_dropped(self, batch: Batch) -> None:
        if self._tracker is not None and batch.resync_id == self._tracker.resync_id:
            self._tracker.dropped(batch.uuid)

    def _finish_resync_if_complete(self) -> None:
        tracker = self._tracker
        if tracker is None or not tracker.complete:
            return
        self._tracker = None
        self._inventory = HostRecord(
            host=self._cfg.host, agent=self._agent_info(), heartbeat_at=self._now(),
            resync_id=tracker.resync_id, listed_at=tracker.listed_at, domains=tracker.inventory(),
            heartbeat_interval_ms=int(self._cfg.heartbeat_interval * 1000),
        )
        self.stats.resyncs_completed += 1
        now = self._now()
        self.stats.last_resync_seconds = max(0.0, (now - tracker.listed_at) / 1e6)
        self.stats.last_resync_completed_at = now / 1e6
        self.stats.owned_domains = len(self._inventory.domains)
        log.info("resync %s complete: %d domains in the inventory", tracker.resync_id[:8],
                 len(self._inventory.domains))
        self._next_heartbeat = time.monotonic() + self._cfg.heartbeat_interval
        self._publish_host(HostStatus.UP)

    def _heartbeat(self, status: HostStatus) -> None:
        """Publish the HostRecord when due, and at once when ``status`` differs from the last one sent."""
        now = time.monotonic()
        changed = status is not self._announced_status
        if not changed and now < self._next_heartbeat:
            return
        if self._publish_host(status) or not changed:
            self._next_heartbeat = now + self._cfg.heartbeat_interval
        else:
            self._next_heartbeat = now + min(0.2, self._cfg.heartbeat_interval)  # the change waits for the ack

    def _publish_host(self, status: HostStatus) -> bool:
        """Produce the HostRecord with ``status``; False if held back behind the one in flight."""
        # One heartbeat in flight at most: during a Kafka outage they must not pile up in the
        # producer's queue (memory stays bounded by the number of domains, not the outage's length).
        # A new inventory and STOPPING are not held back.
        base = self._inventory or HostRecord(
            host=self._cfg.host, agent=self._agent_info(), heartbeat_at=0,
            heartbeat_interval_ms=int(self._cfg.heartbeat_interval * 1000),
        )
        if (self._host_in_flight.is_set() and status is not HostStatus.STOPPING
                and base.resync_id == self._published_resync_id):
            return False
        record = replace(base, agent=self._agent_info(), heartbeat_at=self._now(), status=status)
        msg = Message(self._cfg.hosts_topic, self._cfg.host.encode(), self._codec.encode_host(record),
                      cloud_events.host_headers(record))
        self._host_in_flight.set()
        self._published_resync_id = base.resync_id
        self._announced_status = status
        self._publisher.publish([msg], self._host_in_flight.clear)
        return True

    def _save_ownership_roles(self) -> None:
        if self.ownership.generation != self._roles_generation:
            roles = self.ownership.remembered()
            self._store.save_ownership_roles(roles)
            self._roles_generation = self.ownership.generation
            self._count_roles(roles)

    def _count_roles(self, roles: dict[str, str]) -> None:
        values = list(roles.values())
        self.stats.handed_off_domains = values.count(Role.HANDED_OFF.value)
        self.stats.incoming_domains = values.count(Role.INCOMING.value)




def _implies_gone(events: tuple[DomainEvent, ...]) -> bool:
    for event in reversed(events):
        if event.id == "LIFECYCLE":
            return event.type in _GONE_AFTER
    return False
