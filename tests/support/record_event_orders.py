"""Record real libvirt/QEMU event orders, states and migration jobs as JSON fixtures.

    python -m tests.support.record_event_orders tests/fixtures/event_orders [SCENARIO ...]

Each scenario runs against fresh isolated libvirtd daemons (:class:`devenv.LibvirtHost`; the
migration scenarios put two of them in network namespaces joined by a veth pair, as
``notes/live-migration-on-one-machine.md`` describes) and writes ``<scenario>.json``: per step, the
call made, every event libvirt delivered for the domain on every host (arrival order, seconds since
the call), and what a listing reads afterwards on each host that has the domain -- state, reason,
active, persistent and the migration job (:func:`bridge.agent.snapshot.migration_job`, with the raw
``virDomainGetJobStats`` answer). ``designed_owner`` is not recorded: it is the host that owns the
domain after the step by DESIGN.md, written here for the unit tests that replay the fixtures
(``tests/unit/test_ownership.py``).

After a call the recorder waits until no event has arrived for ``QUIET`` seconds (at most
``SETTLE`` seconds), or for a named event where the step is about a moment inside a migration.
Needs root, ``tini``, libvirtd and QEMU (``deploy/dev/bootstrap.sh``); ``qemu-img`` (Debian's
``qemu-utils``) for the snapshot scenario only.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import libvirt

from bridge.agent.event_loop import LibvirtEventLoop
from bridge.agent.libvirt_names import lifecycle_names, reason_name, state_name
from bridge.agent.migration_job import migration_job
from devenv import LibvirtHost, domain_xml, wait_until

QUIET = 0.5
SETTLE = 15.0
NETNS = {"A": ("lkbrec-a", "lkbreca0", "10.231.0.1"), "B": ("lkbrec-b", "lkbrecb0", "10.231.0.2")}
_OTHER_EVENTS = ("JOB_COMPLETED", "MIGRATION_ITERATION")


def event_label(type_: str, detail: str) -> str:
    return f"{type_}/{detail}"


@dataclass
class Host:
    name: str
    daemon: LibvirtHost
    conn: libvirt.virConnect
    callbacks: list[int] = field(default_factory=list)


class Recording:
    """The hosts of one scenario, its domain, and the steps recorded so far."""

    def __init__(self, hosts: dict[str, LibvirtHost]) -> None:
        self.hosts: dict[str, Host] = {}
        self.uuid: str | None = None
        self.guest_mib = 0
        self.steps: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._events: list[tuple[float, str, str]] = []
        for name, daemon in hosts.items():
            self.hosts[name] = Host(name, daemon, libvirt.open(daemon.qemu_uri))
            self._register(self.hosts[name])

    # -- events -----------------------------------------------------------------------------------

    def _register(self, host: Host) -> None:
        def lifecycle(_c: Any, dom: libvirt.virDomain, event: int, detail: int, _o: Any) -> None:
            self._add(host.name, dom, event_label(*lifecycle_names(event, detail)))

        def other(name: str) -> Callable[..., None]:
            return lambda _c, dom, *_rest: self._add(host.name, dom, name)

        host.callbacks = [host.conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, lifecycle,
                                                           None)]
        for name in _OTHER_EVENTS:
            host.callbacks.append(host.conn.domainEventRegisterAny(
                None, getattr(libvirt, f"VIR_DOMAIN_EVENT_ID_{name}"), other(name), None))

    def _add(self, host: str, dom: libvirt.virDomain, label: str) -> None:
        if self.uuid is not None and dom.UUIDString() != self.uuid:
            return
        with self._lock:
            self._events.append((time.monotonic(), host, label))

    def _take_events(self, since: float) -> list[dict[str, Any]]:
        with self._lock:
            taken, self._events = self._events, []
        return [{"host": h, "event": label, "t": round(t - since, 3)} for t, h, label in taken]

    def _wait_quiet(self, started: float, until: Callable[[], bool] | None) -> None:
        def settled() -> bool:
            if until is not None:
                return until()
            with self._lock:
                last = self._events[-1][0] if self._events else started
            return time.monotonic() - max(last, started) >= QUIET

        wait_until(settled, timeout=SETTLE, what="events to settle", interval=0.02)

    def seen(self, host: str, label: str) -> bool:
        with self._lock:
            return any(h == host and lbl == label for _t, h, lbl in self._events)

    # -- steps ------------------------------------------------------------------------------------

    def dom(self, host: str = "A") -> libvirt.virDomain:
        assert self.uuid is not None
        return self.hosts[host].conn.lookupByUUIDString(self.uuid)

    def step(self, host: str, call: str, action: Callable[[], object], owner: str | None,
             until: Callable[[], bool] | None = None) -> None:
        """Run ``action`` (described by ``call``) and record its events and the listings after it."""
        started = time.monotonic()
        action()
        self._wait_quiet(started, until)
        events = self._take_events(started)
        self.steps.append({"host": host, "call": call, "events": events, "listed": self.listings(),
                           "designed_owner": owner})
        print(f"  {host}: {call}: {[e['host'] + ' ' + e['event'] for e in events]}", file=sys.stderr)

    def listings(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, host in self.hosts.items():
            read_started = time.monotonic()
            try:
                dom = host.conn.lookupByUUIDString(self.uuid)
                state, reason = dom.state()
                entry: dict[str, Any] = {
                    "state": state_name(state), "reason": reason_name(state, reason),
                    "active": bool(dom.isActive()), "persistent": bool(dom.isPersistent()),
                }
                if entry["active"]:  # an inactive domain has no job to read
                    try:
                        stats = dom.jobStats()
                        entry["job_stats"] = {k: v for k, v in stats.items() if k in ("type", "operation")}
                    except libvirt.libvirtError as exc:
                        entry["job_stats_error"] = {"code": exc.get_error_code(), "message": str(exc)}
                    entry["job"] = migration_job(dom).value
            except libvirt.libvirtError as exc:
                if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                    raise
                continue  # no copy on this host
            entry["read_s"] = round(time.monotonic() - read_started, 3)
            out[name] = entry
        return out

    def close(self) -> None:
        for host in self.hosts.values():
            for cb in host.callbacks:
                with contextlib.suppress(libvirt.libvirtError):
                    host.conn.domainEventDeregisterAny(cb)
            with contextlib.suppress(libvirt.libvirtError):
                host.conn.close()

    def reopen(self, host: str) -> None:
        """After a daemon restart: a new connection with the callbacks registered again."""
        h = self.hosts[host]
        with contextlib.suppress(libvirt.libvirtError):
            h.conn.close()
        h.conn = libvirt.open(h.daemon.qemu_uri)
        self._register(h)


# -- scenarios --------------------------------------------------------------------------------------


def _define(rec: Recording, xml: str) -> libvirt.virDomain:
    dom = rec.hosts["A"].conn.defineXML(xml)
    rec.uuid = dom.UUIDString()
    return dom


def _boot(rec: Recording, xml: str) -> None:
    rec.guest_mib = int(xml.split("<memory unit='MiB'>", 1)[1].split("<", 1)[0])
    rec.step("A", "conn.defineXML(xml)", lambda: _define(rec, xml), "A", until=lambda: rec.seen("A", "DEFINED/ADDED"))
    # A boot's events can lag more than QUIET on a loaded machine; wait for the last one of them.
    rec.step("A", "dom.create()", lambda: rec.dom().create(), "A", until=lambda: rec.seen("A", "STARTED/BOOTED"))


def restore_paused(rec: Recording, work: Path) -> str:
    _boot(rec, domain_xml("rec-restore-paused"))
    img = str(work / "save.img")
    rec.step("A", "dom.suspend()", lambda: rec.dom().suspend(), "A")
    rec.step("A", "dom.save(path)", lambda: rec.dom().save(img), "A")
    rec.step("A", "conn.restore(path)", lambda: rec.hosts["A"].conn.restore(img), "A")

    def restart() -> None:
        rec.hosts["A"].daemon.restart()
        rec.reopen("A")

    rec.step("A", "restart libvirtd (SIGTERM, start again on the same directories)", restart, "A")
    rec.step("A", "dom.resume()", lambda: rec.dom().resume(), "A")
    rec.step("A", "dom.destroy()", lambda: rec.dom().destroy(), "A")
    return "Saved while paused, restored (comes back PAUSED/MIGRATION, no job), libvirtd restarted, resumed."


def restore_running(rec: Recording, work: Path) -> str:
    _boot(rec, domain_xml("rec-restore-running"))
    img = str(work / "save.img")
    rec.step("A", "dom.save(path)", lambda: rec.dom().save(img), "A")
    rec.step("A", "conn.restore(path)", lambda: rec.hosts["A"].conn.restore(img), "A")
    rec.step("A", "dom.destroy()", lambda: rec.dom().destroy(), "A")
    return "Saved while running, restored (comes back running)."


def restore_flag_paused(rec: Recording, work: Path) -> str:
    _boot(rec, domain_xml("rec-restore-flag-paused"))
    img = str(work / "save.img")
    rec.step("A", "dom.save(path)", lambda: rec.dom().save(img), "A")
    rec.step("A", "conn.restoreFlags(path, None, VIR_DOMAIN_SAVE_PAUSED)",
             lambda: rec.hosts["A"].conn.restoreFlags(img, None, libvirt.VIR_DOMAIN_SAVE_PAUSED), "A")
    rec.step("A", "dom.resume()", lambda: rec.dom().resume(), "A")
    rec.step("A", "dom.destroy()", lambda: rec.dom().destroy(), "A")
    return "Saved while running, restored with VIR_DOMAIN_SAVE_PAUSED, resumed."


def managed_save_start(rec: Recording, work: Path) -> str:
    _boot(rec, domain_xml("rec-managed-save"))
    rec.step("A", "dom.managedSave()", lambda: rec.dom().managedSave(), "A")
    rec.step("A", "dom.create()", lambda: rec.dom().create(), "A")
    rec.step("A", "dom.destroy()", lambda: rec.dom().destroy(), "A")
    return "Managed save of a running domain, then dom.create() restores it."


def managed_save_paused(rec: Recording, work: Path) -> str:
    _boot(rec, domain_xml("rec-managed-save-paused"))
    rec.step("A", "dom.suspend()", lambda: rec.dom().suspend(), "A")
    rec.step("A", "dom.managedSave()", lambda: rec.dom().managedSave(), "A")
    rec.step("A", "dom.create()", lambda: rec.dom().create(), "A")
    rec.step("A", "dom.resume()", lambda: rec.dom().resume(), "A")
    rec.step("A", "dom.destroy()", lambda: rec.dom().destroy(), "A")
    return "Managed save of a paused domain, dom.create() restores it paused, resumed."


def snapshot_revert(rec: Recording, work: Path) -> str:
    disk = work / "disk.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "16M"], check=True)
    xml = domain_xml("rec-snapshot").replace(
        "<devices>",
        f"<devices><disk type='file' device='disk'><driver name='qemu' type='qcow2'/>"
        f"<source file='{disk}'/><target dev='vda' bus='virtio'/></disk>", 1)
    _boot(rec, xml)
    flags = libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
    rec.step("A", "dom.snapshotCreateXML(<name>running</name>) (internal, with memory)",
             lambda: rec.dom().snapshotCreateXML("<domainsnapshot><name>running</name></domainsnapshot>"), "A")
    rec.step("A", "dom.suspend()", lambda: rec.dom().suspend(), "A")
    rec.step("A", "dom.revertToSnapshot(running)",
             lambda: rec.dom().revertToSnapshot(rec.dom().snapshotLookupByName("running")), "A")
    rec.step("A", "dom.suspend()", lambda: rec.dom().suspend(), "A")
    rec.step("A", "dom.snapshotCreateXML(<name>paused</name>) (internal, with memory)",
             lambda: rec.dom().snapshotCreateXML("<domainsnapshot><name>paused</name></domainsnapshot>"), "A")
    rec.step("A", "dom.resume()", lambda: rec.dom().resume(), "A")
    rec.step("A", "dom.revertToSnapshot(paused)",
             lambda: rec.dom().revertToSnapshot(rec.dom().snapshotLookupByName("paused")), "A")
    rec.step("A", "dom.resume()", lambda: rec.dom().resume(), "A")
    rec.step("A", "dom.destroy()", lambda: rec.dom().destroy(), "A")
    rec.step("A", "dom.revertToSnapshot(running) of the shut-off domain",
             lambda: rec.dom().revertToSnapshot(rec.dom().snapshotLookupByName("running")), "A")
    rec.step("A", "dom.destroy()", lambda: rec.dom().destroy(), "A")
    rec.dom().undefineFlags(flags)
    rec.uuid = None
    return ("Internal snapshots (qcow2 disk) taken running and paused; reverted while paused, while "
            "running and while shut off.")


def _migration(rec: Recording, live: bool) -> tuple[dict[str, Any], threading.Thread]:
    """Start a peer-to-peer migration A -> B in a thread (2 GiB guest at 1 MiB/s: seconds long)."""
    result: dict[str, Any] = {}
    dest = rec.hosts["B"].daemon
    flags = libvirt.VIR_MIGRATE_PEER2PEER | libvirt.VIR_MIGRATE_PERSIST_DEST | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE
    if live:
        flags |= libvirt.VIR_MIGRATE_LIVE
    src = rec.dom("A")

    def run() -> None:
        try:
            src.migrateToURI3(dest.tcp_uri, {libvirt.VIR_MIGRATE_PARAM_BANDWIDTH: 1,
                                             libvirt.VIR_MIGRATE_PARAM_URI: f"tcp://{NETNS['B'][2]}"}, flags)
            result["ok"] = True
        except libvirt.libvirtError as exc:
            result["error_code"] = exc.get_error_code()

    thread = threading.Thread(target=run, name="migrate")
    thread.start()
    return result, thread


def _migration_calls(live: bool) -> str:
    return ("dom.migrateToURI3('qemu+tcp://10.231.0.2/system', {bandwidth: 1, migrate_uri: tcp://10.231.0.2}, "
            f"PEER2PEER | PERSIST_DEST | UNDEFINE_SOURCE{' | LIVE' if live else ''}) in a thread")


def migrate_nonlive_success(rec: Recording, work: Path) -> str:
    _boot(rec, domain_xml("rec-migrate", memory_mib=6144))  # a window long enough for the listing reads
    box: dict[str, Any] = {}

    def start() -> None:
        box["result"], box["thread"] = _migration(rec, live=False)

    rec.step("A", _migration_calls(False) + ", waited for the source's SUSPENDED/MIGRATED", start, None,
             until=lambda: rec.seen("A", "SUSPENDED/MIGRATED") and rec.seen("B", "STARTED/MIGRATED"))

    def finish() -> None:
        box["thread"].join(120)
        assert box["result"].get("ok"), box["result"]

    rec.step("A", "the migration runs to completion (thread joined)", finish, "B")
    rec.step("B", "dom.destroy() on B", lambda: rec.dom("B").destroy(), "B")
    return ("Non-live peer-to-peer migration A -> B (the source is paused for the whole transfer): "
            "what both sides list mid-migration, and the completion.")


def migrate_nonlive_abort(rec: Recording, work: Path) -> str:
    _boot(rec, domain_xml("rec-migrate-abort", memory_mib=6144))  # a longer window to abort in
    box: dict[str, Any] = {}

    def start() -> None:
        box["result"], box["thread"] = _migration(rec, live=False)

    rec.step("A", _migration_calls(False) + ", waited for the source's SUSPENDED/MIGRATED", start, None,
             until=lambda: rec.seen("A", "SUSPENDED/MIGRATED") and rec.seen("B", "STARTED/MIGRATED"))

    def abort() -> None:
        rec.dom("A").abortJob()
        box["thread"].join(60)
        assert box["result"].get("error_code") is not None, box["result"]

    rec.step("A", "dom.abortJob() on A mid-transfer", abort, "A")
    rec.step("A", "dom.destroy() on A", lambda: rec.dom("A").destroy(), "A")
    return "Non-live migration A -> B aborted mid-transfer: the source takes the domain back."


def migrate_live_abort_in_switchover(rec: Recording, work: Path) -> str:
    _boot(rec, domain_xml("rec-migrate-switchover", memory_mib=2048))
    box: dict[str, Any] = {}

    def start() -> None:
        box["result"], box["thread"] = _migration(rec, live=True)

    def abort_at_switchover() -> None:
        wait_until(lambda: rec.seen("A", "SUSPENDED/MIGRATED") or not box["thread"].is_alive(), timeout=60,
                   what="the switch-over", interval=0.005)
        with contextlib.suppress(libvirt.libvirtError):
            rec.dom("A").abortJob()
        box["thread"].join(60)

    def start_and_abort() -> None:
        start()
        abort_at_switchover()

    rec.step("A", _migration_calls(True) + "; dom.abortJob() on A as soon as A's SUSPENDED/MIGRATED arrives",
             start_and_abort, "A")
    if box["result"].get("ok"):
        raise RuntimeError("the migration completed before the abort: the switch-over was missed, run again")
    rec.step("A", "dom.destroy() on A", lambda: rec.dom("A").destroy(), "A")
    return "Live migration A -> B aborted during the switch-over (the source already paused)."


# Racy, so not run by default: the switch-over lasts about 10 ms here, and the abort usually arrives
# after it (the migration then completes and the recorder raises). Seen once while exploring: source
# SUSPENDED/MIGRATED, RESUMED/UNPAUSED 11 ms later, destination STOPPED/FAILED.


SINGLE = {f.__name__: f for f in (restore_paused, restore_running, restore_flag_paused, managed_save_start,
                                  managed_save_paused, snapshot_revert)}
MIGRATION = {f.__name__: f for f in (migrate_nonlive_success, migrate_nonlive_abort)}
RACY = {f.__name__: f for f in (migrate_live_abort_in_switchover,)}


# -- hosts ------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _veth_pair() -> Iterator[None]:
    (na, va, aa), (nb, vb, ab) = NETNS["A"], NETNS["B"]

    def ip(*args: str) -> None:
        subprocess.run(["ip", *args], check=True)

    for ns in (na, nb):
        subprocess.run(["ip", "netns", "del", ns], stderr=subprocess.DEVNULL, check=False)
        ip("netns", "add", ns)
    try:
        ip("link", "add", va, "netns", na, "type", "veth", "peer", "name", vb, "netns", nb)
        for ns, dev, addr in ((na, va, aa), (nb, vb, ab)):
            ip("-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
            ip("-n", ns, "link", "set", dev, "up")
            ip("-n", ns, "link", "set", "lo", "up")
        yield
    finally:
        for ns in (na, nb):
            subprocess.run(["ip", "netns", "del", ns], check=False)


@contextlib.contextmanager
def _hosts(work: Path, migration: bool) -> Iterator[dict[str, LibvirtHost]]:
    with contextlib.ExitStack() as stack:
        if not migration:
            yield {"A": stack.enter_context(LibvirtHost(work, name="rec-a"))}
            return
        stack.enter_context(_veth_pair())
        hosts = {}
        for name, other in (("A", "B"), ("B", "A")):
            ns, _dev, addr = NETNS[name]
            hosts[name] = stack.enter_context(LibvirtHost(
                work, name=ns, netns=ns, listen_addr=addr, peers={NETNS[other][0]: NETNS[other][2]}))
        yield hosts


def _versions() -> dict[str, str]:
    major, rest = divmod(libvirt.getVersion(), 1_000_000)
    qemu = subprocess.run(["qemu-system-x86_64", "--version"], capture_output=True, text=True, check=True)
    return {
        "libvirt": f"{major}.{rest // 1000}.{rest % 1000}",
        "libvirt_python": _pkg_version("libvirt-python"),
        "qemu": qemu.stdout.splitlines()[0],
        "driver": "qemu:///system (TCG) in an isolated libvirtd (devenv.LibvirtHost)",
    }


def _pkg_version(name: str) -> str:
    return importlib.metadata.version(name)


def record(name: str, out: Path) -> None:
    migration = name in MIGRATION or name in RACY
    scenario = {**SINGLE, **MIGRATION, **RACY}[name]
    with tempfile.TemporaryDirectory(prefix=f"rec-{name}-") as tmp:
        work = Path(tmp)
        with _hosts(work, migration) as hosts:
            rec = Recording(hosts)
            try:
                about = scenario(rec, work)
            finally:
                if rec.uuid is not None:
                    for host in rec.hosts:
                        with contextlib.suppress(libvirt.libvirtError):
                            dom = rec.dom(host)
                            if dom.isActive():
                                dom.destroy()
                            dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
                                              | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA)
                rec.close()
    fixture = {
        "scenario": name,
        "about": about,
        "recorded": {
            **_versions(),
            "at": datetime.now(UTC).isoformat(timespec="seconds"),
            "by": f"python -m tests.support.record_event_orders {out} {name}",
            "guest": f"devenv.domain_xml: {rec.guest_mib} MiB (memory never touched), 1 vCPU, no network, "
                     "serial to a file, ACPI" + ("; a 16 MiB qcow2 disk" if name == "snapshot_revert" else ""),
            "event_wait": f"after each call, until no event for {QUIET} s (or a named event), at most {SETTLE} s",
            "hosts": {h: "isolated libvirtd" + (f" in netns at {NETNS[h][2]}" if migration else "")
                      for h in (("A", "B") if migration else ("A",))},
        },
        "designed_owner": "not recorded: the owner after each step by DESIGN.md, for the unit tests",
        "steps": rec.steps,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(fixture, indent=1) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("scenario", nargs="*", help=f"default: all of {', '.join([*SINGLE, *MIGRATION])}; "
                        f"on request only (racy): {', '.join(RACY)}")
    args = parser.parse_args(argv)
    unknown = [n for n in args.scenario if n not in SINGLE and n not in MIGRATION and n not in RACY]
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(unknown)}")
    if shutil.which("qemu-img") is None and (not args.scenario or "snapshot_revert" in args.scenario):
        print("qemu-img not found (Debian: qemu-utils): snapshot_revert needs it", file=sys.stderr)
        return 2
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)  # errors are raised; don't print them too
    with LibvirtEventLoop():
        for name in args.scenario or [*SINGLE, *MIGRATION]:
            print(f"{name}:", file=sys.stderr)
            record(name, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
