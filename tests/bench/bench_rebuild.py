"""Benchmark 4: rebuilding a view from the log, the consumer library beside a raw consume + decode.

This process produces 100k DomainRecords (20k domains x 5 versions, ~1.5 KB of realistic domain XML
each) straight to a fresh 3-partition compacted topic with :class:`bridge.serde.RecordCodec` and a
confluent_kafka Producer (the agent's producer settings), then, in the same run and on the same broker:

1. ``raw``: a bare consumer (with the Informer's librdkafka settings, ``FETCH_TUNING``) reads every
   partition from the beginning to the high watermarks and decodes each message with
   ``RecordCodec.decode_domain`` (the floor for any Python reader);
2. ``informer``: :class:`bridge.consumer.Informer` starts on the topic (and an empty hosts topic) and
   is timed until ``wait_for_sync()`` returns, with the view checked to hold every domain.

Both (and the raw pass with fastavro's generic reader) run :data:`ROUNDS` times, interleaved; the
fastest of each counts, and every pass's rate is kept in the details.

``python -m tests.bench.bench_rebuild``
"""

from __future__ import annotations

import sys
import time
import uuid as uuid_mod
from typing import Any

from tests.bench import BenchEnv, BenchResult, main_one, now_us, progress, unique_topics

NAME = "rebuild"
TITLE = "consumer rebuild from the log"
NEEDS = ("kafka",)

DOMAINS = 20_000
VERSIONS = 5
PARTITIONS = 3
TIMEOUT = 240.0
ROUNDS = 2
"""Each pass runs this many times, interleaved, and the fastest of each counts: a first pass over the
freshly written topic was once slowed by the broker to 35,000 records/s where later ones read 55,000."""

_XML = """<domain type='kvm' id='{id}'>
  <name>{name}</name>
  <uuid>{uuid}</uuid>
  <memory unit='KiB'>{mem}</memory>
  <currentMemory unit='KiB'>{mem}</currentMemory>
  <vcpu placement='static'>{vcpu}</vcpu>
  <os><type arch='x86_64' machine='pc-q35-7.2'>hvm</type><boot dev='hd'/></os>
  <features><acpi/><apic/><vmport state='off'/></features>
  <cpu mode='host-passthrough' check='none' migratable='on'/>
  <clock offset='utc'><timer name='rtc' tickpolicy='catchup'/><timer name='pit' tickpolicy='delay'/></clock>
  <on_poweroff>destroy</on_poweroff><on_reboot>restart</on_reboot><on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2' discard='unmap'/>
      <source file='/var/lib/libvirt/images/{name}.qcow2' index='1'/>
      <target dev='vda' bus='virtio'/><alias name='virtio-disk0'/>
      <address type='pci' domain='0x0000' bus='0x04' slot='0x00' function='0x0'/>
    </disk>
    <interface type='network'>
      <mac address='52:54:00:{mac}'/>
      <source network='default' portid='{port}' bridge='virbr0'/>
      <target dev='vnet{id}'/><model type='virtio'/><alias name='net0'/>
      <address type='pci' domain='0x0000' bus='0x01' slot='0x00' function='0x0'/>
    </interface>
    <serial type='pty'><source path='/dev/pts/{id}'/><target type='isa-serial' port='0'/></serial>
    <graphics type='vnc' port='{vnc}' autoport='yes' listen='127.0.0.1'/>
    <video><model type='virtio' heads='1' primary='yes'/></video>
    <memballoon model='virtio'/>
  </devices>
</domain>
"""


def _records(count: int, versions: int) -> Any:
    """Yield ``count`` x ``versions`` DomainRecords, version-round by version-round."""
    from bridge.records import AgentInfo, DomainEvent, DomainRecord, RecordKind  # noqa: PLC0415

    agent = AgentInfo(uuid_mod.uuid4().hex, "0.1.0", "9.0.0")
    domains = []
    for i in range(count):
        uuid = str(uuid_mod.uuid4())
        name = f"vm-{i:06d}"
        xml = _XML.format(id=i % 4096, name=name, uuid=uuid, mem=1048576 * (1 + i % 8),
                          vcpu=1 + i % 4, mac=f"{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:{i & 255:02x}",
                          port=uuid_mod.uuid4(), vnc=5900 + i % 4096)
        domains.append((uuid, name, xml))
    base = now_us()
    states = (("RUNNING", "BOOTED", "STARTED", "BOOTED", True), ("PAUSED", "USER", "SUSPENDED", "PAUSED", True),
              ("RUNNING", "UNPAUSED", "RESUMED", "UNPAUSED", True), ("SHUTOFF", "DESTROYED", "STOPPED", "DESTROYED",
                                                                       False))
    for v in range(versions):
        state, reason, etype, detail, active = states[v % len(states)]
        for j, (uuid, name, xml) in enumerate(domains):
            version = base + v * count + j
            yield DomainRecord(
                uuid=uuid, name=name, host=f"host-{j % 16:02d}", version=version, kind=RecordKind.EVENT,
                agent=agent, observed_at=version,
                events=(DomainEvent("LIFECYCLE", version - 100, etype, detail),),
                state=state, reason=reason, active=active, persistent=True, xml=xml,
            )


def _produce(env: BenchEnv, domains_topic: str, hosts_topic: str, count: int, versions: int) -> dict[str, Any]:
    from confluent_kafka import Producer  # noqa: PLC0415
    from confluent_kafka.admin import AdminClient, NewTopic  # noqa: PLC0415

    from bridge.agent.publisher import producer_config  # noqa: PLC0415
    from bridge.serde import RecordCodec, cloud_events  # noqa: PLC0415

    admin = AdminClient({"bootstrap.servers": env.bootstrap})
    futures = admin.create_topics([NewTopic(domains_topic, PARTITIONS, 1, config={"cleanup.policy": "compact"}),
                                   NewTopic(hosts_topic, 1, 1, config={"cleanup.policy": "compact"})])
    for f in futures.values():
        f.result(30)
    codec = RecordCodec(None, domains_topic, hosts_topic)
    # The agent's settings, with a longer linger for bulk loading; "coordinator load in progress" while
    # a fresh broker settles is retried by librdkafka, not worth a warning line.
    producer = Producer(producer_config({"bootstrap.servers": env.bootstrap, "linger.ms": "50", "log_level": "3"}))
    total = count * versions
    value_bytes = 0
    failed: list[str] = []

    def on_delivery(err: Any, _msg: Any) -> None:
        if err is not None:
            failed.append(str(err))

    progress(f"{NAME}: producing {total:,} DomainRecords ({count:,} domains x {versions} versions)")
    t = time.monotonic()
    for n, record in enumerate(_records(count, versions), 1):
        value = codec.encode_domain(record)
        value_bytes += len(value)
        while True:
            try:
                producer.produce(domains_topic, key=record.uuid.encode(), value=value, on_delivery=on_delivery,
                                 headers=list(cloud_events.domain_headers(record)))  # as the agent sends it
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
        if n % 25_000 == 0:
            progress(f"{NAME}: produced {n:,}/{total:,}")
    left = producer.flush(120)
    if left or failed:
        raise RuntimeError(f"producing the rebuild topic: {left} unflushed, {len(failed)} failed: {failed[:3]}")
    seconds = time.monotonic() - t
    progress(f"{NAME}: produced {total:,} records ({value_bytes / 2**20:.0f} MiB of values) in {seconds:.1f}s")
    return {"records": total, "value_mib": round(value_bytes / 2**20, 1), "avg_value_bytes": value_bytes // total,
            "seconds": round(seconds, 2)}


def _raw_consume(env: BenchEnv, topic: str, expected: int, *, generic: bool = False) -> dict[str, Any]:
    """Every partition from the beginning to the high watermarks, each value decoded: by RecordCodec, or
    with ``generic`` by fastavro's schemaless reader into a dict (what a reader without our code pays)."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition  # noqa: PLC0415

    from bridge.serde import RecordCodec  # noqa: PLC0415

    if generic:
        import io  # noqa: PLC0415

        import fastavro  # noqa: PLC0415

        from bridge.serde.schema_files import domain_schema  # noqa: PLC0415
        from bridge.serde.single_object import HEADER_LEN  # noqa: PLC0415

        schema = fastavro.parse_schema(domain_schema())

        def decode(value: bytes | None, key: bytes | None) -> Any:
            assert value is not None  # the bench writes no tombstones
            return fastavro.schemaless_reader(io.BytesIO(value[HEADER_LEN:]), schema, None)
    else:
        codec = RecordCodec()

        def decode(value: bytes | None, key: bytes | None) -> Any:
            return codec.decode_domain(value, key)
    from bridge.consumer.reflector import FETCH_TUNING  # noqa: PLC0415

    # The Informer's librdkafka tuning too, so that the ratio measures the Informer's own work: at the
    # defaults this reader stalls on a full fetch queue as the Informer once did.
    consumer = Consumer({**FETCH_TUNING, "bootstrap.servers": env.bootstrap,
                         "group.id": "bench-" + uuid_mod.uuid4().hex, "enable.auto.commit": False})
    progress(f"{NAME}: raw consume + decode of {expected:,} records")
    t = time.monotonic()
    try:
        ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in range(PARTITIONS)}
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(PARTITIONS)])
        pos = dict.fromkeys(ends, 0)
        decoded = 0
        decode_s = 0.0
        deadline = time.monotonic() + TIMEOUT
        while any(pos[p] < ends[p] for p in ends):
            if time.monotonic() > deadline:
                raise TimeoutError(f"raw consume: at {pos}, want {ends}")
            for msg in consumer.consume(num_messages=1000, timeout=0.5):
                if msg.error():
                    continue
                d0 = time.perf_counter()
                decode(msg.value(), msg.key())
                decode_s += time.perf_counter() - d0
                decoded += 1
                part, offset = msg.partition(), msg.offset()
                assert part is not None and offset is not None  # always set on a consumed message
                pos[part] = offset + 1
        seconds = time.monotonic() - t
    finally:
        consumer.close()
    if decoded != expected:
        raise RuntimeError(f"raw consume decoded {decoded} records, expected {expected}")
    how = "fastavro" if generic else "RecordCodec"
    progress(f"{NAME}: raw ({how}): {decoded:,} records in {seconds:.1f}s ({decoded / seconds:,.0f}/s; "
             f"decode {decode_s:.1f}s)")
    return {"records": decoded, "seconds": round(seconds, 3), "records_per_s": decoded / seconds,
            "decode_seconds": round(decode_s, 3)}


def _informer(env: BenchEnv, domains_topic: str, hosts_topic: str, expected: int,
              domains: int) -> dict[str, Any] | None:
    """Time an Informer from start() to synced; None if the consumer library is not there yet."""
    try:
        from bridge.consumer import Informer  # noqa: PLC0415
        from bridge.kafka_settings import KafkaSettings  # noqa: PLC0415
    except ImportError:
        return None
    settings = KafkaSettings(bootstrap_servers=env.bootstrap, domains_topic=domains_topic, hosts_topic=hosts_topic)
    progress(f"{NAME}: Informer sync from the beginning of {expected:,} records")
    t = time.monotonic()
    with Informer(settings) as informer:
        if not informer.wait_for_sync(timeout=TIMEOUT):
            raise TimeoutError(f"informer not synced after {TIMEOUT:.0f}s: {informer.last_error}")
        seconds = time.monotonic() - t
        view = len(informer.list().domains)
        stats = informer.stats()
    if view != domains:
        raise RuntimeError(f"the informer's view holds {view} domains, expected {domains}")
    progress(f"{NAME}: informer: synced in {seconds:.1f}s ({expected / seconds:,.0f} records/s), {view:,} domains")
    return {"records": expected, "seconds": round(seconds, 3), "records_per_s": expected / seconds,
            "view_domains": view, "applied": stats.applied, "skipped_older": stats.skipped_older,
            "undecodable": stats.undecodable}


def run(env: BenchEnv, domains: int = DOMAINS, versions: int = VERSIONS) -> BenchResult:
    total = domains * versions
    result = BenchResult(NAME, TITLE, params={"records": total, "domains": domains, "versions_per_domain": versions,
                                              "partitions": PARTITIONS})
    domains_topic, hosts_topic = unique_topics(NAME)
    produced = _produce(env, domains_topic, hosts_topic, domains, versions)
    passes: dict[str, list[dict[str, Any]]] = {"raw": [], "raw_fastavro": [], "informer": []}
    for _ in range(ROUNDS):
        passes["raw"].append(_raw_consume(env, domains_topic, total))
        passes["raw_fastavro"].append(_raw_consume(env, domains_topic, total, generic=True))
        informer = _informer(env, domains_topic, hosts_topic, total, domains)
        if informer is None:
            break
        passes["informer"].append(informer)
    raw, generic = (max(passes[k], key=lambda p: p["records_per_s"]) for k in ("raw", "raw_fastavro"))
    informer = max(passes["informer"], key=lambda p: p["records_per_s"]) if passes["informer"] else None
    result.add("rebuild_raw_records_per_s", "rebuild: raw consume + decode", raw["records_per_s"], "records/s",
               f"a bare consumer (the Informer's librdkafka settings) reads {total:,} DomainRecords "
               f"(~{produced['avg_value_bytes']} B each, zstd) from the beginning of 3 partitions and decodes each "
               "with RecordCodec: the floor for a Python reader")
    result.add("rebuild_raw_fastavro_records_per_s", "rebuild: raw consume + fastavro", generic["records_per_s"],
               "records/s", "the same, each value decoded by fastavro's generic reader into a dict (no record "
               "built, no checks): what a Python reader without the bridge's decoder pays")
    if informer is None:
        result.notes.append("bridge.consumer.Informer is not importable: the view benchmark was skipped")
    else:
        result.add("rebuild_informer_records_per_s", "rebuild: Informer sync", informer["records_per_s"],
                   "records/s", f"Informer.start() -> wait_for_sync() returned, {total:,} records into a view of "
                   f"{domains:,} domains (same topic, same run; the fastest of {ROUNDS} passes, interleaved with "
                   "the raw ones)")
        result.add("rebuild_informer_vs_raw", "rebuild: Informer / raw",
                   informer["records_per_s"] / raw["records_per_s"], "ratio",
                   "Informer sync records/s divided by raw consume + decode records/s (1.0 = no overhead)")
        result.add("rebuild_informer_vs_raw_fastavro", "rebuild: Informer / raw fastavro",
                   informer["records_per_s"] / generic["records_per_s"], "ratio",
                   "Informer sync records/s divided by raw consume + fastavro decode records/s")
    result.details = {"produce": produced, "raw": raw, "raw_fastavro": generic, "informer": informer,
                      "passes_records_per_s": {k: [round(p["records_per_s"]) for p in v] for k, v in passes.items()}}
    return result


if __name__ == "__main__":
    sys.exit(main_one(sys.modules[__name__]))
