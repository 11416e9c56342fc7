"""The pipeline: one ``pipeline`` thread between the libvirt edge and the Kafka edge.

Split along Debezium's lines, and still one thread:

- this module is the coordinator: the loop, its timers and the drain at shutdown. It owns the version
  clock, the ownership state and the state store, which both parts below use;
- :mod:`bridge.agent.streaming` turns batches of events into versioned records;
- :mod:`bridge.agent.resync` lists every domain, tracks the inventory, publishes the HostRecord and
  its heartbeat.

The ownership timing rule is kept here, by the order of one step: a resync's listing
(``Ownership.on_listed`` for every domain) runs to completion before the step takes any batch, so the
state the listing read is at least as new as every event the rules have seen, and every event taken
after it was received after that state. Both run on this thread only; nothing else touches the
clock, the ownership state or the store, so none of them is locked.

At shutdown the drain publishes what was received, then this thread publishes ``STOPPING`` as its
last step.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol

from bridge.agent.pipeline_config import PipelineConfig, PipelineObserver, PipelineStats, RecordSink, SnapshotSource
from bridge.agent.reassert import Reasserter, plausible_ahead_us
from bridge.agent.resync import Resync, Session
from bridge.agent.state_store import StateStore, wait_out_lease
from bridge.agent.streaming import Streamer
from bridge.agent.work_queue import WorkQueue
from bridge.core.ownership import Ownership, Role
from bridge.core.version_clock import Clock, VersionClock
from bridge.records import AgentInfo, HostStatus
from bridge.serde import RecordCodec

__all__ = ["Pipeline", "PipelineConfig", "PipelineObserver", "PipelineStats"]

log = logging.getLogger(__name__)


class PipelineSession(Session, Protocol):
    """What the pipeline uses of the libvirt edge (:class:`bridge.agent.libvirt_session.LibvirtSession`)."""

    @property
    def connected(self) -> bool:
        """False while libvirt is away (the resync waits, the HostRecord says LIBVIRT_UNREACHABLE)."""


class Pipeline:
    """Owns the ``pipeline`` thread, the version clock, the ownership state and the state store's use."""

    def __init__(
        self,
        config: PipelineConfig,
        queue: WorkQueue,
        session: PipelineSession,
        reader: SnapshotSource,
        store: StateStore,
        publisher: RecordSink,
        codec: RecordCodec,
        agent_info: Callable[[], AgentInfo],
        now: Clock,
        observer: PipelineObserver | None = None,
    ) -> None:
        self._cfg = config
        self._queue = queue
        self._session = session
        self._store = store
        floor = store.max_version()
        wait_out_lease(floor, now)  # after a crash, the bound may be up to a lease ahead of the clock
        self.clock = VersionClock(now, floor=floor)
        self.ownership = Ownership(store.ownership_roles())
        self.stats = PipelineStats()
        self._roles_generation = self.ownership.generation
        self._count_roles(self.ownership.remembered())
        self._stop = threading.Event()
        self._resync_requested = threading.Event()
        self._drain_deadline: float | None = None  # set by drain_and_stop on the caller's thread
        self._signal_lock = threading.Lock()  # guards _signal_id, set by the control-signals thread
        self._signal_id: str | None = None
        self._thread: threading.Thread | None = None
        self._next_resync = 0.0
        self._resync_deferred = False
        self._kafka_problem = publisher.kafka_problem
        self._resync = Resync(config, session, reader, queue, store, publisher, codec, self.clock, self.ownership,
                              self.stats, agent_info, now, self._save_ownership_roles)
        self._streamer = Streamer(config, queue, reader, store, publisher, codec, self.clock, self.ownership,
                                  self._resync, self.stats, agent_info, now, self._save_ownership_roles,
                                  self._stop.wait, observer)
        self.reasserter = Reasserter(config.host, config.control_topic, queue, self.ownership, publisher, now,
                                     self.clock, self._streamer.outrank, self._streamer.positions,
                                     plausible_ahead_us(config.max_clock_skew))

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

    def request_resync(self, signal_id: str | None = None) -> None:
        """Resync soon (after a reconnect, or for a resync signal); safe from any thread."""
        if signal_id is not None:
            with self._signal_lock:
                self._signal_id = signal_id  # several before the resync starts: one resync answers all
        self._resync_requested.set()
        self._queue.wake()

    def drain_and_stop(self, deadline: float) -> bool:
        """Publish everything queued (by monotonic ``deadline``) and ``STOPPING``, then stop.

        True if nothing received was left unpublished.
        """
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
        self._streamer.close()

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
            self._resync.publish_host(HostStatus.STOPPING)  # the drain's last step, on this thread
            self._stop.set()
            return
        self._resync.handle_acks()
        if not self._session.connected:
            # Unreachable is not gone: keep heartbeating the last inventory, flagged, so consumers keep
            # this host's domains (flagged unknown) rather than read the silence as an answer.
            if not draining:
                self._resync.heartbeat(HostStatus.LIBVIRT_UNREACHABLE)
            self._stop.wait(0.1)
            return
        now = time.monotonic()
        problem = None if self._resync_requested.is_set() or now < self._next_resync else self._kafka_problem()
        if problem is not None:
            # A scheduled resync with Kafka away would only fill the producer's queue with a record per
            # domain, each superseded before it could be sent: it runs as soon as Kafka answers.
            if not self._resync_deferred:
                log.info("scheduled resync deferred until Kafka answers (%s)", problem)
                self.stats.resyncs_deferred += 1
            self._resync_deferred = True
            self._next_resync = now + min(1.0, self._cfg.resync_interval)
        elif not draining and (self._resync_requested.is_set() or now >= self._next_resync):
            self._resync_deferred = False
            # The ownership timing rule (module doc): the whole listing before any batch is taken.
            self._resync_requested.clear()
            self._next_resync = now + self._cfg.resync_interval
            with self._signal_lock:
                signal_id, self._signal_id = self._signal_id, None
            self._streamer.drain()  # reads taken before the listing finish before it, as the rule wants
            if not self._resync.start(signal_id):
                self.request_resync(signal_id)  # libvirt went away: again after the reconnect
        if not draining:
            self._resync.heartbeat(HostStatus.UP)
        wait = max(0.0, min(self._next_resync, self._resync.next_heartbeat) - time.monotonic())
        due = self._streamer.next_due()
        if due is not None:
            wait = min(wait, max(0.0, due - time.monotonic()))
        # Wakes for a ready domain (while a reader is free), a finished read, an ack or a timer.
        batches = self._queue.take(min(self._cfg.batch_size, self._streamer.capacity()), timeout=min(wait, 0.5))
        self._streamer.process(batches)  # their reads start at once ...
        self.reasserter.observe()  # (versions of re-assertion requests read by now: the records below sort above them)
        self._streamer.advance()  # ... while the reads finished by now are versioned, persisted, produced
        self.reasserter.step()  # hand-offs seen by now (listing or events): ask the new owner for the last word

    # -- ownership state ------------------------------------------------------------------------------

    def _save_ownership_roles(self) -> None:
        """Persist the remembered roles when they changed (before the records that depend on them)."""
        if self.ownership.generation != self._roles_generation:
            roles = self.ownership.remembered()
            self._store.save_ownership_roles(roles)
            self._roles_generation = self.ownership.generation
            self._count_roles(roles)

    def _count_roles(self, roles: dict[str, str]) -> None:
        values = list(roles.values())
        self.stats.handed_off_domains = values.count(Role.HANDED_OFF.value)
        self.stats.incoming_domains = values.count(Role.INCOMING.value)
