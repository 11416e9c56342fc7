"""Benchmark 6: the log of a 1,000-host fleet, as a fresh consumer reads it (issue 10, target 5).

Writes what 1,000 hosts x 100 domains publish, with synthetic but valid records: a RESYNC record per
domain and a HostRecord per host whose inventory lists its 100 domains, on topics created as the agent
creates them (:func:`bridge.agent.topics.prepare_topics`). Then, on the same broker:

1. ``first``: a fresh :class:`bridge.consumer.Informer` syncs from the beginning: the log right after
   the fleet's first resync. Timed, records/s, and the bench process's RSS growth per domain held;
2. ``heartbeats``: ``ROUNDS`` rounds of heartbeats are appended (each HostRecord repeats its host's
   inventory, as the agent's do), ten minutes' worth at the agent's 10 s interval, which is how long the
   hosts topic's ``max.compaction.lag.ms`` lets them wait for the cleaner; a second fresh Informer syncs,
   timed again. Their ratio is what the heartbeats cost a new consumer at that bound.

``python -m tests.bench.bench_fleet_log``
"""

from __future__ import annotations

import os
import sys
import time
import uuid as uuid_mod
from typing import Any

from tests.bench import BenchEnv, BenchResult, main_one, now_us, proc_status_kib, progress, unique_topics
from tests.bench.bench_rebuild import _XML

NAME = "fleet_log"
TITLE = "1,000-host fleet: the log a fresh consumer reads"
NEEDS = ("kafka",)

HOSTS = 1_000
DOMAINS_PER_HOST = 100
ROUNDS = 60
PARTITIONS = 3
TIMEOUT = 300.0


def _producer(env: BenchEnv) -> Any:
    from confluent_kafka import Producer  # noqa: PLC0415

    from bridge.agent.publisher import producer_config  # noqa: PLC0415

    return Producer(producer_config({"bootstrap.servers": env.bootstrap, "linger.ms": "50", "log_level": "3"}))


def _send(producer: Any, topic: str, key: bytes, value: bytes, failed: list[str]) -> None:
    def on_delivery(err: Any, _msg: Any) -> None:
        if err is not None:
            failed.append(str(err))

    while True:
        try:
            producer.produce(topic, key=key, value=value, on_delivery=on_delivery)
            break
        except BufferError:
            producer.poll(0.1)
    producer.poll(0)


def _fleet(env: BenchEnv, domains_topic: str, hosts_topic: str) -> tuple[list[Any], int]:
    """Every domain's RESYNC record and every host's inventory; (the HostRecords, bytes produced)."""
    from bridge.records import AgentInfo, DomainRecord, HostRecord, InventoryEntry, RecordKind  # noqa: PLC0415
    from bridge.serde import RecordCodec  # noqa: PLC0415

    codec = RecordCodec(None, domains_topic, hosts_topic)
    producer = _producer(env)
    failed: list[str] = []
    size = 0
    hosts = []
    t = time.monotonic()
    for h in range(HOSTS):
        host = f"hv-{h:04d}"
        agent = AgentInfo(uuid_mod.uuid4().hex, "bench", "9.0.0")
        listed_at = now_us()
        entries = []
        for d in range(DOMAINS_PER_HOST):
            i = h * DOMAINS_PER_HOST + d
            uuid, name = str(uuid_mod.uuid4()), f"vm-{i:06d}"
            xml = _XML.format(id=i % 4096, name=name, uuid=uuid, mem=1048576, vcpu=2,
                              mac=f"{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:{i & 255:02x}", port=uuid_mod.uuid4(),
                              vnc=5900 + i % 4096)
            version = listed_at + 1 + d
            record = DomainRecord(uuid=uuid, name=name, host=host, version=version, kind=RecordKind.RESYNC,
                                  agent=agent, observed_at=version, state="RUNNING", reason="BOOTED", active=True,
                                  persistent=True, xml=xml, resync_id="r0")
            value = codec.encode_domain(record)
            size += len(value)
            _send(producer, domains_topic, uuid.encode(), value, failed)
            entries.append(InventoryEntry(uuid, version))
        hr = HostRecord(host=host, agent=agent, heartbeat_at=now_us(), resync_id="r0", listed_at=listed_at,
                        domains=tuple(entries), heartbeat_interval_ms=10_000)
        value = codec.encode_host(hr)
        size += len(value)
        _send(producer, hosts_topic, host.encode(), value, failed)
        hosts.append(hr)
    if producer.flush(120) or failed:
        raise RuntimeError(f"producing the fleet: {len(failed)} failed: {failed[:3]}")
    progress(f"{NAME}: {HOSTS:,} hosts x {DOMAINS_PER_HOST} domains written ({size / 2**20:.0f} MiB) "
             f"in {time.monotonic() - t:.1f}s")
    return hosts, size


def _heartbeats(env: BenchEnv, hosts_topic: str, hosts: list[Any]) -> int:
    from dataclasses import replace  # noqa: PLC0415

    from bridge.serde import RecordCodec  # noqa: PLC0415

    codec = RecordCodec(hosts_topic=hosts_topic)
    producer = _producer(env)
    failed: list[str] = []
    size = 0
    for _round in range(ROUNDS):
        for hr in hosts:
            value = codec.encode_host(replace(hr, heartbeat_at=now_us()))
            size += len(value)
            _send(producer, hosts_topic, hr.host.encode(), value, failed)
    if producer.flush(120) or failed:
        raise RuntimeError(f"producing heartbeats: {len(failed)} failed: {failed[:3]}")
    progress(f"{NAME}: {ROUNDS} heartbeat rounds of {HOSTS:,} hosts written ({size / 2**20:.0f} MiB)")
    return size


def _sync(env: BenchEnv, domains_topic: str, hosts_topic: str) -> dict[str, float]:
    from bridge.consumer import Informer  # noqa: PLC0415
    from bridge.kafka_settings import KafkaSettings  # noqa: PLC0415

    settings = KafkaSettings(bootstrap_servers=env.bootstrap, domains_topic=domains_topic, hosts_topic=hosts_topic)
    rss0 = proc_status_kib(os.getpid(), "VmRSS")
    t = time.monotonic()
    with Informer(settings) as informer:
        if not informer.wait_for_sync(timeout=TIMEOUT):
            raise TimeoutError(f"informer not synced after {TIMEOUT:.0f}s: {informer.last_error}")
        seconds = time.monotonic() - t
        rss1 = proc_status_kib(os.getpid(), "VmRSS")
        view = informer.list()
        domains = len(view.domains)
        applied = informer.stats().applied
    if domains != HOSTS * DOMAINS_PER_HOST:
        raise RuntimeError(f"the view holds {domains:,} domains, expected {HOSTS * DOMAINS_PER_HOST:,}")
    return {"seconds": seconds, "applied": applied, "records_per_s": applied / seconds,
            "rss_growth_bytes_per_domain": (rss1 - rss0) * 1024 / domains}


def run(env: BenchEnv) -> BenchResult:
    from bridge.agent.topics import prepare_topics  # noqa: PLC0415
    from bridge.kafka_settings import KafkaSettings  # noqa: PLC0415

    result = BenchResult(NAME, TITLE, params={"hosts": HOSTS, "domains_per_host": DOMAINS_PER_HOST,
                                              "heartbeat_rounds": ROUNDS})
    domains_topic, hosts_topic = unique_topics(NAME)
    prepare_topics(KafkaSettings(bootstrap_servers=env.bootstrap, domains_topic=domains_topic,
                                 hosts_topic=hosts_topic), partitions=PARTITIONS, replication_factor=1,
                   control_topic=None, timeout=30)
    hosts, size = _fleet(env, domains_topic, hosts_topic)
    first = _sync(env, domains_topic, hosts_topic)
    progress(f"{NAME}: fresh Informer after the first resync: {first['seconds']:.1f}s "
             f"({first['records_per_s']:,.0f} records/s, {first['rss_growth_bytes_per_domain']:,.0f} B RSS per domain)")
    beats = _heartbeats(env, hosts_topic, hosts)
    later = _sync(env, domains_topic, hosts_topic)
    progress(f"{NAME}: fresh Informer after {ROUNDS} heartbeat rounds: {later['seconds']:.1f}s "
             f"({later['seconds'] / first['seconds']:.2f}x)")
    avg_record = size / (HOSTS * (DOMAINS_PER_HOST + 1))
    result.add("first_sync_s", "fleet: fresh Informer sync after the first resync", first["seconds"], "s",
               f"{HOSTS:,} hosts x {DOMAINS_PER_HOST} domains: {HOSTS * DOMAINS_PER_HOST:,} RESYNC records and "
               f"{HOSTS:,} HostRecords, from the beginning to synced")
    result.add("first_sync_records_per_s", "fleet: Informer records/s, first resync", first["records_per_s"],
               "records/s", "records applied / sync seconds (target >= 50,000)")
    result.add("rss_per_domain_b", "fleet: consumer RSS growth per domain held", first["rss_growth_bytes_per_domain"],
               "B", f"the bench process's VmRSS growth over the sync / domains (target <= 2x the record, "
               f"~{avg_record:,.0f} B here)")
    result.add("heartbeats_sync_s", f"fleet: fresh sync after {ROUNDS} heartbeat rounds", later["seconds"], "s",
               f"the same, after {ROUNDS} rounds of {HOSTS:,} heartbeats ({beats / 2**20:.0f} MiB: every heartbeat "
               "repeats its inventory), a compaction lag's worth at a 10 s interval")
    result.add("heartbeats_sync_ratio", "fleet: heartbeats sync / first sync", later["seconds"] / first["seconds"],
               "ratio", "target <= 2 after 24 simulated hours (the log bounded by the fleet, not its age)")
    result.details = {"first": first, "after_heartbeats": later, "fleet_bytes": size, "heartbeat_bytes": beats}
    return result


if __name__ == "__main__":
    sys.exit(main_one(sys.modules[__name__]))
