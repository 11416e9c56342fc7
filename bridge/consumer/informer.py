"""The informer: a live view of the fleet's domains, kept in sync by a reflector thread.

It wires three parts together and owns the threads that serve them:

- the :class:`~bridge.consumer.view.View` (store, position, recent changes), to which the reflector
  thread applies each poll batch atomically, so a :meth:`Informer.list` snapshot always matches the
  position it reports;
- the :class:`~bridge.consumer.reflector.Reflector`, run on the ``informer-reflector`` thread;
- the :class:`~bridge.consumer.delivery.Fanout`, one queue per reader and one thread per handler
  registration.

An informer runs once: ``NEW`` → ``RUNNING`` → ``STOPPED`` (:class:`Lifecycle`). ``_lock`` guards the
lifecycle state, the reflector reference and the failure.
"""

from __future__ import annotations

import enum
import functools
import logging
import threading
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Self

from confluent_kafka import Consumer

from bridge.consumer.delivery import Fanout, HandlerRegistration, OnAdd, OnDelete, OnUpdate, Watch
from bridge.consumer.position import Position
from bridge.consumer.reflector import ConsumerError, ConsumerFactory, Reflector
from bridge.consumer.snapshot import Snapshot
from bridge.consumer.stats import InformerStats
from bridge.consumer.store import DEFAULT_STALE_AFTER_INTERVALS, Store
from bridge.consumer.view import Clock, View
from bridge.core.version_clock import wall_clock_micros
from bridge.kafka_settings import KafkaSettings
from bridge.records import DomainRecord
from bridge.serde import RecordCodec

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_HISTORY", "HandlerRegistration", "Informer", "InformerStats", "Lifecycle", "Watch"]

# Enough to bridge the gap between a list() and the watch_from() that follows it; each change holds
# records (with their XML), so this is memory.
DEFAULT_HISTORY = 1_000


class Lifecycle(enum.Enum):
    """Where an informer is in its one run."""

    NEW = "new"
    RUNNING = "running"
    STOPPED = "stopped"


class Informer:
    """A live, consistent view of every domain in the fleet, read from the two compacted topics.

    ``resume``: a snapshot (e.g. :meth:`Snapshot.from_json` of one persisted earlier) to start from
    instead of the beginning of the topics: its view is restored and reading goes on at its position.
    ``stale_after_intervals``: a host is stale when its heartbeat is older than this many of its
    heartbeat intervals. ``history``: how many recent changes :meth:`watch_from` can replay.
    ``client_config``: extra librdkafka settings for the consumer. ``consumer_factory``: makes the
    Kafka consumer from its settings (``confluent_kafka.Consumer``; tests pass a fake).
    """

    def __init__(
        self,
        settings: KafkaSettings,
        *,
        codec: RecordCodec | None = None,
        resume: Snapshot | None = None,
        stale_after_intervals: float = DEFAULT_STALE_AFTER_INTERVALS,
        history: int = DEFAULT_HISTORY,
        clock: Clock = wall_clock_micros,
        client_config: Mapping[str, Any] | None = None,
        consumer_factory: ConsumerFactory = Consumer,
    ) -> None:
        self._settings = settings
        self._consumer_factory = consumer_factory
        self._codec = codec
        self._client_config = {**settings.client_config(), **(client_config or {})}
        if resume is None:
            store, position = Store(stale_after_intervals), Position()
        else:
            store = Store.restore(resume.domains, resume.hosts, graveyard=resume.deleted,
                                  stale_after_intervals=stale_after_intervals)
            position = resume.position
        self._start_position = position
        self._view = View(store, position, history, clock)
        # Neither the fan-out nor the reader refers back to this informer: dropped once stopped, it is
        # freed at once with its view, not left to the cyclic collector, whose full passes over a
        # 100,000-domain view took a tenth of the next informer's sync in the same process.
        self._fanout = Fanout(self._view, settings.domains_topic)
        self._lock = threading.Lock()
        self._lifecycle = Lifecycle.NEW
        self._stop = threading.Event()
        self._reflector: Reflector | None = None
        self._thread: threading.Thread | None = None
        self._failure: BaseException | None = None

    # -- lifecycle ---------------------------------------------------------------------------------

    def _transition(self, to: Lifecycle) -> Lifecycle:
        """The one guarded lifecycle step (NEW → RUNNING → STOPPED, or NEW → STOPPED); returns the old state."""
        with self._lock:
            was = self._lifecycle
            allowed = {Lifecycle.NEW: {Lifecycle.RUNNING, Lifecycle.STOPPED}, Lifecycle.RUNNING: {Lifecycle.STOPPED}}
            if to not in allowed.get(was, set()):
                raise RuntimeError(f"informer already {was.value}; create a new one")
            self._lifecycle = to
            return was

    def start(self) -> None:
        """Start reading. Raises UserError for invalid client settings. An informer runs once."""
        with self._lock:
            if self._lifecycle is not Lifecycle.NEW:
                raise RuntimeError(f"informer already {self._lifecycle.value}; create a new one")
        codec = self._codec or self._settings.codec()
        reflector = Reflector(
            self._client_config, codec, domains_topic=self._settings.domains_topic,
            hosts_topic=self._settings.hosts_topic, heartbeats_topic=self._settings.heartbeats,
            sink=functools.partial(self._view.apply, deliver=self._fanout.publish), start=self._start_position,
            consumer_factory=self._consumer_factory,
        )
        self._transition(Lifecycle.RUNNING)
        with self._lock:
            self._reflector = reflector
            self._thread = threading.Thread(
                target=self._run_reflector, name=f"informer-reflector:{self._settings.domains_topic}", daemon=True)
        self._thread.start()
        self._fanout.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop reading and delivering; iterators end. Idempotent."""
        with self._lock:
            if self._lifecycle is Lifecycle.STOPPED:
                return
        try:
            self._transition(Lifecycle.STOPPED)
        except RuntimeError:
            return  # another thread stopped it meanwhile
        self._stop.set()
        self._view.wake()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
            if thread.is_alive():
                log.warning("reflector thread did not stop within %.0f s", timeout)
        self._fanout.close(timeout)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # -- state -------------------------------------------------------------------------------------

    @property
    def synced(self) -> bool:
        """True once the view has caught up with the high watermarks seen at start."""
        return self._view.synced

    def wait_for_sync(self, timeout: float | None = None) -> bool:
        """Block until synced (True) or ``timeout`` seconds pass (False); see :attr:`last_error` then.

        Raises ConsumerError if the reader failed, RuntimeError if the informer is not running.
        """
        if self._lifecycle is Lifecycle.NEW:
            raise RuntimeError("start() the informer first")
        # The failure and the lifecycle are single references, set before the view is woken.
        synced = self._view.wait_for_sync(
            lambda: self._failure is not None or self._lifecycle is not Lifecycle.RUNNING, timeout)
        failure = self.failure
        if failure is not None:
            raise _reader_failed(failure) from failure
        return synced

    @property
    def last_error(self) -> str | None:
        """The latest problem reaching Kafka or the topics (None if none), e.g. to explain a timeout."""
        with self._lock:
            reflector, failure = self._reflector, self._failure
        if failure is not None:
            return str(failure)
        return reflector.last_error if reflector is not None else None

    @property
    def failure(self) -> BaseException | None:
        """The error that stopped the reader, if it failed."""
        with self._lock:
            return self._failure

    @property
    def position(self) -> Position:
        return self._view.position

    def stats(self) -> InformerStats:
        counts = self._view.counts()
        with self._lock:
            reflector = self._reflector
        skipped = reflector.counters() if reflector is not None else None
        return InformerStats(
            applied=counts.applied,
            skipped_older=counts.skipped_older,
            listed_away=counts.listed_away,
            undecodable=skipped.undecodable if skipped else 0,
            unknown_schema=skipped.unknown_schema if skipped else 0,
            legacy_fingerprint=skipped.legacy_fingerprint if skipped else 0,
            handler_errors=self._fanout.errors(),
        )

    def lag(self) -> dict[tuple[str, int], int]:
        """Messages per partition between the view's position and the brokers' high watermark as the
        reader last heard it (0 when caught up); empty before the reader has reached Kafka."""
        with self._lock:
            reflector = self._reflector
        if reflector is None:
            return {}
        position = self._view.position
        return {key: max(0, high - position.next_offset(*key)) for key, high in reflector.high_watermarks().items()}

    # -- reading the view --------------------------------------------------------------------------

    def list(self) -> Snapshot:
        """A consistent copy of the view and the position it reflects."""
        return self._view.snapshot()

    def get(self, uuid: str) -> DomainRecord | None:
        """The newest record of a domain in the view, or None."""
        return self._view.get(uuid)

    def stale_hosts(self) -> frozenset[str]:
        """Hosts whose heartbeat is older than the stale limit, now."""
        return self._view.stale_hosts()

    def unreachable_hosts(self) -> frozenset[str]:
        """Hosts whose agents say they cannot reach libvirt (``LIBVIRT_UNREACHABLE``)."""
        return self._view.unreachable_hosts()

    # -- delivery ----------------------------------------------------------------------------------

    def add_handler(
        self,
        on_add: OnAdd | None = None,
        on_update: OnUpdate | None = None,
        on_delete: OnDelete | None = None,
    ) -> HandlerRegistration:
        """Call these on a dedicated thread for each change, starting with the synced view as adds.

        ``on_add(new)``, ``on_update(old, new)``, ``on_delete(last_known)``. Exceptions are logged and
        counted, never stop delivery.
        """
        return self._fanout.add_handlers(on_add, on_update, on_delete)

    def changes(self, timeout: float | None = None) -> Watch:
        """Iterate the synced view as ADDED changes, then every later change (same as handlers).

        ``timeout``: end after this many seconds without a change; None waits until stop().
        """
        return Watch(self._fanout, self._fanout.subscribe(), timeout, _reader_failed)

    def watch_from(self, position: Position, timeout: float | None = None) -> Watch:
        """Iterate every change after ``position`` (from :meth:`list`), without the initial adds.

        Raises PositionExpired if changes after it are no longer retained: list again. Exact for
        the positions this informer hands out; a position from elsewhere may expire a batch early.
        """
        return Watch(self._fanout, self._fanout.subscribe_after(position), timeout, _reader_failed)

    # -- the reflector's thread ------------------------------------------------------------------------

    def _run_reflector(self) -> None:
        assert self._reflector is not None
        try:
            self._reflector.run(self._stop)
        except Exception as exc:
            if isinstance(exc, ConsumerError):  # says what is wrong (e.g. refused credentials): no traceback
                log.error("informer reader failed: %s", exc)
            else:
                log.exception("informer reader failed")
            with self._lock:
                self._failure = exc
            self._view.wake()
            self._fanout.close(0, failure=exc)


def _reader_failed(failure: BaseException) -> ConsumerError:
    return ConsumerError(f"the informer stopped reading: {failure}")
