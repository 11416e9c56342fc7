"""What the fleet tests watch: libvirt's own events per host, the consumer's changes, the agents' status."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import libvirt

from bridge.agent.libvirt_names import lifecycle_names
from bridge.consumer import Informer
from bridge.kafka_settings import KafkaSettings
from bridge.records import DomainRecord
from devenv import KafkaCluster, wait_until
from devenv.fleet import Fleet
from tests.support.agent_proc import AgentProcess
from tests.support.checks import decode_log
from tests.support.topics import Raw, read_all

# Event ids the fleet tests look at, besides LIFECYCLE.
_OTHER = ("MIGRATION_ITERATION", "JOB_COMPLETED")


@dataclass(frozen=True)
class Seen:
    """One libvirt event as an independent listener in the test process received it."""

    t: float
    """time.monotonic() on arrival."""
    host: int
    uuid: str
    label: str
    """``TYPE/DETAIL`` for lifecycle events (``RESUMED/MIGRATED``), else the event id name."""


class FleetRecorder:
    """libvirt's own event streams of every fleet host, recorded with arrival times (read-only connections).

    Needs libvirt's event loop running in this process (the ``libvirt_event_loop`` fixture).
    """

    def __init__(self, fleet: Fleet) -> None:
        self._cond = threading.Condition()
        self._seen: list[Seen] = []
        self._conns: list[tuple[libvirt.virConnect, list[int]]] = []
        for i, host in enumerate(fleet.hosts):
            conn = libvirt.openReadOnly(host.qemu_uri)
            ids = [conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._lifecycle(i), None)]
            ids += [conn.domainEventRegisterAny(None, getattr(libvirt, f"VIR_DOMAIN_EVENT_ID_{name}"),
                                                self._other(i, name), None) for name in _OTHER]
            self._conns.append((conn, ids))

    def _add(self, host: int, dom: libvirt.virDomain, label: str) -> None:
        seen = Seen(time.monotonic(), host, dom.UUIDString(), label)
        with self._cond:
            self._seen.append(seen)
            self._cond.notify_all()

    def _lifecycle(self, host: int) -> Callable[..., None]:
        def cb(_conn: Any, dom: libvirt.virDomain, event: int, detail: int, _opaque: Any) -> None:
            t, d = lifecycle_names(event, detail)
            self._add(host, dom, f"{t}/{d}")
        return cb

    def _other(self, host: int, name: str) -> Callable[..., None]:
        def cb(_conn: Any, dom: libvirt.virDomain, *_rest: Any) -> None:
            self._add(host, dom, name)
        return cb

    def events(self, uuid: str | None = None, host: int | None = None, since: float = 0.0) -> list[Seen]:
        with self._cond:
            return [s for s in self._seen if (uuid is None or s.uuid == uuid) and (host is None or s.host == host)
                    and s.t >= since]

    def labels(self, uuid: str, host: int, since: float = 0.0) -> list[str]:
        return [s.label for s in self.events(uuid, host, since)]

    def first(self, uuid: str, host: int, labels: tuple[str, ...], since: float = 0.0) -> Seen | None:
        return next((s for s in self.events(uuid, host, since) if s.label in labels), None)

    def wait(self, uuid: str, host: int, labels: tuple[str, ...], since: float = 0.0,
             timeout: float = 60.0) -> Seen:
        """The first of ``labels`` for ``uuid`` on ``host`` at or after ``since``, waiting for it."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = next((s for s in self._seen if s.uuid == uuid and s.host == host and s.t >= since
                              and s.label in labels), None)
                if found is not None:
                    return found
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no {labels} for {uuid} on host {host + 1} within {timeout}s; "
                                       f"saw {[x.label for x in self._seen if x.uuid == uuid and x.host == host]}")
                self._cond.wait(left)

    def timeline(self, uuid: str, since: float) -> str:
        """``uuid``'s events on every host since ``since``, with times relative to it (for messages)."""
        return ", ".join(f"+{s.t - since:.3f}s h{s.host + 1} {s.label}" for s in self.events(uuid, since=since))

    def close(self) -> None:
        for conn, ids in self._conns:
            for cb_id in ids:
                with contextlib.suppress(libvirt.libvirtError):
                    conn.domainEventDeregisterAny(cb_id)
            with contextlib.suppress(libvirt.libvirtError):
                conn.close()


@dataclass(frozen=True)
class Step:
    """One change the consumer's handlers delivered."""

    t: float
    kind: str
    """``add``, ``update`` or ``delete``."""
    uuid: str
    host: str
    version: int
    state: str | None
    reason: str | None


class ViewWatch:
    """An Informer watching the fleet for the whole module, recording every handler call with its time."""

    def __init__(self, settings: KafkaSettings) -> None:
        self.informer = Informer(settings)
        self._lock = threading.Lock()
        self._steps: list[Step] = []
        self.informer.add_handler(self._on("add"), lambda _old, new: self._record("update", new), self._on("delete"))

    def _on(self, kind: str) -> Callable[[DomainRecord], None]:
        return lambda rec: self._record(kind, rec)

    def _record(self, kind: str, rec: DomainRecord) -> None:
        step = Step(time.monotonic(), kind, rec.uuid, rec.host, rec.version, rec.state, rec.reason)
        with self._lock:
            self._steps.append(step)

    def start(self, timeout: float = 60.0) -> None:
        self.informer.start()
        assert self.informer.wait_for_sync(timeout), f"the watching informer did not sync: {self.informer.last_error}"

    def steps(self, uuid: str) -> list[Step]:
        with self._lock:
            return [s for s in self._steps if s.uuid == uuid]

    def wait_step(self, uuid: str, pred: Callable[[Step], bool], what: str, timeout: float = 30.0) -> Step:
        found: list[Step] = []

        def seen() -> bool:
            found[:] = [s for s in self.steps(uuid) if pred(s)][:1]
            return bool(found)

        wait_until(seen, timeout=timeout, what=what, interval=0.02)
        return found[0]

    def stop(self) -> None:
        self.informer.stop()


@dataclass
class FleetEnv:
    """Everything a fleet test drives: hosts, cluster, topics, agents, connections and watchers."""

    fleet: Fleet
    kafka: KafkaCluster
    topics: tuple[str, str]
    agents: list[AgentProcess]
    conns: list[libvirt.virConnect]
    recorder: FleetRecorder
    watch: ViewWatch
    host_ids: list[str] = field(default_factory=list)

    @property
    def settings(self) -> KafkaSettings:
        return KafkaSettings(self.kafka.bootstrap_servers, self.topics[0], self.topics[1])

    def host_index(self, host_id: str) -> int:
        return self.host_ids.index(host_id)

    def log(self, uuid: str | None = None) -> list[tuple[Raw, DomainRecord | None]]:
        """The domains topic decoded, in partition order; only ``uuid``'s messages if given."""
        log = decode_log(read_all(self.kafka.bootstrap_servers, self.topics[0]))
        if uuid is None:
            return log
        return [(raw, rec) for raw, rec in log if raw.key == uuid.encode()]

    def running_on(self, uuid: str) -> list[int]:
        """The hosts whose ``virsh list`` (active domains, through each host's socket) shows ``uuid``."""
        out = []
        for i, host in enumerate(self.fleet.hosts):
            res = subprocess.run(["virsh", "-c", host.qemu_uri, "list", "--uuid"], capture_output=True, text=True,
                                 check=True, timeout=30)
            if uuid in res.stdout.split():
                out.append(i)
        return out

    def state_cli(self) -> list[dict[str, Any]]:
        """``libvirt-kafka-bridge state --output json`` for the fleet's topics."""
        res = subprocess.run(
            [sys.executable, "-m", "bridge", "state", "--output", "json", "--bootstrap-servers",
             self.kafka.bootstrap_servers, "--topic", self.topics[0], "--hosts-topic", self.topics[1],
             "--sync-timeout", "90s"],  # a 3-broker cluster on 2 loaded cores can take over 30 s
            capture_output=True, text=True, timeout=150, check=False)
        assert res.returncode == 0, res.stderr
        return list(json.loads(res.stdout))


def agent_status(agent: AgentProcess) -> dict[str, Any]:
    """The agent's latest ``status.json`` (empty before the first one is written)."""
    try:
        return dict(json.loads((agent.state_dir / "status.json").read_text()))
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def caught_up(status: dict[str, Any]) -> bool:
    """Every event the agent received is published or counted as not owned, nothing waits or flies."""
    if not status:
        return False
    accounted = status["events_published"] + status["events_not_owned"] + status["events_elided"]
    return (status["events_received"] == accounted and status["domains_pending"] == 0
            and status["domains_in_flight"] == 0 and status["producer_queue"] == 0)


def wait_agent_caught_up(agent: AgentProcess, min_received: int = 0, timeout: float = 30.0) -> dict[str, Any]:
    """Wait until the agent has received at least ``min_received`` events and dealt with all of them."""
    last: dict[str, Any] = {}

    def done() -> bool:
        agent.check_alive()
        last.clear()
        last.update(agent_status(agent))
        return caught_up(last) and last["events_received"] >= min_received

    try:
        wait_until(done, timeout=timeout, what=f"agent {agent.host_id} to catch up", interval=0.05)
    except TimeoutError:
        raise AssertionError(f"agent {agent.host_id} did not catch up within {timeout}s: {last}\n"
                             f"tail of its log:\n{agent.tail(40)}") from None
    return last
