"""A fresh consumer view compared with libvirt's truth (what `virsh list --all` says)."""

from __future__ import annotations

import time

import libvirt

from bridge.agent.libvirt_names import reason_name, state_name
from bridge.consumer import Informer, Snapshot
from bridge.kafka_settings import KafkaSettings
from tests.support.agent_proc import wait_for


def fresh_view(bootstrap: str, topics: tuple[str, str], timeout: float = 60.0) -> Snapshot:
    """A brand-new informer, synced from the beginning of the topics."""
    with Informer(KafkaSettings(bootstrap, topics[0], topics[1])) as informer:
        assert informer.wait_for_sync(timeout), "the view did not sync"
        return informer.list()


def truth(conn: libvirt.virConnect) -> dict[str, tuple[str, str, str, bool, bool]]:
    """uuid -> (name, state, reason, active, persistent) for every domain libvirt has."""
    out = {}
    for dom in conn.listAllDomains(0):
        try:
            state, reason = dom.state()
            out[dom.UUIDString()] = (dom.name(), state_name(state), reason_name(state, reason),
                                     bool(dom.isActive()), bool(dom.isPersistent()))
        except libvirt.libvirtError:
            continue  # vanished while listing; the caller retries
    return out


def view_diff(snapshot: Snapshot, conn: libvirt.virConnect, host: str) -> list[str]:
    """Differences between the view's domains of ``host`` and libvirt's; empty when exact."""
    want = truth(conn)
    have = {r.uuid: (r.name, r.state, r.reason, r.active, r.persistent)
            for r in snapshot.domains.values() if r.host == host}
    diffs = [f"missing {u} {want[u]}" for u in sorted(set(want) - set(have))]
    diffs += [f"extra {u} {have[u]}" for u in sorted(set(have) - set(want))]
    diffs += [f"differs {u}: view {have[u]} libvirt {want[u]}" for u in sorted(set(want) & set(have))
              if have[u] != want[u]]
    return diffs


def wait_view_exact(bootstrap: str, topics: tuple[str, str], conn: libvirt.virConnect, host: str,
                    timeout: float = 90.0) -> float:
    """Poll fresh views until one equals libvirt's truth; returns the seconds it took."""
    start = time.monotonic()
    last: list[str] = []

    def exact() -> bool:
        nonlocal last
        last = view_diff(fresh_view(bootstrap, topics), conn, host)
        return not last

    try:
        wait_for(exact, timeout, "the view to equal libvirt's truth", interval=0.5)
    except TimeoutError:
        raise AssertionError(f"view != truth after {timeout}s: {last[:5]}") from None
    return time.monotonic() - start


def rss_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a process, in KiB."""
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(value.split()[0])
    return fields["VmRSS"], fields["VmHWM"]
