"""The agent: wires the libvirt edge, the pipeline and the Kafka edge, and owns their lifecycles.

Start-up problems (bad settings, unreachable Kafka or libvirt, an unusable state directory) raise
:class:`~bridge.errors.UserError` before anything runs. Once running, outages are retried forever
with backoff and logged. :meth:`Agent.stop` is the clean shutdown SIGTERM triggers: stop taking
events, publish what was received, announce ``STOPPING``, flush, all within a deadline.
"""

from __future__ import annotations

import fcntl
import logging
import time
import uuid as uuid_mod
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from bridge import __version__
from bridge.agent.event_capture import EventCapture
from bridge.agent.event_loop import LibvirtEventLoop
from bridge.agent.http_server import MetricsServer
from bridge.agent.libvirt_session import LibvirtSession
from bridge.agent.metrics import AgentMetrics
from bridge.agent.pipeline import Pipeline, PipelineConfig
from bridge.agent.publisher import Publisher
from bridge.agent.signal_listener import SignalListener
from bridge.agent.snapshot import SnapshotReader
from bridge.agent.state_store import StateStore
from bridge.agent.status import AgentStatus, Threaded, threads_health, write_status_file
from bridge.agent.topics import DEFAULT_COMPACTION_LAG, prepare_topics
from bridge.agent.work_queue import WorkQueue
from bridge.core.version_clock import Clock, wall_clock_micros
from bridge.errors import UserError
from bridge.kafka_settings import KafkaSettings
from bridge.records import AgentInfo
from bridge.signals import DEFAULT_CONTROL_TOPIC, ReassertSignal, Signal

log = logging.getLogger(__name__)

_SIGNALS_READY_TIMEOUT = 10.0


@dataclass(frozen=True)
class AgentSettings:
    """Everything the agent needs; see ``libvirt-kafka-bridge run --help``."""

    host_id: str
    state_dir: Path
    kafka: KafkaSettings = field(default_factory=KafkaSettings)
    libvirt_uri: str = "qemu:///system"
    read_only: bool = True
    resync_interval: float = 300.0
    heartbeat_interval: float = 10.0
    compaction_lag: float = DEFAULT_COMPACTION_LAG
    partitions: int = 12
    replication_factor: int | None = None
    """None: min(3, number of brokers)."""
    shutdown_timeout: float = 10.0
    max_events_per_domain: int = 1000
    kafka_connect_timeout: float = 10.0
    metrics_address: tuple[str, int] | None = None
    """Serve /metrics, /healthz and /readyz here (host, port); None: no HTTP endpoint."""
    max_clock_skew: float = 0.05
    """How far apart host clocks may be (seconds); see the version rule in the README."""
    control_topic: str | None = DEFAULT_CONTROL_TOPIC
    """Where resync signals arrive (:mod:`bridge.signals`); None: not listening."""


class Agent:
    """The per-host agent. ``start()``, then ``stop()`` (or use as a context manager)."""

    def __init__(self, settings: AgentSettings, now: Clock = wall_clock_micros) -> None:
        self.settings = settings
        self._now = now
        self.instance_id = uuid_mod.uuid4().hex
        self._lock_file: IO[str] | None = None
        self._store: StateStore | None = None
        self._publisher: Publisher | None = None
        self._loop: LibvirtEventLoop | None = None
        self._session: LibvirtSession | None = None
        self._pipeline: Pipeline | None = None
        self._queue = WorkQueue(now, settings.max_events_per_domain)
        self._agent_info: AgentInfo | None = None
        self.final_status: AgentStatus | None = None
        self.metrics = AgentMetrics(self.status, self._info_labels, now)
        """This agent's Prometheus registry (``metrics.registry``), served on ``--metrics-address``."""
        self._http: MetricsServer | None = None
        self._signals: SignalListener | None = None

    def start(self) -> None:
        """Connect everything and start publishing; UserError for anything the user must fix."""
        s = self.settings
        try:
            self._lock_state_dir()
            self._start_http()
            self._store = StateStore(s.state_dir)
            prepare_topics(s.kafka, partitions=s.partitions, replication_factor=s.replication_factor,
                           control_topic=s.control_topic, timeout=s.kafka_connect_timeout,
                           compaction_lag=s.compaction_lag)
            codec = s.kafka.codec()
            self._publisher = Publisher(s.kafka.client_config())
            self._publisher.start()
            self._loop = LibvirtEventLoop()
            self._loop.start()
            capture = EventCapture(self._queue.add_event, self._now)
            self._session = LibvirtSession(s.libvirt_uri, capture, self._on_reconnected, read_only=s.read_only)
            reader = SnapshotReader(self._session, self._now)
            capture.hand_handles_to(reader.offer)
            self._session.start()
            self._agent_info = AgentInfo(self.instance_id, __version__, self._session.libvirt_version())
            self._pipeline = Pipeline(
                PipelineConfig(s.host_id, s.kafka.domains_topic, s.kafka.hosts_topic, s.resync_interval,
                               s.heartbeat_interval, max_clock_skew=s.max_clock_skew,
                               control_topic=s.control_topic or None,
                               heartbeats_topic=s.kafka.heartbeats or None),
                self._queue, self._session, reader, self._store,
                self._publisher, codec, self._current_agent_info, self._now, observer=self.metrics,
            )
            if s.control_topic:
                self._signals = SignalListener(s.kafka.client_config(), s.control_topic, s.host_id,
                                               self._on_signal)
                self._signals.start()
                # A request written before the listener reads is answered by the start-up resync only
                # if that resync comes after it.
                if not self._signals.wait_assigned(_SIGNALS_READY_TIMEOUT):
                    log.warning("control topic %s not readable after %.0fs; starting anyway",
                                s.control_topic, _SIGNALS_READY_TIMEOUT)
            self._pipeline.start()
        except BaseException:
            self._teardown()
            raise
        log.info("agent %s publishing host %s from %s to %s (topics %s); %d event types registered",
                 self.instance_id[:8], s.host_id, s.libvirt_uri, s.kafka.bootstrap_servers,
                 ", ".join(s.kafka.topics()), len(capture.registered))

    def stop(self) -> bool:
        """Clean shutdown within ``shutdown_timeout``; True when nothing received was left unpublished."""
        deadline = time.monotonic() + self.settings.shutdown_timeout
        clean = True
        if self._session is not None:
            self._session.stop_events()
        if self._pipeline is not None:
            clean = self._pipeline.drain_and_stop(deadline)  # its last step publishes STOPPING
        if self._publisher is not None:
            left = self._publisher.flush(max(0.5, deadline - time.monotonic()))
            clean = clean and left == 0
            if left:
                log.error("shutdown deadline passed with %d record(s) unacknowledged by Kafka; "
                          "the next start's resync republishes current state", left)
        self.final_status = self.status()
        self._teardown()
        return clean

    def __enter__(self) -> Agent:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def status(self) -> AgentStatus:
        pending, in_flight, oldest, elided = self._queue.stats()
        pipeline = self._pipeline
        p = pipeline.stats if pipeline else None
        pub = self._publisher
        return AgentStatus(
            records=p.records if p else 0,
            events_received=self._queue.events_received,
            events_published=p.events_published if p else 0,
            events_not_owned=p.events_not_owned if p else 0,
            events_elided=elided,
            deleted=p.deleted if p else 0,
            resyncs_completed=p.resyncs_completed if p else 0, resyncs_deferred=p.resyncs_deferred if p else 0,
            domains_pending=pending,
            domains_in_flight=in_flight,
            oldest_waiting_s=0.0 if oldest is None else max(0.0, (self._now() - oldest) / 1e6),
            libvirt_connected=bool(self._session and self._session.connected),
            libvirt_reconnects=self._session.reconnects if self._session else 0,
            libvirt_connected_at=self._session.connected_at if self._session else None,
            resync_last_listed_at=p.last_resync_listed_at if p else None,
            kafka_redeliveries=pub.redelivered if pub else 0,
            kafka_last_error=pub.last_error if pub else None,
            events_received_by_id=self._queue.events_received_by_id(),
            events_published_by_id=dict(p.events_published_by_id) if p else {},
            events_coalesced=p.events_coalesced if p else 0,
            records_by_kind=dict(p.records_by_kind) if p else {},
            resync_last_seconds=p.last_resync_seconds if p else None,
            resync_last_completed_at=p.last_resync_completed_at if p else None,
            kafka_delivery_errors=pub.delivery_errors if pub else 0,
            kafka_client_errors=pub.client_errors if pub else 0,
            producer_queue=pub.queue_depth() if pub else 0,
            last_version=pipeline.clock.last if pipeline else 0,
            owned_domains=p.owned_domains if p else 0,
            handed_off_domains=p.handed_off_domains if p else 0, incoming_domains=p.incoming_domains if p else 0,
        )

    def health(self) -> tuple[bool, str]:
        """``/healthz``: (True, "ok") while every thread of the agent is alive, else what is not."""
        parts: dict[str, Threaded | None] = {
            "pipeline": self._pipeline, "Kafka delivery": self._publisher, "libvirt reconnect": self._session,
            "libvirt event loop": self._loop,
        }
        if self.settings.control_topic:
            parts["control signals"] = self._signals
        return threads_health(parts)

    def readiness(self) -> tuple[bool, str]:
        """``/readyz``: ready when libvirt is connected, Kafka reachable and the first resync published."""
        session, publisher, pipeline = self._session, self._publisher, self._pipeline
        if session is None or publisher is None or pipeline is None:
            return False, "not running (starting or stopped)"
        if not session.connected:
            return False, f"libvirt not connected ({session.uri}); reconnecting"
        problem = publisher.kafka_problem()
        if problem is not None:
            return False, problem
        if pipeline.stats.resyncs_completed == 0:
            return False, "first resync not yet published"
        return True, "ready"

    def write_status(self) -> AgentStatus:
        """Log a progress line and write ``status.json`` in the state directory (atomically)."""
        st = self.status()
        log.info("status: %d records (%d events) published, %d domains pending, %d in flight, "
                 "oldest waiting %.1fs%s", st.records, st.events_published, st.domains_pending,
                 st.domains_in_flight, st.oldest_waiting_s,
                 f", Kafka: {st.kafka_last_error}" if st.kafka_last_error else "")
        write_status_file(self.settings.state_dir / "status.json", st, self.instance_id, self._now())
        return st

    def _info_labels(self) -> dict[str, str]:
        info = self._agent_info
        return {"version": __version__, "libvirt_version": info.libvirt_version if info else "",
                "host": self.settings.host_id, "instance": self.instance_id}

    def _start_http(self) -> None:
        address = self.settings.metrics_address
        if address is None:
            return
        server = MetricsServer(address, self.metrics.registry, self.health, self.readiness)
        try:
            server.start()
        except OSError as exc:
            host, port = address
            raise UserError(f"--metrics-address {host}:{port} cannot be served: {exc.strerror or exc}") from None
        self._http = server

    def _current_agent_info(self) -> AgentInfo:
        assert self._agent_info is not None
        return self._agent_info

    def _on_reconnected(self) -> None:
        self._request_resync(None)

    def _request_resync(self, signal_id: str | None) -> None:
        if self._pipeline is not None:
            self._pipeline.request_resync(signal_id)

    def _on_signal(self, signal: Signal) -> None:
        if isinstance(signal, ReassertSignal):
            if self._pipeline is not None:
                self._pipeline.reasserter.requested(signal)
        else:
            self._request_resync(signal.id)

    def _lock_state_dir(self) -> None:
        d = self.settings.state_dir
        try:
            d.mkdir(parents=True, exist_ok=True)
            f = (d / "agent.lock").open("w")
        except OSError as exc:
            raise UserError(f"--state-dir {d} is not usable: {exc.strerror}") from None
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.close()
            raise UserError(f"--state-dir {d} is in use by another running agent") from None
        self._lock_file = f

    def _teardown(self) -> None:
        for stop in (
            self._http.stop if self._http else None,
            self._signals.stop if self._signals else None,
            self._pipeline.stop if self._pipeline else None,
            self._session.stop if self._session else None,
            self._loop.stop if self._loop else None,
            self._publisher.stop if self._publisher else None,
            self._store.close if self._store else None,
        ):
            if stop is not None:
                try:
                    stop()
                except Exception:
                    log.exception("error while stopping")
        self._pipeline = self._session = self._loop = self._publisher = self._http = self._signals = None
        self._store = None
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None
