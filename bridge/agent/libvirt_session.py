"""The libvirt connection: open, close callback, reconnect with backoff, re-register callbacks.

The first open happens in :meth:`LibvirtSession.start`, in the caller's thread, so an unreachable
libvirt at start-up is a one-line user error. After that, a lost connection (libvirtd restart, EOF,
keepalive timeout) fires the close callback; the ``libvirt-reconnect`` thread then reopens with
exponential backoff (tenacity, logged, forever), re-registers every event callback and calls
``on_connected`` so the agent resyncs: events lost in the gap are the resync's job.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable

import libvirt
from tenacity import RetryCallState, Retrying, retry_if_exception_type, wait_exponential

from bridge.agent.event_capture import EventCapture
from bridge.errors import UserError

log = logging.getLogger(__name__)

_CLOSE_REASONS = {0: "error", 1: "end of file", 2: "keepalive timeout", 3: "client request"}


CONN_ERRORS = frozenset({
    libvirt.VIR_ERR_SYSTEM_ERROR,
    libvirt.VIR_ERR_RPC,
    libvirt.VIR_ERR_NO_CONNECT,
    libvirt.VIR_ERR_INVALID_CONN,
})
"""Error codes meaning "the connection is broken": the work waits for the reconnect."""


class ConnectionLost(Exception):
    """libvirt is not connected right now; the caller should retry after the reconnect."""


class LibvirtSession:
    """Owns the connection and the ``libvirt-reconnect`` thread."""

    def __init__(
        self,
        uri: str,
        capture: EventCapture,
        on_connected: Callable[[], None],
        read_only: bool = True,
        keepalive_interval: int = 5,
        max_backoff: float = 30.0,
    ) -> None:
        self.uri = uri
        self._capture = capture
        self._on_connected = on_connected
        self._read_only = read_only
        self._keepalive = keepalive_interval
        self._max_backoff = max_backoff
        self._lock = threading.Lock()
        self._conn: libvirt.virConnect | None = None
        self._dead: libvirt.virConnect | None = None
        self._lost = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.reconnects = 0
        self.connected_at: float | None = None
        """When the current connection was opened (seconds since the epoch); None before the first."""

    def start(self) -> None:
        """Connect (raising UserError if libvirt is unreachable) and start watching the connection."""
        # libvirt prints every error to stderr by default; they reach us as exceptions anyway, and an
        # expected "Domain not found" is not worth a line on the console.
        libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
        try:
            self._connect()
        except libvirt.libvirtError as exc:
            raise UserError(
                f"cannot connect to libvirt at --libvirt-uri {self.uri}: {one_line(exc)}"
            ) from None
        self._thread = threading.Thread(target=self._supervise, name="libvirt-reconnect", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._lost.set()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            self._capture.deregister(conn)
            try:
                conn.unregisterCloseCallback()
                conn.close()
            except libvirt.libvirtError:
                pass

    def stop_events(self) -> None:
        """Stop receiving events but keep the connection (snapshots still work while draining)."""
        self._capture.stop_accepting()
        with self._lock:
            conn = self._conn
        if conn is not None:
            self._capture.deregister(conn)

    def connection(self) -> libvirt.virConnect:
        """The live connection; raises ConnectionLost while reconnecting."""
        conn = self._conn
        if conn is None:
            raise ConnectionLost(f"not connected to {self.uri}")
        return conn

    @property
    def connected(self) -> bool:
        return self._conn is not None

    @property
    def alive(self) -> bool:
        """The ``libvirt-reconnect`` thread is running."""
        thread = self._thread
        return thread is not None and thread.is_alive()

    def mark_lost(self) -> None:
        """Report a dead connection noticed by a failing call (the close callback may lag)."""
        with self._lock:
            if self._conn is None:
                return
            self._dead, self._conn = self._conn, None
        self._lost.set()

    def libvirt_version(self) -> str:
        """The daemon's libvirt version as ``major.minor.micro``."""
        v = self.connection().getLibVersion()
        return f"{v // 1_000_000}.{v // 1000 % 1000}.{v % 1000}"

    def _connect(self) -> None:
        conn = libvirt.openReadOnly(self.uri) if self._read_only else libvirt.open(self.uri)
        if conn is None:  # older bindings return None instead of raising
            raise libvirt.libvirtError(f"failed to open {self.uri}")
        with contextlib.suppress(libvirt.libvirtError):  # in-process test:/// connections have no keepalive
            conn.setKeepAlive(self._keepalive, 3)
        conn.registerCloseCallback(self._on_close, None)
        self._capture.register(conn)
        with self._lock:
            self._conn = conn
            self.connected_at = time.time()
        self._lost.clear()

    def _on_close(self, _conn: libvirt.virConnect, reason: int, _opaque: object) -> None:
        log.warning("libvirt connection to %s closed (%s)", self.uri, _CLOSE_REASONS.get(reason, reason))
        self.mark_lost()

    def _supervise(self) -> None:
        while not self._stop.is_set():
            self._lost.wait()
            if self._stop.is_set():
                return
            retrying = Retrying(
                wait=wait_exponential(multiplier=0.2, max=self._max_backoff),
                retry=retry_if_exception_type(libvirt.libvirtError),
                before_sleep=self._log_retry,
                sleep=self._interruptible_sleep,
            )
            try:
                retrying(self._reconnect_once)
            except _SessionStopped:
                return
            self.reconnects += 1
            log.info("reconnected to %s (reconnect #%d)", self.uri, self.reconnects)
            self._on_connected()

    def _reconnect_once(self) -> None:
        if self._stop.is_set():
            raise _SessionStopped
        with self._lock:
            old, self._dead = self._dead, None
        if old is not None:
            self._capture.deregister(old)
            try:
                old.unregisterCloseCallback()
                old.close()
            except libvirt.libvirtError:
                pass
        self._connect()

    def _interruptible_sleep(self, seconds: float) -> None:
        if self._stop.wait(seconds):
            raise _SessionStopped

    def _log_retry(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0.0
        log.warning("reconnecting to %s failed (attempt %d): %s; retrying in %.1fs",
                    self.uri, state.attempt_number, one_line(exc), wait)


class _SessionStopped(Exception):
    """Raised in the reconnect loop when :meth:`LibvirtSession.stop` was called: stop retrying."""


def one_line(exc: BaseException | None) -> str:
    if isinstance(exc, libvirt.libvirtError):
        return (exc.get_error_message() or str(exc)).splitlines()[0]
    return str(exc).splitlines()[0] if exc else "unknown error"
