"""A resync's listing: every domain of the host with its state, in as few libvirt round-trips as possible.

Round-trips are what a listing costs (a 10,000-domain host spent 1.9 s of its start-up resync in one
``virDomainGetState`` per domain, and its snapshot reads another four calls each). So a listing is:

- one ``virConnectGetAllDomainStats(STATE)``: every domain, its handle, state and reason, and whether
  it is active (the handle's id), in one reply;
- one ``virConnectListAllDomains(TRANSIENT)``: which of them are transient (usually few), so the
  RESYNC record's read need not ask each domain ``isPersistent``;
- for a ``PAUSED/MIGRATION`` or ``PAUSED/STARTING_UP`` domain only, its migration job (:func:`listed_state`).

A driver without bulk stats gets the per-domain calls instead. The handles and the persistence flags
are handed to the snapshot reader (:meth:`bridge.agent.snapshot.SnapshotReader.prime`), which uses
them once, for the RESYNC record's own read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import libvirt

from bridge.agent.migration_job import job_decides, migration_job
from bridge.agent.snapshot import GONE_ERRORS
from bridge.core.ownership import ListedJob


@dataclass(frozen=True)
class ListedDomain:
    """One domain as a listing read it (libvirt's state and reason ints)."""

    dom: Any
    """The domain handle (``libvirt.virDomain``), valid on the connection that listed it."""
    uuid: str
    state: int
    reason: int
    job: ListedJob
    active: bool
    persistent: bool | None
    """None when the listing could not tell (the reader then asks the domain)."""


def list_domains(conn: Any) -> list[ListedDomain]:
    """Every domain on ``conn`` (a ``libvirt.virConnect``); libvirt errors propagate."""
    try:
        stats = conn.getAllDomainStats(libvirt.VIR_DOMAIN_STATS_STATE)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() != libvirt.VIR_ERR_NO_SUPPORT:
            raise
        return [_listed(dom, *listed_state(dom), None) for dom in conn.listAllDomains(0)]
    transient = {d.UUIDString() for d in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_TRANSIENT)}
    out = []
    for dom, values in stats:
        state, reason = int(values.get("state.state", 0)), int(values.get("state.reason", 0))
        job = ListedJob.NONE
        if job_decides(state, reason):
            state, reason, job = listed_state(dom)
        out.append(_listed(dom, state, reason, job, dom.UUIDString() not in transient))
    return out


def _listed(dom: Any, state: int, reason: int, job: ListedJob, persistent: bool | None) -> ListedDomain:
    # The id comes with the handle in the reply: -1 for an inactive domain.
    return ListedDomain(dom, dom.UUIDString(), state, reason, job, dom.ID() != -1, persistent)


def listed_state(dom: libvirt.virDomain) -> tuple[int, int, ListedJob]:
    """(state, reason, migration job) of a listed domain; the job is read only where it decides.

    Those pairs are ambiguous without the job (see :mod:`bridge.core.ownership_rules`). The state is read
    again after the job, so a migration that ended between the two reads shows as its outcome
    (running, or gone) rather than as a paused domain with no job; a domain that vanished meanwhile
    keeps the first state with an ``UNKNOWN`` job. On a migration's source the job read can take
    seconds (5 to 10 s recorded, ``read_s`` in the fixtures) while QEMU is busy migrating; on a
    domain starting up here it waits for the start to end (about 0.3 s), as the bulk listing
    already does for such a domain, while an incoming one's is refused at once.
    """
    state, reason = dom.state()
    if not job_decides(state, reason):
        return state, reason, ListedJob.NONE
    job = migration_job(dom)
    try:
        state, reason = dom.state()
    except libvirt.libvirtError as exc:
        if exc.get_error_code() not in GONE_ERRORS:
            raise
        return state, reason, ListedJob.UNKNOWN
    return state, reason, job
