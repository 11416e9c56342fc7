"""Warm the bench's broker up before anything is measured against it.

A fresh JVM spends its first minute under load compiling: on a fresh single-node broker the C1/C2
compiler threads used 20 to 65 % of a core throughout the first agent phases, and the broker's CPU per
ProduceRequest fell from 1.3 ms to 0.2 ms over 40 s of steady load (1,300 messages/s, the agent's
producer settings). On a two-core box that is CPU taken from whoever runs first, which was the agent,
never the peer. A production broker is warm, so the bench warms its own: both producers' patterns
(the agent's keyed, idempotent, compressed records with headers on three partitions; the pipe's
unkeyed plain lines on one) and a consumer reading both, until the compiler threads go quiet.
"""

from __future__ import annotations

import time
import uuid as uuid_mod
from dataclasses import dataclass
from typing import Any

from tests.bench import now_us, proc_cpu_seconds, progress, thread_cpu_seconds

COMPILER_THREADS = ("C1 CompilerThre", "C2 CompilerThre")
"""The kernel names of HotSpot's JIT compiler threads (``comm`` is cut at 15 characters)."""

WINDOW_S = 2.0
RATE = 1500.0
"""Messages per second per producer: about the agent's burst rate."""
QUIET = 0.05
"""The compiler threads' share of one core below which a window counts as quiet."""
QUIET_WINDOWS = 3
MIN_S = 30.0
MAX_S = 120.0


@dataclass(frozen=True)
class Warmup:
    seconds: float
    messages: int
    compiler_share: float
    """The compiler threads' share of one core in the last window."""
    broker_share: float
    """The whole broker's share of one core in the last window."""
    quiet: bool
    """False when :data:`MAX_S` ran out before enough quiet windows in a row."""


def _compiler_seconds(pid: int) -> float:
    return sum(s for name, s in thread_cpu_seconds(pid).values() if name in COMPILER_THREADS)


def warm_up(bootstrap: str, broker_pid: int) -> Warmup:
    """Load the broker as the bench will until its JIT compilers are quiet :data:`QUIET_WINDOWS` windows running."""
    from confluent_kafka import Consumer, Producer, TopicPartition  # noqa: PLC0415
    from confluent_kafka.admin import AdminClient, NewTopic  # noqa: PLC0415

    from bridge.agent.publisher import PRODUCER_DEFAULTS  # noqa: PLC0415
    from bridge.records import AgentInfo, DomainEvent, DomainRecord, RecordKind  # noqa: PLC0415
    from bridge.serde import RecordCodec, cloud_events  # noqa: PLC0415
    from tests.bench.bench_rebuild import _XML  # noqa: PLC0415

    tag = uuid_mod.uuid4().hex[:6]
    keyed, pipe = f"bench-warmup-keyed-{tag}", f"bench-warmup-pipe-{tag}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([
        NewTopic(keyed, num_partitions=3, replication_factor=1, config={"cleanup.policy": "compact"}),
        NewTopic(pipe, num_partitions=1, replication_factor=1),
    ]).values():
        future.result(30)
    agent_like = Producer({**PRODUCER_DEFAULTS, "bootstrap.servers": bootstrap, "log_level": 3})
    pipe_like = Producer({"bootstrap.servers": bootstrap, "log_level": 3})
    consumer: Any = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-warmup-{tag}",
                              "enable.auto.commit": False, "fetch.wait.max.ms": 100, "log_level": 3})
    consumer.assign([TopicPartition(keyed, p, 0) for p in range(3)] + [TopicPartition(pipe, 0, 0)])
    # One of the agent's own EVENT records, with its CloudEvents headers.
    uuid, at = str(uuid_mod.uuid4()), now_us()
    record = DomainRecord(
        uuid=uuid, name="warmup", host="bench-warmup", version=at, kind=RecordKind.EVENT,
        agent=AgentInfo(uuid_mod.uuid4().hex, "bench", "9.0.0"), observed_at=at,
        events=(DomainEvent("LIFECYCLE", at, "DEFINED", "ADDED"),), state="SHUTOFF", reason="UNKNOWN",
        persistent=True, xml=_XML.format(id=1, name="warmup", uuid=uuid, mem=1048576, vcpu=2, mac="00:00:01",
                                         port=uuid, vnc=5901))
    value = RecordCodec().encode_domain(record)
    headers: list[tuple[str, str | bytes | None]] = list(cloud_events.domain_headers(record))
    keys = [uuid_mod.uuid4().bytes for _ in range(2000)]
    line = b"2026-12-02 17:00:00.000+0000: event 'lifecycle' for domain 'warmup': Defined Added"

    def send(i: int) -> None:
        # Some deletes among the records, on reused keys, as the agent's domains topic has.
        agent_like.produce(keyed, key=keys[i % len(keys)], value=None if i % 4 == 3 else value, headers=headers)
        pipe_like.produce(pipe, value=line)

    progress("warming the broker up (its JIT compilers) ...")
    started = time.monotonic()
    sent = 0
    quiet_windows = windows = 0
    compiler_share = broker_share = 1.0
    try:
        while True:
            t0 = time.monotonic()
            c0, b0 = _compiler_seconds(broker_pid), proc_cpu_seconds(broker_pid)
            n = 0
            burst = windows % 2 == 1  # paced windows (small batches) and bursts (full ones) in turn
            while (now := time.monotonic()) - t0 < WINDOW_S:
                while n < (now - t0) * RATE or (burst and n % 1000):
                    send(sent + n)
                    n += 1
                agent_like.poll(0)
                pipe_like.poll(0)
                consumer.consume(500, 0.002)
            windows += 1
            sent += 2 * n
            elapsed = time.monotonic() - t0
            compiler_share = (_compiler_seconds(broker_pid) - c0) / elapsed
            broker_share = (proc_cpu_seconds(broker_pid) - b0) / elapsed
            quiet_windows = quiet_windows + 1 if compiler_share < QUIET else 0
            total = time.monotonic() - started
            if (quiet_windows >= QUIET_WINDOWS and total >= MIN_S) or total >= MAX_S:
                break
    finally:
        agent_like.flush(30)
        pipe_like.flush(30)
        consumer.close()
    result = Warmup(round(time.monotonic() - started, 1), sent, round(compiler_share, 3), round(broker_share, 3),
                    quiet_windows >= QUIET_WINDOWS)
    progress(f"broker warm after {result.seconds:.0f}s and {sent:,} messages: compiler threads "
             f"{100 * compiler_share:.0f} % of a core, the broker {100 * broker_share:.0f} %"
             + ("" if result.quiet else f" (not quiet within {MAX_S:.0f}s: the first results pay the rest)"))
    return result
