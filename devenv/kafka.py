"""A real Apache Kafka cluster (KRaft, 1..n nodes on 127.0.0.1) run from the Maven-resolved jars."""

from __future__ import annotations

import base64
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from devenv._proc import PDEATHSIG, REPO_ROOT, DevEnvError, Service, log_tail, terminate, wait_until
from devenv.ports import LOOPBACK, free_ports

LIBS_ENV = "BRIDGE_KAFKA_LIBS"
START_TIMEOUT = 60.0
STOP_TIMEOUT = 20.0
BIND_ATTEMPTS = 3

JVM_OPTS = (
    "-Xmx512m",
    "-XX:+UseG1GC",
    "-XX:MaxGCPauseMillis=20",
    "-XX:+ExitOnOutOfMemoryError",
    "-Djava.awt.headless=true",
    # slf4j-simple is the binding; timestamps make the broker log line up with test logs.
    "-Dorg.slf4j.simpleLogger.showDateTime=true",
    "-Dorg.slf4j.simpleLogger.dateTimeFormat=HH:mm:ss.SSS",
)


def default_libs_dir() -> Path:
    """``$BRIDGE_KAFKA_LIBS``, else ``<repo>/.cache/kafka-libs`` (filled by deploy/dev/bootstrap.sh)."""
    env = os.environ.get(LIBS_ENV)
    return Path(env) if env else REPO_ROOT / ".cache" / "kafka-libs"


def new_cluster_id() -> str:
    """22-char base64url of 16 random bytes; Kafka rejects ids that start with '-'."""
    while True:
        cid = base64.urlsafe_b64encode(secrets.token_bytes(16)).decode("ascii").rstrip("=")
        if not cid.startswith("-"):
            return cid


@dataclass(frozen=True)
class _Node:
    node_id: int
    port: int
    controller_port: int
    dir: Path

    @property
    def address(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    @property
    def props(self) -> Path:
        return self.dir / "server.properties"

    @property
    def log(self) -> Path:
        return self.dir / "server.log"


class KafkaCluster(Service):
    """``nodes`` combined broker+controller JVMs in ``workdir``; node ``i`` (0-based) has node.id i+1.

    Ports and data dirs are fixed at the first :meth:`start`, so :meth:`stop_node` /
    :meth:`start_node` bring the same broker back with its data.
    """

    def __init__(self, workdir: Path, nodes: int = 1, libs_dir: Path | None = None) -> None:
        if nodes < 1:
            raise ValueError("nodes must be >= 1")
        self.workdir = workdir
        self.nodes = nodes
        self.libs_dir = libs_dir if libs_dir is not None else default_libs_dir()
        self.cluster_id = new_cluster_id()
        self._nodes: list[_Node] = []
        self._procs: dict[int, subprocess.Popen[bytes]] = {}
        # A class-data-sharing archive of the broker's classes halves JVM start-up (3.4 s -> 1.8 s
        # on 2 cores). The first cluster without one has node 0 dump it at exit (see _cds_opts).
        self._cds_archive = self.libs_dir.parent / f"{self.libs_dir.name}.jsa"
        self._cds_dump: Path | None = None

    # -- public API -------------------------------------------------------------------------------

    @property
    def bootstrap_servers(self) -> str:
        """Comma-separated ``127.0.0.1:port`` of every node."""
        self._require_started()
        return ",".join(n.address for n in self._nodes)

    def node_address(self, i: int) -> str:
        """``127.0.0.1:port`` of node ``i``."""
        self._require_started()
        return self._nodes[i].address

    def node_pid(self, i: int) -> int | None:
        """The JVM's pid of node ``i``; None while it is stopped."""
        self._require_started()
        proc = self._procs.get(i)
        return None if proc is None else proc.pid

    def log_path(self, i: int) -> Path:
        """The stdout/stderr log of node ``i``."""
        self._require_started()
        return self._nodes[i].log

    def start(self) -> None:
        """Write configs, format storage and start every node; wait until all brokers serve."""
        if self._nodes:
            raise DevEnvError("KafkaCluster.start() called twice")
        self._check_libs()
        for attempt in range(BIND_ATTEMPTS):
            try:
                self._start_once()
                return
            except _PortTaken:
                # A port picked as free was taken (e.g. by an outgoing connection) before the JVM
                # bound it: start over on fresh ports.
                self._nodes = []
                if attempt == BIND_ATTEMPTS - 1:
                    raise

    def stop_node(self, i: int, *, kill: bool = False) -> None:
        """Stop node ``i``: SIGTERM (controlled shutdown) or, with ``kill``, SIGKILL (a crash)."""
        proc = self._procs.pop(i, None)
        if proc is None:
            return
        if kill:
            proc.kill()
            proc.wait()
        else:
            terminate(proc, STOP_TIMEOUT)
        self._publish_cds()

    def start_node(self, i: int) -> None:
        """Start node ``i`` again on its ports and data; wait until it serves and is registered."""
        self._require_started()
        if i in self._procs:
            raise DevEnvError(f"kafka node {i} is already running")
        self._spawn(i)
        self._wait_ready(self._nodes[i].address, expect=[self._nodes[i].node_id], node=i)

    def wait_in_sync(self, timeout: float = 60.0) -> None:
        """Wait until every partition of every topic has its full replica set in the ISR."""

        admin = self._admin(self.bootstrap_servers)

        def in_sync() -> bool:
            md = admin.list_topics(timeout=5)
            return all(set(p.isrs) == set(p.replicas) for t in md.topics.values() for p in t.partitions.values())

        wait_until(_tolerant(in_sync), timeout=timeout, what="kafka ISR catch-up", interval=0.25)

    def stop(self) -> None:
        """SIGTERM every node at once, wait up to 20 s, SIGKILL what is left."""
        procs = list(self._procs.values())
        self._procs.clear()
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + STOP_TIMEOUT
        for proc in procs:
            terminate(proc, max(0.0, deadline - time.monotonic()))
        self._publish_cds()

    # -- internals --------------------------------------------------------------------------------

    def _start_once(self) -> None:
        ports = free_ports(2 * self.nodes)
        self._nodes = [
            _Node(i + 1, ports[2 * i], ports[2 * i + 1], self.workdir / f"node{i + 1}") for i in range(self.nodes)
        ]
        try:
            for node in self._nodes:
                shutil.rmtree(node.dir, ignore_errors=True)
                node.dir.mkdir(parents=True)
                node.props.write_text(self._properties(node))
            self._format()
            for i in range(self.nodes):
                self._spawn(i)
            self._wait_ready(self.bootstrap_servers, expect=range(1, self.nodes + 1))
        except BaseException:
            self.stop()
            raise

    def _require_started(self) -> None:
        if not self._nodes:
            raise DevEnvError("KafkaCluster is not started")

    def _check_libs(self) -> None:
        if not any(self.libs_dir.glob("kafka_2.13-*.jar")):
            raise DevEnvError(
                f"Kafka jars not found in {self.libs_dir}: run deploy/dev/bootstrap.sh "
                f"(or point ${LIBS_ENV} at a directory holding them)"
            )

    def _java(self, *args: str, cds: list[str] | None = None) -> list[str]:
        if cds is None:
            cds = [f"-XX:SharedArchiveFile={self._cds_archive}"] if self._cds_archive.is_file() else []
        return ["java", *JVM_OPTS, *cds, "-cp", f"{self.libs_dir}/*", *args]

    def _cds_opts(self, i: int) -> list[str] | None:
        """JVM options for node ``i``: use the shared archive, or have node 0 dump one at exit."""
        if self._cds_archive.is_file():
            return None
        if i == 0 and os.access(self._cds_archive.parent, os.W_OK):
            self._cds_dump = self._nodes[0].dir / "classes.jsa"
            return [f"-XX:ArchiveClassesAtExit={self._cds_dump}"]
        return []

    def _publish_cds(self) -> None:
        # os.replace is atomic, so concurrent clusters dumping at once never leave a torn archive;
        # the JVM validates the archive against the jars and ignores a stale one.
        if self._cds_dump is not None and 0 not in self._procs and self._cds_dump.is_file():
            os.replace(self._cds_dump, self._cds_archive)
            self._cds_dump = None

    def _properties(self, node: _Node) -> str:
        rf = min(3, self.nodes)
        min_isr = 2 if self.nodes >= 3 else 1
        voters = ",".join(f"{n.node_id}@{LOOPBACK}:{n.controller_port}" for n in self._nodes)
        props = {
            "process.roles": "broker,controller",
            "node.id": node.node_id,
            "controller.quorum.voters": voters,
            "listeners": f"PLAINTEXT://{node.address},CONTROLLER://{LOOPBACK}:{node.controller_port}",
            "advertised.listeners": f"PLAINTEXT://{node.address}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "log.dirs": node.dir / "data",
            "auto.create.topics.enable": "false",
            "num.partitions": 1,
            "default.replication.factor": rf,
            "min.insync.replicas": min_isr,
            "offsets.topic.replication.factor": rf,
            # 50 partitions (the default) per internal topic cost seconds of start-up on 2 cores.
            "offsets.topic.num.partitions": 5,
            "transaction.state.log.replication.factor": rf,
            "transaction.state.log.min.isr": min_isr,
            "transaction.state.log.num.partitions": 5,
            "share.coordinator.state.topic.replication.factor": rf,
            "share.coordinator.state.topic.min.isr": min_isr,
            "share.coordinator.state.topic.num.partitions": 5,
            "group.initial.rebalance.delay.ms": 0,
            # Compaction tests watch the cleaner; the default 128 MiB dedupe buffer needs a bigger heap.
            "log.cleaner.backoff.ms": 200,
            "log.cleaner.dedupe.buffer.size": 16777216,
            # Broker-loss tests: a stalled follower leaves the ISRs in 10 s instead of 30 s. (A killed
            # broker is fenced after broker.session.timeout.ms, 9 s; shorter risks spurious fencing on
            # a loaded 2-core machine.)
            "replica.lag.time.max.ms": 10000,
            # Three JVMs share two cores: fewer threads than the defaults.
            "num.network.threads": 2,
            "num.io.threads": 4,
            "num.recovery.threads.per.data.dir": 1,
            "background.threads": 4,
        }
        return "".join(f"{k}={v}\n" for k, v in props.items())

    def _format(self) -> None:
        # One JVM per node, run side by side: each takes a couple of seconds to start.
        procs = [
            (
                node,
                subprocess.Popen(
                    self._java("kafka.tools.StorageTool", "format", "-t", self.cluster_id, "-c", str(node.props)),
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                ),
            )
            for node in self._nodes
        ]
        failures = []
        for node, proc in procs:
            out, _ = proc.communicate()
            if proc.returncode != 0:
                failures.append(f"node {node.node_id}: {out.decode(errors='replace')[-2000:]}")
        if failures:
            raise DevEnvError("kafka storage format failed:\n" + "\n".join(failures))

    def _spawn(self, i: int) -> None:
        node = self._nodes[i]
        with node.log.open("ab") as log:
            self._procs[i] = subprocess.Popen(
                [*PDEATHSIG, *self._java("kafka.Kafka", str(node.props), cds=self._cds_opts(i))],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=node.dir,
            )

    def _admin(self, bootstrap: str) -> AdminClient:
        conf: dict[str, Any] = {
            "bootstrap.servers": bootstrap,
            # Connection-refused noise while the broker boots is expected, not worth printing.
            "log_level": 0,
            "error_cb": lambda _err: None,
        }
        return AdminClient(conf)

    def _wait_ready(self, bootstrap: str, expect: Iterable[int], node: int | None = None) -> None:
        admin = self._admin(bootstrap)
        expected = set(expect)
        watched = [node] if node is not None else list(range(self.nodes))

        def alive() -> None:
            for i in watched:
                proc = self._procs[i]
                if proc.poll() is not None:
                    log = self._nodes[i].log
                    error = _PortTaken if "Address already in use" in log_tail(log, 200) else DevEnvError
                    raise error(
                        f"kafka node {i} (node.id {self._nodes[i].node_id}) exited with {proc.returncode}; "
                        f"tail of {log}:\n{log_tail(log)}"
                    )

        def ready() -> bool:
            brokers = admin.list_topics(timeout=1).brokers
            return expected <= set(brokers)

        wait_until(_tolerant(ready), timeout=START_TIMEOUT, what=f"kafka at {bootstrap}", check=alive)


class _PortTaken(DevEnvError):
    """A node could not bind its listener port."""


def _tolerant(ready: Callable[[], bool]) -> Callable[[], bool]:
    """Treat a Kafka error from ``ready`` as 'not yet'."""

    def call() -> bool:
        try:
            return bool(ready())
        except KafkaException:
            return False

    return call
