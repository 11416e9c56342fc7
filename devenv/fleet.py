"""Several libvirt hosts on one machine, joined by a private network: a fleet for live migration.

Layout (``notes/live-migration-on-one-machine.md``): one network namespace holds a Linux bridge;
each host ``N`` (1-based) gets a namespace of its own with a veth at ``10.231.0.N/24`` plugged into
that bridge, ``lo`` up and no default route, so traffic between hosts never leaves namespaces the
fleet made. Each host runs a :class:`~devenv.libvirtd.LibvirtHost` in its namespace, listening on
its address (``qemu+tcp://10.231.0.N/system``, migration over ``tcp://10.231.0.N``) and with a host
UUID of its own. Processes in the root namespace (agents, tests) reach every daemon through its
UNIX socket (:attr:`LibvirtHost.qemu_uri`), and Kafka on 127.0.0.1.

Namespace names carry the creating process id and a random tag, so fleets of parallel runs never
collide; a fleet left behind by a run that died (its pid gone) is swept when the next one starts.
:meth:`Fleet.stop` (also on a failed start) destroys and undefines every domain, stops the daemons,
kills every process left in the host namespaces (stray QEMUs) and deletes the namespaces.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import signal
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

import libvirt

from devenv._proc import DevEnvError, Service, kill_pid, pid_alive, wait_until
from devenv.libvirtd import LibvirtHost

SUBNET = "10.231.0"
"""Host ``N`` (1-based) is ``10.231.0.N``; the /24 lives only inside the fleet's namespaces."""
NETNS_PREFIX = "lkbf"
NET_TIMEOUT = 20.0
_OWNED = re.compile(rf"^{NETNS_PREFIX}-(\d+)-[0-9a-f]+-")


class Fleet(Service):
    """``hosts`` libvirtd hosts in network namespaces on one bridge; a context manager.

    ``fleet.hosts[i]`` is host ``i`` (0-based) at :meth:`address` ``10.231.0.{i+1}``.
    """

    def __init__(self, workdir: Path, hosts: int = 3, *, subnet: str = SUBNET) -> None:
        if not 1 <= hosts <= 200:
            raise ValueError("hosts must be between 1 and 200")
        self.workdir = workdir
        self.subnet = subnet
        self.tag = f"{os.getpid()}-{secrets.token_hex(3)}"
        self.bridge_ns = f"{NETNS_PREFIX}-{self.tag}-br"
        self.names = [f"{NETNS_PREFIX}-{self.tag}-h{i + 1}" for i in range(hosts)]
        peers = {name: self.address(i) for i, name in enumerate(self.names)}
        self.hosts: list[LibvirtHost] = []
        for i, name in enumerate(self.names):
            others = {n: a for n, a in peers.items() if n != name}
            # Host 1 probes QEMU's capabilities once; the others start from its cache.
            caps = None if i == 0 else workdir / self.names[0] / "cache" / "qemu"
            self.hosts.append(LibvirtHost(workdir, name=name, netns=name, listen_addr=self.address(i),
                                          peers=others, caps_cache=caps))
        self._namespaces: list[str] = []
        self._started = False

    # -- addressing ---------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.hosts)

    def address(self, i: int) -> str:
        """The address of host ``i`` (0-based) inside the fleet network."""
        return f"{self.subnet}.{i + 1}"

    def migrate_uri(self, i: int) -> str:
        """``tcp://address`` of host ``i``: where QEMU sends a migration stream for it."""
        return f"tcp://{self.address(i)}"

    def open(self, i: int) -> libvirt.virConnect:
        """A new read-write connection to host ``i``'s QEMU driver, from this (root) namespace."""
        return libvirt.open(self.hosts[i].qemu_uri)

    def qemu_pid(self, i: int, domain_name: str) -> int | None:
        """The pid of host ``i``'s QEMU process for a domain (from libvirt's pid file), if it runs."""
        try:
            pid = int((self.hosts[i].path("run") / "qemu" / f"{domain_name}.pid").read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        return pid if pid_alive(pid) else None

    # -- lifecycle ----------------------------------------------------------------------------------

    def start(self) -> None:
        """Sweep fleets of dead runs, make the network, start every daemon and check they see each other."""
        if self._started:
            raise DevEnvError("Fleet.start() called twice")
        self._started = True
        sweep_stale_namespaces()
        try:
            self._make_network()
            # One after the other, on this thread: daemons get SIGTERM when the thread that
            # started them ends (PDEATHSIG), so never start them from a short-lived thread.
            for host in self.hosts:
                host.start()
            self._check_connectivity()
        except BaseException:
            self.stop()
            raise

    def remove_domains(self) -> None:
        """Destroy and undefine every domain on every host (between tests); daemons keep running."""
        for i in range(len(self.hosts)):
            if not self.hosts[i].running:
                continue
            try:
                conn = self.open(i)
            except libvirt.libvirtError:
                continue
            try:
                _remove_all(conn)
            finally:
                with contextlib.suppress(libvirt.libvirtError):
                    conn.close()

    def stop(self) -> None:
        """Destroy/undefine every domain, stop every daemon, kill what is left, delete the namespaces."""
        errors = _in_parallel([h.stop for h in self.hosts], raise_first=False)
        for ns in reversed(self._namespaces):
            _kill_netns_processes(ns)
            _ip("netns", "del", ns, check=False)
        self._namespaces.clear()
        if errors:
            raise errors[0]

    # -- internals ----------------------------------------------------------------------------------

    def _add_netns(self, name: str) -> None:
        _ip("netns", "add", name)
        self._namespaces.append(name)
        _ip("-n", name, "link", "set", "lo", "up")

    def _make_network(self) -> None:
        br = self.bridge_ns
        self._add_netns(br)
        _ip("-n", br, "link", "add", "br0", "type", "bridge")
        _ip("-n", br, "link", "set", "br0", "up")
        for i, ns in enumerate(self.names):
            self._add_netns(ns)
            # Both ends are created straight in their namespaces: names only need to be unique there.
            _ip("link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", f"p{i + 1}", "netns", br)
            _ip("-n", br, "link", "set", f"p{i + 1}", "master", "br0")
            _ip("-n", br, "link", "set", f"p{i + 1}", "up")
            _ip("-n", ns, "addr", "add", f"{self.address(i)}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")

    def _check_connectivity(self) -> None:
        """Each host reaches the next one's libvirtd over TCP (the path peer-to-peer migration takes)."""
        n = len(self.hosts)
        if n < 2:
            return
        for i in range(n):
            j = (i + 1) % n
            cmd = ["ip", "netns", "exec", self.names[i], "virsh", "-c", self.hosts[j].tcp_uri, "uri"]

            def reaches(cmd: list[str] = cmd) -> bool:
                try:
                    return subprocess.run(cmd, capture_output=True, timeout=10, check=False).returncode == 0
                except subprocess.TimeoutExpired:
                    return False

            wait_until(reaches, timeout=NET_TIMEOUT, what=f"{self.names[i]} to reach {self.hosts[j].tcp_uri}")


def sweep_stale_namespaces() -> list[str]:
    """Delete fleet namespaces whose creating process is gone (a run killed before its teardown).

    Processes still inside them (QEMUs a dead daemon left) are killed first. Returns what was swept.
    """
    res = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False)
    swept = []
    for line in res.stdout.splitlines():
        name = line.split(" ", 1)[0]
        m = _OWNED.match(name)
        if m is None or pid_alive(int(m.group(1))):
            continue
        _kill_netns_processes(name)
        _ip("netns", "del", name, check=False)
        swept.append(name)
    return swept


def _kill_netns_processes(ns: str) -> None:
    res = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True, check=False)
    pids = [int(p) for p in res.stdout.split() if p.isdigit()]
    for pid in pids:
        kill_pid(pid, signal.SIGKILL)
    if pids:
        wait_until(lambda: not any(pid_alive(p) for p in pids), timeout=15, what=f"processes in {ns} to die")


def _remove_all(conn: libvirt.virConnect) -> None:
    flags = (libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
             | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM | libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA)
    for dom in conn.listAllDomains(0):
        with contextlib.suppress(libvirt.libvirtError):
            persistent = dom.isPersistent()
            if dom.isActive():
                with contextlib.suppress(libvirt.libvirtError):
                    dom.abortJob()  # a migration in progress
                dom.destroy()
            if persistent:
                dom.undefineFlags(flags)


def _ip(*args: str, check: bool = True) -> None:
    res = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if check and res.returncode != 0:
        raise DevEnvError(f"ip {' '.join(args)} failed: {res.stderr.strip()}")


def _in_parallel(calls: list[Callable[[], None]], *, raise_first: bool = True) -> list[BaseException]:
    """Run ``calls`` on threads and wait for all; raise the first error (or return the errors)."""
    errors: list[BaseException] = []
    lock = threading.Lock()

    def run(call: Callable[[], None]) -> None:
        try:
            call()
        except BaseException as exc:
            with lock:
                errors.append(exc)

    threads = [threading.Thread(target=run, args=(c,), daemon=True) for c in calls]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors and raise_first:
        raise errors[0]
    return errors

