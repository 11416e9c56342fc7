"""``doctor``'s checks of Kafka: reachability, the topics' settings, the registry, the clock.

The rules they apply are stated in :mod:`bridge.cli.doctor`.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from confluent_kafka import TIMESTAMP_LOG_APPEND_TIME, Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource

from bridge.agent.agent import AgentSettings
from bridge.agent.topics import admin_client, check_reachable, compaction_lags_ms
from bridge.cli.doctor_result import FAIL, OK, SKIP, TOMBSTONE_RESYNCS, WARN, Result
from bridge.errors import DecodeError, UserError

_HISTORY_WARN_MS = 86_400_000  # a day of uncompacted history: more is worth a warning
_LONG_MAX = 2**63 - 1


def kafka_check(s: AgentSettings) -> tuple[AdminClient | None, Result]:
    k = s.kafka
    security = k.kafka_config.get("security.protocol", "PLAINTEXT")
    try:
        admin = admin_client(k.client_config())
        brokers = check_reachable(admin, k.bootstrap_servers, s.kafka_connect_timeout)
    except UserError as exc:
        return None, Result(FAIL, "kafka", f"{exc} (security.protocol={security})",
                            "check --bootstrap-servers and the listener's security settings in --kafka-config "
                            "(security.protocol, sasl.mechanism, sasl.username/password, ssl.ca.location); "
                            "`doctor --log-level DEBUG` shows librdkafka's connection errors")
    return admin, Result(OK, "kafka", f"{brokers} broker(s) answer at {k.bootstrap_servers} "
                         f"(security.protocol={security})")


def topic_checks(admin: AdminClient, s: AgentSettings) -> Iterator[Result]:
    k = s.kafka
    timeout = max(10.0, s.kafka_connect_timeout)
    try:
        meta = admin.list_topics(timeout=timeout)
    except KafkaException as exc:
        yield Result(FAIL, "topics", f"cannot list topics: {exc.args[0].str()}",
                     "grant this principal DESCRIBE on the topics")
        return
    brokers = len(meta.brokers)
    need_ms = int(TOMBSTONE_RESYNCS * s.resync_interval * 1000)
    kinds = {k.domains_topic: "domains", k.hosts_topic: "hosts"}
    if k.heartbeats:
        kinds[k.heartbeats] = "heartbeats"
    for topic, kind in kinds.items():
        name = f"topic {topic}"
        tmeta = meta.topics.get(topic)
        if tmeta is None or tmeta.error is not None:
            rf = s.replication_factor or min(3, brokers)
            yield Result(WARN, name, "does not exist; run creates it compacted "
                         f"(RF {rf}, delete.retention.ms from the broker default)",
                         "nothing if this principal may CREATE topics; otherwise create it with "
                         f"cleanup.policy=compact and delete.retention.ms>={need_ms}")
            continue
        rf = min((len(p.replicas) for p in tmeta.partitions.values()), default=0)
        try:
            config = _topic_config(admin, topic, timeout)
        except KafkaException as exc:
            yield Result(FAIL, name, f"cannot read its configuration: {exc.args[0].str()}",
                         "grant this principal DESCRIBE_CONFIGS on the topic")
            continue
        alter = (f"kafka-configs --bootstrap-server {k.bootstrap_servers} --alter --entity-type topics "
                 f"--entity-name {topic} --add-config")
        policy = config.get("cleanup.policy", "")
        if "compact" not in policy.split(","):
            yield Result(FAIL, f"{name} cleanup.policy", f"is {policy or 'unset'}, not compacted: old records "
                         "would expire and the log would no longer hold every domain's latest record",
                         f"{alter} cleanup.policy=compact")
        else:
            yield Result(OK, f"{name} cleanup.policy", policy)
        yield _replication_result(f"{name} replication", rf, brokers, config.get("min.insync.replicas"), alter)
        retention = config.get("delete.retention.ms")
        interval = f"{s.resync_interval:g}s"
        if retention is None or not retention.lstrip("-").isdigit():
            yield Result(WARN, f"{name} delete.retention.ms", f"unknown ({retention!r})",
                         f"{alter} delete.retention.ms={need_ms}")
        elif int(retention) < need_ms:
            yield Result(FAIL, f"{name} delete.retention.ms",
                         f"{retention} ms is shorter than {TOMBSTONE_RESYNCS} x --resync-interval {interval} "
                         f"= {need_ms} ms: a consumer that was down could miss a tombstone before a resync repairs "
                         "the delete", f"{alter} delete.retention.ms={need_ms} (or shorten --resync-interval "
                         "on every host)")
        else:
            yield Result(OK, f"{name} delete.retention.ms", f"{retention} ms >= {TOMBSTONE_RESYNCS} x "
                         f"--resync-interval {interval}")
        held = {"heartbeats": ", every heartbeat",
                "hosts": "" if k.heartbeats else ", every heartbeat with its host's inventory"}.get(kind, "")
        yield _compaction_lag_result(name, config, compaction_lags_ms(s.compaction_lag)[kind], alter, held)


def _compaction_lag_result(name: str, config: dict[str, str], want: int, alter: str, held: str) -> Result:
    """How much history a fresh consumer reads before it is compacted away (see compaction_lags_ms)."""
    lag, segment = config.get("max.compaction.lag.ms", ""), config.get("segment.ms", "")
    bound = min(int(v) for v in (lag, segment) if v.isdigit()) if lag.isdigit() or segment.isdigit() else None
    if bound is None or bound > _HISTORY_WARN_MS:
        shown = lag if lag.isdigit() and int(lag) < _LONG_MAX else "unset"  # the broker's default: never
        return Result(WARN, f"{name} max.compaction.lag.ms",
                      f"{shown} (segment.ms {segment or 'unset'}): records wait that long before the "
                      f"cleaner may compact them, so a fresh consumer reads that much history{held}",
                      f"{alter} max.compaction.lag.ms={want}")
    return Result(OK, f"{name} max.compaction.lag.ms", f"history compacted within {bound} ms")


def _replication_result(name: str, rf: int, brokers: int, min_isr_text: str | None, alter: str) -> Result:
    min_isr = int(min_isr_text) if min_isr_text and min_isr_text.isdigit() else 1
    detail = f"RF {rf}, min.insync.replicas {min_isr}, {brokers} broker(s)"
    if min_isr > rf:
        return Result(FAIL, name, f"{detail}: acks=all writes are refused (NOT_ENOUGH_REPLICAS)",
                      f"{alter} min.insync.replicas={max(1, rf - 1) if rf >= 3 else rf}")
    if rf < 3 <= brokers:
        return Result(WARN, name, f"{detail}: losing one broker can lose acknowledged records",
                      "raise the replication factor to 3 (kafka-reassign-partitions) and set "
                      "min.insync.replicas=2")
    if rf >= 3 and min_isr < 2:
        return Result(WARN, name, f"{detail}: acks=all waits for only one replica",
                      f"{alter} min.insync.replicas=2")
    return Result(OK, name, detail)


def _topic_config(admin: AdminClient, topic: str, timeout: float) -> dict[str, str]:
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
    entries: Any = admin.describe_configs([resource], request_timeout=timeout)[resource].result(timeout)
    return {str(name): str(entry.value) for name, entry in entries.items() if entry.value is not None}


def registry_check(s: AgentSettings) -> Iterator[Result]:
    if not s.kafka.schema_registry_url:
        return
    try:
        s.kafka.codec()
    except UserError as exc:
        yield Result(FAIL, "schema registry", str(exc),
                     "check --schema-registry-url and --schema-registry-config (basic.auth.user.info, ssl.*)")
        return
    yield Result(OK, "schema registry", f"answers at {s.kafka.schema_registry_url}")


# -- clock -----------------------------------------------------------------------------------------------


def clock_check(s: AgentSettings, now: Callable[[], float] = time.time) -> Result:
    name = "clock"
    k = s.kafka
    try:
        codec = k.codec()
    except UserError as exc:
        return Result(SKIP, name, f"cannot decode heartbeats: {exc}")
    # The heartbeats topic has the freshest word of every host; agents without one heartbeat on the hosts topic.
    topic, decode = k.heartbeats or k.hosts_topic, codec.decode_heartbeat if k.heartbeats else codec.decode_host
    latest = _latest_messages(k.client_config(), topic, max(5.0, s.kafka_connect_timeout))
    if latest is None and topic != k.hosts_topic:
        topic, decode = k.hosts_topic, codec.decode_host
        latest = _latest_messages(k.client_config(), topic, max(5.0, s.kafka_connect_timeout))
    if latest is None:
        return Result(SKIP, name, f"no heartbeats on {k.heartbeats or k.hosts_topic} yet to compare with")
    read_at = now()
    ahead: list[tuple[float, str]] = []  # (seconds in this host's future, whose)
    for ts_type, ts_ms, key, value in latest:
        try:
            record = decode(value, key).record
        except DecodeError:
            continue
        ahead.append((ts_ms / 1000 - read_at, "the broker" if ts_type == TIMESTAMP_LOG_APPEND_TIME
                      else f"host {record.host}"))
        ahead.append((record.heartbeat_at / 1e6 - read_at, f"host {record.host}"))
        if ts_type == TIMESTAMP_LOG_APPEND_TIME and record.host == s.host_id:
            # This host wrote heartbeat_at just before the broker appended it: it cannot be later.
            ahead.append((record.heartbeat_at / 1e6 - ts_ms / 1000, "this host (vs the broker)"))
    if not ahead:
        return Result(SKIP, name, f"no decodable heartbeat on {topic}")
    worst, whose = max(ahead)
    hosts = len(latest)
    bound_ms = s.max_clock_skew * 1000
    if worst > s.max_clock_skew:
        return Result(WARN, name, f"{whose}'s clock is {worst * 1000:.0f} ms ahead of this host's (more than "
                      f"--max-clock-skew {bound_ms:g} ms; {hosts} heartbeat(s) read)",
                      "run NTP (chrony or systemd-timesyncd) on every host and check `chronyc tracking`: "
                      "versions across a live migration rely on clocks agreeing within the bound")
    return Result(OK, name, f"no clock ahead of this host's by more than --max-clock-skew {bound_ms:g} ms "
                  f"({hosts} heartbeat(s) on {topic}; a clock behind shows as an old heartbeat)")


def _latest_messages(client_config: dict[str, str], topic: str, timeout: float
                     ) -> list[tuple[int, int, bytes | None, bytes | None]] | None:
    """(timestamp type, timestamp ms, key, value) of the last message of each partition; None if empty."""
    consumer = Consumer({**client_config, "group.id": f"libvirt-kafka-bridge-doctor-{uuid.uuid4().hex}",
                         "enable.auto.commit": False, "auto.offset.reset": "latest",
                         "enable.partition.eof": False})
    try:
        meta = consumer.list_topics(topic, timeout=timeout).topics.get(topic)
        if meta is None or meta.error is not None:
            return None
        wanted: dict[int, int] = {}
        for p in meta.partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout)
            if high > low:
                wanted[p] = high - 1
        if not wanted:
            return None
        consumer.assign([TopicPartition(topic, p, off) for p, off in wanted.items()])
        out = []
        deadline = time.monotonic() + timeout
        while wanted and time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is None or msg.error() or msg.partition() not in wanted:
                continue
            wanted.pop(msg.partition())  # type: ignore[arg-type]
            ts_type, ts_ms = msg.timestamp()
            out.append((ts_type, ts_ms, msg.key(), msg.value()))
        return out or None
    finally:
        consumer.close()

