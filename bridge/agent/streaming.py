"""The streaming part of the pipeline: batches of a domain's events become versioned records.

For each batch (at most one record in flight per domain, see :mod:`bridge.core.coalescer`):

1. the ownership rules see every event in arrival order; events for a domain this host does not own
   are counted and logged, never published;
2. the domain's snapshot is read *after* those events, on the ``snapshot-reader`` threads;
   ``Domain not found`` is retried briefly unless the events say the domain is gone, and the retry
   stops early when newer events arrive (they join the batch);
3. version, persist and produce: :mod:`bridge.agent.record_writer`.

It is a pipeline, not a sequence of rounds: the batches taken together go to the readers at once,
in groups (:mod:`bridge.core.read_groups`); each finished group wakes the pipeline thread, which
versions the reads finished by then together, covers them by the persisted version bound (an fsync
only when the lease needs renewing) and produces them. A ``Domain not found`` retry waits parked,
off every thread, until its backoff is due.

Owned by the pipeline; runs on its thread, but for the snapshot reads.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

import libvirt

from bridge.agent.libvirt_session import ConnectionLost, one_line
from bridge.agent.pipeline_config import PipelineConfig, PipelineObserver, PipelineStats, RecordSink, SnapshotSource
from bridge.agent.reassert import KeyPositions
from bridge.agent.record_writer import RecordWriter
from bridge.agent.resync import Resync
from bridge.agent.snapshot import DomainSnapshot, SnapshotRequest, implies_gone
from bridge.agent.state_store import StateStore
from bridge.agent.work_queue import WorkQueue
from bridge.core.coalescer import Batch
from bridge.core.ownership import Ownership, Verdict, claim_contradicted
from bridge.core.read_groups import GROUP_MAX, read_groups
from bridge.core.version_clock import Clock, VersionClock
from bridge.records import AgentInfo, DomainEvent
from bridge.serde import RecordCodec

log = logging.getLogger(__name__)

# Backoff of the "Domain not found" retry: 5 ms, doubling, at most 100 ms between reads.
_RETRY_FIRST = 0.005
_RETRY_MAX = 0.1
_SWITCH_INTERVAL = 0.0005


@dataclass
class _Read:
    """A batch in the read stage: being read, or parked until its ``Domain not found`` retry is due."""

    batch: Batch
    retry_until: float | None = None
    """Monotonic deadline of the not-found retry (set at the first ``Domain not found``)."""
    attempts: int = 0
    result: DomainSnapshot | Exception | None = field(default=None, repr=False)
    ends_group: bool = False
    """The last read of the group it was read in: its return frees a group's place."""


class Streamer:
    """Turns batches into records; owns the ``snapshot-reader`` pool (closed by :meth:`close`)."""

    def __init__(self, config: PipelineConfig, queue: WorkQueue, reader: SnapshotSource, store: StateStore,
                 publisher: RecordSink, codec: RecordCodec, clock: VersionClock, ownership: Ownership,
                 resync: Resync, stats: PipelineStats, agent_info: Callable[[], AgentInfo], now: Clock,
                 save_roles: Callable[[], None], sleep: Callable[[float], object],
                 observer: PipelineObserver | None = None) -> None:
        self._cfg = config
        self._queue = queue
        self._reader = reader
        self._ownership = ownership
        self._resync = resync
        self._stats = stats
        self._save_roles = save_roles
        self._sleep = sleep
        self._observer = observer
        self._writer = RecordWriter(config, queue, reader, store, publisher, codec, clock, resync, stats,
                                    agent_info, now, save_roles, observer)
        self._read_pool = ThreadPoolExecutor(config.snapshot_readers, thread_name_prefix="snapshot-reader")
        # Each libvirt call releases the GIL and must take it back when its reply is in; behind a thread
        # running Python that waits up to the switch interval (5 ms by default), per round-trip. The
        # profiles showed the readers' calls several times slower in the agent than alone, so hand the
        # GIL over sooner: a group is one such wait per domain and one more.
        if sys.getswitchinterval() > _SWITCH_INTERVAL:
            sys.setswitchinterval(_SWITCH_INTERVAL)
        self._readers = config.snapshot_readers
        self._groups = 0  # groups handed to the pool and not yet taken back
        # A group being read and one waiting per reader: no reader waits for work, and the work queue
        # can still merge new events. Counted in groups, not reads: a limit in reads let each
        # finished read take one batch, and a burst went on in groups of one (2 round-trips a
        # domain instead of 1 + 1/16, and a queue of hundreds of reads in the pool).
        self._max_groups = 2 * config.snapshot_readers
        self._parked: list[tuple[float, int, _Read]] = []  # (due, tie-break, read): not-found retries
        self._seq = itertools.count()

    @property
    def positions(self) -> KeyPositions:
        """Where each domain's latest acknowledged record landed."""
        return self._writer.positions

    def outrank(self, uuid: str) -> None:
        """Version ``uuid``'s next record as a claim: it must sort above another host's last one."""
        self._writer.outrank.add(uuid)

    def close(self) -> None:
        """Stop the snapshot readers (after the pipeline thread has stopped)."""
        self._read_pool.shutdown(wait=True)

    # -- the stages ----------------------------------------------------------------------------------

    def capacity(self) -> int:
        """How many more batches to take now: a full group for each free place. Reads beyond that
        would only wait in the pool's queue, while the work queue can still merge their domains' new
        events."""
        return max(0, self._max_groups - self._groups) * GROUP_MAX

    def busy(self) -> bool:
        """Some batch is being read or waits for its not-found retry."""
        return bool(self._groups or self._parked)

    def next_due(self) -> float | None:
        """Monotonic time of the earliest parked retry, or None."""
        return self._parked[0][0] if self._parked else None

    def process(self, batches: list[Batch]) -> None:
        """Hand newly taken batches to the readers (after the ownership rules saw their events, in order),
        spread over them in groups: a reader reads a group's domains together. A listing's read that
        will ask for a migration job (seconds, on a migration's source) is a group of its own, so no
        other domain's record waits for it."""
        reads = [_Read(owned) for owned in map(self._owned_events, batches) if owned is not None]
        slow = {id(r) for r in reads if not r.batch.events and self._reader.reads_job(r.batch.uuid)}
        fast = [r for r in reads if id(r) not in slow]
        spread = max(1, min(self._readers, self._max_groups - self._groups))
        for group in [*read_groups(fast, spread, GROUP_MAX), *([r] for r in reads if id(r) in slow)]:
            self._start(group)

    def advance(self, results: list[_Read] | None = None) -> None:
        """Take finished reads (and due retries) through version, persistence and produce."""
        ready: list[tuple[Batch, DomainSnapshot | None]] = []
        for read in self._queue.results() if results is None else results:
            if read.ends_group:
                self._groups -= 1
            outcome = self._finish(read)
            if outcome is not None:
                ready.append(outcome)
        now = time.monotonic()
        while self._parked and self._parked[0][0] <= now:
            _due, _n, read = heapq.heappop(self._parked)
            outcome = self._retry(read, now)
            if outcome is not None:
                ready.append(outcome)
        self._writer.commit(ready)

    def drain(self) -> None:
        """Finish every read and parked retry: before a resync's listing, so the ownership timing rule
        (see :mod:`bridge.agent.pipeline`) holds as it did when a round ran to its end. Cut short when
        the pipeline stops."""
        while self.busy():
            if self._groups:
                due = self.next_due()
                self.advance(self._queue.wait_results(0.1 if due is None else max(0.0, due - time.monotonic())))
            elif self._sleep(max(0.0, (self.next_due() or 0.0) - time.monotonic())):
                return
            else:
                self.advance([])

    def _start(self, group: list[_Read]) -> None:
        for read in group:
            read.ends_group = False
        group[-1].ends_group = True
        self._groups += 1
        self._read_pool.submit(self._read_task, group)

    def _read_task(self, group: list[_Read]) -> None:
        # A listing's record (no events) reads the job too, to check the listing's ownership decision
        # (an incoming domain listed while its migration was prepared reads PAUSED/MIGRATION now).
        requests = [SnapshotRequest(read.batch.uuid, for_listing=not read.batch.events,
                                    likely_gone=implies_gone(read.batch.events)) for read in group]
        started = time.monotonic()
        try:
            results: list[DomainSnapshot | Exception | None] = list(self._reader.read_many(requests))
        except Exception as exc:  # ConnectionLost, or a bug: handed back, so no batch is stuck in flight
            results = [exc] * len(group)
        if self._observer is not None:
            seconds = time.monotonic() - started  # each read of the group took that long to come back
            for _read in group:
                self._observer.snapshot_read(seconds)
        for read, result in zip(group, results, strict=True):
            read.result = result
        self._queue.post_results(group)

    def _finish(self, read: _Read) -> tuple[Batch, DomainSnapshot | None] | None:
        """A read came back: the batch is ready, requeued, parked for a retry, or done."""
        batch, result = read.batch, read.result
        if isinstance(result, ConnectionLost):
            # Give the work back (ownership already applied to it) and wait for the reconnect.
            log.warning("libvirt connection lost; %s waits for the reconnect", batch.uuid)
            self._queue.requeue(batch)
            return None
        if isinstance(result, libvirt.libvirtError):
            log.warning("reading %s failed: %s; will retry", batch.uuid, one_line(result))
            self._queue.requeue(batch)
            return None
        if isinstance(result, Exception):
            log.error("reading %s failed unexpectedly; will retry", batch.uuid, exc_info=result)
            self._queue.requeue(batch)
            return None
        if result is None and not implies_gone(batch.events):
            # The seed's point 2: a fresh domain may not be readable yet. Retry briefly, parked.
            now = time.monotonic()
            if read.retry_until is None:
                read.retry_until = now + self._cfg.not_found_retry
            return self._retry(read, now, reread=False)
        return self._prepare(batch, result)

    def _retry(self, read: _Read, now: float, *, reread: bool = True) -> tuple[Batch, DomainSnapshot | None] | None:
        """One step of the not-found retry: newer events join the batch (and may say it is gone), else
        read again when due, or give up at the deadline (the domain is reported DELETED)."""
        more = self._queue.take_more(read.batch.uuid)
        if more is not None:
            extra = self._filter_events(more).events
            current = read.batch
            read.batch = replace(current, events=current.events + extra, elided=current.elided + more.elided,
                                 name=more.name or current.name, resync_id=more.resync_id or current.resync_id)
        if implies_gone(read.batch.events) or (read.retry_until is not None and now >= read.retry_until):
            return self._prepare(read.batch, None)
        if reread:
            self._start([read])
        else:
            delay = min(_RETRY_MAX, _RETRY_FIRST * 2 ** read.attempts)
            read.attempts += 1
            heapq.heappush(self._parked, (now + delay, next(self._seq), read))
        return None

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
                    self._writer.claims.add(batch.uuid)
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
            self._drop(batch)
            return None
        if not filtered.events and batch.resync_id is None:
            self._queue.done(batch.uuid)
            return None
        return filtered

    def _drop(self, batch: Batch) -> None:
        """``batch`` gets no record: out of its resync's inventory, and its domain free for the next."""
        self._resync.dropped(batch)
        self._queue.done(batch.uuid)

    # -- the snapshot -------------------------------------------------------------------------------

    def _prepare(self, batch: Batch, snap: DomainSnapshot | None) -> tuple[Batch, DomainSnapshot | None] | None:
        """The read (and any retry) of an owned batch is complete; None when nothing is to be published."""
        if snap is None and not batch.events:
            # Listed by a resync, gone before its record: its own events will report the delete.
            self._drop(batch)
            return None
        if snap is not None and snap.job is not None and not batch.events:
            self._ownership.on_listed(batch.uuid, snap.state, snap.reason, snap.active, job=snap.job)
            self._save_roles()
        if not self._ownership.owns(batch.uuid):
            self._drop(batch)
            return None
        # The XML (active) and the state are two reads: a QEMU that dies between them reads active, SHUTOFF.
        live = snap is not None and snap.active and snap.state not in ("SHUTOFF", "CRASHED")
        provisional = batch.uuid in self._writer.claims or self._ownership.provisional(batch.uuid)
        if provisional and snap is not None and claim_contradicted(batch.events, live):
            # The claim said "running here", the read after it says not: the migration failed in
            # between, and the source takes the domain back. This host's word must not outrank it.
            self._writer.claims.discard(batch.uuid)
            self._ownership.revoke_claim(batch.uuid)
            self._save_roles()
            self._stats.events_not_owned += len(batch.events)
            log.warning("claim of %s revoked: read %s/%s after %s; %d event(s) not published", batch.uuid,
                        snap.state, snap.reason, ", ".join(e.label() for e in batch.events), len(batch.events))
            self._drop(batch)
            return None
        return batch, snap
