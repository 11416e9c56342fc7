"""The informer: a live view of the fleet's domains, kept in sync by a reflector thread.

It owns three things and the threads that serve them:

- the :class:`~bridge.consumer.store.Store` (the view), guarded by one lock;
- the reflector thread, which reads the topics and applies each batch to the store under that lock,
  so a :meth:`Informer.list` snapshot always matches the position it reports;
- one thread per handler registration, delivering changes from its own queue, so a slow handler
  delays only itself.

Delivery follows client-go: once the view is synced, every reader (handler or iterator) first gets
the whole view as ``ADDED`` changes (cause ``INITIAL``), then every later change. A reader that falls
behind gets changes to the same domain merged (level-triggered, like DeltaFIFO); one that keeps up
sees each change.
"""

from __future__ import annotations

import builtins
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

from bridge.consumer.changes import Change, ChangeCause, ChangeQueue, ChangeType
from bridge.consumer.history import ChangeHistory
from bridge.consumer.position import Position
from bridge.consumer.reflector import Batch, ConsumerError, Reflector
from bridge.consumer.snapshot import Snapshot
from bridge.consumer.store import DEFAULT_STALE_AFTER_INTERVALS, Outcome, Store
from bridge.kafka_settings import KafkaSettings
from bridge.records import DomainRecord, HostRecord
from bridge.serde import DomainTombstone, HostTombstone, RecordCodec

log = logging.getLogger(__name__)

Clock = Callable[[], int]
"""Microseconds since the epoch."""

OnAdd = Callable[[DomainRecord], None]
OnUpdate = Callable[[DomainRecord, DomainRecord], None]
OnDelete = Callable[[DomainRecord], None]

# Enough to bridge the gap between a list() and the watch_from() that follows it; each change holds
# records (with their XML), so this is memory.
DEFAULT_HISTORY = 1_000


def wall_clock() -> int:
    return time.time_ns() // 1000


@dataclass(frozen=True, slots=True)
class InformerStats:
    """Counters since the informer started."""

    applied: int = 0
    """Messages taken into the view (newer than anything seen for their key)."""
    skipped_older: int = 0
    """Domain records not newer than a version already seen: duplicates or out of order."""
    listed_away: int = 0
    """Domain records their host's latest inventory had already listed away."""
    undecodable: int = 0
    """Messages skipped because they are not records of this bridge."""
    unknown_schema: int = 0
    """Records written with a newer, unknown schema and read without the fields it added."""
    legacy_fingerprint: int = 0
    """Records written by 0.1.0, whose single-object fingerprint was byte-reversed (read all the same)."""
    handler_errors: int = 0
    """Exceptions raised by handlers (logged; delivery goes on)."""


class Watch(Iterator[Change]):
    """An iterator of changes for one reader; close it (or use ``with``) when done.

    Iteration ends after ``timeout`` seconds without a change (None: wait until the informer stops)
    and when the informer stops; it raises ConsumerError if the informer's reader failed.
    """

    def __init__(self, informer: Informer, queue: ChangeQueue, timeout: float | None) -> None:
        self._informer = informer
        self._queue = queue
        self._timeout = timeout

    def __iter__(self) -> Self:
        return self

    def __next__(self) -> Change:
        change = self._queue.get(self._timeout)
        if change is None:
            self.close()
            failure = self._informer.failure
            if failure is not None:
                raise ConsumerError(f"the informer stopped reading: {failure}") from failure
            raise StopIteration
        return change

    def close(self) -> None:
        self._informer._unsubscribe(self._queue)
        self._queue.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class HandlerRegistration:
    """Returned by :meth:`Informer.add_handler`; :meth:`remove` stops delivery to the handlers."""

    def __init__(self, informer: Informer, queue: ChangeQueue, *, on_add: OnAdd | None,
                 on_update: OnUpdate | None, on_delete: OnDelete | None, name: str) -> None:
        self._informer = informer
        self._queue = queue
        self._on_add = on_add
        self._on_update = on_update
        self._on_delete = on_delete
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def remove(self) -> None:
        """Stop delivering; waits for a handler call in progress unless called from a handler."""
        self._informer._unsubscribe(self._queue)
        self._queue.close()
        self._join()

    def _start(self) -> None:
        self._thread.start()

    def _join(self, timeout: float | None = None) -> None:
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def _run(self) -> None:
        while (change := self._queue.get()) is not None:
            try:
                self._call(change)
            except Exception:
                self._informer._count_handler_error()
                log.exception("%s handler failed on %s of %s", self._thread.name, change.type, change.uuid)

    def _call(self, change: Change) -> None:
        if change.type is ChangeType.ADDED and self._on_add is not None:
            assert change.new is not None
            self._on_add(change.new)
        elif change.type is ChangeType.UPDATED and self._on_update is not None:
            assert change.old is not None and change.new is not None
            self._on_update(change.old, change.new)
        elif change.type is ChangeType.DELETED and self._on_delete is not None:
            assert change.old is not None
            self._on_delete(change.old)


class Informer:
    """A live, consistent view of every domain in the fleet, read from the two compacted topics.

    ``resume``: a snapshot (e.g. :meth:`Snapshot.from_json` of one persisted earlier) to start from
    instead of the beginning of the topics: its view is restored and reading goes on at its position.
    ``stale_after_intervals``: a host is stale when its heartbeat is older than this many of its
    heartbeat intervals. ``history``: how many recent changes :meth:`watch_from` can replay.
    ``client_config``: extra librdkafka settings for the consumer.
    """

    def __init__(
        self,
        settings: KafkaSettings,
        *,
        codec: RecordCodec | None = None,
        resume: Snapshot | None = None,
        stale_after_intervals: float = DEFAULT_STALE_AFTER_INTERVALS,
        history: int = DEFAULT_HISTORY,
        clock: Clock = wall_clock,
        client_config: Mapping[str, Any] | None = None,
    ) -> None:
        self._settings = settings
        self._codec = codec
        self._clock = clock
        self._client_config = {**settings.client_config(), **(client_config or {})}
        self._cond = threading.Condition()
        if resume is None:
            self._store = Store(stale_after_intervals)
            self._position = Position()
        else:
            self._store = Store.restore(resume.domains, resume.hosts, resume.deleted, stale_after_intervals)
            self._position = resume.position
        self._start_position = self._position
        self._history = ChangeHistory(history)
        self._synced = False
        self._live: list[ChangeQueue] = []
        self._awaiting_sync: list[ChangeQueue] = []
        self._handlers: list[HandlerRegistration] = []
        self._handler_ids = itertools.count(1)
        self._counts = dict.fromkeys(("applied", "skipped_older", "listed_away", "handler_errors"), 0)
        self._stop = threading.Event()
        self._reflector: Reflector | None = None
        self._thread: threading.Thread | None = None
        self._failure: BaseException | None = None
        self._state = "new"

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> None:
        """Start reading. Raises UserError for invalid client settings. An informer runs once."""
        with self._cond:
            if self._state != "new":
                raise RuntimeError(f"informer already {self._state}; create a new one")
            codec = self._codec or self._settings.codec()
            self._reflector = Reflector(
                self._client_config, codec, domain_topic=self._settings.topic,
                hosts_topic=self._settings.hosts_topic, sink=self._apply_batch, start=self._start_position,
            )
            self._thread = threading.Thread(
                target=self._run_reflector, name=f"informer-reflector:{self._settings.topic}", daemon=True)
            self._state = "running"
            handlers = list(self._handlers)
        self._thread.start()
        for registration in handlers:
            registration._start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop reading and delivering; iterators end. Idempotent."""
        with self._cond:
            if self._state == "stopped":
                return
            self._state = "stopped"
            queues = [*self._live, *self._awaiting_sync]
            self._live.clear()
            self._awaiting_sync.clear()
            handlers = list(self._handlers)
            self._cond.notify_all()
        self._stop.set()
        for queue in queues:
            queue.close()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
            if thread.is_alive():
                log.warning("reflector thread did not stop within %.0f s", timeout)
        for registration in handlers:
            registration._join(timeout)

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
        with self._cond:
            return self._synced

    def wait_for_sync(self, timeout: float | None = None) -> bool:
        """Block until synced (True) or ``timeout`` seconds pass (False); see :attr:`last_error` then.

        Raises ConsumerError if the reader failed, RuntimeError if the informer is not running.
        """
        with self._cond:
            if self._state == "new":
                raise RuntimeError("start() the informer first")
            self._cond.wait_for(lambda: self._synced or self._failure is not None or self._state != "running",
                                timeout)
            if self._failure is not None:
                raise ConsumerError(f"the informer stopped reading: {self._failure}") from self._failure
            return self._synced

    @property
    def last_error(self) -> str | None:
        """The latest problem reaching Kafka or the topics (None if none), e.g. to explain a timeout."""
        with self._cond:
            reflector = self._reflector
            failure = self._failure
        if failure is not None:
            return str(failure)
        return reflector.last_error if reflector is not None else None

    @property
    def failure(self) -> BaseException | None:
        """The error that stopped the reader, if it failed."""
        with self._cond:
            return self._failure

    @property
    def position(self) -> Position:
        with self._cond:
            return self._position

    def stats(self) -> InformerStats:
        with self._cond:
            counts = dict(self._counts)
            reflector = self._reflector
        skipped = reflector.counters() if reflector is not None else None
        return InformerStats(
            applied=counts["applied"],
            skipped_older=counts["skipped_older"],
            listed_away=counts["listed_away"],
            undecodable=skipped.undecodable if skipped else 0,
            unknown_schema=skipped.unknown_schema if skipped else 0,
            legacy_fingerprint=skipped.legacy_fingerprint if skipped else 0,
            handler_errors=counts["handler_errors"],
        )

    # -- reading the view --------------------------------------------------------------------------

    def list(self) -> Snapshot:
        """A consistent copy of the view and the position it reflects."""
        now = self._clock()
        with self._cond:
            return Snapshot(
                domains=self._store.domains(),
                hosts=self._store.hosts(),
                position=self._position,
                taken_at=now,
                synced=self._synced,
                stale_hosts=self._store.stale_hosts(now),
                unreachable_hosts=self._store.unreachable_hosts(),
                deleted=self._store.graveyard(),
            )

    def get(self, uuid: str) -> DomainRecord | None:
        """The newest record of a domain in the view, or None."""
        with self._cond:
            return self._store.get(uuid)

    def stale_hosts(self) -> frozenset[str]:
        """Hosts whose heartbeat is older than the stale limit, now."""
        now = self._clock()
        with self._cond:
            return self._store.stale_hosts(now)

    def unreachable_hosts(self) -> frozenset[str]:
        """Hosts whose agents say they cannot reach libvirt (``LIBVIRT_UNREACHABLE``)."""
        with self._cond:
            return self._store.unreachable_hosts()

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
        queue = self._subscribe()
        name = f"informer-handler-{next(self._handler_ids)}:{self._settings.topic}"
        registration = HandlerRegistration(
            self, queue, on_add=on_add, on_update=on_update, on_delete=on_delete, name=name)
        with self._cond:
            self._handlers.append(registration)
            running = self._state == "running"
        if running:
            registration._start()
        return registration

    def changes(self, timeout: float | None = None) -> Watch:
        """Iterate the synced view as ADDED changes, then every later change (same as handlers).

        ``timeout``: end after this many seconds without a change; None waits until stop().
        """
        return Watch(self, self._subscribe(), timeout)

    def watch_from(self, position: Position, timeout: float | None = None) -> Watch:
        """Iterate every change after ``position`` (from :meth:`list`), without the initial adds.

        Raises PositionExpired if changes after it are no longer retained: list again.
        """
        queue = ChangeQueue(after=position)
        with self._cond:
            queue.put(self._history.since(position))
            self._add_queue(queue, self._live)
        return Watch(self, queue, timeout)

    def _subscribe(self) -> ChangeQueue:
        """A queue that gets the synced view as adds (now, or at sync), then every change."""
        queue = ChangeQueue()
        with self._cond:
            if self._synced:
                queue.put(self._initial_adds())
                self._add_queue(queue, self._live)
            else:
                self._add_queue(queue, self._awaiting_sync)
        return queue

    def _add_queue(self, queue: ChangeQueue, into: builtins.list[ChangeQueue]) -> None:
        if self._state == "stopped":
            queue.close()
        else:
            into.append(queue)

    def _unsubscribe(self, queue: ChangeQueue) -> None:
        with self._cond:
            for queues in (self._live, self._awaiting_sync):
                if queue in queues:
                    queues.remove(queue)
            self._handlers = [h for h in self._handlers if h._queue is not queue]

    def _count_handler_error(self) -> None:
        with self._cond:
            self._counts["handler_errors"] += 1

    def _initial_adds(self) -> builtins.list[Change]:
        return [Change(ChangeType.ADDED, r.uuid, None, r, ChangeCause.INITIAL)
                for r in sorted(self._store.domains().values(), key=lambda r: (r.host, r.name, r.uuid))]

    # -- the reflector's side ----------------------------------------------------------------------

    def _run_reflector(self) -> None:
        assert self._reflector is not None
        try:
            self._reflector.run(self._stop)
        except Exception as exc:
            if isinstance(exc, ConsumerError):  # says what is wrong (e.g. refused credentials): no traceback
                log.error("informer reader failed: %s", exc)
            else:
                log.exception("informer reader failed")
            with self._cond:
                self._failure = exc
                queues = [*self._live, *self._awaiting_sync]
                self._cond.notify_all()
            for queue in queues:
                queue.close()

    def _apply_batch(self, batch: Batch) -> None:
        """Apply one batch atomically: a snapshot never sees half of it."""
        changes: list[Change] = []
        hosts_changed = False
        with self._cond:
            for message in batch.messages:
                payload, source = message.payload, message.source
                if isinstance(payload, DomainRecord):
                    result = self._store.apply_domain(payload, source)
                elif isinstance(payload, DomainTombstone):
                    result = self._store.apply_tombstone(payload.uuid, source)
                elif isinstance(payload, HostRecord):
                    result = self._store.apply_host(payload, source)
                    hosts_changed = True
                else:
                    assert isinstance(payload, HostTombstone)
                    result = self._store.apply_host_tombstone(payload.host, source)
                    hosts_changed = True
                self._count(result.outcome)
                changes.extend(result.changes)
            self._position = batch.position
            self._history.extend(changes)
            for queue in self._live:
                queue.put(changes)
            if batch.synced and not self._synced:
                self._synced = True
                initial = self._initial_adds()
                for queue in self._awaiting_sync:
                    queue.put(initial)
                self._live.extend(self._awaiting_sync)
                self._awaiting_sync.clear()
                self._cond.notify_all()
            if hosts_changed and self._synced:
                # Only after sync: before it, hosts whose records are still unread would be missing
                # from the horizon.
                self._store.prune_graveyard(self._clock())

    def _count(self, outcome: Outcome) -> None:
        if outcome is Outcome.APPLIED:
            self._counts["applied"] += 1
        elif outcome is Outcome.OLDER:
            self._counts["skipped_older"] += 1
        elif outcome is Outcome.LISTED_AWAY:
            self._counts["listed_away"] += 1
