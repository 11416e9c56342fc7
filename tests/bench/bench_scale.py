"""Benchmark 5: a host with 10,000 domains, the agent's start-up resync (issue 10, target 4).

Defines ``DOMAINS`` domains in the isolated libvirtd (test driver; every other one started, so the
listing holds both states), then starts the real agent and times, from the moment it is launched:

1. ``host_record``: a consumer of the hosts topic sees the HostRecord whose inventory lists every
   domain, which the agent publishes only once every RESYNC record is acknowledged;
2. ``records``: a consumer of the domains topic has seen a RESYNC record for every domain.

It also reads the agent's peak and current RSS (``VmHWM``/``VmRSS``) with all domains owned. The
domains are undefined again afterwards, so the benchmarks that follow find the libvirtd empty.

``python -m tests.bench.bench_scale``
"""

from __future__ import annotations

import sys
import time
import uuid as uuid_mod
from typing import Any

from tests.bench import (
    BenchEnv,
    BenchResult,
    TopicTail,
    _xml,
    main_one,
    now_us,
    proc_status_kib,
    profiled,
    progress,
    unique_topics,
    wait_for,
)

NAME = "scale"
TITLE = "10,000-domain host: start-up resync"
NEEDS = ("kafka", "libvirt")

DOMAINS = 10_000
TIMEOUT = 240.0


def _define(conn: Any, count: int, prefix: str) -> list[str]:
    uuids = []
    t = time.monotonic()
    for i in range(count):
        uuid = str(uuid_mod.uuid4())
        dom = conn.defineXML(_xml(f"{prefix}-{i:05d}", uuid))
        if i % 2 == 0:
            dom.create()
        uuids.append(uuid)
        if (i + 1) % 2500 == 0:
            progress(f"{NAME}: defined {i + 1:,}/{count:,}")
    progress(f"{NAME}: {count:,} domains defined (half started) in {time.monotonic() - t:.1f}s")
    return uuids


def _undefine(conn: Any, uuids: list[str]) -> None:
    """Undefine ``uuids``; those already gone (the test driver forgets when its last connection closes)
    are skipped."""
    import libvirt  # noqa: PLC0415

    for uuid in uuids:
        try:
            dom = conn.lookupByUUIDString(uuid)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                continue
            raise
        if dom.isActive():
            dom.destroy()
        dom.undefine()


def run(env: BenchEnv) -> BenchResult:
    import libvirt  # noqa: PLC0415

    from bridge.agent.topics import prepare_topics  # noqa: PLC0415
    from bridge.kafka_settings import KafkaSettings  # noqa: PLC0415
    from bridge.serde import RecordCodec  # noqa: PLC0415
    from tests.support.agent_proc import AgentProcess  # noqa: PLC0415

    result = BenchResult(NAME, TITLE)
    domains_topic, hosts_topic = unique_topics(NAME)
    # Created as the agent would (its --partitions 3), so the tails can start at their ends first.
    prepare_topics(KafkaSettings(bootstrap_servers=env.bootstrap, domains_topic=domains_topic,
                                 hosts_topic=hosts_topic), partitions=3, replication_factor=1,
                   control_topic=None, timeout=30)
    # The test driver's shared state lives while a connection is open: this one stays open to the end.
    conn = libvirt.open(env.test_uri)
    uuids = _define(conn, DOMAINS, f"scale-{uuid_mod.uuid4().hex[:6]}")
    want = set(uuids)
    codec = RecordCodec()
    agent: Any = None
    try:
        with (TopicTail(env.bootstrap, hosts_topic, decode=False) as hosts,
              TopicTail(env.bootstrap, domains_topic) as recs):
            def full_inventory(tail: TopicTail) -> bool:
                return _inventory_seen_at(tail, codec, want) is not None

            def every_record(tail: TopicTail) -> bool:
                return want <= {s.record.uuid for s in tail.seen() if s.record is not None}

            agent = AgentProcess(env.dir(NAME), env.test_uri, env.bootstrap, domains_topic, hosts_topic,
                                 host_id="bench", state_dir=env.dir(NAME) / "state")
            agent.args[agent.args.index("--log-level") + 1] = "INFO"
            launched = now_us()
            agent.start(wait_resync=False)
            assert agent.proc is not None
            with profiled(agent.proc.pid, "scale-startup"):
                hosts.wait(full_inventory, TIMEOUT, "the HostRecord listing every domain", check=agent.check_alive)
                recs.wait(every_record, TIMEOUT, "a RESYNC record of every domain", check=agent.check_alive)
            pid = agent.proc.pid
            hwm, rss = proc_status_kib(pid, "VmHWM"), proc_status_kib(pid, "VmRSS")
            wait_for(lambda: agent.status().get("resync_last_listed_at") is not None, 10,
                     "status.json to report the resync")
            listed_wall = agent.status().get("resync_last_listed_at")
            inventory_at = _inventory_seen_at(hosts, codec, want)
            assert inventory_at is not None
            first_seen: dict[str, int] = {}
            for seen in recs.seen():
                if seen.record is not None:
                    first_seen.setdefault(seen.record.uuid, seen.visible_us)
        inventory_s = (inventory_at - launched) / 1e6
        records_s = (max(first_seen[u] for u in want) - launched) / 1e6
        progress(f"{NAME}: inventory of {DOMAINS:,} acknowledged {inventory_s:.1f}s after the agent's launch, "
                 f"every RESYNC record seen by {records_s:.1f}s; RSS {rss / 1024:.0f} MiB (peak {hwm / 1024:.0f})")
        result.add("inventory_s", f"{DOMAINS:,} domains: launch -> full inventory", inventory_s, "s",
                   "agent launched until a consumer sees the HostRecord listing every domain (target <= 5 s)")
        result.add("records_s", f"{DOMAINS:,} domains: launch -> every RESYNC record", records_s, "s",
                   "agent launched until a consumer has seen a RESYNC record of every domain")
        result.add("rss_mib", f"agent RSS with {DOMAINS:,} domains", rss / 1024, "MiB", "VmRSS (target <= 120 MiB)")
        result.add("peak_rss_mib", f"agent peak RSS with {DOMAINS:,} domains", hwm / 1024, "MiB", "VmHWM")
        result.details["domains"] = DOMAINS
        if isinstance(listed_wall, (int, float)):
            # The agent's own start (interpreter, Kafka checks, control topic) before its listing began.
            result.add("listing_after_s", "launch -> the listing starts", listed_wall - launched / 1e6, "s",
                       "status.json's resync_last_listed_at minus the launch: start-up before the resync")
    finally:
        if agent is not None:
            agent.terminate()
        _undefine(conn, uuids)
        conn.close()
    return result


def _inventory_seen_at(tail: TopicTail, codec: Any, want: set[str]) -> int | None:
    """When (wall µs) the first HostRecord whose inventory lists every domain of ``want`` became visible."""
    for seen in tail.seen():
        if seen.record is not None:
            host = codec.decode_host(seen.record).record
            if host.resync_id and want <= {e.uuid for e in host.domains}:
                return int(seen.visible_us)
    return None


if __name__ == "__main__":
    sys.exit(main_one(sys.modules[__name__]))
