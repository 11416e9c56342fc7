"""An independent listener: libvirt's own event stream, recorded in the test process."""

from __future__ import annotations

import contextlib
import threading
from collections import defaultdict

import libvirt

from bridge.agent.libvirt_names import lifecycle_names

# (event id name, libvirt constant) for the non-lifecycle events the tests provoke; the test driver
# emits only LIFECYCLE and METADATA_CHANGE, real QEMU also REBOOT and DEVICE_* events.
# CONTROL_ERROR: QEMU's monitor can report one while a domain is destroyed (seen in CI); the agent
# registers every id, so the oracle must hear it too.
_OTHER = ("REBOOT", "METADATA_CHANGE", "DEVICE_ADDED", "DEVICE_REMOVED", "JOB_COMPLETED", "CONTROL_ERROR")


class EventRecorder:
    """Records ``(id, type, detail)`` per domain UUID, in arrival order."""

    def __init__(self, uri: str) -> None:
        self.conn = libvirt.openReadOnly(uri)
        self._lock = threading.Lock()
        self._events: dict[str, list[tuple[str, str | None, str | None]]] = defaultdict(list)
        self._ids = [self.conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE,
                                                      self._lifecycle, None)]
        for name in _OTHER:
            self._ids.append(self.conn.domainEventRegisterAny(
                None, getattr(libvirt, f"VIR_DOMAIN_EVENT_ID_{name}"), self._make_other(name), None))

    def _lifecycle(self, _conn, dom, event, detail, _opaque) -> None:
        t, d = lifecycle_names(event, detail)
        with self._lock:
            self._events[dom.UUIDString()].append(("LIFECYCLE", t, d))

    def _make_other(self, name: str):
        def cb(_conn, dom, *_rest) -> None:
            with self._lock:
                self._events[dom.UUIDString()].append((name, None, None))
        return cb

    def events(self, uuid: str) -> list[tuple[str, str | None, str | None]]:
        with self._lock:
            return list(self._events.get(uuid, []))

    def uuids(self) -> set[str]:
        with self._lock:
            return set(self._events)

    def close(self) -> None:
        for cb_id in self._ids:
            with contextlib.suppress(libvirt.libvirtError):
                self.conn.domainEventDeregisterAny(cb_id)
        self.conn.close()
