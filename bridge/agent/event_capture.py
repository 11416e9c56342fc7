"""One callback per libvirt domain event id; each only turns its arguments into a DomainEvent.

The callbacks run on the libvirt event loop thread. They never call libvirt (beyond the UUID and
name the domain object already holds) or Kafka: they hand ``(uuid, name, event)`` to a sink and
return, so a slow snapshot or a Kafka outage can never stall libvirt's event delivery.

Each event id has its own callback signature; :data:`EVENT_ARGS` names every argument after
``conn, dom`` (and before ``opaque``), so the event's data map keeps all of them by name.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import Callable
from typing import Any

import libvirt

from bridge.agent.libvirt_names import lifecycle_names
from bridge.core.version_clock import Clock
from bridge.records import DomainEvent

log = logging.getLogger(__name__)

EventSink = Callable[[str, str, DomainEvent], None]
"""Receives ``(uuid, domain name, event)``; must be fast and thread-safe."""
HandleSink = Callable[[Any, str, Any], None]
"""Receives ``(connection, uuid, domain handle)`` of each event, before the event; fast, thread-safe."""

EVENT_ARGS: dict[str, tuple[str, ...]] = {
    "LIFECYCLE": ("event", "detail"),
    "REBOOT": (),
    "RTC_CHANGE": ("utcoffset",),
    "WATCHDOG": ("action",),
    "IO_ERROR": ("src_path", "dev_alias", "action"),
    "GRAPHICS": ("phase", "local", "remote", "auth_scheme", "subject"),
    "IO_ERROR_REASON": ("src_path", "dev_alias", "action", "reason"),
    "CONTROL_ERROR": (),
    "BLOCK_JOB": ("disk", "type", "status"),
    "DISK_CHANGE": ("old_src_path", "new_src_path", "dev_alias", "reason"),
    "TRAY_CHANGE": ("dev_alias", "reason"),
    "PMWAKEUP": ("reason",),
    "PMSUSPEND": ("reason",),
    "BALLOON_CHANGE": ("actual",),
    "PMSUSPEND_DISK": ("reason",),
    "DEVICE_REMOVED": ("dev_alias",),
    "BLOCK_JOB_2": ("disk", "type", "status"),
    "TUNABLE": ("params",),
    "AGENT_LIFECYCLE": ("state", "reason"),
    "DEVICE_ADDED": ("dev_alias",),
    "MIGRATION_ITERATION": ("iteration",),
    "JOB_COMPLETED": ("params",),
    "DEVICE_REMOVAL_FAILED": ("dev_alias",),
    "METADATA_CHANGE": ("type", "nsuri"),
    "BLOCK_THRESHOLD": ("dev", "path", "threshold", "excess"),
    "MEMORY_FAILURE": ("recipient", "action", "flags"),
    "MEMORY_DEVICE_SIZE_CHANGE": ("alias", "size"),
}

_ID_PREFIX = "VIR_DOMAIN_EVENT_ID_"


def supported_event_ids() -> dict[str, int]:
    """Every domain event id the installed binding knows, by name."""
    return {
        name[len(_ID_PREFIX):]: int(getattr(libvirt, name))
        for name in dir(libvirt)
        if name.startswith(_ID_PREFIX) and name != _ID_PREFIX + "LAST"
    }


def event_data(event_id: str, args: tuple[Any, ...]) -> dict[str, str]:
    """Callback arguments → the record's string map; dict-valued ones (typed params) are flattened."""
    names = EVENT_ARGS.get(event_id)
    if names is None or len(names) != len(args):
        names = tuple(f"arg{i}" for i in range(len(args)))
    data: dict[str, str] = {}
    for name, value in zip(names, args, strict=True):
        if isinstance(value, dict) and name == "params":
            data.update({str(k): _text(v) for k, v in value.items()})
        else:
            data[name] = _text(value)
    return data


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, dict | list | tuple):
        return json.dumps(value, sort_keys=True, default=str)
    return str(value)


class EventCapture:
    """Registers a callback for every supported event id on a connection and feeds a sink."""

    def __init__(self, sink: EventSink, now: Clock) -> None:
        self._sink = sink
        self._now = now
        self._callback_ids: list[int] = []
        # Deregistering 27 callbacks takes a while; events keep arriving meanwhile. The gate makes the
        # stop atomic, so what was captured is a prefix of libvirt's stream, with no holes.
        self._accepting = threading.Event()
        self._accepting.set()
        self.registered: list[str] = []
        """Event id names registered on the current connection."""
        self._handles: HandleSink | None = None

    def hand_handles_to(self, handles: HandleSink) -> None:
        """Also give every event's domain handle to ``handles`` (before :meth:`register`): the snapshot
        reader then needs no lookup for a domain it has not read yet."""
        self._handles = handles

    def stop_accepting(self) -> None:
        """From now on, drop every event (before deregistering, so the stop is atomic)."""
        self._accepting.clear()

    def register(self, conn: libvirt.virConnect) -> None:
        """Register on ``conn``; ids the daemon does not support are logged and skipped."""
        self._callback_ids = []
        self.registered = []
        for name, event_id in sorted(supported_event_ids().items(), key=lambda kv: kv[1]):
            try:
                cb_id = conn.domainEventRegisterAny(None, event_id, self._callback(name), None)
            except libvirt.libvirtError as exc:
                log.info("libvirt does not deliver %s events here: %s", name, exc.get_error_message())
                continue
            self._callback_ids.append(cb_id)
            self.registered.append(name)
        log.debug("registered %d domain event callbacks: %s", len(self.registered), " ".join(self.registered))

    def deregister(self, conn: libvirt.virConnect) -> None:
        """Best-effort deregistration (the connection may already be gone)."""
        for cb_id in self._callback_ids:
            with contextlib.suppress(libvirt.libvirtError):
                conn.domainEventDeregisterAny(cb_id)
        self._callback_ids = []

    def _callback(self, event_id: str) -> Callable[..., None]:
        def on_event(_conn: Any, dom: libvirt.virDomain, *rest: Any) -> None:
            if not self._accepting.is_set():
                return
            received = self._now()
            args = rest[:-1]  # the last argument is the opaque value we registered
            try:
                if event_id == "LIFECYCLE":
                    type_name, detail_name = lifecycle_names(int(args[0]), int(args[1]))
                    event = DomainEvent("LIFECYCLE", received, type_name, detail_name, {})
                else:
                    event = DomainEvent(event_id, received, None, None, event_data(event_id, args))
                uuid = dom.UUIDString()
                if self._handles is not None:
                    self._handles(_conn, uuid, dom)
                self._sink(uuid, dom.name(), event)
            except Exception:  # an exception escaping into libvirt's C loop would be lost silently
                log.exception("failed to capture %s event", event_id)

        return on_event
