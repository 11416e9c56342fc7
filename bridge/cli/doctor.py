"""``libvirt-kafka-bridge doctor``: check, with the settings of ``run``, everything ``run`` depends on.

One line per check, ``ok``, ``WARN`` or ``FAIL``; every WARN and FAIL line ends with the fix. Exit 0
when nothing failed (warnings allowed), 1 when a check failed, 2 for bad settings (as ``run``).
Nothing is written: no topic is created or altered, nothing is produced, the state directory is only
probed (a temporary file, removed) and its lock only tried.

Rules the checks settle (the contract leaves them open):

- **Tombstone retention**: ``delete.retention.ms`` of both topics must be at least
  :data:`TOMBSTONE_RESYNCS` x ``--resync-interval``. A consumer that was down and resumes from a
  saved position before a delete learns of it from the tombstone, or else from the host's next resync
  inventory, published within one resync interval while the host is healthy. Compaction may drop a
  tombstone once it is ``delete.retention.ms`` old, so the tombstone must outlive the time a resync can
  take to repair the delete; 3 intervals tolerate two missed resyncs, the same bound at which the
  consumer calls a host stale and the shipped alert calls a resync overdue. Every host of the fleet
  should use the same (or a shorter) ``--resync-interval`` than the one checked.
- **Replication**: ``min.insync.replicas`` above the replication factor is a failure (``acks=all``
  writes are refused); RF below 3 with 3 or more brokers, or ``min.insync.replicas`` below 2 with
  RF 3 or more, is a warning (one broker lost can lose acknowledged records).
- **State directory in use**: a warning, not a failure: the lock is held by the running agent of
  this host when ``doctor`` runs next to it; ``run`` with the same directory would exit 2.
- **Clock**: the README's bound, ``--max-clock-skew`` (the one ``run`` versions hand-offs by). Without
  producing anything, ``doctor`` reads the latest heartbeat of every host on the hosts topic: a
  heartbeat time in this host's future by more than the bound means a clock disagrees (a clock
  *behind* this one looks like an old heartbeat, so only being ahead is detectable this way). When
  the hosts topic stamps ``LogAppendTime``, the broker's own clock is compared too.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import libvirt
from confluent_kafka import TIMESTAMP_LOG_APPEND_TIME, Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource

from bridge.agent.agent import AgentSettings
from bridge.agent.event_capture import EventCapture, supported_event_ids
from bridge.agent.event_loop import LibvirtEventLoop
from bridge.agent.libvirt_session import one_line
from bridge.agent.topics import admin_client, check_reachable, serve_logs
from bridge.cli import run
from bridge.config import add_options, resolve
from bridge.errors import DecodeError, UserError

TOMBSTONE_RESYNCS = 3
"""``delete.retention.ms`` must be at least this many resync intervals (see the module docstring)."""
OK, WARN, FAIL, SKIP = "ok", "WARN", "FAIL", "skip"

DESCRIPTION = f"""\
Check what `run` needs, with the same settings (flags, BRIDGE_* environment, --config file):
libvirt reachable read-only and event registration; Kafka reachable with the security settings;
both topics compacted, replication sane, delete.retention.ms at least {TOMBSTONE_RESYNCS} x --resync-interval
(so a consumer that was down still sees tombstones until a resync can repair the delete); the state
directory writable and not in use; host clocks within --max-clock-skew (read from the heartbeats).
One line per check; a WARN or FAIL line ends with the fix. Nothing is written to Kafka or libvirt.
Exit status: 0 all passed (warnings allowed), 1 a check failed, 2 bad settings.
"""


@dataclass(frozen=True)
class Result:
    status: str
    check: str
    detail: str
    fix: str = ""

    def line(self) -> str:
        text = f"{self.status:<4}  {self.check}: {self.detail}"
        return f"{text}. Fix: {self.fix}" if self.fix and self.status in (WARN, FAIL) else text


def add_parser(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "doctor", help="check libvirt, Kafka, the topics, the state directory and the clock with run's settings",
        description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_options(parser, run.OPTIONS)
    parser.set_defaults(execute=execute)


def execute(args: argparse.Namespace) -> int:
    settings = run.settings_from(resolve(args, run.OPTIONS))  # bad settings: UserError, exit 2
    counts = dict.fromkeys((OK, WARN, FAIL, SKIP), 0)
    for result in diagnose(settings):
        print(result.line(), flush=True)
        counts[result.status] += 1
    print(f"doctor: {counts[OK]} ok, {counts[WARN]} warning(s), {counts[FAIL]} failed, {counts[SKIP]} skipped")
    return 1 if counts[FAIL] else 0


def diagnose(s: AgentSettings) -> Iterator[Result]:
    """Every check, in order; later checks that depend on an earlier one are skipped when it fails."""
    yield from _libvirt_checks(s)
    yield _state_dir_check(s.state_dir)
    admin, result = _kafka_check(s)
    yield result
    if admin is None:
        yield Result(SKIP, "topics", "Kafka not reachable")
        yield Result(SKIP, "clock", "Kafka not reachable")
        return
    try:
        yield from _topic_checks(admin, s)
        yield from _registry_check(s)
        yield _clock_check(s)
    finally:
        serve_logs(admin)


# -- libvirt ---------------------------------------------------------------------------------------------


def _libvirt_checks(s: AgentSettings) -> Iterator[Result]:
    mode = "read-only" if s.read_only else "read-write"
    loop = LibvirtEventLoop()  # registered before the first open, as the agent does
    loop.start()
    try:
        libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
        try:
            conn = libvirt.openReadOnly(s.libvirt_uri) if s.read_only else libvirt.open(s.libvirt_uri)
        except libvirt.libvirtError as exc:
            yield Result(FAIL, "libvirt", f"cannot connect to --libvirt-uri {s.libvirt_uri} {mode}: {one_line(exc)}",
                         "start libvirtd (or virtqemud) on this host, or set --libvirt-uri to where it listens; "
                         "for qemu:///system the read-only socket is /run/libvirt/libvirt-sock-ro and must be "
                         "visible to the agent (systemd: ReadOnlyPaths=/run/libvirt; Kubernetes: the hostPath "
                         "mount of /run/libvirt)")
            yield Result(SKIP, "libvirt events", "libvirt not reachable")
            return
        try:
            v = conn.getLibVersion()
            version = f"{v // 1_000_000}.{v // 1000 % 1000}.{v % 1000}"
            if s.read_only:
                yield Result(OK, "libvirt", f"connected to {s.libvirt_uri} read-only (libvirt {version})")
            else:
                yield Result(WARN, "libvirt", f"connected to {s.libvirt_uri} read-write (libvirt {version}); "
                             "the agent only reads", "set read_only = true (--read-only true): a read-only "
                             "connection can never change a domain")
            yield _events_check(conn)
        finally:
            with contextlib.suppress(libvirt.libvirtError):
                conn.close()
    finally:
        loop.stop()


def _events_check(conn: libvirt.virConnect) -> Result:
    capture = EventCapture(lambda _uuid, _name, _event: None, lambda: time.time_ns() // 1000)
    capture.register(conn)
    try:
        registered = len(capture.registered)
        supported = len(supported_event_ids())
        if "LIFECYCLE" not in capture.registered:
            return Result(FAIL, "libvirt events", f"registering the LIFECYCLE callback failed "
                          f"({registered} of {supported} event ids registered)",
                          "check the daemon's log; an event registration refused on a read-only connection "
                          "means an access-control driver (polkit ACLs) denies domain:getattr to this user")
        return Result(OK, "libvirt events", f"{registered} of the {supported} domain event ids this "
                      "libvirt-python knows registered")
    finally:
        capture.deregister(conn)


# -- state directory -------------------------------------------------------------------------------------


def _state_dir_check(state_dir: Path) -> Result:
    name = "state dir"
    existing = state_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return Result(FAIL, name, f"--state-dir {state_dir}: {existing} is not a directory",
                      "point --state-dir at a directory")
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".doctor-"):
            pass
    except OSError as exc:
        return Result(FAIL, name, f"--state-dir {state_dir}: cannot write in {existing} ({exc.strerror})",
                      f"make {state_dir} writable by the agent's user (systemd: StateDirectory=; "
                      "Kubernetes: the hostPath volume and its owner)")
    if existing != state_dir:
        return Result(OK, name, f"{state_dir} does not exist yet; run creates it in writable {existing}")
    lock = state_dir / "agent.lock"
    if lock.exists():
        try:
            with lock.open("r") as f:
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    return Result(WARN, name, f"{state_dir} is writable and in use by a running agent (it holds "
                                  f"{lock.name})", "nothing if that is this host's agent; otherwise stop the other "
                                  "agent or give this one its own --state-dir (run exits 2 on a directory in use)")
                fcntl.flock(f, fcntl.LOCK_UN)
        except OSError as exc:
            return Result(FAIL, name, f"cannot open {lock} ({exc.strerror})",
                          f"make {state_dir} and its files readable and writable by the agent's user")
    return Result(OK, name, f"{state_dir} is writable and not in use")


# -- Kafka -----------------------------------------------------------------------------------------------


def _kafka_check(s: AgentSettings) -> tuple[AdminClient | None, Result]:
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


def _topic_checks(admin: AdminClient, s: AgentSettings) -> Iterator[Result]:
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
    for topic in (k.topic, k.hosts_topic):
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


def _registry_check(s: AgentSettings) -> Iterator[Result]:
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


def _clock_check(s: AgentSettings, now: Callable[[], float] = time.time) -> Result:
    name = "clock"
    k = s.kafka
    try:
        codec = k.codec()
    except UserError as exc:
        return Result(SKIP, name, f"cannot decode heartbeats: {exc}")
    latest = _latest_messages(k.client_config(), k.hosts_topic, max(5.0, s.kafka_connect_timeout))
    if latest is None:
        return Result(SKIP, name, f"no heartbeats on {k.hosts_topic} yet to compare with")
    read_at = now()
    ahead: list[tuple[float, str]] = []  # (seconds in this host's future, whose)
    for ts_type, ts_ms, key, value in latest:
        try:
            record = codec.decode_host(value, key).record
        except DecodeError:
            continue
        ahead.append((ts_ms / 1000 - read_at, "the broker" if ts_type == TIMESTAMP_LOG_APPEND_TIME
                      else f"host {record.host}"))
        ahead.append((record.heartbeat_at / 1e6 - read_at, f"host {record.host}"))
        if ts_type == TIMESTAMP_LOG_APPEND_TIME and record.host == s.host_id:
            # This host wrote heartbeat_at just before the broker appended it: it cannot be later.
            ahead.append((record.heartbeat_at / 1e6 - ts_ms / 1000, "this host (vs the broker)"))
    if not ahead:
        return Result(SKIP, name, f"no decodable heartbeat on {k.hosts_topic}")
    worst, whose = max(ahead)
    hosts = len(latest)
    bound_ms = s.max_clock_skew * 1000
    if worst > s.max_clock_skew:
        return Result(WARN, name, f"{whose}'s clock is {worst * 1000:.0f} ms ahead of this host's (more than "
                      f"--max-clock-skew {bound_ms:g} ms; {hosts} heartbeat(s) read)",
                      "run NTP (chrony or systemd-timesyncd) on every host and check `chronyc tracking`: "
                      "versions across a live migration rely on clocks agreeing within the bound")
    return Result(OK, name, f"no clock ahead of this host's by more than --max-clock-skew {bound_ms:g} ms "
                  f"({hosts} heartbeat(s) on {k.hosts_topic}; a clock behind shows as an old heartbeat)")


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

