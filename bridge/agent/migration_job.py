"""What a domain's current job says about migration: the ownership rules' evidence in a listing.

Two states and reasons need it (see :mod:`bridge.core.ownership_rules`). ``PAUSED/MIGRATION``: an
incoming migration's destination, an outgoing one's source and a domain restored paused from a save
image all read that way, and only the job tells them apart. ``PAUSED/STARTING_UP``: every QEMU
domain reads that way while its process starts, a local start as well as an incoming migration's
destination before its ``STARTED/MIGRATED`` (a quarter to half a second here).
"""

from __future__ import annotations

import libvirt

from bridge.agent.libvirt_session import CONN_ERRORS
from bridge.core.ownership import ListedJob


def migration_job(dom: libvirt.virDomain) -> ListedJob:
    """What the domain's current job says about migration (the ownership rules' listing evidence).

    Recorded on libvirt 9.0 with QEMU 7.2 (``tests/fixtures/event_orders``): on an incoming
    migration's destination ``virDomainGetJobStats`` fails with ``VIR_ERR_OPERATION_UNSUPPORTED``
    ("migration statistics are available only on the source host"), read-only connections too, from
    the first moment the domain is listed there (``PAUSED/STARTING_UP``); on the source it reports
    operation ``MIGRATION_OUT``; a domain restored paused from a save image shows the same
    ``PAUSED/MIGRATION`` state and reason but has no job at all (type ``NONE``), and so does a
    domain starting up on its own host (``tests/fleet/test_migration.py`` samples both windows).
    Connection errors propagate; any other failure (the domain just vanished, a driver without job
    statistics) is ``UNKNOWN``.
    """
    try:
        stats = dom.jobStats()
    except libvirt.libvirtError as exc:
        code = exc.get_error_code()
        if code == libvirt.VIR_ERR_OPERATION_UNSUPPORTED:
            return ListedJob.INCOMING
        if code in CONN_ERRORS:
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


_JOB_DECIDES = {(libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_MIGRATION),
                (libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_STARTING_UP)}


def job_decides(state: int, reason: int) -> bool:
    """The states and reasons that take a migration job to interpret (see :mod:`bridge.core.ownership_rules`)."""
    return (state, reason) in _JOB_DECIDES
