"""The agent as a real subprocess (``python -m bridge run``), started and stopped by a test."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from devenv import wait_until
from tests.support.topics import host_records


def wait_for(cond: Callable[[], bool], timeout: float, what: str, interval: float = 0.1) -> None:
    """Poll ``cond`` until true or raise TimeoutError naming ``what`` (devenv.wait_until)."""
    wait_until(cond, timeout=timeout, what=what, interval=interval)


class AgentProcess:
    """``libvirt-kafka-bridge run`` in a subprocess with its own state dir and log file."""

    def __init__(self, workdir: Path, libvirt_uri: str, bootstrap: str, domains_topic: str, hosts_topic: str,
                 host_id: str = "host1", extra: list[str] | None = None, env: dict[str, str] | None = None,
                 state_dir: Path | None = None) -> None:
        self.workdir = workdir
        # Host ids may hold any character (a test uses "ce host/1"); file names get a safe form.
        safe = urllib.parse.quote(host_id, safe="")
        self.state_dir = state_dir or workdir / f"state-{safe}"
        self.bootstrap = bootstrap
        self.domains_topic = domains_topic
        self.hosts_topic = hosts_topic
        self.host_id = host_id
        self.args = [
            sys.executable, "-m", "bridge", "--log-level", "DEBUG", "run",
            "--libvirt-uri", libvirt_uri, "--bootstrap-servers", bootstrap, "--topic", domains_topic,
            "--hosts-topic", hosts_topic, "--host-id", host_id, "--state-dir", str(self.state_dir),
            # status.json is what tests wait on (never the log's wording): written every 200 ms.
            "--heartbeat-interval", "1s", "--partitions", "3", "--status-interval", "200ms",
            # Tests compare every event libvirt emitted with the log's records, over minutes: the
            # default lag (1 min) would compact that history away. test_compaction.py runs the default.
            "--compaction-lag", "1h",
            *(extra or []),
        ]
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / f"agent-{safe}.log"
        self._starts = 0

    def start(self, wait_resync: bool = True, timeout: float = 60.0) -> AgentProcess:
        self._starts += 1
        log = self.log_path.open("ab")
        log.write(f"\n==== start #{self._starts} ====\n".encode())
        log.flush()
        # The previous process's status says nothing about this one.
        (self.state_dir / "status.json").unlink(missing_ok=True)
        self.proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT, env=self.env)
        log.close()
        if wait_resync:
            self.wait_resyncs(1, timeout)
        return self

    def status(self) -> dict[str, Any]:
        """The running process's latest ``status.json`` ({} until its first one, every 200 ms)."""
        try:
            data: dict[str, Any] = json.loads((self.state_dir / "status.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):  # not yet written (it is replaced atomically)
            return {}
        return data

    def wait_resyncs(self, n: int, timeout: float = 60.0) -> None:
        """Wait until the running process completed ``n`` resyncs (status.json)."""
        def done() -> bool:
            self.check_alive()
            return int(self.status().get("resyncs_completed", 0)) >= n
        wait_for(done, timeout, f"{n} completed resync(s) of agent {self.host_id}")

    def wait_reconnects(self, n: int, timeout: float = 60.0) -> None:
        """Wait until this agent process reconnected to libvirt ``n`` times (status.json)."""
        def done() -> bool:
            self.check_alive()
            return int(self.status().get("libvirt_reconnects", 0)) >= n
        wait_for(done, timeout, f"{n} libvirt reconnect(s) of agent {self.host_id}")

    def wait_resync_after_reconnect(self, timeout: float = 60.0) -> None:
        """Wait until a resync listed after the latest reconnect completed (requests made meanwhile merge)."""
        def done() -> bool:
            self.check_alive()
            st = self.status()
            listed, connected = st.get("resync_last_listed_at"), st.get("libvirt_connected_at")
            return (int(st.get("libvirt_reconnects", 0)) >= 1 and listed is not None and connected is not None
                    and listed >= connected)
        wait_for(done, timeout, f"a resync after agent {self.host_id}'s latest reconnect")

    def wait_host_record(self, timeout: float = 60.0) -> None:
        wait_for(lambda: any(h.host == self.host_id and h.resync_id for h in
                             host_records(self.bootstrap, self.hosts_topic)),
                 timeout, "a HostRecord with an inventory")

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"agent exited with {self.proc.returncode}:\n{self.tail()}")

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait; returns the exit status."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            self.kill()

    def kill(self) -> None:
        """SIGKILL if still running (also the teardown safety net)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
