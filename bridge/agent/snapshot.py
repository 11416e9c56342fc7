"""Reading what a domain looks like now: XML, state, reason, flags and name.

The read happens after the events it reports were received (the seed's point 3). The XML is read
with flags 0, never ``VIR_DOMAIN_XML_SECURE``, so graphics passwords are left out; on the default
read-only connection libvirt would refuse the secure flag anyway.
"""

from __future__ import annotations

from dataclasses import dataclass

import libvirt

from bridge.agent.libvirt_names import reason_name, state_name
from bridge.agent.libvirt_session import ConnectionLost, LibvirtSession
from bridge.core.ownership import ListedJob
from bridge.core.version_clock import Clock

# Errors meaning "this domain does not exist (any more)".
_GONE = {libvirt.VIR_ERR_NO_DOMAIN}
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


class SnapshotReader:
    """Reads snapshots through the session's current connection."""

    def __init__(self, session: LibvirtSession, now: Clock) -> None:
        self._session = session
        self._now = now

    def read(self, uuid: str) -> DomainSnapshot | None:
        """The domain's snapshot, or None when libvirt says it does not exist.

        Raises ConnectionLost when the connection broke, so the work can be retried after reconnect.
        """
        conn = self._session.connection()
        try:
            dom = conn.lookupByUUIDString(uuid)
            # The lookup reply carries the domain's id and name: id != -1 is what virDomainIsActive
            # tests, so reading them locally saves a round-trip (they are as fresh as the lookup).
            active = dom.ID() != -1
            name = dom.name()
            xml = dom.XMLDesc(0)
            state, reason = dom.state()
            persistent = bool(dom.isPersistent())
        except libvirt.libvirtError as exc:
            code = exc.get_error_code()
            if code in _GONE:
                return None
            if code in _CONN_ERRORS or not _alive(conn):
                self._session.mark_lost()
                raise ConnectionLost(str(exc)) from exc
            raise
        return DomainSnapshot(
            uuid=uuid,
            name=name,
            state=state_name(state),
            reason=reason_name(state, reason),
            active=active,
            persistent=persistent,
            xml=xml,
            observed_at=self._now(),
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


def listed_state(dom: libvirt.virDomain) -> tuple[int, int, ListedJob]:
    """(state, reason, migration job) of a listed domain; the job is read only for ``PAUSED/MIGRATION``.

    That pair is ambiguous without the job (see :mod:`bridge.core.ownership`). The state is read
    again after the job, so a migration that ended between the two reads shows as its outcome
    (running, or gone) rather than as a paused domain with no job; a domain that vanished meanwhile
    keeps the first state with an ``UNKNOWN`` job. On a migration's source the job read can take
    seconds (5 to 10 s recorded, ``read_s`` in the fixtures) while QEMU is busy migrating.
    """
    state, reason = dom.state()
    if (state, reason) != (libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_MIGRATION):
        return state, reason, ListedJob.NONE
    job = migration_job(dom)
    try:
        state, reason = dom.state()
    except libvirt.libvirtError as exc:
        if exc.get_error_code() not in _GONE:
            raise
        return state, reason, ListedJob.UNKNOWN
    return state, reason, job


def _alive(conn: libvirt.virConnect) -> bool:
    try:
        return bool(conn.isAlive())
    except libvirt.libvirtError:
        return False
