"""The delivery fan-out: every reader (handler or iterator) gets its own queue of changes.

Delivery follows client-go: once the view is synced, every reader first gets the whole view as
``ADDED`` changes (cause ``INITIAL``), then every later change. A reader that falls behind gets
changes to the same domain merged (level-triggered, like DeltaFIFO,
:class:`~bridge.consumer.changes.ChangeQueue`): a change still waiting when the next of its domain
arrives, even in the same fetch, is merged with it. Each handler
registration has a thread of its own, so a slow handler delays only itself.

``_lock`` guards ``_live``, ``_awaiting_sync``, ``_registrations``, ``_closed``, ``_failure`` and
``handler_errors``.
The view's lock is always taken first when both are held (:meth:`Fanout.publish` runs inside
:meth:`bridge.consumer.view.View.apply`).
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Callable
from typing import Self

from bridge.consumer.changes import Change, ChangeQueue, ChangeType
from bridge.consumer.position import Position
from bridge.consumer.view import View
from bridge.records import DomainRecord

log = logging.getLogger(__name__)

OnAdd = Callable[[DomainRecord], None]
OnUpdate = Callable[[DomainRecord, DomainRecord], None]
OnDelete = Callable[[DomainRecord], None]


class Fanout:
    """The readers of one informer's view and what is queued for each."""

    def __init__(self, view: View, name: str) -> None:
        self._view = view
        self._failure: BaseException | None = None
        self._name = name
        self._lock = threading.Lock()
        self._live: list[ChangeQueue] = []
        self._awaiting_sync: list[ChangeQueue] = []
        self._registrations: list[HandlerRegistration] = []
        self._ids = itertools.count(1)
        self._closed = False
        self._started = False
        self.handler_errors = 0

    # -- the view's side (inside View.apply) --------------------------------------------------------

    def publish(self, changes: list[Change], just_synced: bool) -> None:
        """Queue ``changes`` for every live reader; at sync, start the waiting ones from the view's adds."""
        with self._lock:
            for queue in self._live:
                queue.put(changes)
            if just_synced:
                if self._awaiting_sync:
                    initial = self._view.initial_adds()  # sorted once, shared; only if someone waits
                    for queue in self._awaiting_sync:
                        queue.put(initial)
                self._live.extend(self._awaiting_sync)
                self._awaiting_sync.clear()

    # -- readers -----------------------------------------------------------------------------------

    def subscribe(self) -> ChangeQueue:
        """A queue that gets the synced view as adds (now, or at sync), then every change."""
        queue = ChangeQueue()

        def join(synced: bool) -> None:
            if synced:
                queue.put(self._view.initial_adds())
            self._add(queue, self._live if synced else self._awaiting_sync)

        self._view.subscribe(join)
        return queue

    def subscribe_after(self, position: Position) -> ChangeQueue:
        """A queue of every change after ``position``; PositionExpired if they are no longer retained."""
        queue = ChangeQueue(after=position)

        def join(_synced: bool) -> None:
            queue.put(self._view.changes_since(position))
            self._add(queue, self._live)

        self._view.subscribe(join)
        return queue

    def add_handlers(self, on_add: OnAdd | None, on_update: OnUpdate | None,
                     on_delete: OnDelete | None) -> HandlerRegistration:
        registration = HandlerRegistration(self, self.subscribe(), on_add=on_add, on_update=on_update,
                                           on_delete=on_delete, name=f"informer-handler-{next(self._ids)}:{self._name}")
        with self._lock:
            self._registrations.append(registration)
            started = self._started
        if started:
            registration.start()
        return registration

    def unsubscribe(self, queue: ChangeQueue) -> None:
        with self._lock:
            for queues in (self._live, self._awaiting_sync):
                if queue in queues:
                    queues.remove(queue)
            self._registrations = [r for r in self._registrations if r.queue is not queue]
        queue.close()

    def count_handler_error(self) -> None:
        with self._lock:
            self.handler_errors += 1

    def errors(self) -> int:
        with self._lock:
            return self.handler_errors

    # -- lifecycle (called by the informer) ------------------------------------------------------------

    def start(self) -> None:
        """Start the handler threads registered so far; later ones start as they are added."""
        with self._lock:
            self._started = True
            registrations = list(self._registrations)
        for registration in registrations:
            registration.start()

    def close(self, timeout: float, failure: BaseException | None = None) -> None:
        """End every reader: iterators stop (raising ``failure``'s error if the reader failed; kept
        for good, so a watch that outlives its informer still says why), handler threads finish their
        current call."""
        with self._lock:
            self._closed = True
            if failure is not None:
                self._failure = failure
            queues = [*self._live, *self._awaiting_sync]
            self._live.clear()
            self._awaiting_sync.clear()
            registrations = list(self._registrations)
        for queue in queues:
            queue.close()
        for registration in registrations:
            registration.join(timeout)

    def _add(self, queue: ChangeQueue, into: list[ChangeQueue]) -> None:
        with self._lock:
            if self._closed:
                queue.close()
            else:
                into.append(queue)

    def failure(self) -> BaseException | None:
        with self._lock:
            return self._failure


class Watch:
    """An iterator of changes for one reader; close it (or use ``with``) when done.

    Iteration ends after ``timeout`` seconds without a change (None: wait until the informer stops)
    and when the informer stops; it raises ConsumerError if the informer's reader failed.
    """

    def __init__(self, fanout: Fanout, queue: ChangeQueue, timeout: float | None,
                 error: Callable[[BaseException], Exception]) -> None:
        self._fanout = fanout
        self._queue = queue
        self._timeout = timeout
        self._error = error

    def __iter__(self) -> Self:
        return self

    def __next__(self) -> Change:
        change = self._queue.get(self._timeout)
        if change is None:
            self.close()
            failure = self._fanout.failure()
            if failure is not None:
                raise self._error(failure) from failure
            raise StopIteration
        return change

    def close(self) -> None:
        self._fanout.unsubscribe(self._queue)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class HandlerRegistration:
    """Returned by ``Informer.add_handler``; :meth:`remove` stops delivery to the handlers."""

    def __init__(self, fanout: Fanout, queue: ChangeQueue, *, on_add: OnAdd | None,
                 on_update: OnUpdate | None, on_delete: OnDelete | None, name: str) -> None:
        self._fanout = fanout
        self.queue = queue
        self._on_add = on_add
        self._on_update = on_update
        self._on_delete = on_delete
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def remove(self) -> None:
        """Stop delivering; waits for a handler call in progress unless called from a handler."""
        self._fanout.unsubscribe(self.queue)
        self.join()

    def start(self) -> None:
        if not self._thread.is_alive() and self._thread.ident is None:
            self._thread.start()

    def join(self, timeout: float | None = None) -> None:
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def _run(self) -> None:
        while (change := self.queue.get()) is not None:
            try:
                self._call(change)
            except Exception:
                self._fanout.count_handler_error()
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
