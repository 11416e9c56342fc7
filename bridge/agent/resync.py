"""The resync part of the pipeline: the listing, its inventory, and the HostRecord with its heartbeat.

Debezium calls this the snapshot; here *snapshot* is one domain's state, so the full relisting is the
*resync*. A resync lists every domain, lets the ownership rules learn from each listed state, queues a
``RESYNC`` record for every domain owned here (:mod:`bridge.agent.streaming` publishes them like any
other batch), and, once every one of them is acknowledged, publishes the HostRecord whose inventory
lists them with a ``listed_at`` taken before the listing (:class:`bridge.core.inventory.ResyncTracker`).

The HostRecord carries the latest completed inventory and the host's status: ``UP``,
``LIBVIRT_UNREACHABLE`` while libvirt is away, ``STOPPING`` at the end of a drain. Every heartbeat
interval the host heartbeats: on its own topic, a HostRecord without the inventory, so the hosts topic
gets a record only for a new inventory, a status change, or a refresh once per resync interval (which
its ``heartbeat_interval_ms`` says, for readers of the hosts topic alone); with no heartbeats topic,
each heartbeat is the whole HostRecord again. At most one of each is in flight, so a Kafka outage does
not pile them up.

Runs on the ``pipeline`` thread (see :class:`bridge.agent.pipeline.Pipeline`); the one thing another
thread touches is the in-flight flags, Events the delivery thread clears on their acks.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid as uuid_mod
from collections.abc import Callable
from dataclasses import replace
from typing import Any, Protocol

from bridge.agent.libvirt_names import reason_name, state_name
from bridge.agent.libvirt_session import ConnectionLost, one_line
from bridge.agent.listing import list_domains
from bridge.agent.pipeline_config import PipelineConfig, PipelineStats, RecordSink, SnapshotSource
from bridge.agent.publisher import Message
from bridge.agent.state_store import StateStore
from bridge.agent.work_queue import WorkQueue
from bridge.core.coalescer import Batch
from bridge.core.inventory import ResyncTracker
from bridge.core.ownership import Ownership
from bridge.core.version_clock import Clock, VersionClock
from bridge.records import AgentInfo, HostRecord, HostStatus
from bridge.serde import RecordCodec, cloud_events

log = logging.getLogger(__name__)


class Lister(Protocol):
    """What a listing uses of a libvirt connection (``libvirt.virConnect``)."""

    def listAllDomains(self, flags: int = 0) -> list[Any]:
        """Every domain (or, with the TRANSIENT flag, the transient ones): ``UUIDString()``, ``ID()``,
        ``state()`` and, where the state needs it (``PAUSED/MIGRATION``, ``PAUSED/STARTING_UP``),
        ``jobStats()`` (see :mod:`bridge.agent.listing`)."""

    def getAllDomainStats(self, stats: int = 0, flags: int = 0) -> list[tuple[Any, dict[str, Any]]]:
        """Every domain with its ``state.state`` and ``state.reason``, in one round-trip."""


class Session(Protocol):
    """What the resync uses of the libvirt edge (:class:`bridge.agent.libvirt_session.LibvirtSession`)."""

    def connection(self) -> Lister:
        """The live connection; raises ConnectionLost while there is none."""

    def mark_lost(self) -> None:
        """Report a connection found dead by a failing call."""


class Resync:
    """Lists, tracks the inventory, publishes the HostRecord. Owned by the pipeline."""

    def __init__(self, config: PipelineConfig, session: Session, reader: SnapshotSource, queue: WorkQueue,
                 store: StateStore, publisher: RecordSink, codec: RecordCodec, clock: VersionClock,
                 ownership: Ownership, stats: PipelineStats, agent_info: Callable[[], AgentInfo], now: Clock,
                 save_roles: Callable[[], None]) -> None:
        self._cfg = config
        self._session = session
        self._reader = reader
        self._queue = queue
        self._store = store
        self._publisher = publisher
        self._codec = codec
        self._clock = clock
        self._ownership = ownership
        self._stats = stats
        self._agent_info = agent_info
        self._now = now
        self._save_roles = save_roles
        self._tracker: ResyncTracker | None = None
        self._tracker_signal: str | None = None
        self._tracker_listed_wall = 0.0
        self._inventory: HostRecord | None = None
        self._host_in_flight = threading.Event()  # set here, cleared by the ack on the delivery thread
        self._beat_in_flight = threading.Event()  # the same for the heartbeat
        self._next_host_record = 0.0
        self._published_resync_id: str | None = None
        self._announced: HostStatus | None = None
        self.next_heartbeat = 0.0
        """Monotonic time the next heartbeat is due."""

    # -- the listing --------------------------------------------------------------------------------

    def start(self, signal_id: str | None = None) -> bool:
        """List every domain and queue the RESYNC records; False if libvirt failed (retry later).

        ``signal_id``: the resync signal this resync answers; its HostRecord will carry it.
        """
        try:
            conn = self._session.connection()
            # The real clock, as LibvirtSession.connected_at's: status.json compares the two (an agent's
            # version clock may be offset in tests, and only versions need it).
            listed_wall = time.time()
            listed_at = self._clock.tick()
            # Persist listed_at like any version: after a restart, even with the clock stepped back,
            # new records must sort above the inventory a consumer may still apply.
            self._store.raise_floor(listed_at)
            listing = list_domains(conn)
            listed: list[str] = []
            owned: list[str] = []
            for d in listing:
                listed.append(d.uuid)
                # PAUSED/MIGRATION or PAUSED/STARTING_UP is an incoming migration only if the job says
                # so: a domain restored paused, or starting up here, shows the same pair (see ownership).
                state, reason = state_name(d.state), reason_name(d.state, d.reason)
                if self._ownership.on_listed(d.uuid, state, reason, d.active, job=d.job):
                    owned.append(d.uuid)
            self._reader.prime(conn, listing)
        except ConnectionLost:
            return False
        except Exception as exc:
            log.warning("resync listing failed: %s; retrying after reconnect", one_line(exc))
            self._session.mark_lost()
            return False
        self._ownership.forget_absent(listed, listed_at=self._now())
        self._save_roles()
        resync_id = uuid_mod.uuid4().hex
        self._tracker = ResyncTracker(resync_id, listed_at, owned)
        self._tracker_signal = signal_id
        self._tracker_listed_wall = listed_wall
        log.info("resync %s: %d domains listed, %d owned here%s", resync_id[:8], len(listed), len(owned),
                 f" (answering signal {signal_id[:8]})" if signal_id else "")
        self._queue.request_resync(owned, resync_id)
        self._finish_if_complete()
        return True

    # -- tracking the listing's records (called by the streaming part) ------------------------------

    def assigned(self, batch: Batch, version: int) -> None:
        """A RESYNC record of ``batch`` got ``version``."""
        if self._tracker is not None and batch.resync_id == self._tracker.resync_id:
            self._tracker.assigned(batch.uuid, version)

    def dropped(self, batch: Batch) -> None:
        """``batch``'s domain will not be in this resync's inventory (gone, or no longer owned)."""
        if self._tracker is not None and batch.resync_id == self._tracker.resync_id:
            self._tracker.dropped(batch.uuid)

    def handle_acks(self) -> None:
        """Take the acknowledged domains from the queue; publish the inventory once all are."""
        for uuid, resync_id in self._queue.drain_acks():
            if self._tracker is not None and self._tracker.resync_id == resync_id:
                self._tracker.acked(uuid)
        self._finish_if_complete()

    def _finish_if_complete(self) -> None:
        tracker = self._tracker
        if tracker is None or not tracker.complete:
            return
        self._tracker = None
        now = self._now()
        self._inventory = HostRecord(
            host=self._cfg.host, agent=self._agent_info(), heartbeat_at=now,
            resync_id=tracker.resync_id, listed_at=tracker.listed_at, domains=tracker.inventory(),
            signal_id=self._tracker_signal,
        )
        self._stats.resyncs_completed += 1
        self._stats.last_resync_seconds = max(0.0, (now - tracker.listed_at) / 1e6)
        self._stats.last_resync_completed_at = now / 1e6
        self._stats.last_resync_listed_at = self._tracker_listed_wall
        self._stats.owned_domains = len(self._inventory.domains)
        log.info("resync %s complete: %d domains in the inventory", tracker.resync_id[:8],
                 len(self._inventory.domains))
        self.next_heartbeat = time.monotonic() + self._cfg.heartbeat_interval
        self.publish_host(HostStatus.UP)

    # -- the HostRecord -----------------------------------------------------------------------------

    def heartbeat(self, status: HostStatus) -> None:
        """Heartbeat when due; the full HostRecord when its refresh is due, and at once when ``status``
        differs from the last one sent (with heartbeats on the hosts topic, every heartbeat is one)."""
        now = time.monotonic()
        changed = status is not self._announced
        if not changed and now < self.next_heartbeat:
            return
        if changed or self._cfg.heartbeats_topic is None or now >= self._next_host_record:
            sent = self.publish_host(status)
        else:
            sent = self._publish_beat(status, self._now())
        if sent or not changed:
            self.next_heartbeat = now + self._cfg.heartbeat_interval
        else:
            self.next_heartbeat = now + min(0.2, self._cfg.heartbeat_interval)  # the change waits for the ack

    def publish_host(self, status: HostStatus) -> bool:
        """Produce the HostRecord with ``status`` (and a heartbeat saying the same); False if held back
        behind the one in flight."""
        # One of each in flight at most: during a Kafka outage they must not pile up in the
        # producer's queue (memory stays bounded by the number of domains, not the outage's length).
        # A new inventory and STOPPING are not held back.
        base = self._inventory or HostRecord(host=self._cfg.host, agent=self._agent_info(), heartbeat_at=0)
        if (self._host_in_flight.is_set() and status is not HostStatus.STOPPING
                and base.resync_id == self._published_resync_id):
            return False
        at = self._now()
        record = replace(base, agent=self._agent_info(), heartbeat_at=at, status=status,
                         heartbeat_interval_ms=int(self._cfg.host_record_interval * 1000))
        msg = Message(self._cfg.hosts_topic, self._cfg.host.encode(), self._codec.encode_host(record),
                      cloud_events.host_headers(record))
        self._host_in_flight.set()
        self._published_resync_id = base.resync_id
        self._announced = status
        self._next_host_record = time.monotonic() + self._cfg.host_record_interval
        self._publisher.publish([msg], self._host_in_flight.clear)
        self._publish_beat(status, at)
        return True

    def _publish_beat(self, status: HostStatus, at: int) -> bool:
        """Produce a heartbeat (a HostRecord without the inventory) if heartbeats have their own topic."""
        topic = self._cfg.heartbeats_topic
        if topic is None or (self._beat_in_flight.is_set() and status is not HostStatus.STOPPING):
            return False
        resync_id = self._inventory.resync_id if self._inventory is not None else None
        beat = HostRecord(host=self._cfg.host, agent=self._agent_info(), heartbeat_at=at, status=status,
                          resync_id=resync_id, heartbeat_interval_ms=int(self._cfg.heartbeat_interval * 1000))
        msg = Message(topic, self._cfg.host.encode(), self._codec.encode_heartbeat(beat),
                      cloud_events.heartbeat_headers(beat))
        self._beat_in_flight.set()
        self._publisher.publish([msg], self._beat_in_flight.clear)
        return True
