"""Benchmark 3: event -> record latency at a fixed operation rate, p50 / p99.

The real agent runs as a subprocess on the daemon's test driver. A pool of domains is defined first;
then a generator subprocess makes operations at a fixed rate (100/s, then 500/s, about 8 s each),
round-robin over the pool, each domain cycling create -> suspend -> resume -> destroy: one lifecycle
event per operation. It timestamps every call (wall clock, before and after). A consumer in this
process stamps every record the moment its poll returns it (wall clock, same machine). Per event:

- ``event -> visible``: the agent's ``events[].received_at`` -> the record visible to a consumer. That
  includes the snapshot read, the version persisted (fsync), produce (``linger.ms=1``), the broker's
  ``acks=all`` append (a record becomes visible to consumers only once it is committed, i.e. acked)
  and the consumer's fetch. This is the number a reader of the topic sees.
- ``event -> snapshot``: ``received_at`` -> ``observed_at`` (both agent clock): the agent-internal part
  up to the snapshot read (queueing + libvirt reads).
- ``call -> visible``: the generator's libvirt call returned -> the record with its event visible: what
  a user who changed a domain waits to see it on the topic.

For scale, a ``Kafka floor`` phase first produces ~1.5 KB messages at 100/s and 1000/s from this
process with the agent's producer settings (idempotent, ``acks=all``, zstd, the agent's ``linger.ms``,
murmur2) to a scratch topic: ``produce() called -> visible`` is what the broker and clients alone cost
on this machine.

Then the same paced workload through the peer of issue 10, ``virsh event --all --loop --timestamp |
kcat -P`` (:class:`tests.bench.PeerPipe`), stamped by the same consumer: ``event -> visible`` from
virsh's own timestamp (millisecond precision, truncated, so up to 1 ms pessimistic for the peer) and
``call -> visible`` from the generator's call, matched per domain in order. The rates above the
latency targets' (2000/s, 4000/s) find where each one saturates: delivered events/s against offered.
With ``LKB_BENCH_PROFILE=1`` the agent's phases are recorded by py-spy into ``bench-results/profiles/``.
With ``LKB_BENCH_SERIES=DIR`` each phase's events are written to ``DIR/latency-RATE.json`` as
``[received_at, observed_at, visible]`` (us), in time order: the tail's events show when they happened.

``python -m tests.bench.bench_latency``
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
import threading
import time
import uuid as uuid_mod
from collections import defaultdict
from pathlib import Path
from typing import Any

import libvirt

from devenv.pacing import Pacer
from tests.bench import (
    CYCLE_EVENT,
    BenchEnv,
    BenchResult,
    PeerPipe,
    TopicTail,
    collector_paused,
    main_one,
    now_us,
    percentile,
    profiled,
    progress,
    run_generator,
    start_agent,
    start_generator,
    unique_topics,
)

NAME = "latency"
TITLE = "event -> record latency at a fixed rate"
NEEDS = ("kafka", "libvirt")

POOL = 50
RATES = (100, 500, 1000, 2000, 4000)
SECONDS = 6.0
TIMEOUT = 120.0


FLOOR_RATES = (100, 1000)
FLOOR_SECONDS = 3.0


PRIMING = 20
PRIMED_MS = 25.0
"""A floor measures from PRIMING messages in a row each visible within PRIMED_MS (not counted)."""


def _has_records(n: int, tail: TopicTail) -> bool:
    return bool(tail.records >= n)


def _stats(values: list[float]) -> dict[str, Any]:
    return {"p50": percentile(values, 50), "p90": percentile(values, 90), "p99": percentile(values, 99),
            "max": max(values, default=float("nan")), "n": len(values)}


def _kafka_floor(env: BenchEnv, rate: int) -> dict[str, Any]:
    """produce() -> visible to a consumer, with the agent's producer settings, no agent involved."""
    from confluent_kafka import Producer  # noqa: PLC0415
    from confluent_kafka.admin import AdminClient, NewTopic  # noqa: PLC0415

    from bridge.agent.publisher import producer_config  # noqa: PLC0415

    topic = unique_topics("floor")[0]
    admin = AdminClient({"bootstrap.servers": env.bootstrap})
    admin.create_topics([NewTopic(topic, 3, 1, config={"cleanup.policy": "compact"})])[topic].result(30)
    producer = Producer(producer_config({"bootstrap.servers": env.bootstrap}))
    keys = [str(uuid_mod.uuid4()).encode() for _ in range(POOL)]
    padding = os.urandom(700).hex()  # ~1.5 KB, incompressible like real XML is not: an upper bound
    stop = threading.Event()

    def serve() -> None:  # delivery reports, as the agent's kafka-delivery thread does
        while not stop.is_set():
            producer.poll(0.1)

    server = threading.Thread(target=serve, name="floor-delivery", daemon=True)
    messages = int(rate * FLOOR_SECONDS)
    progress(f"{NAME}: Kafka floor: {messages} messages at {rate}/s with the agent's producer settings")
    with TopicTail(env.bootstrap, topic, decode=False) as tail, collector_paused():
        server.start()
        try:
            # Once the broker holds a dozen topics, the first ~150 ms of traffic to a topic just
            # created wait up to 140 ms each (seen with and without deletes, fetch waits of 100 and 10
            # ms): that is the topic's birth, not the floor, and the agent's topics are long made
            # when it is measured. So messages go one at a time until PRIMING in a row are quick.
            quick = primed = 0
            deadline = time.monotonic() + TIMEOUT
            while quick < PRIMING and time.monotonic() < deadline:
                sent = now_us()
                producer.produce(topic, key=keys[primed % POOL], value=f"{sent} {padding}".encode())
                primed += 1
                tail.wait(functools.partial(_has_records, primed), TIMEOUT, "a priming message")
                quick = quick + 1 if tail.seen()[-1].visible_us - sent <= PRIMED_MS * 1000 else 0
            pacer = Pacer(rate)
            for i in range(messages):
                pacer.wait_turn(i)
                producer.produce(topic, key=keys[i % POOL], value=f"{now_us()} {padding}".encode())
            tail.wait(lambda t: t.records >= primed + messages, TIMEOUT, f"{messages} floor messages")
        finally:
            stop.set()
            server.join(5)
            producer.flush(10)
        latencies = [(s.visible_us - int(s.record.split(b" ", 1)[0])) / 1000 for s in tail.seen()[primed:]]
    admin.delete_topics([topic])
    return {"rate": rate, **_stats(latencies), "samples_ms": sorted(round(x, 3) for x in latencies)}


def _ops_for(rate: int, seconds: float, pool: int) -> int:
    """rate x seconds, rounded to whole cycles of the pool (every domain ends shut off)."""
    cycle = 4 * pool
    return max(cycle, round(rate * seconds / cycle) * cycle)


def _phase(env: BenchEnv, agent: Any, tail: TopicTail, prefix: str, rate: int, ops: int, out: Path) -> dict[str, Any]:
    seen_before, events_before = len(tail.seen()), tail.events
    progress(f"{NAME}: {ops} operations at {rate}/s over {POOL} domains (~{ops / rate:.0f}s)")
    with collector_paused():
        gen = start_generator("paced", env.test_uri, prefix, pool=POOL, rate=rate, ops=ops, out=out)
        try:
            def check() -> None:
                gen.check()
                agent.check_alive()

            with profiled(agent.proc.pid, f"latency-{rate}"):
                tail.wait(lambda t: t.events - events_before >= ops, ops / rate + TIMEOUT,
                          f"{ops} events at {rate}/s", check=check)
            summary = gen.result()
        finally:
            gen.kill()
    calls: dict[str, list[tuple[str, int, int]]] = defaultdict(list)
    for uuid, op, before, after in json.loads(out.read_text()):
        calls[uuid].append((op, before, after))

    seen = [s for s in tail.seen()[seen_before:] if s.record is not None]
    per_uuid: dict[str, list[tuple[Any, Any]]] = defaultdict(list)  # (record's Seen, event), version order
    for s in sorted(seen, key=lambda s: s.record.version):
        for e in s.record.events:
            per_uuid[s.record.uuid].append((s, e))
    series_dir = os.environ.get("LKB_BENCH_SERIES")
    if series_dir:  # for finding where a tail comes from: which events, at what time, in which stage
        Path(series_dir, f"latency-{rate}.json").write_text(json.dumps(sorted(
            (e.received_at, s.record.observed_at, s.visible_us) for evs in per_uuid.values() for s, e in evs)))
    to_visible: list[float] = []
    to_snapshot: list[float] = []
    snapshot_to_visible: list[float] = []
    call_to_visible: list[float] = []
    call_to_received: list[float] = []
    mismatched = 0
    for uuid, evs in per_uuid.items():
        for s, e in evs:
            to_visible.append((s.visible_us - e.received_at) / 1000)
            to_snapshot.append((s.record.observed_at - e.received_at) / 1000)
            snapshot_to_visible.append((s.visible_us - s.record.observed_at) / 1000)
        ops_of = calls.get(uuid, [])
        if len(ops_of) != len(evs):
            mismatched += abs(len(ops_of) - len(evs))
            continue
        for (op, _before, after), (s, e) in zip(ops_of, evs, strict=True):
            if e.type != CYCLE_EVENT[op]:
                mismatched += 1
                continue
            call_to_visible.append((s.visible_us - after) / 1000)
            call_to_received.append((e.received_at - after) / 1000)
    records = len(seen)
    events = len(to_visible)
    first = min(e.received_at for evs in per_uuid.values() for _s, e in evs)
    last = max(s.visible_us for s in seen)
    stats = {
        "rate": rate, "ops": ops, "achieved_ops_per_s": summary["ops"] / summary["seconds"],
        "delivered_events_per_s": events / ((last - first) / 1e6),
        "generator_max_behind_s": summary["max_behind_s"], "events": events, "records": records,
        "events_per_record": events / records if records else float("nan"), "unmatched_events": mismatched,
    }
    for key, values in (("event_to_visible_ms", to_visible), ("event_to_snapshot_ms", to_snapshot),
                        ("snapshot_to_visible_ms", snapshot_to_visible), ("call_to_visible_ms", call_to_visible),
                        ("call_to_received_ms", call_to_received)):
        stats[key] = _stats(values)
    stats["samples_ms"] = {"event_to_visible": sorted(round(x, 3) for x in to_visible),
                           "call_to_visible": sorted(round(x, 3) for x in call_to_visible)}
    progress(f"{NAME}: @{rate}/s: {events} events in {records} records; event->visible p50 "
             f"{stats['event_to_visible_ms']['p50']:.2f} ms p99 {stats['event_to_visible_ms']['p99']:.2f} ms")
    return stats


def _peer_phase(env: BenchEnv, peer: PeerPipe, prefix: str, names: dict[str, str], rate: int, ops: int,
                out: Path) -> dict[str, Any]:
    """The paced workload through the peer pipe, stamped by the same kind of consumer."""
    assert peer.tail is not None
    before = len(peer.tail.seen())
    progress(f"{NAME}: peer: {ops} operations at {rate}/s over {POOL} domains (~{ops / rate:.0f}s)")
    with collector_paused():
        gen = start_generator("paced", env.test_uri, prefix, pool=POOL, rate=rate, ops=ops, out=out)
        try:
            quiet = {"n": 0, "t": 0.0}

            def done(t: TopicTail) -> bool:  # all events, or (the pipe loses some) quiet after the generator
                n = t.records - before
                if n != quiet["n"]:
                    quiet["n"], quiet["t"] = n, time.monotonic()
                return n >= ops or (gen.proc.poll() is not None and time.monotonic() - quiet["t"] > 3.0)

            def check() -> None:
                gen.check()
                peer.check()

            peer.tail.wait(done, ops / rate + TIMEOUT, f"{ops} peer events at {rate}/s", check=check)
            summary = gen.result()
        finally:
            gen.kill()
    calls: dict[str, list[tuple[str, int, int]]] = defaultdict(list)
    for uuid, op, before_us, after_us in json.loads(out.read_text()):
        calls[names[uuid]].append((op, before_us, after_us))
    lines: dict[str, list[Any]] = defaultdict(list)
    cycle_types = set(CYCLE_EVENT.values())
    for line in peer.lines(before):
        if line.domain.startswith(prefix + "-") and line.type in cycle_types:
            lines[line.domain].append(line)
    to_visible = [(ln.visible_us - ln.event_us) / 1000 for lns in lines.values() for ln in lns]
    call_to_visible: list[float] = []
    mismatched = 0
    for name, ops_of in calls.items():
        got = lines.get(name, [])
        # Match in order by type; a lost line skips its call (counted), the rest still match.
        j = 0
        for op, _before, after in ops_of:
            k = j
            while k < len(got) and got[k].type != CYCLE_EVENT[op]:
                k += 1
            if k >= len(got) or k - j > 3:
                mismatched += 1
                continue
            call_to_visible.append((got[k].visible_us - after) / 1000)
            j = k + 1
    events = len(to_visible)
    all_lines = [ln for lns in lines.values() for ln in lns]
    first = min(ln.event_us for ln in all_lines)
    last = max(ln.visible_us for ln in all_lines)
    stats: dict[str, Any] = {
        "rate": rate, "ops": ops, "achieved_ops_per_s": summary["ops"] / summary["seconds"],
        "delivered_events_per_s": events / ((last - first) / 1e6),
        "generator_max_behind_s": summary["max_behind_s"], "events": events, "lost": ops - events,
        "unmatched_calls": mismatched,
        "event_to_visible_ms": _stats(to_visible), "call_to_visible_ms": _stats(call_to_visible),
        "samples_ms": {"event_to_visible": sorted(round(x, 3) for x in to_visible),
                       "call_to_visible": sorted(round(x, 3) for x in call_to_visible)},
    }
    progress(f"{NAME}: peer @{rate}/s: {events}/{ops} events; event->visible p50 "
             f"{stats['event_to_visible_ms']['p50']:.2f} ms p99 {stats['event_to_visible_ms']['p99']:.2f} ms")
    return stats


def run(env: BenchEnv, rates: tuple[int, ...] = RATES, seconds: float = SECONDS) -> BenchResult:
    result = BenchResult(NAME, TITLE, params={"pool": POOL, "rates": list(rates), "seconds_per_rate": seconds,
                                              "cycle": "create, suspend, resume, destroy", "partitions": 3})
    domains_topic, hosts_topic = unique_topics(NAME)
    agent = start_agent(env, NAME, domains_topic, hosts_topic)
    prefix = f"lat-{uuid_mod.uuid4().hex[:6]}"
    workdir = env.dir(NAME)
    phases: list[dict[str, Any]] = []
    floors = [_kafka_floor(env, r) for r in FLOOR_RATES]
    for floor in floors:
        progress(f"{NAME}: Kafka floor @{floor['rate']}/s: produce -> visible p50 {floor['p50']:.2f} ms "
                 f"p99 {floor['p99']:.2f} ms")
    try:
        with TopicTail(env.bootstrap, domains_topic) as tail:
            progress(f"{NAME}: defining a pool of {POOL} domains")
            run_generator("pool-define", env.test_uri, prefix, pool=POOL)
            tail.wait(lambda t: t.events >= POOL, TIMEOUT, f"the pool's {POOL} DEFINED events",
                      check=agent.check_alive)
            for rate in rates:
                phases.append(_phase(env, agent, tail, prefix, rate, _ops_for(rate, seconds, POOL),
                                     workdir / f"ops-{rate}.json"))
        status = agent.terminate()
        if status != 0:
            result.notes.append(f"agent exited with {status} on SIGTERM")
    finally:
        agent.kill()
        try:
            run_generator("pool-remove", env.test_uri, prefix)
        except Exception as exc:  # cleanup only; the daemon is private to the bench run
            result.notes.append(f"pool cleanup failed: {exc}")

    peer_phases: list[dict[str, Any]] = []
    peer_prefix = f"plat-{uuid_mod.uuid4().hex[:6]}"
    with PeerPipe(env, "peer-latency") as peer:
        try:
            run_generator("pool-define", env.test_uri, peer_prefix, pool=POOL)
            assert peer.tail is not None
            with contextlib.suppress(TimeoutError):  # best effort: the pipe may lose some of them
                peer.tail.wait(lambda _t: sum(ln.domain.startswith(peer_prefix + "-") for ln in peer.lines()) >= POOL,
                               10.0, f"the peer's {POOL} DEFINED lines", check=peer.check)
            conn = libvirt.openReadOnly(env.test_uri)
            try:
                names = {d.UUIDString(): d.name() for d in conn.listAllDomains(0)
                         if d.name().startswith(peer_prefix + "-")}
            finally:
                conn.close()
            for rate in rates:
                peer_phases.append(_peer_phase(env, peer, peer_prefix, names, rate, _ops_for(rate, seconds, POOL),
                                               workdir / f"peer-ops-{rate}.json"))
        finally:
            run_generator("pool-remove", env.test_uri, peer_prefix)

    for floor in floors:
        for q in ("p50", "p99"):
            result.add(f"kafka_floor_{floor['rate']}_{q}", f"Kafka floor @{floor['rate']}/s: produce -> visible {q}",
                       floor[q], "ms",
                       "no agent: produce() called in the bench process with the agent's producer settings -> "
                       "message visible to the bench's consumer (linger, acks=all append, fetch)")
    peers = {p["rate"]: p for p in peer_phases}
    for p in phases:
        r = p["rate"]
        at = f"@{r}/s"
        result.add(f"r{r}_achieved", f"latency {at}: achieved operation rate", p["achieved_ops_per_s"], "ops/s",
                   f"operations per second the generator achieved (target {r}/s, {p['ops']} operations, "
                   f"one lifecycle event each, round-robin over {POOL} domains)")
        result.add(f"r{r}_delivered", f"latency {at}: agent delivered events/s", p["delivered_events_per_s"],
                   "events/s", "events / (first event received -> last record visible), the agent")
        for q in ("p50", "p99"):
            result.add(f"r{r}_event_to_visible_{q}", f"latency {at}: event -> visible {q}",
                       p["event_to_visible_ms"][q], "ms",
                       "agent received the event (events[].received_at) -> the record holding it visible to a "
                       "consumer in the bench process (poll returned; visible means acked by the broker)")
        for q in ("p50", "p99"):
            result.add(f"r{r}_event_to_snapshot_{q}", f"latency {at}: event -> snapshot read {q}",
                       p["event_to_snapshot_ms"][q], "ms",
                       "agent-internal: received_at -> observed_at (queueing + the snapshot's libvirt reads)")
        for q in ("p50", "p99"):
            result.add(f"r{r}_call_to_visible_{q}", f"latency {at}: libvirt call -> visible {q}",
                       p["call_to_visible_ms"][q], "ms",
                       "the generator's libvirt call returned -> the record with its event visible to a consumer")
        pp = peers.get(r)
        if pp is not None:
            result.add(f"peer_r{r}_delivered", f"latency {at}: peer delivered events/s", pp["delivered_events_per_s"],
                       "events/s", "events / (first event virsh stamped -> last line visible), the peer")
            for q in ("p50", "p99"):
                result.add(f"peer_r{r}_event_to_visible_{q}", f"latency {at}: peer event -> visible {q}",
                           pp["event_to_visible_ms"][q], "ms",
                           "peer (virsh event | kcat -P): virsh's timestamp of the event (ms, truncated) -> the line "
                           "visible to the same kind of consumer")
            for q in ("p50", "p99"):
                result.add(f"peer_r{r}_call_to_visible_{q}", f"latency {at}: peer libvirt call -> visible {q}",
                           pp["call_to_visible_ms"][q], "ms",
                           "peer: the generator's libvirt call returned -> the line with its event visible")
            result.add(f"peer_r{r}_lost", f"latency {at}: peer events lost", pp["lost"], "events",
                       "operations whose event never appeared on the peer's topic")
        if p["unmatched_events"]:
            result.notes.append(f"@{r}/s: {p['unmatched_events']} events could not be matched to an operation")
        if p["events_per_record"] > 1.0:
            result.notes.append(f"@{r}/s: {p['events_per_record']:.3f} events per record (some coalesced)")
    result.details = {"kafka_floor_ms": floors, "phases": phases, "peer_phases": peer_phases}
    return result


if __name__ == "__main__":
    sys.exit(main_one(sys.modules[__name__]))
