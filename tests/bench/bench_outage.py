"""Benchmark 7: the agent's memory across a broker outage, 10,000 domains under churn (issue 10, target 4b).

Defines ``DOMAINS`` domains in the isolated libvirtd (test driver, every other one started, as
:mod:`tests.bench.bench_scale` does), starts the real agent (:func:`tests.bench.start_agent`) and waits
for its start-up resync to be acknowledged: a consumer of the hosts topic sees the HostRecord whose
inventory lists every domain. From then on the agent's ``VmRSS`` is sampled every second, with the
``producer_queue`` / ``domains_pending`` / ``domains_in_flight`` of its ``status.json``.

1. ``before``: the generator (``churn`` mode, its own process) starts defining and undefining
   ``CHURN_POOL`` further domains at ``CHURN_RATE`` operations/s (the same names and UUIDs each cycle,
   one DEFINED / UNDEFINED event per operation) and keeps at it to the end of the outage; ``PRE_S``
   seconds of it with the broker up give the baseline;
2. ``outage``: the Kafka node is stopped (:meth:`devenv.KafkaCluster.stop_node`: SIGTERM, a controlled
   shutdown; the JVM exits, so the port refuses connections) and left down ``OUTAGE_S`` seconds
   (``LKB_BENCH_OUTAGE_S``, default 300), then started again on the same port and log directory
   (:meth:`~devenv.KafkaCluster.start_node`, which returns once the broker serves);
3. ``recovery``: timed from the broker serving again until the agent has caught up: a consumer of the
   domains topic has seen, for every churned domain, the DELETED record of its last undefine, a
   heartbeat newer than the restart is visible on the hosts topic, and ``status.json`` shows nothing
   pending, in flight or queued in the producer. ``POST_S`` more seconds of samples follow.

Reported: RSS before the outage (the last sample before the stop), the maximum and minimum during the
outage (samples from the node's exit to its restart), their spread ``max / min - 1`` (target <= 5 %),
and RSS after recovery; the time series goes into the result's details (``rss_outage.png``). The churn
reuses its UUIDs so the agent's keys stay ``DOMAINS + CHURN_POOL``: fresh UUIDs would make every
domain defined and undefined during the outage a DELETED record the agent must keep until Kafka is
back, memory that grows with the outage by design. All domains are undefined afterwards, so the
benchmarks that follow find the libvirtd empty, and the broker is always started again.

``python -m tests.bench.bench_outage`` (``LKB_BENCH_OUTAGE_S=30`` for a quick check)
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import threading
import time
import uuid as uuid_mod
from typing import Any

from tests.bench import (
    BenchEnv,
    BenchResult,
    TopicTail,
    main_one,
    now_us,
    proc_status_kib,
    progress,
    start_agent,
    start_generator,
    unique_topics,
    wait_for,
)
from tests.bench.bench_scale import _define, _inventory_seen_at, _undefine

NAME = "outage"
TITLE = "10,000-domain host: agent RSS across a broker outage under churn"
NEEDS = ("kafka", "libvirt")

DOMAINS = 10_000
OUTAGE_S = float(os.environ.get("LKB_BENCH_OUTAGE_S", "300"))
PRE_S = 30.0
POST_S = 15.0
CHURN_RATE = 20.0
CHURN_POOL = 50
TIMEOUT = 240.0
RECOVER_TIMEOUT = 180.0
SPREAD_TARGET = 0.05


class _Sampler:
    """A thread reading the agent's VmRSS (and status.json's backlog) once a second, on a fixed schedule."""

    def __init__(self, agent: Any) -> None:
        self.agent = agent
        self.t0 = time.monotonic()
        self.wall0 = time.time()
        self.samples: list[dict[str, Any]] = []
        self.marks: dict[str, float] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def __enter__(self) -> _Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def mark(self, name: str) -> float:
        at = round(time.monotonic() - self.t0, 3)
        with self._lock:
            self.marks[name] = at
        return at

    def between(self, start: str, end: str) -> list[float]:
        """RSS MiB of the samples taken between two marks."""
        with self._lock:
            lo, hi = self.marks[start], self.marks[end]
            return [s["rss_mib"] for s in self.samples if lo <= s["t"] <= hi]

    def last_before(self, mark: str) -> float:
        with self._lock:
            at = self.marks[mark]
            return next((s["rss_mib"] for s in reversed(self.samples) if s["t"] <= at), math.nan)

    def _run(self) -> None:
        assert self.agent.proc is not None
        pid = self.agent.proc.pid
        n = 0
        while not self._stop.is_set():
            st = self.agent.status()
            rss = proc_status_kib(pid, "VmRSS")
            sample = {"t": round(time.monotonic() - self.t0, 3), "rss_mib": round(rss / 1024, 2),
                      "producer_queue": st.get("producer_queue"), "domains_pending": st.get("domains_pending"),
                      "domains_in_flight": st.get("domains_in_flight")}
            with self._lock:
                self.samples.append(sample)
            n += 1
            self._stop.wait(max(0.0, self.t0 + n - time.monotonic()))  # the sampling schedule, not a wait on state


class _QuietTail(TopicTail):
    """A :class:`~tests.bench.TopicTail` whose consumer does not log every refused connection (~20 lines/s)
    while the broker is down; the same consumer settings otherwise."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        from confluent_kafka import Consumer  # noqa: PLC0415

        super().__init__(bootstrap, topic)
        self._consumer.close()
        self._consumer = Consumer({
            "bootstrap.servers": bootstrap, "group.id": "bench-" + uuid_mod.uuid4().hex,
            "enable.auto.commit": False, "fetch.wait.max.ms": 100, "log_level": 0,
        })


def _until(seconds_from: float, seconds: float, what: str, check: Any) -> None:
    """Let ``seconds`` pass from the monotonic instant ``seconds_from``, checking the processes on the way."""
    wait_for(lambda: time.monotonic() >= seconds_from + seconds, seconds + 30, what, check=check, interval=0.5)


def _heartbeat_after(tail: TopicTail, codec: Any, wall_us: int) -> bool:
    return any(s.record is not None and codec.decode_host(s.record).record.heartbeat_at > wall_us for s in tail.seen())


def run(env: BenchEnv) -> BenchResult:
    import libvirt  # noqa: PLC0415

    from bridge.agent.topics import prepare_topics  # noqa: PLC0415
    from bridge.kafka_settings import KafkaSettings  # noqa: PLC0415
    from bridge.records import RecordKind  # noqa: PLC0415
    from bridge.serde import RecordCodec  # noqa: PLC0415

    ops = math.ceil(CHURN_RATE * (PRE_S + OUTAGE_S) / (2 * CHURN_POOL)) * 2 * CHURN_POOL
    result = BenchResult(NAME, TITLE, params={"domains": DOMAINS, "outage_s": OUTAGE_S, "pre_s": PRE_S,
                                              "churn_rate": CHURN_RATE, "churn_pool": CHURN_POOL, "churn_ops": ops,
                                              "broker_outage": "KafkaCluster.stop_node (SIGTERM, JVM exits)"})
    domains_topic, hosts_topic = unique_topics(NAME)
    prepare_topics(KafkaSettings(bootstrap_servers=env.bootstrap, domains_topic=domains_topic,
                                 hosts_topic=hosts_topic), partitions=3, replication_factor=1,
                   control_topic=None, timeout=30)
    codec = RecordCodec()
    # The test driver's shared state lives while a connection is open: this one stays open to the end.
    conn = libvirt.open(env.test_uri)
    progress(f"{NAME}: defining {DOMAINS:,} domains (bench_scale's helper) ...")
    uuids = _define(conn, DOMAINS, f"outage-{uuid_mod.uuid4().hex[:6]}")
    want = set(uuids)
    prefix = f"churn-{uuid_mod.uuid4().hex[:6]}"
    log_path = env.dir(NAME) / "churn.json"
    agent: Any = None
    gen: Any = None
    broker_down = False
    try:
        with TopicTail(env.bootstrap, hosts_topic, decode=False) as hosts:
            agent = start_agent(env, NAME, domains_topic, hosts_topic, timeout=TIMEOUT)
            hosts.wait(lambda t: _inventory_seen_at(t, codec, want) is not None, TIMEOUT,
                       "the HostRecord listing every domain", check=agent.check_alive)
        progress(f"{NAME}: start-up inventory of {DOMAINS:,} acknowledged; sampling the agent's RSS every second")

        def alive() -> None:
            agent.check_alive()
            if gen is not None:
                gen.check()

        with _Sampler(agent) as sampler, _QuietTail(env.bootstrap, domains_topic) as recs:
            sampler.mark("sampling")
            gen = start_generator("churn", env.test_uri, prefix, pool=CHURN_POOL, rate=CHURN_RATE, ops=ops,
                                  out=log_path)
            churn_t = time.monotonic()
            sampler.mark("churn_start")
            progress(f"{NAME}: churn of {CHURN_POOL} domains at {CHURN_RATE:.0f} ops/s started ({ops:,} ops); "
                     f"{PRE_S:.0f}s with the broker up")
            _until(churn_t, PRE_S, "the pre-outage period", alive)
            sampler.mark("stop_begin")
            broker_down = True
            env.kafka.stop_node(0)
            down_t = time.monotonic()
            sampler.mark("broker_down")
            progress(f"{NAME}: broker stopped (JVM exited {down_t - churn_t - PRE_S:.1f}s after SIGTERM); "
                     f"down for {OUTAGE_S:.0f}s")
            _until(down_t, OUTAGE_S, "the outage", alive)
            sampler.mark("restart_begin")
            env.kafka.start_node(0)
            broker_down = False
            up_wall = now_us()
            up_t = time.monotonic()
            sampler.mark("broker_up")
            progress(f"{NAME}: broker serving again after {up_t - down_t:.1f}s down; waiting for the agent to catch up")
            churn = gen.result(timeout=RECOVER_TIMEOUT)
            last_undefine: dict[str, int] = {}
            for uuid, op, before, _after in json.loads(log_path.read_text()):
                if op == "undefine":
                    last_undefine[uuid] = before

            def churn_final(tail: TopicTail) -> bool:
                done = {s.record.uuid for s in tail.seen() if s.record is not None
                        and s.record.kind is RecordKind.DELETED
                        and s.record.observed_at >= last_undefine.get(s.record.uuid, math.inf)}
                return done >= last_undefine.keys()

            def drained() -> bool:
                st = agent.status()
                return st.get("written_at", 0) > up_wall and not any(
                    st.get(k) for k in ("producer_queue", "domains_pending", "domains_in_flight"))

            recovered = True
            try:
                with TopicTail(env.bootstrap, hosts_topic, decode=False) as beats:
                    recs.wait(churn_final, RECOVER_TIMEOUT, "every churned domain's last DELETED record",
                              check=agent.check_alive)
                    beats.wait(lambda t: _heartbeat_after(t, codec, up_wall), RECOVER_TIMEOUT,
                               "a heartbeat after the restart", check=agent.check_alive)
                    wait_for(drained, RECOVER_TIMEOUT, "status.json: nothing pending or queued",
                             check=agent.check_alive)
                recover_s = time.monotonic() - up_t
                sampler.mark("caught_up")
                progress(f"{NAME}: agent caught up {recover_s:.1f}s after the broker came back")
            except TimeoutError as exc:
                recovered, recover_s = False, math.nan
                sampler.mark("caught_up")
                result.notes.append(f"the agent did not catch up within {RECOVER_TIMEOUT:.0f}s: {exc}")
                progress(f"{NAME}: NOT caught up: {exc}")
            _until(time.monotonic(), POST_S, "the post-recovery samples", agent.check_alive)
            sampler.mark("end")
        before = sampler.last_before("stop_begin")
        pre = sampler.between("churn_start", "stop_begin")
        during = sampler.between("broker_down", "restart_begin")
        after = sampler.between("caught_up", "end")
        peak = proc_status_kib(agent.proc.pid, "VmHWM") / 1024
        final = agent.status()
    finally:
        with contextlib.suppress(Exception):
            if gen is not None:
                gen.kill()
        if broker_down:
            progress(f"{NAME}: starting the broker again (cleanup)")
            env.kafka.start_node(0)
        if agent is not None:
            agent.terminate()
        progress(f"{NAME}: undefining the {DOMAINS:,} domains and the churn pool ...")
        with contextlib.suppress(libvirt.libvirtError):
            conn.close()  # idle through the outage, libvirtd may have dropped it: a fresh one cleans up
        with libvirt.open(env.test_uri) as fresh:
            _undefine(fresh, uuids)
            for dom in fresh.listAllDomains(0):
                if dom.name().startswith(prefix + "-"):
                    dom.undefine()
    hi, lo = max(during), min(during)
    spread = hi / lo - 1
    after_mib = after[-1] if after else math.nan
    progress(f"{NAME}: RSS before {before:.1f} MiB, during the outage {lo:.1f}..{hi:.1f} MiB "
             f"(spread {100 * spread:.1f} %), after recovery {after_mib:.1f} MiB; peak {peak:.1f} MiB")
    result.add("rss_before_mib", "outage: agent RSS before", before, "MiB",
               f"VmRSS, last sample before the broker's stop, {DOMAINS:,} domains, churn running")
    result.add("rss_during_max_mib", "outage: agent RSS during max", hi, "MiB",
               f"VmRSS sampled every second, from the broker JVM's exit to its restart ({OUTAGE_S:.0f}s)")
    result.add("rss_during_min_mib", "outage: agent RSS during min", lo, "MiB",
               f"VmRSS sampled every second, from the broker JVM's exit to its restart ({OUTAGE_S:.0f}s)")
    result.add("rss_spread_pct", "outage: agent RSS spread during", 100 * spread, "%",
               "max / min - 1 of the outage's samples (target <= 5 %)")
    result.add("rss_growth_pct", "outage: agent RSS max during vs before", 100 * (hi / before - 1), "%",
               "max during the outage / the last sample before it - 1")
    result.add("rss_after_mib", "outage: agent RSS after recovery", after_mib, "MiB",
               f"VmRSS, last sample {POST_S:.0f}s after the agent caught up")
    result.add("peak_rss_mib", "outage: agent peak RSS", peak, "MiB", "VmHWM at the end (start-up resync included)")
    result.add("recover_s", "outage: broker back -> agent caught up", recover_s, "s",
               "broker serving again until every churned domain's last DELETED record and a fresh heartbeat are "
               "visible and status.json shows nothing pending or queued")
    result.add("recovered", "outage: agent caught up", 1.0 if recovered else 0.0, "bool",
               f"1 if it caught up within {RECOVER_TIMEOUT:.0f}s")
    # The agent's periodic resync (--resync-interval, 300 s by default) relists every domain and queues a
    # RESYNC record for each: one that falls inside the outage waits in the producer until Kafka is back.
    listed = final.get("resync_last_listed_at")
    down_wall = sampler.wall0 + sampler.marks["broker_down"]
    up_wall_s = sampler.wall0 + sampler.marks["restart_begin"]
    in_outage = isinstance(listed, (int, float)) and down_wall <= listed <= up_wall_s
    if in_outage:
        result.notes.append(f"a periodic resync listed the domains {listed - down_wall:.0f}s into the outage: its "
                            f"{DOMAINS:,} RESYNC records waited in the producer until the broker was back")
    result.details = {"agent_resyncs_completed": final.get("resyncs_completed"),
                      "resync_listed_in_outage_at_s": round(listed - down_wall, 1) if in_outage else None,
                      "rss_series": [[s["t"], s["rss_mib"]] for s in sampler.samples],
                      "backlog_series": [[s["t"], s["producer_queue"], s["domains_pending"], s["domains_in_flight"]]
                                         for s in sampler.samples],
                      "marks": sampler.marks, "rss_pre_outage_mib": [min(pre), max(pre)] if pre else [],
                      "churn": churn}
    return result


if __name__ == "__main__":
    sys.exit(main_one(sys.modules[__name__]))
