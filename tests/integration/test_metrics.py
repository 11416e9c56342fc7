"""``--metrics-address``: /metrics agrees with the topic, /readyz follows libvirtd (issue 11, must-show 1).

The module has its own libvirtd, since one test stops it.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from bridge.consumer import Informer, KafkaSettings
from bridge.consumer.metrics import InformerCollector
from bridge.records import RecordKind
from devenv import LibvirtHost, free_port, wait_until
from tests.support.agent_proc import AgentProcess
from tests.support.checks import decode_log
from tests.support.domains import unique_name
from tests.support.topics import host_records, read_all

P = "libvirt_kafka_bridge_"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture(scope="module")
def metrics_host(tmp_path_factory) -> Iterator[LibvirtHost]:
    with LibvirtHost(tmp_path_factory.mktemp("metrics-libvirt"), name="metricshost") as host:
        yield host


def http_get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def scrape(port: int) -> Samples:
    status, text = http_get(port, "/metrics")
    assert status == 200
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        assert family.name.startswith(P), family.name
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((P + name, frozenset(labels.items())), 0.0)


def by_label(samples: Samples, name: str, label: str) -> dict[str, float]:
    return {dict(k)[label]: v for (n, k), v in samples.items() if n == P + name and v}


def start_agent(agent_factory, uri: str) -> tuple[AgentProcess, int]:
    port = free_port()
    agent = agent_factory(uri, extra=["--metrics-address", f"127.0.0.1:{port}"]).start(wait_resync=False)

    def ready() -> bool:
        agent.check_alive()
        try:
            return http_get(port, "/readyz")[0] == 200
        except OSError:  # not listening yet
            return False

    wait_until(ready, timeout=60, what="/readyz to answer 200")
    return agent, port


def test_metrics_match_the_records_on_the_topic_after_a_churn(kafka, metrics_host, topics, agent_factory):
    agent, port = start_agent(agent_factory, metrics_host.test_uri)
    assert http_get(port, "/healthz") == (200, "ok\n")
    first = scrape(port)
    assert value(first, "resyncs_completed_total") >= 1 and value(first, "libvirt_connected") == 1
    info = next(dict(k) for (n, k) in first if n == P + "agent_info")
    assert info["host"] == "host1" and info["libvirt_version"] and info["version"]

    prefix = unique_name("metrics")
    churn = subprocess.Popen(
        [sys.executable, "-m", "devenv.churn", "--uri", metrics_host.test_uri, "--ops", "200", "--rate", "80",
         "--seed", "11", "--prefix", prefix, "--pool", "8"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        during: list[Samples] = []

        def scraped_during_churn() -> bool:
            during.append(scrape(port))
            return churn.poll() is not None

        wait_until(scraped_during_churn, timeout=120, what="the churn to end", interval=0.5)
        out, err = churn.communicate(timeout=30)
        assert churn.returncode == 0, err
    finally:
        if churn.poll() is None:
            churn.kill()
            churn.wait(10)
    assert sum(json.loads(out)["by_op"].values()) == 200
    published = [sum(by_label(s, "events_published_total", "event").values()) for s in during]
    assert published == sorted(published) and published[-1] > published[0], "counters grow during the churn"

    state: dict[str, Any] = {}

    def settled() -> bool:
        s = scrape(port)
        log = decode_log(read_all(kafka.bootstrap_servers, topics[0]))
        state.update(samples=s, log=log)
        records = [r for _raw, r in log if r is not None]
        return (value(s, "domains_pending") == 0 and value(s, "domains_in_flight") == 0
                and len(records) == sum(by_label(s, "records_published_total", "kind").values()))

    wait_until(settled, timeout=60, what="every produced record on the topic", interval=0.5)
    s: Samples = state["samples"]
    log = state["log"]
    records = [r for _raw, r in log if r is not None]
    tombstones = sum(1 for _raw, r in log if r is None)

    assert value(s, "kafka_redeliveries_total") == 0  # else duplicates on the topic would explain a mismatch
    assert by_label(s, "records_published_total", "kind") == dict(Counter(r.kind.value for r in records))
    assert tombstones == value(s, "records_published_total", kind=RecordKind.DELETED.value)
    events_on_topic = Counter(e.id for r in records for e in r.events)
    assert by_label(s, "events_published_total", "event") == dict(events_on_topic)
    # One host, no migrations: every event received is published, none elided or dropped.
    assert by_label(s, "events_received_total", "event") == dict(events_on_topic)
    assert value(s, "events_not_owned_total") == 0 and value(s, "events_elided_total") == 0
    coalesced = sum(len(r.events) - 1 for r in records if len(r.events) > 1)
    assert value(s, "events_coalesced_total") == coalesced
    assert value(s, "event_ack_latency_seconds_count") == sum(events_on_topic.values())
    assert 0 < value(s, "event_ack_latency_seconds_sum") / value(s, "event_ack_latency_seconds_count") < 5
    snapshots = sum(1 for r in records if r.kind is not RecordKind.DELETED)
    assert value(s, "snapshot_read_latency_seconds_count") >= snapshots
    assert value(s, "last_version") == max(r.version for r in records)
    assert value(s, "producer_queue_messages") == 0
    latest_inventory = [h for h in host_records(kafka.bootstrap_servers, topics[1]) if h.resync_id][-1]
    assert value(s, "owned_domains") == len(latest_inventory.domains)
    assert value(s, "handed_off_domains") == 0 and value(s, "kafka_delivery_errors_total") == 0
    assert value(s, "last_resync_completion_timestamp_seconds") > 0 and value(s, "resync_duration_seconds") >= 0
    assert value(s, "process_resident_memory_bytes") > 0

    # The same numbers in status.json (the progress line's source).
    status_path = agent.state_dir / "status.json"
    wait_until(lambda: status_path.exists() and json.loads(status_path.read_text())["records"] == len(records),
               timeout=30, what="status.json to show the settled numbers")
    st = json.loads(status_path.read_text())
    assert st["events_published_by_id"] == dict(events_on_topic)
    assert st["records_by_kind"] == by_label(s, "records_published_total", "kind")

    # The consumer library's collector, over a view read from the same topics.
    with Informer(KafkaSettings(bootstrap_servers=kafka.bootstrap_servers, domains_topic=topics[0],
                                hosts_topic=topics[1])) as informer:
        assert informer.wait_for_sync(timeout=60)
        registry = CollectorRegistry()
        registry.register(InformerCollector(informer, labels={"view": "test"}))
        assert registry.get_sample_value(P + "consumer_synced", {"view": "test"}) == 1
        assert registry.get_sample_value(P + "consumer_domains", {"view": "test"}) == len(informer.list().domains)
        assert (registry.get_sample_value(P + "consumer_records_applied_total", {"view": "test"}) or 0) > 0
        assert registry.get_sample_value(P + "consumer_undecodable_total", {"view": "test"}) == 0
        assert registry.get_sample_value(P + "consumer_hosts", {"view": "test"}) == 1
    agent.check_alive()
    assert agent.terminate() == 0


def test_readyz_is_503_while_libvirtd_is_down_and_200_after_it_returns(metrics_host, agent_factory):
    agent, port = start_agent(agent_factory, metrics_host.test_uri)
    assert http_get(port, "/healthz")[0] == 200
    reconnects = value(scrape(port), "libvirt_reconnects_total")
    metrics_host.kill()
    try:
        wait_until(lambda: http_get(port, "/readyz")[0] == 503, timeout=30, what="/readyz to answer 503")
        status, body = http_get(port, "/readyz")
        assert status == 503 and "libvirt not connected" in body and body.count("\n") == 1, body
        assert value(scrape(port), "libvirt_connected") == 0
        assert http_get(port, "/healthz") == (200, "ok\n")  # the agent itself is fine: it reconnects
    finally:
        if not metrics_host.running:
            metrics_host.revive()
    wait_until(lambda: http_get(port, "/readyz") == (200, "ready\n"), timeout=90,
               what="/readyz to answer 200 after libvirtd returned")
    s = scrape(port)
    assert value(s, "libvirt_connected") == 1 and value(s, "libvirt_reconnects_total") == reconnects + 1
    assert http_get(port, "/nope")[0] == 404
    assert agent.terminate() == 0


def test_bad_or_busy_metrics_address_is_a_user_error(tmp_path: Path):
    def run(address: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "bridge", "run", "--state-dir", str(tmp_path / "state"), "--bootstrap-servers",
             "127.0.0.1:1", "--metrics-address", address], capture_output=True, text=True, timeout=60, check=False)

    bad = run("localhost")
    assert bad.returncode == 2 and "--metrics-address" in bad.stderr and "Traceback" not in bad.stderr
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = run(f"127.0.0.1:{busy.getsockname()[1]}")
    assert taken.returncode == 2 and "--metrics-address" in taken.stderr and "in use" in taken.stderr, taken.stderr


def test_json_logs_carry_librdkafka_lines_and_no_raw_ones(tmp_path: Path):
    """Kafka unreachable at start-up: librdkafka's connection failures (from the start-up admin
    client) arrive as JSON records of the ``librdkafka.admin`` logger, never as raw ``%3|`` lines."""
    proc = subprocess.run(
        [sys.executable, "-m", "bridge", "--log-format", "json", "--log-level", "DEBUG", "run", "--state-dir",
         str(tmp_path / "state"), "--bootstrap-servers", "127.0.0.1:1", "--kafka-connect-timeout", "1s"],
        capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2
    lines = [json.loads(line) for line in proc.stderr.splitlines()]  # every line is one JSON object
    assert any(rec["logger"] == "librdkafka.admin" and "FAIL" in rec["message"] for rec in lines)
    assert lines[-1]["level"] == "ERROR" and "--bootstrap-servers" in lines[-1]["message"]
    text = subprocess.run(
        [sys.executable, "-m", "bridge", "run", "--state-dir", str(tmp_path / "state"), "--bootstrap-servers",
         "127.0.0.1:1", "--kafka-connect-timeout", "1s"], capture_output=True, text=True, timeout=60, check=False)
    assert text.returncode == 2 and "%3|" not in text.stderr and text.stderr.count("\n") == 1, text.stderr
