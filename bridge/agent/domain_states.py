"""Many domains' state, reason and persistent flag, or just whether they exist, in one request.

``virDomainListGetStats`` of the state group answers for a list of domain handles at once. Its
persistence filters (``VIR_CONNECT_GET_ALL_DOMAINS_STATS_PERSISTENT`` / ``..._TRANSIENT``) leave out a
domain that does not match, as they leave out one that no longer exists; without a filter only the
gone are left out. The snapshot reader's groups (:mod:`bridge.agent.snapshot`) use the filtered form
after their XML reads, and the unfiltered one before them, to find which domains are gone.
"""

from __future__ import annotations

import libvirt


def bulk_states(conn: libvirt.virConnect, doms: list[libvirt.virDomain]) -> dict[str, tuple[int, int, bool]]:
    """(state, reason, persistent) by UUID of the ``doms`` that exist, in one request (two when some
    are not persistent): ``virDomainListGetStats`` of the state group, filtered by persistence,
    skips a domain that does not match or no longer exists (or changed persistence between the two)."""
    out: dict[str, tuple[int, int, bool]] = {}
    rest = [(dom.UUIDString(), dom) for dom in doms]
    for flag, persistent in ((libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_PERSISTENT, True),
                             (libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_TRANSIENT, False)):
        for dom, values in conn.domainListGetStats([d for _u, d in rest], libvirt.VIR_DOMAIN_STATS_STATE, flag):
            out[dom.UUIDString()] = int(values.get("state.state", 0)), int(values.get("state.reason", 0)), persistent
        rest = [(uuid, dom) for uuid, dom in rest if uuid not in out]
        if not rest:
            break
    return out


def existing(conn: libvirt.virConnect, doms: list[libvirt.virDomain]) -> set[str]:
    """UUIDs of the ``doms`` libvirt still has, in one request (no filter: it skips only the gone)."""
    return {dom.UUIDString() for dom, _values in conn.domainListGetStats(doms, libvirt.VIR_DOMAIN_STATS_STATE, 0)}
