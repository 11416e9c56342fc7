"""Benchmarks against the real parts: ``make bench`` (``python -m tests.bench.run_all``).

Each ``bench_*.py`` module (named so pytest does not collect it) exposes ``TITLE``, ``NEEDS`` (which of
``"kafka"`` / ``"libvirt"`` it uses) and ``run(env) -> BenchResult``, and runs alone with
``python -m tests.bench.bench_<name>``. This package holds what they share:

- :class:`BenchEnv`: a real single-node Kafka (:class:`~devenv.KafkaCluster`) and an isolated
  libvirtd (:class:`~devenv.LibvirtHost`, test driver over ``test+unix``), stopped on exit even
  on failure;
- :class:`Metric` / :class:`BenchResult`, the table and the JSON files in ``bench-results/``;
- :class:`TopicTail`: a consumer thread that timestamps each record the moment it becomes visible;
- :func:`start_agent`: the real agent as a subprocess (:class:`tests.support.agent_proc.AgentProcess`);
- the workload generator that runs as a separate process (:func:`generator_main`, started with
  :func:`run_generator` / :func:`start_generator`), so libvirt calls and the process that listens
  never share a GIL.

Waits are on conditions with deadlines; the only sleeps are the generator's rate pacing.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid as uuid_mod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from devenv import wait_until
from devenv.pacing import Pacer

REPO_ROOT = Path(__file__).resolve().parents[2]
RESULTS_DIR = REPO_ROOT / "bench-results"

_T0 = time.monotonic()


def progress(message: str) -> None:
    """One progress line on stderr, with seconds since the bench process started."""
    print(f"[{time.monotonic() - _T0:6.1f}s] {message}", file=sys.stderr, flush=True)


def now_us() -> int:
    """Wall clock in microseconds: the clock the agent stamps ``received_at`` / ``observed_at`` with."""
    return time.time_ns() // 1000


def wait_for(cond: Callable[[], bool], timeout: float, what: str, *, check: Callable[[], None] | None = None,
             interval: float = 0.05) -> float:
    """Poll ``cond`` until true (returns the seconds it took) or raise TimeoutError naming ``what``."""
    return wait_until(cond, timeout=timeout, what=what, check=check, interval=interval)


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100) of ``values``; NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


# -- results ---------------------------------------------------------------------------------------


@dataclass
class Metric:
    """One number of the table; ``measures`` says exactly what was timed (printed in the legend)."""

    key: str
    label: str
    value: float
    unit: str
    measures: str


@dataclass
class BenchResult:
    name: str
    title: str
    metrics: list[Metric] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    error: str | None = None

    def add(self, key: str, label: str, value: float, unit: str, measures: str) -> None:
        self.metrics.append(Metric(key, label, value, unit, measures))

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "metrics": [asdict(m) for m in self.metrics]}


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "loadavg_1_5_15": [round(x, 2) for x in os.getloadavg()],
        "kernel": platform.release(),
    }
    with contextlib.suppress(Exception):
        import libvirt  # noqa: PLC0415

        v = libvirt.getVersion()
        info["libvirt"] = f"{v // 1_000_000}.{v // 1000 % 1000}.{v % 1000}"
    with contextlib.suppress(Exception):
        import confluent_kafka  # noqa: PLC0415

        info["librdkafka"] = confluent_kafka.libversion()[0]
    return info


def format_value(value: float) -> str:
    if isinstance(value, float) and math.isnan(value):
        return "n/a"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:,.1f}"
    return f"{value:,.2f}"


def print_table(results: Sequence[BenchResult], *, legend: bool = True) -> None:
    rows = [(m.label, format_value(m.value), m.unit) for r in results for m in r.metrics]
    width = max([len("benchmark"), *(len(label) for label, _, _ in rows)]) + 2
    print()
    print(f"{'benchmark':<{width}}{'value':>12}        unit")
    for label, value, unit in rows:
        print(f"{label:<{width}}{value:>12}        {unit}")
    for r in results:
        if r.error:
            print(f"{r.title + ' FAILED':<{width}}{'-':>12}        {r.error.splitlines()[0][:100]}")
    if legend:
        print("\nwhat each number measures:")
        for r in results:
            groups: dict[str, list[str]] = {}  # rows that measure the same thing share one line
            for m in r.metrics:
                groups.setdefault(m.measures, []).append(m.label)
            for measures, labels in groups.items():
                print(f"  {_condense(labels)}: {measures}")
            for note in r.notes:
                print(f"  note ({r.name}): {note}")
    print()


def _condense(labels: list[str]) -> str:
    """``["x p50", "x p99", "y p50"]`` -> ``"x p50/p99; y p50"``."""
    heads: dict[str, list[str]] = {}
    for label in labels:
        head, _, last = label.rpartition(" ")
        heads.setdefault(head, []).append(last)
    return "; ".join(f"{head} {'/'.join(lasts)}" if head else "/".join(lasts) for head, lasts in heads.items())


def write_results(results: Sequence[BenchResult], started_at: float, seconds: float,
                  directory: Path = RESULTS_DIR, *, summary: bool = True) -> Path:
    """``<directory>/<name>.json`` per benchmark and (with ``summary``) ``summary.json`` with all of them.

    Returns the summary's path, or the single result's path without ``summary``.
    """
    directory.mkdir(parents=True, exist_ok=True)
    machine = machine_info()
    for r in results:
        (directory / f"{r.name}.json").write_text(json.dumps({**r.to_json(), "machine": machine}, indent=2) + "\n")
    if not summary:
        return directory / f"{results[0].name}.json"
    doc = {
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started_at)),
        "seconds": round(seconds, 1),
        "machine": machine,
        "ok": all(r.error is None for r in results),
        "results": [r.to_json() for r in results],
    }
    path = directory / "summary.json"
    path.write_text(json.dumps(doc, indent=2) + "\n")
    return path


# -- the real environment --------------------------------------------------------------------------


class BenchEnv:
    """A single-node Kafka and/or an isolated libvirtd in a fresh work directory.

    libvirtd starts on entry, Kafka on first use of :attr:`kafka`. Everything started is stopped on
    exit, even on failure (a failed start included); the work directory (agent logs, broker
    log, libvirtd log) is deleted after a clean run and kept, with its path printed, after a failure.
    """

    def __init__(self, *, kafka: bool = True, libvirt: bool = True) -> None:
        self.want_kafka = kafka
        self.want_libvirt = libvirt
        self.workdir = Path(tempfile.mkdtemp(prefix="lkb-bench-"))
        self._stack = contextlib.ExitStack()
        self._keep = False
        self._kafka: Any = None
        self._libvirt: Any = None
        self.broker_warmup: Any = None
        """The :class:`~tests.bench.broker_warmup.Warmup` of the broker, once Kafka has started."""

    @property
    def kafka(self) -> Any:
        """The :class:`~devenv.KafkaCluster`, started on first use.

        Lazily, so a libvirt-only benchmark run first is not measured beside a JVM warming up; and
        warmed up under load (:mod:`tests.bench.broker_warmup`) before the first benchmark uses it.
        """
        if self._kafka is None:
            if not self.want_kafka:
                raise RuntimeError("this benchmark environment has no Kafka")
            from devenv import KafkaCluster  # noqa: PLC0415

            progress("starting a single-node Kafka (KRaft) ...")
            t = time.monotonic()
            self._kafka = self._stack.enter_context(KafkaCluster(self.workdir / "kafka", nodes=1))
            progress(f"kafka up at {self._kafka.bootstrap_servers} in {time.monotonic() - t:.1f}s")
            from tests.bench.broker_warmup import warm_up  # noqa: PLC0415

            self.broker_warmup = warm_up(self._kafka.bootstrap_servers, self._kafka.node_pid(0))
        return self._kafka

    @property
    def bootstrap(self) -> str:
        return str(self.kafka.bootstrap_servers)

    @property
    def libvirt(self) -> Any:
        """The :class:`~devenv.LibvirtHost`."""
        if self._libvirt is None:
            raise RuntimeError("this benchmark environment has no libvirtd")
        return self._libvirt

    @property
    def test_uri(self) -> str:
        return str(self.libvirt.test_uri)

    def libvirtd_pid(self) -> int | None:
        """The daemon's pid (from its pid file), e.g. to read its CPU use."""
        try:
            return int((self.libvirt.path("run") / "libvirtd.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def dir(self, name: str) -> Path:
        """A fresh sub-directory of the work directory."""
        path = self.workdir / f"{name}-{uuid_mod.uuid4().hex[:6]}"
        path.mkdir(parents=True)
        return path

    def __enter__(self) -> BenchEnv:
        from devenv import LibvirtHost  # noqa: PLC0415

        try:
            if self.want_libvirt:
                import libvirt  # noqa: PLC0415

                # The benchmarks' own calls raise their errors; libvirt's default handler would also
                # print each (10,000 "Domain not found" lines from one cleanup).
                libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
                progress("starting an isolated libvirtd ...")
                t = time.monotonic()
                self._libvirt = self._stack.enter_context(LibvirtHost(self.workdir / "libvirt", name="bench"))
                progress(f"libvirtd up in {time.monotonic() - t:.1f}s; test driver at {self._libvirt.test_uri}")
        except BaseException:
            self._close(failed=True)
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._close(failed=exc_type is not None)

    def keep_workdir(self) -> None:
        """Keep the work directory (logs) after exit, e.g. because a benchmark failed."""
        self._keep = True

    def _close(self, *, failed: bool) -> None:
        progress("stopping Kafka / libvirtd ...")
        try:
            self._stack.close()
        finally:
            if failed or self._keep:
                progress(f"work directory kept for its logs: {self.workdir}")
            else:
                shutil.rmtree(self.workdir, ignore_errors=True)


# -- the agent -------------------------------------------------------------------------------------


def start_agent(env: BenchEnv, name: str, domains_topic: str, hosts_topic: str, *, timeout: float = 60.0) -> Any:
    """The real agent (``python -m bridge run``) as a subprocess, started and through its first resync.

    Logs at INFO (the tests' helper logs DEBUG, which would cost the agent time per event), with the
    extra arguments in ``LKB_BENCH_AGENT_ARGS``, if any. Returns a
    started :class:`tests.support.agent_proc.AgentProcess`; the caller must ``terminate()`` / ``kill()``.
    """
    from tests.support.agent_proc import AgentProcess  # noqa: PLC0415

    workdir = env.dir(name)
    agent = AgentProcess(workdir, env.test_uri, env.bootstrap, domains_topic, hosts_topic, host_id="bench",
                         state_dir=workdir / "state")
    agent.args[agent.args.index("--log-level") + 1] = "INFO"
    # To try a setting side by side: LKB_BENCH_AGENT_ARGS="--kafka-config linger.ms=20" make bench
    agent.args += shlex.split(os.environ.get("LKB_BENCH_AGENT_ARGS", ""))
    progress(f"{name}: starting the agent (python -m bridge run --libvirt-uri {env.test_uri} --partitions 3 ...)")
    t = time.monotonic()
    try:
        agent.start(wait_resync=True, timeout=timeout)
    except BaseException:
        agent.kill()
        env.keep_workdir()
        raise
    assert agent.proc is not None
    progress(f"{name}: agent pid {agent.proc.pid} up and resynced in {time.monotonic() - t:.1f}s")
    return agent


def proc_status_kib(pid: int, field_name: str) -> int:
    """A ``kB`` field of /proc/<pid>/status (``VmHWM`` = peak RSS, ``VmRSS``); 0 if unreadable."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` so far (all threads)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return math.nan
    # Fields after the ")" start at field 3 (state); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def thread_cpu_seconds(pid: int) -> dict[int, tuple[str, float]]:
    """(kernel thread name, CPU seconds) per OS thread id of ``pid``."""
    out: dict[int, tuple[str, float]] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            head, rest = (task / "stat").read_text().rsplit(")", 1)
            fields = rest.split()
            out[int(task.name)] = head.split("(", 1)[1], (int(fields[11]) + int(fields[12])) / tick
    return out


def python_thread_names(pid: int) -> dict[int, str]:
    """OS thread id -> Python thread name of ``pid``, from ``py-spy dump`` (CPython does not name its
    OS threads, so the kernel calls them all ``python``); empty without py-spy."""
    exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(exe).exists():
        return {}
    with contextlib.suppress(OSError, subprocess.SubprocessError, ValueError):
        out = subprocess.run([exe, "dump", "--pid", str(pid), "--json", "--nonblocking"], capture_output=True,
                             text=True, timeout=30, check=True).stdout
        return {int(t["os_thread_id"]): str(t["thread_name"]) for t in json.loads(out)
                if t.get("os_thread_id") is not None and t.get("thread_name")}
    return {}


def thread_cpu_delta(pid: int, before: dict[int, tuple[str, float]], *, least: float = 0.05) -> dict[str, float]:
    """CPU seconds per thread since ``before`` (a :func:`thread_cpu_seconds`), by Python thread name
    where py-spy can tell it (a pool's numbered threads summed: ``snapshot-reader``), else the kernel's
    (librdkafka names its threads, ``rdk:broker1``); only threads that used at least ``least`` s."""
    names = python_thread_names(pid)
    out: dict[str, float] = {}
    for tid, (comm, seconds) in thread_cpu_seconds(pid).items():
        name = re.sub(r"_\d+$", "", names.get(tid, comm))
        out[name] = out.get(name, 0.0) + seconds - before.get(tid, (comm, 0.0))[1]
    return {k: round(v, 2) for k, v in sorted(out.items(), key=lambda kv: -kv[1]) if v >= least}


# -- watching the topic ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Seen:
    """A message of the domains topic and the moment (wall µs) the bench's consumer got it."""

    visible_us: int
    partition: int
    offset: int
    record: Any
    """The decoded DomainRecord (the raw value bytes if the tail does not decode); None for a tombstone."""


class TopicTail:
    """A consumer thread on every partition of ``topic``, from the high watermarks at :meth:`start`.

    No consumer group (manual assignment). Each message is stamped with the wall clock the moment the
    poll returned it, before it is decoded: that is when it became visible to a consumer. Values are
    decoded as DomainRecords unless ``decode`` is False.
    """

    def __init__(self, bootstrap: str, topic: str, *, decode: bool = True) -> None:
        from confluent_kafka import Consumer  # noqa: PLC0415

        from bridge.serde import RecordCodec  # noqa: PLC0415

        self.topic = topic
        self._decode = decode
        self._codec = RecordCodec()
        self._consumer = Consumer({
            "bootstrap.servers": bootstrap, "group.id": "bench-" + uuid_mod.uuid4().hex,
            "enable.auto.commit": False, "fetch.wait.max.ms": 100, "log_level": 3,
        })
        self._cond = threading.Condition()
        self._seen: list[Seen] = []
        self.events = 0
        self.records = 0
        self.tombstones = 0
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"tail:{topic}", daemon=True)

    def start(self, timeout: float = 30.0) -> TopicTail:
        """Assign every partition at its current end; waits (up to ``timeout``) for a fresh topic's leaders."""
        from confluent_kafka import KafkaException, TopicPartition  # noqa: PLC0415

        ends: list[Any] = []

        def ready() -> bool:
            try:
                meta = self._consumer.list_topics(self.topic, timeout=5)
                parts = meta.topics[self.topic].partitions
                if meta.topics[self.topic].error is not None or any(p.leader < 0 for p in parts.values()):
                    return False
                ends[:] = [TopicPartition(self.topic, p, self._consumer.get_watermark_offsets(
                    TopicPartition(self.topic, p), timeout=5)[1]) for p in sorted(parts)]
            except KafkaException:  # e.g. NOT_LEADER_FOR_PARTITION while a new topic settles
                return False
            return True

        wait_for(ready, timeout, f"topic {self.topic} to have leaders and offsets", interval=0.1)
        self._consumer.assign(ends)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)
        self._consumer.close()

    def __enter__(self) -> TopicTail:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def seen(self) -> list[Seen]:
        with self._cond:
            return list(self._seen)

    def wait(self, cond: Callable[[TopicTail], bool], timeout: float, what: str,
             check: Callable[[], None] | None = None) -> float:
        """Wait until ``cond(self)`` holds; returns the seconds it took."""
        start = time.monotonic()
        deadline = start + timeout
        with self._cond:
            while not cond(self):
                if self.errors:
                    raise RuntimeError(f"consumer of {self.topic}: {self.errors[0]}")
                if check is not None:
                    self._cond.release()
                    try:
                        check()
                    finally:
                        self._cond.acquire()
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what} "
                                       f"({self.events} events in {self.records} records seen)")
                self._cond.wait(min(left, 0.2))
        return time.monotonic() - start

    def _run(self) -> None:
        while not self._stop.is_set():
            # poll() returns as soon as one message is there; consume(n, timeout) would wait for n
            # messages or the whole timeout and stamp records late. Then take what else is buffered.
            first = self._consumer.poll(0.1)
            if first is None:
                continue
            visible = now_us()
            msgs = [first, *self._consumer.consume(num_messages=1000, timeout=0)]
            batch: list[Seen] = []
            for msg in msgs:
                if msg.error():
                    continue  # partition EOF and transient errors: the consumer goes on by itself
                part, offset, value = msg.partition(), msg.offset(), msg.value()
                assert part is not None and offset is not None  # always set on a consumed message
                if value is None or not self._decode:
                    batch.append(Seen(visible, part, offset, value))
                    continue
                try:
                    record = self._codec.decode_domain(value, msg.key()).record
                except Exception as exc:
                    with self._cond:
                        self.errors.append(f"undecodable message at {part}/{offset}: {exc}")
                        self._cond.notify_all()
                    continue
                batch.append(Seen(visible, part, offset, record))
            with self._cond:
                for s in batch:
                    if s.record is None:
                        self.tombstones += 1
                    else:
                        self.records += 1
                        self.events += len(s.record.events) if self._decode else 0
                self._seen.extend(batch)
                self._cond.notify_all()


def unique_topics(name: str) -> tuple[str, str]:
    tag = uuid_mod.uuid4().hex[:6]
    return f"bench.{name}.{tag}.domains", f"bench.{name}.{tag}.hosts"


# -- the workload generator (a separate process) ---------------------------------------------------

# The paced workload's cycle per domain, and the one lifecycle event the test driver emits for each.
CYCLE = ("create", "suspend", "resume", "destroy")
CYCLE_EVENT = {"create": "STARTED", "suspend": "SUSPENDED", "resume": "RESUMED", "destroy": "STOPPED"}


def _xml(name: str, uuid: str) -> str:
    from devenv import domain_xml  # noqa: PLC0415

    return domain_xml(name, kind="test", uuid=uuid)


def generator_main(argv: list[str] | None = None) -> int:
    """The workload generator's entry point (runs in its own process, see :func:`start_generator`).

    - ``tight --count N``: define then undefine N fresh domains as fast as possible (2N events);
    - ``pool-define --pool K`` / ``pool-remove``: define (shut off) / remove ``prefix-0..K-1``;
    - ``paced --pool K --rate R --ops N --out FILE``: N operations at R/s, round-robin over the pool,
      each domain cycling create → suspend → resume → destroy (one lifecycle event each; N must be a
      multiple of 4K so every domain ends shut off). FILE gets ``[uuid, op, before_us, after_us]`` per op;
    - ``churn --pool K --rate R --ops N --out FILE``: N operations at R/s, round-robin over ``prefix-0..K-1``,
      each name alternately defined and undefined (one DEFINED / UNDEFINED event each) with the same UUID
      every time, so the keys the agent sees stay K however long it runs; N must be a multiple of 2K so every
      domain ends undefined. FILE as for ``paced``.

    Prints one JSON line: ``{"ops", "start_us", "end_us", "seconds", "max_behind_s", "cpu_s"}``.
    """
    import libvirt  # noqa: PLC0415

    p = argparse.ArgumentParser(prog="bench-generator")
    p.add_argument("mode", choices=["tight", "pool-define", "pool-remove", "paced", "churn"])
    p.add_argument("--uri", required=True)
    p.add_argument("--prefix", required=True)
    p.add_argument("--count", type=int, default=0)
    p.add_argument("--pool", type=int, default=0)
    p.add_argument("--rate", type=float, default=0.0)
    p.add_argument("--ops", type=int, default=0)
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    conn = libvirt.open(args.uri)
    behind = 0.0
    cpu0 = time.process_time()
    try:
        if args.mode == "tight":
            xmls = [_xml(f"{args.prefix}-{i}", str(uuid_mod.uuid4())) for i in range(args.count)]
            start = now_us()
            for xml in xmls:
                conn.defineXML(xml).undefine()
            ops = 2 * args.count
        elif args.mode == "pool-define":
            start = now_us()
            for i in range(args.pool):
                conn.defineXML(_xml(f"{args.prefix}-{i}", str(uuid_mod.uuid4())))
            ops = args.pool
        elif args.mode == "pool-remove":
            start = now_us()
            ops = 0
            for dom in conn.listAllDomains(0):
                if dom.name().startswith(args.prefix + "-"):
                    if dom.isActive():
                        dom.destroy()
                    dom.undefine()
                    ops += 1
        elif args.mode == "churn":
            if args.ops % (2 * args.pool):
                raise SystemExit("--ops must be a multiple of 2 x --pool")
            uuids = [str(uuid_mod.uuid4()) for _ in range(args.pool)]
            xmls = [_xml(f"{args.prefix}-{k}", uuids[k]) for k in range(args.pool)]
            log: list[tuple[str, str, int, int]] = []
            start = now_us()
            pacer = Pacer(args.rate)
            for i in range(args.ops):
                pacer.wait_turn(i)
                k = i % args.pool
                define = (i // args.pool) % 2 == 0
                before = now_us()
                if define:
                    conn.defineXML(xmls[k])
                else:
                    conn.lookupByUUIDString(uuids[k]).undefine()
                log.append((uuids[k], "define" if define else "undefine", before, now_us()))
            ops = args.ops
            behind = pacer.max_behind
            assert args.out is not None
            args.out.write_text(json.dumps(log))
        else:
            if args.ops % (4 * args.pool):
                raise SystemExit("--ops must be a multiple of 4 x --pool")
            doms = [conn.lookupByName(f"{args.prefix}-{i}") for i in range(args.pool)]
            uuids = [d.UUIDString() for d in doms]
            log = []
            start = now_us()
            pacer = Pacer(args.rate)
            for i in range(args.ops):
                pacer.wait_turn(i)
                k = i % args.pool
                op = CYCLE[(i // args.pool) % 4]
                before = now_us()
                getattr(doms[k], op)()
                log.append((uuids[k], op, before, now_us()))
            ops = args.ops
            behind = pacer.max_behind
            assert args.out is not None
            args.out.write_text(json.dumps(log))
        end = now_us()
    finally:
        conn.close()
    print(json.dumps({"ops": ops, "start_us": start, "end_us": end, "seconds": (end - start) / 1e6,
                      "max_behind_s": round(behind, 4), "cpu_s": round(time.process_time() - cpu0, 3)}),
          flush=True)
    return 0


class Generator:
    """A running generator subprocess."""

    def __init__(self, mode: str, uri: str, prefix: str, **options: object) -> None:
        args = [sys.executable, "-c", "import sys; from tests.bench import generator_main; sys.exit(generator_main())",
                mode, "--uri", uri, "--prefix", prefix]
        for key, value in options.items():
            args += [f"--{key.replace('_', '-')}", str(value)]
        self.mode = mode
        self.proc = subprocess.Popen(args, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self._out: tuple[bytes, bytes] | None = None

    def check(self) -> None:
        """Raise if the generator exited with an error (for use as a wait's ``check``)."""
        if self.proc.poll() not in (None, 0):
            self.result()

    def result(self, timeout: float = 120.0) -> dict[str, Any]:
        """Wait for the generator and return its summary; RuntimeError if it failed."""
        if self._out is None:
            try:
                self._out = self.proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                raise
        out, err = self._out
        if self.proc.returncode != 0:
            raise RuntimeError(f"generator {self.mode} exited with {self.proc.returncode}: "
                               f"{err.decode(errors='replace')[-2000:]}")
        return dict(json.loads(out.decode().strip().splitlines()[-1]))

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def start_generator(mode: str, uri: str, prefix: str, **options: object) -> Generator:
    return Generator(mode, uri, prefix, **options)


def run_generator(mode: str, uri: str, prefix: str, timeout: float = 120.0, **options: object) -> dict[str, Any]:
    """Run a generator to completion and return its summary."""
    gen = Generator(mode, uri, prefix, **options)
    try:
        return gen.result(timeout)
    finally:
        gen.kill()


# -- running benchmarks ----------------------------------------------------------------------------


def run_one(module: Any, env: BenchEnv) -> BenchResult:
    """``module.run(env)``, timed; a failure becomes the result's ``error`` (and keeps the logs)."""
    progress(f"== {module.TITLE} ==")
    load = round(os.getloadavg()[0], 2)
    t = time.monotonic()
    try:
        result: BenchResult = module.run(env)
    except Exception as exc:
        import traceback  # noqa: PLC0415

        traceback.print_exc()
        env.keep_workdir()
        result = BenchResult(module.NAME, module.TITLE, error=f"{type(exc).__name__}: {exc}")
    result.seconds = round(time.monotonic() - t, 1)
    # Other work on the machine skews every number: keep the load next to them.
    result.details["loadavg_1m"] = {"before": load, "after": round(os.getloadavg()[0], 2)}
    progress(f"== {module.TITLE}: {'FAILED' if result.error else 'done'} in {result.seconds:.1f}s ==")
    return result


def exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit, so every ``finally`` / ``with`` stops what the run started."""

    def handler(signum: int, _frame: object) -> None:
        progress(f"received {signal.Signals(signum).name}; stopping everything started")
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


def main_one(module: Any) -> int:
    """Entry point of ``python -m tests.bench.bench_<name>``: its environment, it, the table, the JSON."""
    exit_on_sigterm()
    started = time.time()
    t = time.monotonic()
    with BenchEnv(kafka="kafka" in module.NEEDS, libvirt="libvirt" in module.NEEDS) as env:
        result = run_one(module, env)
    print_table([result])
    # Alone, a benchmark writes only its own file: summary.json stays the last full run's.
    path = write_results([result], started, time.monotonic() - t, summary=False)
    progress(f"wrote {path}")
    return 1 if result.error else 0


# -- the peer: `virsh event --all --loop --timestamp | kcat -P` ------------------------------------

# virsh's lifecycle words (virshDomainEventToString) -> the agent's lifecycle type names.
PEER_EVENT_TYPES = {"Defined": "DEFINED", "Undefined": "UNDEFINED", "Started": "STARTED", "Suspended": "SUSPENDED",
                    "Resumed": "RESUMED", "Stopped": "STOPPED", "Shutdown": "SHUTDOWN", "PMSuspended": "PMSUSPENDED",
                    "Crashed": "CRASHED"}


@dataclass(frozen=True)
class PeerLine:
    """One line the pipe published: ``<UTC ms timestamp>: event 'lifecycle' for domain '<name>': <Type> <Detail>``."""

    visible_us: int
    event_us: int
    """virsh's receipt time (virTimeStringNowRaw: UTC, millisecond precision)."""
    event: str
    domain: str
    type: str
    """The lifecycle type as the agent names it (``STARTED``), or the raw word for other events."""


def parse_peer_line(visible_us: int, value: bytes) -> PeerLine | None:
    """Parse one line virsh printed (None for lines that are not an event, e.g. virsh's banners)."""
    import calendar  # noqa: PLC0415

    text = value.decode(errors="replace").strip()
    try:
        stamp, rest = text.split(": event '", 1)
        event, rest = rest.split("' for domain '", 1)
        domain, rest = rest.split("': ", 1)
        date, _, tz = stamp.partition("+")
        whole, _, millis = date.partition(".")
        secs = calendar.timegm(time.strptime(whole, "%Y-%m-%d %H:%M:%S"))
        if tz not in ("", "0000"):
            return None
    except ValueError:
        return None
    word = rest.split(" ", 1)[0]
    return PeerLine(visible_us, secs * 1_000_000 + int(millis or 0) * 1000, event, domain,
                    PEER_EVENT_TYPES.get(word, word) if event == "lifecycle" else event)


class PeerPipe:
    """``stdbuf -oL virsh -r -c URI event --all --loop --timestamp | kcat -P -b BROKER -t TOPIC``.

    The user's comparison in issue 10: a bare pipe from libvirt's events to Kafka, no snapshot, no
    version, no key, kcat's (librdkafka's) default producer settings. The topic has one partition (a
    pipe has no key, so its only order is the partition's). :meth:`start` returns once a probe
    domain's event went all the way through, so the pipe's own start-up is not measured.
    """

    def __init__(self, env: BenchEnv, name: str) -> None:
        self.env = env
        self.topic = unique_topics(name)[0]
        self.workdir = env.dir(name)
        self.proc: subprocess.Popen[bytes] | None = None
        self.tail: TopicTail | None = None

    def start(self, timeout: float = 60.0) -> PeerPipe:
        from confluent_kafka.admin import AdminClient, NewTopic  # noqa: PLC0415

        for tool in ("kcat", "virsh", "stdbuf"):
            if shutil.which(tool) is None:
                raise RuntimeError(f"{tool} is not installed (deploy/dev/bootstrap.sh installs kcat, libvirt-clients)")
        admin = AdminClient({"bootstrap.servers": self.env.bootstrap})
        admin.create_topics([NewTopic(self.topic, 1, 1)])[self.topic].result(30)
        self.tail = TopicTail(self.env.bootstrap, self.topic, decode=False).start()
        log = (self.workdir / "pipe.log").open("wb")
        cmd = (f"stdbuf -oL virsh -q -r -c {shlex.quote(self.env.test_uri)} event --all --loop --timestamp"
               f" | kcat -q -P -b {shlex.quote(self.env.bootstrap)} -t {shlex.quote(self.topic)}")
        progress(f"peer: {cmd}")
        # Its own process group, so stop() ends both ends of the pipe.
        self.proc = subprocess.Popen(["bash", "-c", cmd], stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        log.close()
        probe = f"peer-probe-{uuid_mod.uuid4().hex[:6]}"
        deadline = time.monotonic() + timeout
        tries = 0
        while not any(line.domain.startswith(probe + "-") for line in self.lines()):
            self.check()
            if time.monotonic() > deadline:
                raise TimeoutError(f"the peer pipe published no probe event in {timeout:.0f}s")
            tries += 1
            run_generator("tight", self.env.test_uri, probe, count=1)  # DEFINED + UNDEFINED of one domain
            with contextlib.suppress(TimeoutError):
                self.tail.wait(lambda t: t.records > 0, 2.0, "the probe")
        progress(f"peer: pipe up (probe seen after {tries} attempt(s))")
        return self

    def check(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"the peer pipe exited with {self.proc.returncode}: "
                               f"{(self.workdir / 'pipe.log').read_text()[-1000:]}")

    def lines(self, start: int = 0) -> list[PeerLine]:
        assert self.tail is not None
        out = []
        for s in self.tail.seen()[start:]:
            line = parse_peer_line(s.visible_us, s.record or b"")
            if line is not None:
                out.append(line)
        return out

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        if self.tail is not None:
            self.tail.stop()
            self.tail = None

    def __enter__(self) -> PeerPipe:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- profiling the agent ----------------------------------------------------------------------------


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """This process's cyclic collector paused while a phase is measured, then back as it was.

    The stamping consumer (:class:`TopicTail`) runs in this process and keeps every record it saw; a
    full collection over them stopped it for 45 to 96 ms (2026-12-04), and every message that arrived
    meanwhile was stamped as visible when it ended: 23 of the 60 slowest events of one 1000/s phase
    share one stamp, taken just after a 45 ms collection here. That is the observer's pause, charged
    to whichever pipe was measured. The agent, the peer and the Kafka floor are measured alike.
    """
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


@contextlib.contextmanager
def profiled(pid: int, name: str) -> Any:
    """``py-spy record --threads --idle`` of ``pid`` while the block runs, when ``LKB_BENCH_PROFILE`` is set
    (to ``native``: with C frames; to ``gil``: only the thread holding the GIL; to ``cpu``: only the
    threads running, not those waiting).

    Writes ``bench-results/profiles/<name>.speedscope.json`` (open at speedscope.app) and
    ``<name>.txt``, the top functions by samples per thread (py-spy's raw format, collapsed here).
    A no-op without the variable or without py-spy (``pip install .[bench]``).
    """
    exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not os.environ.get("LKB_BENCH_PROFILE") or not Path(exe).exists():
        yield
        return
    out = RESULTS_DIR / "profiles"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.speedscope.json"
    # "native": C frames too (where a libvirt call waits: the socket or the GIL), at the cost of pausing
    # the process for each sample, so its timings are not the bench's; "gil": only the thread holding
    # the GIL, so the samples say who keeps the others waiting for it; "cpu": only threads running.
    mode = {"native": ["--idle", "--native"], "gil": ["--gil", "--nonblocking"],
            "cpu": ["--nonblocking"]}.get(os.environ["LKB_BENCH_PROFILE"], ["--idle", "--nonblocking"])
    procs = [subprocess.Popen([exe, "record", "--pid", str(pid), "--threads", "--rate", "200",
                               "--format", "speedscope", "--output", str(path), *mode],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    progress(f"py-spy recording pid {pid} -> {out / name}.*")
    try:
        yield
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGINT)
        for proc in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        if path.exists():
            (out / f"{name}.txt").write_text(summarize_speedscope(path))


def summarize_speedscope(path: Path, top: int = 12) -> str:
    """Per thread: share of samples by leaf function (self time, idle included) and by frame (total)."""
    doc = json.loads(path.read_text())
    frames = [f"{f['name']} ({Path(f.get('file', '?')).name}:{f.get('line', '?')})" for f in doc["shared"]["frames"]]
    lines: list[str] = []
    for prof in doc["profiles"]:
        samples = prof.get("samples", [])
        weights = prof.get("weights", [1] * len(samples))
        total = sum(weights) or 1
        leaf: dict[str, float] = {}
        inclusive: dict[str, float] = {}
        for stack, w in zip(samples, weights, strict=False):
            if not stack:
                continue
            leaf[frames[stack[-1]]] = leaf.get(frames[stack[-1]], 0) + w
            for name in {frames[i] for i in stack}:
                inclusive[name] = inclusive.get(name, 0) + w
        lines.append(f"== {prof.get('name', '?')}: {len(samples)} samples")
        lines.append("  self (leaf) time:")
        lines += [f"    {100 * w / total:5.1f}%  {n}" for n, w in sorted(leaf.items(), key=lambda kv: -kv[1])[:top]]
        lines.append("  total (inclusive) time:")
        lines += [f"    {100 * w / total:5.1f}%  {n}" for n, w in
                  sorted(inclusive.items(), key=lambda kv: -kv[1])[:top]]
    return "\n".join(lines) + "\n"
