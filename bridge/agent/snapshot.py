"""Reading what a domain looks like now: XML, state, reason, flags and name.

The read happens after the events it reports were received (the seed's point 3). The XML is read
with flags 0, never ``VIR_DOMAIN_XML_SECURE``, so graphics passwords are left out; on the default
read-only connection libvirt would refuse the secure flag anyway.

Round-trips are the cost of a snapshot (each one is a request to libvirtd and its reply), so the
reader keeps them few: the ``active`` flag and the name come from the XML read itself (the live XML's
root carries ``id='N'`` exactly when the domain is active, which is what ``virDomainIsActive``
tests), and a domain handle looked up once is kept for the next reads of the same UUID on the same
connection (a handle names the domain by UUID; every call on it is answered from the domain as it
is then), or handed over by the event callback (:meth:`SnapshotReader.offer`), which has one
already. The persistent flag is kept too and asked again only after an event that can change it
(:func:`may_change_persistence`). A snapshot is two round-trips (XML, state), three when the flag is
asked (a define, an undefine, a start or stop), one more for a lookup; a listing's RESYNC record one,
the XML, the rest coming from the listing (:mod:`bridge.agent.listing`).
"""

from __future__ import annotations

import html
import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import libvirt

from bridge.agent.libvirt_names import reason_name, state_name
from bridge.agent.libvirt_session import ConnectionLost
from bridge.core.ownership import ListedJob
from bridge.core.version_clock import Clock
from bridge.records import DomainEvent

if TYPE_CHECKING:
    from bridge.agent.listing import ListedDomain

# Errors meaning "this domain does not exist (any more)".
GONE_ERRORS = {libvirt.VIR_ERR_NO_DOMAIN}
# Errors meaning "the connection is broken": the pipeline waits for the reconnect.
_CONN_ERRORS = {
    libvirt.VIR_ERR_SYSTEM_ERROR,
    libvirt.VIR_ERR_RPC,
    libvirt.VIR_ERR_NO_CONNECT,
    libvirt.VIR_ERR_INVALID_CONN,
}


@dataclass(frozen=True)
class DomainSnapshot:
    """One consistent-as-libvirt-allows read of a domain."""

    uuid: str
    name: str
    state: str
    reason: str
    active: bool
    persistent: bool
    xml: str
    observed_at: int
    job: ListedJob | None = None
    """The migration job, read only when asked for and the domain is ``PAUSED/MIGRATION``."""


# The root element's attributes and the first <name> (the domain's: it comes before any device's).
_ROOT = re.compile(r"<domain\b([^>]*)>")
_ID_ATTR = re.compile(r"""\sid=['"](-?\d+)['"]""")
_NAME = re.compile(r"<name>([^<]*)</name>")


def xml_active_and_name(xml: str) -> tuple[bool, str | None]:
    """(active, name) as the domain XML says: active when the root has an ``id`` other than -1."""
    root = _ROOT.search(xml)
    ident = _ID_ATTR.search(root.group(1)) if root else None
    name = _NAME.search(xml)
    return (ident is not None and int(ident.group(1)) != -1), (html.unescape(name.group(1)) if name else None)


_KEEPS_PERSISTENCE = frozenset({"SUSPENDED", "RESUMED", "PMSUSPENDED", "SHUTDOWN", "CRASHED"})
"""Lifecycle types that never make a domain persistent or transient. DEFINED and UNDEFINED do (also a
migration's ``--persistent``/``--undefinesource``, which libvirt reports as those), and STARTED and
STOPPED may begin or end a transient domain under a UUID whose flag was kept."""


def may_change_persistence(events: Iterable[DomainEvent], elided: int = 0) -> bool:
    """True unless every one of ``events`` leaves the persistent flag as it was (none elided)."""
    return elided > 0 or any(e.id == "LIFECYCLE" and e.type not in _KEEPS_PERSISTENCE for e in events)


class Session(Protocol):
    """What the reader uses of the libvirt edge (:class:`bridge.agent.libvirt_session.LibvirtSession`)."""

    def connection(self) -> libvirt.virConnect:
        """The live connection; raises ConnectionLost while there is none."""

    def mark_lost(self) -> None:
        """Report a connection found dead by a failing call."""


class SnapshotReader:
    """Reads snapshots through the session's current connection; safe from several threads.

    Keeps one domain handle per UUID (bounded by the domains on the host: a handle is forgotten when
    its domain is gone, and all of them when the connection changes).
    """

    def __init__(self, session: Session, now: Clock) -> None:
        self._session = session
        self._now = now
        self._lock = threading.Lock()  # guards the three fields below (the reader threads share them)
        self._handles_conn: libvirt.virConnect | None = None
        self._handles: dict[str, libvirt.virDomain] = {}
        self._persistent: dict[str, bool] = {}  # as last read, same lifetime as the handles
        self._listed: dict[str, ListedDomain] = {}  # the latest listing's, each used by one read at most

    def forget(self, uuid: str) -> None:
        """Drop the handle of a domain that is gone."""
        with self._lock:
            self._handles.pop(uuid, None)
            self._persistent.pop(uuid, None)
            self._listed.pop(uuid, None)

    def offer(self, conn: libvirt.virConnect, uuid: str, dom: libvirt.virDomain) -> None:
        """Keep a handle an event callback received (on the event loop's thread): a fresh domain's
        first read then needs no lookup."""
        with self._lock:
            if self._handles_conn is conn and uuid not in self._handles:
                self._handles[uuid] = dom

    def prime(self, conn: libvirt.virConnect, listed: Iterable[ListedDomain]) -> None:
        """Keep a listing's handles, and what it read of each domain for that domain's next read if
        that is its RESYNC record's (``for_listing``): the XML is then the only call."""
        with self._lock:
            if self._handles_conn is not conn:
                self._handles_conn, self._handles, self._persistent = conn, {}, {}
            self._listed = {}
            for entry in listed:
                self._handles[entry.uuid] = entry.dom
                self._listed[entry.uuid] = entry
                if entry.persistent is not None:
                    self._persistent[entry.uuid] = entry.persistent

    def _handle(self, conn: libvirt.virConnect, uuid: str) -> libvirt.virDomain:
        with self._lock:
            if self._handles_conn is not conn:
                self._handles_conn, self._handles, self._persistent = conn, {}, {}
            dom = self._handles.get(uuid)
        if dom is None:
            dom = conn.lookupByUUIDString(uuid)
            with self._lock:
                if self._handles_conn is conn:
                    self._handles[uuid] = dom
        return dom

    def read(self, uuid: str, *, for_listing: bool = False, recheck_persistent: bool = True) -> DomainSnapshot | None:
        """The domain's snapshot, or None when libvirt says it does not exist.

        ``recheck_persistent`` False: the flag as last read, if this reader has it (the events since
        cannot have changed it, see :func:`may_change_persistence`).

        ``for_listing``: the read of a listing's RESYNC record (no events). The listing's state,
        reason, active and persistent flags stand for the domain, with the XML read now: a RESYNC
        record shows the domain as listed, and any change since is an event, which the next record
        reports with a full read. A ``PAUSED/MIGRATION`` domain is read in full, with its migration
        job, to check the listing's ownership decision (see :func:`migration_job`, which can take
        seconds). Raises ConnectionLost when the connection broke, so the work can be retried.
        """
        conn = self._session.connection()
        job = None
        with self._lock:
            listed = self._listed.pop(uuid, None) if self._handles_conn is conn else None
        if not for_listing or listed is None or listed.persistent is None or paused_for_migration(
                listed.state, listed.reason):
            listed = None
        try:
            dom = self._handle(conn, uuid)
            xml = dom.XMLDesc(0)
            if listed is not None and listed.persistent is not None:  # (checked above; narrows the type)
                state, reason, persistent = listed.state, listed.reason, listed.persistent
            else:
                state, reason = dom.state()
                with self._lock:
                    known = None if recheck_persistent else self._persistent.get(uuid)
                persistent = bool(dom.isPersistent()) if known is None else known
            if for_listing and paused_for_migration(state, reason):
                job = migration_job(dom)
        except libvirt.libvirtError as exc:
            code = exc.get_error_code()
            if code in GONE_ERRORS:
                self.forget(uuid)
                return None
            if code in _CONN_ERRORS or not _alive(conn):
                self._session.mark_lost()
                raise ConnectionLost(str(exc)) from exc
            raise
        active, name = xml_active_and_name(xml)
        with self._lock:
            if self._handles_conn is conn:
                self._persistent[uuid] = persistent
        if listed is not None:
            active = listed.active  # as listed, like the state
        return DomainSnapshot(
            uuid=uuid,
            name=name if name is not None else dom.name(),
            state=state_name(state),
            reason=reason_name(state, reason),
            active=active,
            persistent=persistent,
            xml=xml,
            observed_at=self._now(),
            job=job,
        )


def migration_job(dom: libvirt.virDomain) -> ListedJob:
    """What the domain's current job says about migration (the ownership rules' listing evidence).

    Recorded on libvirt 9.0 with QEMU 7.2 (``tests/fixtures/event_orders``): on an incoming
    migration's destination ``virDomainGetJobStats`` fails with ``VIR_ERR_OPERATION_UNSUPPORTED``
    ("migration statistics are available only on the source host"), read-only connections too; on
    the source it reports operation ``MIGRATION_OUT``; a domain restored paused from a save image
    shows the same ``PAUSED/MIGRATION`` state and reason but has no job at all (type ``NONE``).
    Connection errors propagate; any other failure (the domain just vanished, a driver without job
    statistics) is ``UNKNOWN``.
    """
    try:
        stats = dom.jobStats()
    except libvirt.libvirtError as exc:
        code = exc.get_error_code()
        if code == libvirt.VIR_ERR_OPERATION_UNSUPPORTED:
            return ListedJob.INCOMING
        if code in _CONN_ERRORS:
            raise
        return ListedJob.UNKNOWN
    if stats.get("type", libvirt.VIR_DOMAIN_JOB_NONE) == libvirt.VIR_DOMAIN_JOB_NONE:
        return ListedJob.NONE
    operation = stats.get("operation")
    if operation == libvirt.VIR_DOMAIN_JOB_OPERATION_MIGRATION_OUT:
        return ListedJob.OUTGOING
    if operation == libvirt.VIR_DOMAIN_JOB_OPERATION_MIGRATION_IN:
        return ListedJob.INCOMING
    return ListedJob.NONE


def paused_for_migration(state: int, reason: int) -> bool:
    """The one state and reason that take a migration job to interpret (see :mod:`bridge.core.ownership`)."""
    return (state, reason) == (libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_MIGRATION)


def _alive(conn: libvirt.virConnect) -> bool:
    try:
        return bool(conn.isAlive())
    except libvirt.libvirtError:
        return False


# Lifecycle events after which "Domain not found" means the domain is really gone.
_GONE_AFTER = {"UNDEFINED", "STOPPED"}


def implies_gone(events: tuple[DomainEvent, ...]) -> bool:
    """True if the last lifecycle event of ``events`` says the domain no longer exists here."""
    for event in reversed(events):
        if event.id == "LIFECYCLE":
            return event.type in _GONE_AFTER
    return False
