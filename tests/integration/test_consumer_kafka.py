"""The consumer library and the state/watch commands against a real Kafka broker.

Records are produced with RecordCodec directly (the agent is not involved), including foreign bytes
and a record written with a newer schema, so each rule of the consumer's contract shows on its own.
"""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import sys
import threading
import time
import uuid as uuid_mod
from collections.abc import Iterator
from typing import Any, cast

import fastavro
import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from bridge.cli.main import main
from bridge.consumer import (
    Change,
    ChangeCause,
    ChangeType,
    Informer,
    Position,
    PositionExpired,
    Snapshot,
)
from bridge.kafka_settings import KafkaSettings
from bridge.records import AgentInfo, DomainEvent, DomainRecord, HostRecord, InventoryEntry, RecordKind
from bridge.serde import RecordCodec
from bridge.serde.schema_files import SCHEMA_DIR, domain_schema, host_schema
from bridge.serde.single_object import MAGIC, SingleObjectSerializer, legacy_fingerprint
from tests.support.agent_proc import wait_for

AGENT = AgentInfo("test-agent", "0.1.0", "10.0.0")
SYNC_TIMEOUT = 30.0
WAIT = 30.0


def now_us() -> int:
    return time.time_ns() // 1000


def new_uuid() -> str:
    return str(uuid_mod.uuid4())


def domain(uuid: str, version: int, host: str = "hv1", name: str = "vm", state: str = "RUNNING",
           kind: RecordKind = RecordKind.EVENT, events: tuple[DomainEvent, ...] = ()) -> DomainRecord:
    deleted = kind is RecordKind.DELETED
    return DomainRecord(
        uuid=uuid, name=name, host=host, version=version, kind=kind, agent=AGENT, observed_at=version,
        events=events, state=None if deleted else state, reason=None if deleted else "BOOTED",
        active=not deleted and state == "RUNNING", persistent=True,
        xml=None if deleted else f"<domain><name>{name}</name></domain>",
    )


def host(name: str, listed_at: int | None, inventory: dict[str, int], heartbeat_at: int | None = None,
         interval_ms: int = 30_000) -> HostRecord:
    return HostRecord(
        host=name, agent=AGENT, heartbeat_at=now_us() if heartbeat_at is None else heartbeat_at,
        resync_id=None if listed_at is None else f"r{listed_at}", listed_at=listed_at,
        domains=tuple(InventoryEntry(u, v) for u, v in inventory.items()), heartbeat_interval_ms=interval_ms,
    )


class Topics:
    """A fresh compacted topic pair and a producer that writes to it like the agent does."""

    def __init__(self, bootstrap: str) -> None:
        tag = uuid_mod.uuid4().hex[:8]
        self.bootstrap = bootstrap
        self.domains, self.hosts = f"consumer.{tag}.domains", f"consumer.{tag}.hosts"
        admin = AdminClient({"bootstrap.servers": bootstrap})
        futures = admin.create_topics([
            NewTopic(self.domains, 3, 1, config={"cleanup.policy": "compact"}),
            NewTopic(self.hosts, 1, 1, config={"cleanup.policy": "compact"}),
        ])
        for future in futures.values():
            future.result(30)
        self.codec = RecordCodec(domains_topic=self.domains, hosts_topic=self.hosts)
        self._producer = Producer({"bootstrap.servers": bootstrap, "partitioner": "murmur2_random",
                                   "enable.idempotence": True, "linger.ms": 0})
        self._errors: list[str] = []

    @property
    def settings(self) -> KafkaSettings:
        return KafkaSettings(self.bootstrap, self.domains, self.hosts)

    def cli_args(self) -> list[str]:
        return ["--bootstrap-servers", self.bootstrap, "--topic", self.domains, "--hosts-topic", self.hosts]

    def raw(self, topic: str, key: bytes | None, value: bytes | None) -> None:
        self._producer.produce(topic, key=key, value=value, on_delivery=self._delivered)

    def domain(self, record: DomainRecord, then_tombstone: bool = False) -> None:
        self.raw(self.domains, record.uuid.encode(), self.codec.encode_domain(record))
        if then_tombstone:
            self.tombstone(record.uuid)

    def tombstone(self, uuid: str) -> None:
        self.raw(self.domains, uuid.encode(), None)

    def host(self, record: HostRecord) -> None:
        self.raw(self.hosts, record.host.encode(), self.codec.encode_host(record))

    def flush(self) -> None:
        assert self._producer.flush(30) == 0, "messages left undelivered"
        assert not self._errors, self._errors

    def _delivered(self, err: Any, _msg: Any) -> None:
        if err is not None:
            self._errors.append(str(err))


@pytest.fixture
def topics(kafka: Any) -> Iterator[Topics]:
    t = Topics(kafka.bootstrap_servers)
    yield t
    t.flush()


def extended_encoder() -> tuple[SingleObjectSerializer, str]:
    """A writer of a newer DomainRecord schema: one more field appended, with a default."""
    raw = json.loads((SCHEMA_DIR / "domain_record.avsc").read_text(encoding="utf-8"))
    raw["fields"].append({"name": "cpu_time_ns", "type": "long", "default": 0})
    schema = cast(dict[str, Any], fastavro.parse_schema(raw, _write_hint=False))
    return SingleObjectSerializer(schema), "cpu_time_ns"


class Recorder:
    """Handler calls, collected from the handler thread."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, ...]] = []
        self.threads: set[str] = set()
        self._cond = threading.Condition()

    def _add(self, *call: str) -> None:
        with self._cond:
            self.calls.append(call)
            self.threads.add(threading.current_thread().name)
            self._cond.notify_all()

    def on_add(self, r: DomainRecord) -> None:
        self._add("add", r.uuid, str(r.version))

    def on_update(self, old: DomainRecord, new: DomainRecord) -> None:
        self._add("update", new.uuid, f"{old.version}->{new.version}")

    def on_delete(self, r: DomainRecord) -> None:
        self._add("delete", r.uuid, str(r.version))

    def wait_count(self, n: int, timeout: float = WAIT) -> list[tuple[str, ...]]:
        with self._cond:
            assert self._cond.wait_for(lambda: len(self.calls) >= n, timeout), f"handler calls: {self.calls}"
            return list(self.calls)


def next_change(changes: Iterator[Change]) -> Change:
    change = next(changes, None)
    assert change is not None, "no change arrived in time"
    return change


# -- the library -------------------------------------------------------------------------------------------

def test_sync_list_get_skip_foreign_bytes_and_tolerate_a_newer_schema(topics: Topics) -> None:
    v = now_us()
    a, b, c, d, e = (new_uuid() for _ in range(5))
    topics.host(host("hv1", listed_at=v - 1000, inventory={}))
    topics.domain(domain(a, v + 1, "hv1", "alpha"))
    topics.domain(domain(a, v + 3, "hv1", "alpha", state="PAUSED"))
    topics.domain(domain(a, v + 2, "hv1", "alpha", state="SHUTOFF"))         # out of order: older, skipped
    topics.domain(domain(b, v + 1, "hv1", "bravo"))
    topics.domain(domain(b, v + 5, "hv1", "bravo", kind=RecordKind.DELETED))  # deleted...
    topics.tombstone(b)                                                       # ...and tombstoned
    topics.domain(domain(c, v + 2, "hv2", "charlie"))   # its delete was missed; hv2's inventory repairs it
    topics.domain(domain(d, v + 11, "hv2", "delta", kind=RecordKind.RESYNC))
    topics.host(host("hv2", listed_at=v + 10, inventory={d: v + 11}, heartbeat_at=v - 600_000_000))
    writer, extra = extended_encoder()
    echo = domain(e, v + 4, "hv1", "echo")
    topics.raw(topics.domains, e.encode(), writer({**echo.to_avro(), extra: 123_456}))
    # Foreign and corrupt bytes on both topics.
    topics.raw(topics.domains, new_uuid().encode(), b"\xc3\x01" + b"\x00" * 8 + b"\xff\xff\xff")
    topics.raw(topics.domains, b"not-a-uuid", b'{"json": "from another producer"}')
    topics.raw(topics.domains, b"garbage key \xff", None)                     # a tombstone with a foreign key
    topics.raw(topics.hosts, b"hv9", b"\x00\x00\x00\x00\x07payload")           # Confluent format, no registry
    topics.raw(topics.hosts, b"hv8", b"plain text")
    topics.flush()

    with Informer(topics.settings) as informer:
        assert informer.wait_for_sync(SYNC_TIMEOUT), informer.last_error
        snapshot = informer.list()
        assert snapshot.synced
        assert {u: r.version for u, r in snapshot.domains.items()} == {a: v + 3, d: v + 11, e: v + 4}
        assert informer.get(a) == domain(a, v + 3, "hv1", "alpha", state="PAUSED")
        assert informer.get(e) == echo  # the unknown trailing field is ignored, the rest read exactly
        assert informer.get(b) is None and informer.get(c) is None
        assert snapshot.deleted[b] == v + 5 and snapshot.deleted[c] == v + 2
        assert snapshot.stale_hosts == {"hv2"}
        assert snapshot.is_stale(d) and not snapshot.is_stale(a)
        stats = informer.stats()
        assert (stats.undecodable, stats.unknown_schema, stats.skipped_older) == (5, 1, 1)
        # The snapshot's position is the end of every partition: it reflects the whole log.
        ends = sum(snapshot.position.values())
        assert ends == 16, snapshot.position


def test_records_written_by_0_1_0_are_read_and_counted_foreign_single_object_messages_are_not(
        topics: Topics) -> None:
    """Upgrade path: 0.1.0 wrote the fingerprint byte-reversed; those records must not be lost."""
    v = now_us()
    legacy_uuid, foreign_uuid, current_uuid = new_uuid(), new_uuid(), new_uuid()
    old = domain(legacy_uuid, v + 1, "hv1", "written-by-0.1.0")
    body = topics.codec.encode_domain(old)[10:]
    topics.raw(topics.domains, legacy_uuid.encode(), MAGIC + legacy_fingerprint(domain_schema()) + body)
    old_host = host("hv1", listed_at=v, inventory={legacy_uuid: v + 1})
    topics.raw(topics.hosts, b"hv1",
               MAGIC + legacy_fingerprint(host_schema()) + topics.codec.encode_host(old_host)[10:])
    # Another producer's single-object message, its first string even set to the key it is sent under.
    foreign = cast(dict[str, Any], fastavro.parse_schema({"type": "record", "name": "Invoice", "fields": [
        {"name": "id", "type": "string"}, {"name": "total", "type": "long"}]}))
    topics.raw(topics.domains, foreign_uuid.encode(),
               SingleObjectSerializer(foreign)({"id": foreign_uuid, "total": 4200}))
    topics.domain(domain(current_uuid, v + 2, "hv1", "current"))
    topics.flush()

    with Informer(topics.settings) as informer:
        assert informer.wait_for_sync(SYNC_TIMEOUT), informer.last_error
        assert informer.get(legacy_uuid) == old
        assert informer.get(foreign_uuid) is None
        assert set(informer.list().domains) == {legacy_uuid, current_uuid}
        stats = informer.stats()
        assert (stats.legacy_fingerprint, stats.undecodable, stats.unknown_schema) == (2, 1, 0)


def test_handlers_and_iterator_get_the_synced_view_as_adds_then_each_change(topics: Topics) -> None:
    v = now_us()
    a, f, g = new_uuid(), new_uuid(), new_uuid()
    topics.domain(domain(a, v + 1))
    topics.flush()
    recorder = Recorder()
    informer = Informer(topics.settings)
    informer.add_handler(recorder.on_add, recorder.on_update, recorder.on_delete)  # before start
    changes = informer.changes(timeout=WAIT)                                        # before start too
    with informer:
        assert informer.wait_for_sync(SYNC_TIMEOUT), informer.last_error
        assert recorder.wait_count(1) == [("add", a, str(v + 1))]
        initial = next_change(changes)
        assert (initial.type, initial.cause, initial.new) == (ChangeType.ADDED, ChangeCause.INITIAL, domain(a, v + 1))

        steps: list[tuple[Any, tuple[str, ...], tuple[ChangeType, ChangeCause]]] = [
            (lambda: topics.domain(domain(a, v + 2, state="PAUSED")),
             ("update", a, f"{v + 1}->{v + 2}"), (ChangeType.UPDATED, ChangeCause.RECORD)),
            (lambda: topics.domain(domain(f, v + 3, name="foxtrot")),
             ("add", f, str(v + 3)), (ChangeType.ADDED, ChangeCause.RECORD)),
            (lambda: topics.domain(domain(a, v + 4, kind=RecordKind.DELETED), then_tombstone=True),
             ("delete", a, str(v + 2)), (ChangeType.DELETED, ChangeCause.DELETED)),
            (lambda: topics.domain(domain(g, v + 5, host="hv2")),
             ("add", g, str(v + 5)), (ChangeType.ADDED, ChangeCause.RECORD)),
            # g's delete was missed. The hosts topic was empty at start, so the reader assigned its
            # partition only after the first poll: what comes to it later is read all the same.
            (lambda: topics.host(host("hv2", listed_at=v + 6, inventory={})),
             ("delete", g, str(v + 5)), (ChangeType.DELETED, ChangeCause.INVENTORY)),
        ]
        # One step at a time: a lagging reader would get merged changes, which is allowed but not this test.
        for n, (produce, call, (kind, cause)) in enumerate(steps, start=2):
            produce()
            topics.flush()
            assert recorder.wait_count(n)[-1] == call
            change = next_change(changes)
            assert (change.uuid, change.type, change.cause) == (call[1], kind, cause)
            assert change.source is not None and change.source.topic in (topics.domains, topics.hosts)
        assert len(recorder.calls) == len(steps) + 1
        assert all(name.startswith("informer-handler-") for name in recorder.threads)
        assert {u for u in informer.list().domains} == {f}
    assert next(changes, None) is None  # the iterator ends when the informer stops


def test_handler_added_after_sync_and_failing_handlers(topics: Topics) -> None:
    v = now_us()
    a, b = new_uuid(), new_uuid()
    topics.domain(domain(a, v + 1))
    topics.flush()
    with Informer(topics.settings) as informer:
        assert informer.wait_for_sync(SYNC_TIMEOUT)

        def explode(_record: DomainRecord) -> None:
            raise RuntimeError("handler bug")

        informer.add_handler(on_add=explode)
        recorder = Recorder()
        registration = informer.add_handler(recorder.on_add)
        assert recorder.wait_count(1) == [("add", a, str(v + 1))]
        topics.domain(domain(b, v + 2))
        topics.flush()
        assert recorder.wait_count(2)[-1] == ("add", b, str(v + 2))
        wait_for(lambda: informer.stats().handler_errors == 2, WAIT, "both failures counted")
        registration.remove()


def test_watch_resumes_from_a_listed_position_in_process_and_after_a_restart(topics: Topics) -> None:
    v = now_us()
    a, b, c = new_uuid(), new_uuid(), new_uuid()
    topics.domain(domain(a, v + 1, name="alpha"))
    topics.domain(domain(b, v + 1, name="bravo"))
    topics.flush()
    with Informer(topics.settings, history=3) as first:
        assert first.wait_for_sync(SYNC_TIMEOUT)
        listed = first.list()
        assert set(listed.domains) == {a, b}
        persisted = listed.to_json()

        topics.domain(domain(a, v + 2, name="alpha", state="PAUSED"))
        topics.domain(domain(b, v + 3, name="bravo", kind=RecordKind.DELETED))
        topics.tombstone(b)
        topics.domain(domain(c, v + 4, name="charlie"))
        topics.flush()
        wait_for(lambda: set(first.list().domains) == {a, c}, WAIT, "the new records")

        # Every change after the listed position, none of what the listing already showed.
        with first.watch_from(listed.position, timeout=0.5) as watch:
            seen = {(ch.uuid, ch.type, ch.cause) for ch in watch}
        assert seen == {(a, ChangeType.UPDATED, ChangeCause.RECORD), (b, ChangeType.DELETED, ChangeCause.DELETED),
                        (c, ChangeType.ADDED, ChangeCause.RECORD)}
        with first.watch_from(first.list().position, timeout=0.2) as watch:
            assert list(watch) == []
        with pytest.raises(PositionExpired):
            first.watch_from(Position())  # 5 changes since the beginning, 3 retained
        final = first.list()

    # A new process: restore the persisted view and read on from its position only.
    with Informer(topics.settings, resume=Snapshot.from_json(persisted)) as resumed:
        assert resumed.wait_for_sync(SYNC_TIMEOUT)
        assert resumed.list().domains == final.domains
        assert resumed.list().position == final.position
        assert resumed.stats().applied == 3  # a's update, b's DELETED, c: the tombstone of a gone key is a no-op
        with resumed.changes(timeout=0.5) as changes:
            assert {(ch.uuid, ch.type, ch.cause) for ch in changes} == {
                (a, ChangeType.ADDED, ChangeCause.INITIAL), (c, ChangeType.ADDED, ChangeCause.INITIAL)}


def test_missing_topic_is_retried_and_reported(kafka: Any) -> None:
    settings = KafkaSettings(kafka.bootstrap_servers, f"missing.{uuid_mod.uuid4().hex[:8]}", "missing.hosts")
    with Informer(settings) as informer:
        assert not informer.wait_for_sync(1.5)
        assert informer.last_error is not None and settings.domains_topic in informer.last_error


# -- the commands ------------------------------------------------------------------------------------------

def test_state_json_and_table(topics: Topics, capsys: pytest.CaptureFixture[str]) -> None:
    v = now_us()
    a, b, c = new_uuid(), new_uuid(), new_uuid()
    topics.host(host("hv1", listed_at=v, inventory={a: v + 1, b: v + 2}))
    topics.host(host("hv2", listed_at=v, inventory={c: v + 3}, heartbeat_at=v - 3_600_000_000))
    topics.domain(domain(a, v + 1, "hv1", "alpha", kind=RecordKind.RESYNC))
    topics.domain(domain(b, v + 2, "hv1", "bravo", state="SHUTOFF", kind=RecordKind.RESYNC))
    topics.domain(domain(c, v + 3, "hv2", "charlie", kind=RecordKind.RESYNC))
    topics.raw(topics.domains, b"junk", b"junk")
    topics.flush()

    assert main(["state", *topics.cli_args(), "--output", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["host"], r["name"]) for r in rows] == [("hv1", "alpha"), ("hv1", "bravo"), ("hv2", "charlie")]
    first = rows[0]
    assert {k: first[k] for k in ("uuid", "state", "reason", "active", "persistent", "version", "stale")} == {
        "uuid": a, "state": "RUNNING", "reason": "BOOTED", "active": True, "persistent": True,
        "version": v + 1, "stale": False}
    assert [r["stale"] for r in rows] == [False, False, True]
    assert [r["unknown_reason"] for r in rows] == [None, None, "stale"]

    assert main(["state", *topics.cli_args(), "--output", "json", "--host", "hv1", "--state", "shutoff"]) == 0
    assert [r["uuid"] for r in json.loads(capsys.readouterr().out)] == [b]

    assert main(["state", *topics.cli_args()]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["HOST", "NAME", "UUID", "STATE", "REASON", "VERSION", "AGE", "UNKNOWN"]
    assert lines[3].split()[:4] == ["hv2", "charlie", c, "RUNNING"] and lines[3].endswith("stale")


def test_state_reports_a_missing_topic_and_an_unreachable_cluster(
        kafka: Any, capsys: pytest.CaptureFixture[str]) -> None:
    missing = f"missing.{uuid_mod.uuid4().hex[:8]}"
    assert main(["state", "--bootstrap-servers", kafka.bootstrap_servers, "--topic", missing,
                 "--sync-timeout", "2s"]) == 2
    err = capsys.readouterr().err
    assert missing in err and "--sync-timeout" in err and "Traceback" not in err

    from devenv import free_port  # noqa: PLC0415 -- only this test needs a dead port

    dead = f"127.0.0.1:{free_port()}"
    assert main(["state", "--bootstrap-servers", dead, "--sync-timeout", "3s"]) == 2
    err = capsys.readouterr().err
    assert dead in err and "cannot reach Kafka" in err


def test_watch_prints_the_list_then_each_change_and_exits_0_on_sigterm(topics: Topics) -> None:
    v = now_us()
    a, b = new_uuid(), new_uuid()
    topics.domain(domain(a, v + 1, name="alpha"))
    topics.flush()
    proc = subprocess.Popen([sys.executable, "-m", "bridge", "watch", *topics.cli_args()],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        for line in proc.stdout or ():
            lines.put(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()

    def expect(*fragments: str) -> str:
        deadline = time.monotonic() + WAIT
        while True:
            try:
                line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no line with {fragments}; stderr: {proc.stderr}") from None
            if all(f in line for f in fragments):
                return line

    try:
        expect("EVENT", "HOST", "UUID")
        expect("LISTED", a, "alpha", "RUNNING")
        event = DomainEvent("LIFECYCLE", v + 2, "SUSPENDED", "PAUSED")
        topics.domain(domain(a, v + 2, name="alpha", state="PAUSED", events=(event,)))
        topics.flush()
        expect("UPDATED", a, "PAUSED", "SUSPENDED/PAUSED")
        topics.domain(domain(b, v + 3, name="bravo"))
        topics.flush()
        expect("ADDED", b, "bravo")
        topics.domain(domain(a, v + 4, name="alpha", kind=RecordKind.DELETED), then_tombstone=True)
        topics.flush()
        expect("DELETED", a, "DELETED record")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(WAIT) == 0, proc.stderr.read() if proc.stderr else ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        reader.join(WAIT)


def test_lag_and_a_metrics_scrape_answer_from_another_thread_while_the_reader_polls(topics: Topics) -> None:
    """confluent-kafka 2.16 makes a consumer call from a second thread wait while the reader thread
    polls; an idle informer polls back to back, so a lag() that asked the client hung for good."""
    from prometheus_client import CollectorRegistry, generate_latest  # noqa: PLC0415

    from bridge.consumer.metrics import InformerCollector  # noqa: PLC0415

    v = now_us()
    for i in range(5):
        topics.domain(domain(new_uuid(), v + i, "hv1", f"vm{i}"))
    topics.flush()
    with Informer(topics.settings) as informer:
        assert informer.wait_for_sync(SYNC_TIMEOUT), informer.last_error
        registry = CollectorRegistry()
        registry.register(InformerCollector(informer))
        answers: queue.Queue[tuple[dict[tuple[str, int], int], bytes]] = queue.Queue()

        def ask() -> None:
            answers.put((informer.lag(), generate_latest(registry)))

        for _ in range(3):  # an idle reader polls the whole time: each call must get through
            asker = threading.Thread(target=ask, name="lag-asker", daemon=True)
            asker.start()
            lag, scrape = answers.get(timeout=10)
            asker.join(5)
        # Every partition read (3 + 1; the position names only those that held a message), caught up.
        wait_for(lambda: len(informer.lag()) == 4 and set(informer.lag().values()) == {0}, 10,
                 "every partition's lag, all caught up")
        assert set(informer.position) <= set(informer.lag())
        assert b"libvirt_kafka_bridge_consumer_lag_messages" in scrape
        assert all(v == 0 for v in lag.values())


def test_a_stopped_informer_and_its_view_are_freed_without_the_cyclic_collector(topics: Topics) -> None:
    """No reference cycle holds a stopped informer: a process that replaces its informer gets the old
    view's memory back at once, and the collector's full passes never walk a dead view of 100,000 domains."""
    import gc  # noqa: PLC0415
    import weakref  # noqa: PLC0415

    v = now_us()
    for i in range(3):
        topics.domain(domain(new_uuid(), v + i, "hv1", f"vm{i}"))
    topics.flush()
    gc.collect()
    gc.disable()
    try:
        informer = Informer(topics.settings)
        with informer:
            assert informer.wait_for_sync(SYNC_TIMEOUT), informer.last_error
            assert len(informer.list().domains) == 3
        refs: list[weakref.ref[Any]] = [weakref.ref(informer), weakref.ref(informer._view),
                                        weakref.ref(informer._reflector)]
        del informer
        assert [r() is None for r in refs] == [True, True, True], "kept alive by a cycle"
    finally:
        gc.enable()
