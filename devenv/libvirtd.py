"""An isolated libvirtd ("host") in a private mount namespace, for tests, demos and benchmarks.

Fresh directories under the host's workdir are bind-mounted over libvirt's fixed paths
(/run/libvirt, /var/lib/libvirt, ...) inside a private mount namespace, so several hosts run side by
side, never touch the machine's own libvirt, and leave nothing behind once their processes exit.
"""

from __future__ import annotations

import contextlib
import pwd
import shlex
import shutil
import signal
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Literal
from uuid import uuid4
from xml.sax.saxutils import escape

import libvirt

from devenv._proc import (
    PDEATHSIG,
    DevEnvError,
    Service,
    kill_pid,
    log_tail,
    pid_alive,
    terminate,
    wait_until,
)

START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0
LIBVIRTD = "/usr/sbin/libvirtd"

# Host directory (under the host's root) -> the path libvirtd was built to use.
MOUNTS = {
    "run": "/run/libvirt",
    "lib": "/var/lib/libvirt",
    "cache": "/var/cache/libvirt",
    "log": "/var/log/libvirt",
    "etc": "/etc/libvirt",
}
SYSTEM_CAPS_CACHE = Path("/var/cache/libvirt/qemu")


class LibvirtHost(Service):
    """One libvirtd with its own config, state, sockets and (optionally) network namespace.

    Files live in ``workdir / name``. Connect from anywhere on the machine through
    :attr:`test_uri` (the daemon's shared test driver) or :attr:`qemu_uri` (real QEMU/TCG domains).
    ``netns`` runs the daemon inside an existing ``ip netns``; ``listen_addr`` makes it listen on
    TCP there (``qemu+tcp://addr/system``) and migrate over that address; ``peers`` maps other host
    names to addresses for the host's /etc/hosts. ``caps_cache`` is a QEMU capability cache to
    start from (default: the machine's /var/cache/libvirt/qemu); another host's
    ``path("cache") / "qemu"`` works too.
    """

    def __init__(
        self,
        workdir: Path,
        name: str = "host1",
        netns: str | None = None,
        listen_addr: str | None = None,
        *,
        peers: Mapping[str, str] | None = None,
        caps_cache: Path | None = None,
    ) -> None:
        self.name = name
        self.root = workdir / name
        self.netns = netns
        self.listen_addr = listen_addr
        self.peers = dict(peers or {})
        self.caps_cache = caps_cache if caps_cache is not None else SYSTEM_CAPS_CACHE
        # libvirt refuses a migration "to the same host" when two daemons share a host UUID.
        self.host_uuid = str(uuid4())
        self._proc: subprocess.Popen[bytes] | None = None

    # -- paths and URIs -----------------------------------------------------------------------------

    def path(self, key: str) -> Path:
        """Host-side directory that the daemon sees as ``MOUNTS[key]``."""
        return self.root / key

    @property
    def socket_path(self) -> Path:
        """The read-write UNIX socket."""
        return self.path("run") / "libvirt-sock"

    @property
    def socket_ro_path(self) -> Path:
        """The read-only UNIX socket."""
        return self.path("run") / "libvirt-sock-ro"

    @property
    def log_path(self) -> Path:
        """libvirtd's own log (warnings and errors)."""
        return self.path("log") / "libvirtd.log"

    @property
    def test_uri(self) -> str:
        """The daemon's test driver, shared by every process that connects to it."""
        return f"test+unix:///default?socket={self.socket_path}"

    @property
    def qemu_uri(self) -> str:
        """The daemon's QEMU driver."""
        return f"qemu+unix:///system?socket={self.socket_path}"

    @property
    def tcp_uri(self) -> str:
        """``qemu+tcp://listen_addr/system``, how other hosts reach this one (needs ``listen_addr``)."""
        if self.listen_addr is None:
            raise DevEnvError(f"libvirt host {self.name} has no listen_addr")
        return f"qemu+tcp://{self.listen_addr}/system"

    @property
    def running(self) -> bool:
        """True while the daemon's process tree is up."""
        return self._proc is not None and self._proc.poll() is None

    # -- lifecycle ----------------------------------------------------------------------------------

    def start(self) -> None:
        """Lay out fresh directories and config, start libvirtd and wait until its QEMU driver answers."""
        if self._proc is not None:
            raise DevEnvError(f"libvirt host {self.name} already started")
        _preflight()
        shutil.rmtree(self.root, ignore_errors=True)
        for key in MOUNTS:
            self.path(key).mkdir(parents=True)
        # As libvirt's packages do; serial-console files of domain_xml() guests go there.
        (self.path("log") / "qemu").mkdir()
        # Keeps whatever the packages ship (libvirt.conf, ...); the two files below replace defaults.
        shutil.copytree("/etc/libvirt", self.path("etc"), dirs_exist_ok=True)
        (self.path("etc") / "qemu.conf").write_text(self._qemu_conf())
        (self.path("etc") / "libvirtd.conf").write_text(self._libvirtd_conf())
        if self.caps_cache.is_dir():
            # Skips the QEMU capability probe (about 1.7 s on 2 cores) when it was done before.
            shutil.copytree(self.caps_cache, self.path("cache") / "qemu")
        (self.root / "hosts").write_text(self._etc_hosts())
        (self.root / "resolv.conf").write_text("nameserver 127.0.0.1\n")
        self._spawn_and_wait()

    def restart(self, *, kill: bool = False) -> None:
        """Stop the daemon (SIGTERM, or SIGKILL with ``kill``) and start it on the same directories.

        Running QEMU domains survive, as with a real libvirtd restart; clients see their close callback.
        """
        self._stop_daemon(kill=kill)
        self._spawn_and_wait()

    def kill(self) -> None:
        """SIGKILL libvirtd and leave it down (a crash); QEMU domains keep running. See :meth:`revive`."""
        self._stop_daemon(kill=True)

    def revive(self) -> None:
        """Start the daemon again after :meth:`kill`, on the same directories (an outage's end)."""
        if self.running:
            raise DevEnvError(f"libvirt host {self.name} is already running")
        self._spawn_and_wait()

    def stop(self) -> None:
        """Destroy and undefine every QEMU domain (best effort), stop the daemon, kill stray QEMUs."""
        if self.running:
            self._remove_domains()
        self._stop_daemon(kill=False)
        self._kill_qemus()

    # -- configuration ------------------------------------------------------------------------------

    def _qemu_conf(self) -> str:
        lines = [
            # No libvirt-qemu user/group games, no SELinux/AppArmor, no cgroups or per-domain mount
            # namespaces: none of those work (or are needed) in a container-like machine.
            'user = "root"',
            'group = "root"',
            "dynamic_ownership = 0",
            "remember_owner = 0",
            'security_driver = "none"',
            "cgroup_controllers = [ ]",
            "namespaces = [ ]",
            # QEMU writes its stdio straight to a file, so virtlogd is not needed.
            'stdio_handler = "file"',
        ]
        if self.listen_addr is not None:
            lines += [f'migration_address = "{self.listen_addr}"', f'migration_host = "{self.listen_addr}"']
        return "\n".join(lines) + "\n"

    def _libvirtd_conf(self) -> str:
        lines = [
            f'unix_sock_dir = "{MOUNTS["run"]}"',
            'unix_sock_ro_perms = "0777"',
            'unix_sock_rw_perms = "0700"',
            'auth_unix_ro = "none"',
            'auth_unix_rw = "none"',
            f'host_uuid = "{self.host_uuid}"',
            f'log_outputs = "3:file:{MOUNTS["log"]}/libvirtd.log"',
            # Without this, --listen dies looking for a CA certificate.
            "listen_tls = 0",
        ]
        if self.listen_addr is not None:
            lines += ["listen_tcp = 1", f'listen_addr = "{self.listen_addr}"', 'auth_tcp = "none"']
        return "\n".join(lines) + "\n"

    def _etc_hosts(self) -> str:
        entries = {"localhost": "127.0.0.1", **self.peers}
        if self.listen_addr is not None:
            entries[self.name] = self.listen_addr
        return "".join(f"{addr} {host}\n" for host, addr in entries.items())

    def _command(self) -> list[str]:
        q = shlex.quote
        script = ["set -e", f"hostname {q(self.name)}"]
        for key, target in MOUNTS.items():
            # Mount points must exist; these are the paths libvirt's own packages create.
            script += [f"mkdir -p {q(target)}", f"mount --bind {q(str(self.path(key)))} {q(target)}"]
        if self.netns is not None:
            # Name resolution for migration between hosts; the host's own files stay untouched.
            script += [
                f"mount --bind {q(str(self.root / 'hosts'))} /etc/hosts",
                f"mount --bind {q(str(self.root / 'resolv.conf'))} /etc/resolv.conf",
            ]
        daemon = [LIBVIRTD, "--pid-file", f"{MOUNTS['run']}/libvirtd.pid"]
        if self.listen_addr is not None:
            daemon.append("--listen")
        # tini -s is a subreaper: destroyed QEMUs are reaped at once, not left as zombies for ~1.5 s.
        script.append("exec tini -s -- " + " ".join(q(a) for a in daemon))
        netns = ["ip", "netns", "exec", self.netns] if self.netns is not None else []
        unshare = ["unshare", "--mount", "--uts", "--propagation", "private"]
        return [*PDEATHSIG, *netns, *unshare, "sh", "-c", "\n".join(script)]

    # -- processes ----------------------------------------------------------------------------------

    def _spawn_and_wait(self) -> None:
        out = self.root / "libvirtd.out"
        with out.open("ab") as f:
            self._proc = subprocess.Popen(self._command(), stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        proc = self._proc

        def alive() -> None:
            if proc.poll() is not None:
                raise DevEnvError(
                    f"libvirtd of {self.name} exited with {proc.returncode}:\n"
                    f"{log_tail(out)}\n{log_tail(self.log_path)}"
                )

        def answers() -> bool:
            # The socket appears before the QEMU driver is ready: wait on a real call through it.
            try:
                res = subprocess.run(
                    ["virsh", "-c", self.qemu_uri, "version"], capture_output=True, timeout=10, check=False
                )
            except subprocess.TimeoutExpired:
                return False
            return res.returncode == 0

        try:
            wait_until(answers, timeout=START_TIMEOUT, what=f"libvirtd of {self.name}", check=alive)
        except BaseException:
            self._stop_daemon(kill=True)
            raise

    def _daemon_pid(self) -> int | None:
        try:
            return int((self.path("run") / "libvirtd.pid").read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    def _stop_daemon(self, *, kill: bool) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        pid = self._daemon_pid()
        if kill and pid is not None:
            # SIGKILL must reach libvirtd itself: tini would die and orphan it.
            kill_pid(pid, signal.SIGKILL)
        terminate(proc, STOP_TIMEOUT)  # tini forwards SIGTERM to libvirtd and exits with it
        if pid is not None and pid_alive(pid) and _cmdline(pid).startswith(LIBVIRTD):
            kill_pid(pid, signal.SIGKILL)

    def _remove_domains(self) -> None:
        flags = (
            libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
            | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
            | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM
            | libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA
        )
        try:
            conn = libvirt.open(self.qemu_uri)
        except libvirt.libvirtError:
            return
        try:
            for dom in conn.listAllDomains():
                with contextlib.suppress(libvirt.libvirtError):
                    if dom.isActive():
                        dom.destroy()
                    if dom.isPersistent():
                        dom.undefineFlags(flags)
        finally:
            with contextlib.suppress(libvirt.libvirtError):
                conn.close()

    def _kill_qemus(self) -> None:
        # QEMUs outlive a daemon that died; their pid files are the only record of them.
        pids = []
        for pidfile in (self.path("run") / "qemu").glob("*.pid"):
            with contextlib.suppress(OSError, ValueError):
                pid = int(pidfile.read_text().strip())
                if pid_alive(pid) and "qemu" in _cmdline(pid):
                    kill_pid(pid, signal.SIGKILL)
                    pids.append(pid)
        if pids:
            wait_until(lambda: not any(pid_alive(p) for p in pids), timeout=STOP_TIMEOUT, what="stray QEMUs to die")


def domain_xml(
    name: str, *, kind: Literal["qemu", "test"] = "qemu", uuid: str | None = None, memory_mib: int = 64
) -> str:
    """XML of a minimal domain for the QEMU driver (a real TCG guest) or the test driver.

    The QEMU guest has no disk and no network; SeaBIOS keeps retrying the boot, so it simply stays
    running. ACPI is on because without it shutdown/reboot do nothing and hotplug fails.
    """
    uuid_el = f"<uuid>{escape(uuid)}</uuid>" if uuid else ""
    head = f"<name>{escape(name)}</name>{uuid_el}<memory unit='MiB'>{memory_mib}</memory><vcpu>1</vcpu>"
    if kind == "test":
        return f"<domain type='test'>{head}<os><type>hvm</type></os></domain>"
    serial = escape(f"{MOUNTS['log']}/qemu/{name}.serial.log", {"'": "&apos;"})
    return (
        f"<domain type='qemu'>{head}"
        "<os><type arch='x86_64' machine='pc'>hvm</type></os><features><acpi/></features>"
        "<devices><emulator>/usr/bin/qemu-system-x86_64</emulator>"
        f"<serial type='file'><source path='{serial}'/></serial>"
        "<memballoon model='none'/></devices></domain>"
    )


def _preflight() -> None:
    missing = [b for b in (LIBVIRTD, "tini", "virsh", "unshare", "setpriv") if shutil.which(b) is None]
    try:
        # The QEMU driver looks up its build-time user before reading qemu.conf, and exits without it.
        pwd.getpwnam("libvirt-qemu")
    except KeyError:
        missing.append("user libvirt-qemu")
    if missing:
        raise DevEnvError(f"missing {', '.join(missing)}: run deploy/dev/bootstrap.sh")


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""
