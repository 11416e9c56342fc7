"""The consumer library's Prometheus collector (issue 11)."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from bridge.consumer import Informer, InformerStats, KafkaSettings, Position, Snapshot
from bridge.consumer.metrics import InformerCollector
from bridge.records import AgentInfo, DomainRecord, HostRecord, RecordKind

P = "libvirt_kafka_bridge_consumer_"
AGENT = AgentInfo("i", "0.1.0", "9.0.0")


def domain(n: int, host: str) -> DomainRecord:
    return DomainRecord(f"00000000-0000-4000-8000-{n:012d}", f"vm{n}", host, n, RecordKind.EVENT, AGENT, 1)


@dataclass
class FakeInformer:
    snapshot: Snapshot
    counters: InformerStats
    last_error: str | None = None

    def stats(self) -> InformerStats:
        return self.counters

    def list(self) -> Snapshot:
        return self.snapshot

    def lag(self) -> dict[tuple[str, int], int]:
        return {("libvirt.domains", 0): 3}


def test_collector_reads_stats_and_the_view():
    snap = Snapshot(
        domains={d.uuid: d for d in (domain(1, "a"), domain(2, "a"), domain(3, "b"))},
        hosts={h: HostRecord(h, AGENT, 1) for h in ("a", "b")},
        position=Position({("libvirt.domains", 0): 17, ("libvirt.domains", 1): 4, ("libvirt.hosts", 0): 9}),
        taken_at=1, synced=True, stale_hosts=frozenset({"b"}),
    )
    fake = FakeInformer(snap, InformerStats(applied=20, skipped_older=3, listed_away=1, undecodable=2,
                                            unknown_schema=5, handler_errors=1), last_error="broker down")
    registry = CollectorRegistry()
    registry.register(InformerCollector(fake, labels={"view": "fleet"}))
    v = {"view": "fleet"}
    get = registry.get_sample_value
    assert get(P + "records_applied_total", v) == 20
    assert get(P + "records_skipped_older_total", v) == 3
    assert get(P + "records_listed_away_total", v) == 1
    assert get(P + "undecodable_total", v) == 2
    assert get(P + "unknown_schema_total", v) == 5
    assert get(P + "handler_errors_total", v) == 1
    assert get(P + "synced", v) == 1
    assert get(P + "domains", v) == 3
    assert get(P + "domains_unknown", v) == 1
    assert get(P + "hosts", v) == 2
    assert get(P + "stale_hosts", v) == 1
    assert get(P + "reader_error", v) == 1
    assert get(P + "position_offset", {**v, "topic": "libvirt.domains", "partition": "1"}) == 4
    assert get(P + "position_offset", {**v, "topic": "libvirt.hosts", "partition": "0"}) == 9
    assert get(P + "lag_messages", {**v, "topic": "libvirt.domains", "partition": "0"}) == 3
    # The exposition parses back, every name under the prefix.
    families = list(text_string_to_metric_families(generate_latest(registry).decode()))
    assert families and all(f.name.startswith(P) for f in families)


def test_collector_on_an_informer_that_has_not_started():
    registry = CollectorRegistry()
    registry.register(InformerCollector(Informer(KafkaSettings(bootstrap_servers="127.0.0.1:1"))))
    assert registry.get_sample_value(P + "synced") == 0
    assert registry.get_sample_value(P + "domains") == 0
    assert registry.get_sample_value(P + "records_applied_total") == 0
