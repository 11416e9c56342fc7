"""Reading what a domain looks like now: XML, state, reason, flags and name.

The read happens after the events it reports were received (the seed's point 3). The XML is read
with flags 0, never ``VIR_DOMAIN_XML_SECURE``, so graphics passwords are left out; on the default
read-only connection libvirt would refuse the secure flag anyway.

Round-trips are the cost of a snapshot (each one is a request to libvirtd and its reply, and a wait
for the GIL when it is back), so the reader keeps them few:

- the ``active`` flag and the name come from the XML read itself (the live XML's root carries
  ``id='N'`` exactly when the domain is active, which is what ``virDomainIsActive`` tests);
- a domain handle looked up once is kept for the next reads of the same UUID on the same connection
  (a handle names the domain by UUID; every call on it is answered from the domain as it is then), or
  handed over by the event callback (:meth:`SnapshotReader.offer`), which has one already;
- the readers take several domains at a time (:meth:`SnapshotReader.read_many`): each one's XML, then
  the state, reason and persistent flag of them all in one ``virDomainListGetStats`` filtered by
  persistence (:mod:`bridge.agent.domain_states`; a second request only when some are transient);
- when two or more domains of a group are likely gone (their events say so, or most of the
  reader's recent reads found their domains gone, as in a define-undefine churn), the group first
  asks which of them still exist, in one unfiltered request: a gone domain then costs no XML call.

N domains are N + 1 round-trips (one more for a domain not looked up before, one more for the
existence check); a listing's RESYNC record is one, the XML, the rest coming from the listing
(:mod:`bridge.agent.listing`). A driver without ``virDomainListGetStats`` is asked each domain's state
and flag instead. The existence check stops for good at the first read libvirt refuses with "access
denied": access rules that let the agent see a domain but not read it (polkit ``domain:getattr``
without ``domain:read``) also leave it out of that request's answer, where it would look gone.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple, Protocol, TypeAlias

import libvirt

from bridge.agent.domain_states import bulk_states, existing
from bridge.agent.domain_xml import xml_active_and_name
from bridge.agent.libvirt_names import reason_name, state_name
from bridge.agent.libvirt_session import CONN_ERRORS, ConnectionLost
from bridge.agent.migration_job import job_decides, migration_job
from bridge.core.gone_share import GoneShare
from bridge.core.ownership import ListedJob
from bridge.core.version_clock import Clock
from bridge.records import DomainEvent

if TYPE_CHECKING:
    from bridge.agent.listing import ListedDomain

log = logging.getLogger(__name__)

# Errors meaning "this domain does not exist (any more)".
GONE_ERRORS = {libvirt.VIR_ERR_NO_DOMAIN}


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
    """The migration job, read only when asked for and the state is one the job decides."""


class Session(Protocol):
    """What the reader uses of the libvirt edge (:class:`bridge.agent.libvirt_session.LibvirtSession`)."""

    def connection(self) -> libvirt.virConnect:
        """The live connection; raises ConnectionLost while there is none."""

    def mark_lost(self) -> None:
        """Report a connection found dead by a failing call."""


class SnapshotRequest(NamedTuple):
    """One domain to read. ``for_listing``: the read of a listing's RESYNC record (no events)."""

    uuid: str
    for_listing: bool = False
    likely_gone: bool = False
    """The events say the domain is gone (see :func:`implies_gone`): with another such request in the
    group, whether it still exists is asked first (module doc), and no XML is read of one gone."""


SnapshotResult: TypeAlias = DomainSnapshot | libvirt.libvirtError | None
"""A read's outcome: the snapshot, None when the domain does not exist, or the libvirt error to retry."""


class SnapshotReader:
    """Reads snapshots through the session's current connection; safe from several threads.

    Keeps one domain handle per UUID (bounded by the domains on the host: a handle is forgotten when
    its domain is gone, and all of them when the connection changes).
    """

    def __init__(self, session: Session, now: Clock) -> None:
        self._session = session
        self._now = now
        self._lock = threading.Lock()  # guards the fields below (the reader threads share them)
        self._handles_conn: libvirt.virConnect | None = None
        self._handles: dict[str, libvirt.virDomain] = {}
        self._listed: dict[str, ListedDomain] = {}  # the latest listing's, each used by one read at most
        self._bulk_states = True  # False once the driver refused virDomainListGetStats
        self._check_first = True  # False once a read was refused access, or the existence check failed
        self._gone_share = GoneShare()  # high in a churn: check which domains exist first

    def forget(self, uuid: str) -> None:
        """Drop the handle of a domain that is gone."""
        with self._lock:
            self._handles.pop(uuid, None)
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
                self._handles_conn, self._handles = conn, {}
            self._listed = {}
            for entry in listed:
                self._handles[entry.uuid] = entry.dom
                self._listed[entry.uuid] = entry

    def reads_job(self, uuid: str) -> bool:
        """The listing's read of ``uuid`` will read its migration job too: the listing saw it
        ``PAUSED/MIGRATION`` or ``PAUSED/STARTING_UP``, and that job read can take seconds on a migration's source."""
        with self._lock:
            listed = self._listed.get(uuid)
        return listed is not None and job_decides(listed.state, listed.reason)

    def read(self, uuid: str, *, for_listing: bool = False) -> DomainSnapshot | None:
        """One domain's snapshot, or None when libvirt says it does not exist; raises what
        :meth:`read_many` returns or raises."""
        result = self.read_many([SnapshotRequest(uuid, for_listing)])[0]
        if isinstance(result, libvirt.libvirtError):
            raise result
        return result

    def read_many(self, requests: Sequence[SnapshotRequest]) -> list[SnapshotResult]:
        """The domains' snapshots, in the order asked: each XML, then the state, reason and persistent
        flag of them all in one ``virDomainListGetStats`` (two when some are transient); before the
        XML, for domains likely gone, which of them exist (module doc).

        A ``for_listing`` read takes the listing's state, reason, active and persistent flags, with
        the XML read now: a RESYNC record shows the domain as listed, and any change since is an
        event, which the next record reports with a full read. A ``PAUSED/MIGRATION`` or
        ``PAUSED/STARTING_UP`` domain is read in full, with its migration job, to check the listing's
        ownership decision (see :func:`migration_job`, which can take seconds). Raises ConnectionLost
        when the connection broke, so the work can be retried; any other libvirt error is that read's
        result.
        """
        conn = self._session.connection()
        try:
            return self._read_many(conn, requests)
        except libvirt.libvirtError as exc:  # raised only for a broken connection, see _failed
            self._session.mark_lost()
            raise ConnectionLost(str(exc)) from exc

    def _read_many(self, conn: libvirt.virConnect, requests: Sequence[SnapshotRequest]) -> list[SnapshotResult]:
        results: list[SnapshotResult] = [None] * len(requests)
        read: dict[int, tuple[libvirt.virDomain, str, ListedDomain | None]] = {}
        gone = self._absent(conn, requests)
        for i, request in enumerate(requests):
            uuid, for_listing = request.uuid, request.for_listing
            if i in gone:
                self.forget(uuid)
                continue
            listed = self._take_listed(conn, uuid) if for_listing else None
            try:
                dom = self._handle(conn, uuid)
                read[i] = dom, dom.XMLDesc(0), listed
            except libvirt.libvirtError as exc:
                results[i] = self._failed(conn, uuid, exc)
        asked = [(i, dom) for i, (dom, _xml, listed) in read.items() if listed is None]
        try:
            states = self._states(conn, [dom for _i, dom in asked])
        except libvirt.libvirtError as exc:  # says nothing of any one domain: all of them are retried
            if exc.get_error_code() in CONN_ERRORS or not _alive(conn):
                raise
            states = {}
            for i, _dom in asked:
                results[i] = exc
                read.pop(i)
        observed_at = self._now()
        for i, (dom, xml, listed) in read.items():
            uuid, for_listing = requests[i].uuid, requests[i].for_listing
            got = states.get(uuid) if listed is None else (listed.state, listed.reason, listed.persistent)
            if got is None or isinstance(got, libvirt.libvirtError):
                results[i] = got
                if got is None:  # gone between its XML and its state
                    self.forget(uuid)
                continue
            state, reason, persistent = got
            job = migration_job(dom) if for_listing and job_decides(state, reason) else None
            active, name = xml_active_and_name(xml)
            results[i] = DomainSnapshot(
                uuid=uuid, name=name if name is not None else dom.name(), state=state_name(state),
                reason=reason_name(state, reason), active=active if listed is None else listed.active,
                persistent=bool(persistent), xml=xml, observed_at=observed_at, job=job)
        with self._lock:
            self._gone_share.add(sum(result is None for result in results), len(requests))
        return results

    def _absent(self, conn: libvirt.virConnect, requests: Sequence[SnapshotRequest]) -> set[int]:
        """Indexes of the requests whose domains libvirt no longer has, by one unfiltered state request
        before any XML, for two or more likely gone: those whose events say so or, when most recent
        reads found their domains gone, all with a handle. A domain the request finds is read in
        full; one alone is not asked (its XML call is the check)."""
        with self._lock:
            if not (self._check_first and self._bulk_states):
                return set()
            churn = self._gone_share.high
            held = {i: self._handles.get(r.uuid) for i, r in enumerate(requests)
                    if (r.likely_gone or churn) and not r.for_listing and self._handles_conn is conn}
        doms = {i: dom for i, dom in held.items() if dom is not None}
        if len(doms) < 2:
            return set()
        try:
            found = existing(conn, list(doms.values()))
        except libvirt.libvirtError as exc:
            if exc.get_error_code() in CONN_ERRORS or not _alive(conn):
                raise
            self._stop_checking_first(f"libvirt refused it: {exc.get_error_message()}")
            return set()
        return {i for i in doms if requests[i].uuid not in found}

    def _stop_checking_first(self, why: str) -> None:
        with self._lock:
            was, self._check_first = self._check_first, False
        if was:
            log.info("no longer asking which domains exist before reading them (%s)", why)

    def _take_listed(self, conn: libvirt.virConnect, uuid: str) -> ListedDomain | None:
        """What the listing read of ``uuid``, if it can stand for the state: the listing knew the flag
        and the domain is in no state the job decides (read in full, job included)."""
        with self._lock:
            listed = self._listed.pop(uuid, None) if self._handles_conn is conn else None
        if listed is None or listed.persistent is None or job_decides(listed.state, listed.reason):
            return None
        return listed

    def _handle(self, conn: libvirt.virConnect, uuid: str) -> libvirt.virDomain:
        with self._lock:
            if self._handles_conn is not conn:
                self._handles_conn, self._handles = conn, {}
            dom = self._handles.get(uuid)
        if dom is None:
            dom = conn.lookupByUUIDString(uuid)
            with self._lock:
                if self._handles_conn is conn:
                    self._handles[uuid] = dom
        return dom

    def _failed(self, conn: libvirt.virConnect, uuid: str, exc: libvirt.libvirtError) -> SnapshotResult:
        """None when the domain is gone, the error when it is to be retried; raised when the
        connection broke."""
        code = exc.get_error_code()
        if code in GONE_ERRORS:
            self.forget(uuid)
            return None
        if code == libvirt.VIR_ERR_ACCESS_DENIED:
            # Access rules may hide domains from the existence check too (module doc).
            self._stop_checking_first(f"reading {uuid} was refused: {exc.get_error_message()}")
        if code in CONN_ERRORS or not _alive(conn):
            raise exc
        return exc

    def _states(self, conn: libvirt.virConnect,
                doms: list[libvirt.virDomain]) -> dict[str, tuple[int, int, bool] | libvirt.libvirtError]:
        """(state, reason, persistent) by UUID, read after the XML; a domain left out is gone.

        One the bulk request left out is asked on its own: gone, or its persistence changed between
        the two filtered requests, which must not read as a delete."""
        if not doms:
            return {}
        out: dict[str, tuple[int, int, bool] | libvirt.libvirtError] = {}
        if self._bulk_states:
            try:
                out.update(bulk_states(conn, doms))
            except libvirt.libvirtError as exc:
                if exc.get_error_code() not in (libvirt.VIR_ERR_NO_SUPPORT, libvirt.VIR_ERR_INVALID_ARG):
                    raise
                log.info("libvirt refused virDomainListGetStats (%s); reading each domain's state instead",
                         exc.get_error_message())
                self._bulk_states = False
        for dom in doms:
            uuid = dom.UUIDString()
            if uuid in out:
                continue
            try:
                state, reason = dom.state()
                out[uuid] = state, reason, bool(dom.isPersistent())
            except libvirt.libvirtError as exc:
                if self._failed(conn, uuid, exc) is not None:
                    out[uuid] = exc
        return out


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
