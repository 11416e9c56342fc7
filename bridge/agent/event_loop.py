"""The libvirt event loop thread.

libvirt delivers events and keepalives only while some thread runs ``virEventRunDefaultImpl``. The
default implementation must be registered before the first connection is opened, and libvirt keeps
that loop as process-wide state: it must not be run from two threads at once. So this module mirrors
libvirt's own model: one ``libvirt-event-loop`` pump thread per process, shared by reference count.
Each :class:`LibvirtEventLoop` is a handle that holds one reference while started; the last
``stop()`` ends the thread. A periodic no-op timer wakes the loop so stopping is prompt.
"""

from __future__ import annotations

import logging
import threading

import libvirt

log = logging.getLogger(__name__)

_WAKE_MS = 100


class _Pump:
    """The one pump thread of this process (libvirt's loop is process-global)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.registered = False
        self.users = 0
        self.thread: threading.Thread | None = None
        self.stop = threading.Event()
        self.timer: int | None = None

    def acquire(self) -> None:
        with self.lock:
            if not self.registered:
                libvirt.virEventRegisterDefaultImpl()
                self.registered = True
            self.users += 1
            if self.thread is None:
                self.stop = threading.Event()
                self.timer = libvirt.virEventAddTimeout(_WAKE_MS, lambda _t, _o: None, None)
                self.thread = threading.Thread(target=self._run, args=(self.stop,), name="libvirt-event-loop",
                                               daemon=True)
                self.thread.start()

    def release(self) -> None:
        with self.lock:
            self.users -= 1
            if self.users > 0 or self.thread is None:
                return
            thread, self.thread = self.thread, None
            self.stop.set()
        thread.join(5)
        with self.lock:
            if self.timer is not None and self.thread is None:
                libvirt.virEventRemoveTimeout(self.timer)
                self.timer = None

    @staticmethod
    def _run(stop: threading.Event) -> None:
        while not stop.is_set():
            if libvirt.virEventRunDefaultImpl() < 0:
                log.error("libvirt event loop iteration failed")


_PUMP = _Pump()


class LibvirtEventLoop:
    """A handle on the process's libvirt event loop thread: running while any handle is started."""

    def __init__(self) -> None:
        self._started = False

    def start(self) -> None:
        if not self._started:
            _PUMP.acquire()
            self._started = True

    def stop(self) -> None:
        if self._started:
            self._started = False
            _PUMP.release()

    @property
    def alive(self) -> bool:
        """Started, and the process's ``libvirt-event-loop`` thread is running."""
        thread = _PUMP.thread
        return self._started and thread is not None and thread.is_alive()

    def __enter__(self) -> LibvirtEventLoop:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
