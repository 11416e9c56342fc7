"""Benchmark 3: event -> record latency at a fixed operation rate, p50 / p99.

The real agent runs as a subprocess on the daemon's test driver. A pool of domains is defined first;
then a generator subprocess makes operations at a fixed rate (100/s, then 500/s, about 8 s each),
round-robin over the pool, each domain cycling create -> suspend -> resume -> destroy: one lifecycle
event per operation. It timestamps every call (wall clock, before and after). A consumer in this
process stamps every record the moment its poll returns it (wall clock, same machine). Per event:

- ``event -> visible``: the agent's ``events[].received_at`` -> the record visible to a consumer. That
  includes the snapshot read, the version persisted (fsync), produce (``linger.ms=5``), the broker's
  ``acks=all`` append (a record becomes visible to consumers only once it is committed, i.e. acked)
  and the consumer's fetch. This is the number a reader of the topic sees.
- ``event -> snapshot``: ``received_at`` -> ``observed_at`` (both agent clock): the agent-internal part
  up to the snapshot read (queueing + libvirt reads).
- ``call -> visible``: the generator's libvirt call returned -> the record with its event visible: what
  a user who changed a domain waits to see it on the topic.

For scale, a ``Kafka floor`` phase first produces ~1.5 KB messages at 100/s from this process with the
agent's producer settings (idempotent, ``acks=all``, zstd, ``linger.ms=5``, murmur2) to a scratch topic:
``produce() called -> visible`` is what the broker and clients alone cost on this machine.

``python -m tests.bench.bench_latency``
"""

from __future__ import annotations

import json
import os
import sys
import threading
import uuid as uuid_mod
from collections import defaultdict
from pathlib import Path
from typing import Any

from devenv.pacing import Pacer
from tests.bench import (
    CYCLE_EVENT,
    BenchEnv,
    BenchResult,
    TopicTail,
    main_one,
    now_us,
    percentile,
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
RATES = (100, 500)
SECONDS = 8.0
TIMEOUT = 120.0


FLOOR_RATE = 100
FLOOR_MESSAGES = 300


def _kafka_floor(env: BenchEnv) -> dict[str, Any]:
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
    progress(f"{NAME}: Kafka floor: {FLOOR_MESSAGES} messages at {FLOOR_RATE}/s with the agent's producer settings")
    with TopicTail(env.bootstrap, topic, decode=False) as tail:
        server.start()
        try:
            pacer = Pacer(FLOOR_RATE)
            for i in range(FLOOR_MESSAGES):
                pacer.wait_turn(i)
                producer.produce(topic, key=keys[i % POOL], value=f"{now_us()} {padding}".encode())
            tail.wait(lambda t: t.records >= FLOOR_MESSAGES, TIMEOUT, f"{FLOOR_MESSAGES} floor messages")
        finally:
            stop.set()
            server.join(5)
            producer.flush(10)
        latencies = [(s.visible_us - int(s.record.split(b" ", 1)[0])) / 1000 for s in tail.seen()]
    admin.delete_topics([topic])
    return {"p50": percentile(latencies, 50), "p90": percentile(latencies, 90), "p99": percentile(latencies, 99),
            "max": max(latencies), "n": len(latencies)}


def _ops_for(rate: int, seconds: float, pool: int) -> int:
    """rate x seconds, rounded to whole cycles of the pool (every domain ends shut off)."""
    cycle = 4 * pool
    return max(cycle, round(rate * seconds / cycle) * cycle)


def _phase(env: BenchEnv, agent: Any, tail: TopicTail, prefix: str, rate: int, ops: int, out: Path) -> dict[str, Any]:
    seen_before, events_before = len(tail.seen()), tail.events
    progress(f"{NAME}: {ops} operations at {rate}/s over {POOL} domains (~{ops / rate:.0f}s)")
    gen = start_generator("paced", env.test_uri, prefix, pool=POOL, rate=rate, ops=ops, out=out)
    try:
        def check() -> None:
            gen.check()
            agent.check_alive()

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
    stats = {
        "rate": rate, "ops": ops, "achieved_ops_per_s": summary["ops"] / summary["seconds"],
        "generator_max_behind_s": summary["max_behind_s"], "events": events, "records": records,
        "events_per_record": events / records if records else float("nan"), "unmatched_events": mismatched,
    }
    for key, values in (("event_to_visible_ms", to_visible), ("event_to_snapshot_ms", to_snapshot),
                        ("snapshot_to_visible_ms", snapshot_to_visible), ("call_to_visible_ms", call_to_visible),
                        ("call_to_received_ms", call_to_received)):
        stats[key] = {"p50": percentile(values, 50), "p90": percentile(values, 90), "p99": percentile(values, 99),
                      "max": max(values, default=float("nan")), "n": len(values)}
    progress(f"{NAME}: @{rate}/s: {events} events in {records} records; event->visible p50 "
             f"{stats['event_to_visible_ms']['p50']:.2f} ms p99 {stats['event_to_visible_ms']['p99']:.2f} ms")
    return stats


def run(env: BenchEnv, rates: tuple[int, ...] = RATES, seconds: float = SECONDS) -> BenchResult:
    result = BenchResult(NAME, TITLE, params={"pool": POOL, "rates": list(rates), "seconds_per_rate": seconds,
                                              "cycle": "create, suspend, resume, destroy", "partitions": 3})
    topic, hosts_topic = unique_topics(NAME)
    agent = start_agent(env, NAME, topic, hosts_topic)
    prefix = f"lat-{uuid_mod.uuid4().hex[:6]}"
    workdir = env.dir(NAME)
    phases: list[dict[str, Any]] = []
    floor = _kafka_floor(env)
    progress(f"{NAME}: Kafka floor: produce -> visible p50 {floor['p50']:.2f} ms p99 {floor['p99']:.2f} ms")
    try:
        with TopicTail(env.bootstrap, topic) as tail:
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

    for q in ("p50", "p99"):
        result.add(f"kafka_floor_{q}", f"Kafka floor @{FLOOR_RATE}/s: produce -> visible {q}", floor[q], "ms",
                   "no agent: produce() called in the bench process with the agent's producer settings -> "
                   "message visible to the bench's consumer (linger, acks=all append, fetch)")
    for p in phases:
        r = p["rate"]
        at = f"@{r}/s"
        result.add(f"r{r}_achieved", f"latency {at}: achieved operation rate", p["achieved_ops_per_s"], "ops/s",
                   f"operations per second the generator achieved (target {r}/s, {p['ops']} operations, "
                   f"one lifecycle event each, round-robin over {POOL} domains)")
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
        if p["unmatched_events"]:
            result.notes.append(f"@{r}/s: {p['unmatched_events']} events could not be matched to an operation")
        if p["events_per_record"] > 1.0:
            result.notes.append(f"@{r}/s: {p['events_per_record']:.3f} events per record (some coalesced)")
    result.details = {"kafka_floor_ms": floor, "phases": phases}
    return result


if __name__ == "__main__":
    sys.exit(main_one(sys.modules[__name__]))
