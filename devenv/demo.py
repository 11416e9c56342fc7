"""``make demo``: a local broker, libvirtd (test driver), the agent and a scripted workload.

Everything runs on this machine with embedded defaults and is stopped at the end (or on Ctrl-C).
The commands it runs are printed, so the demo doubles as a tour of the CLI.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import uuid as uuid_mod
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import libvirt

from bridge.records import DomainRecord, HostRecord
from bridge.serde import DomainTombstone, MessageDecoder, RecordCodec
from devenv import KafkaCluster, LibvirtHost, wait_until

TOPIC, HOSTS_TOPIC, HOST_ID = "libvirt.domains", "libvirt.hosts", "demo-host"
BOLD, DIM, RESET = ("\033[1m", "\033[2m", "\033[0m") if sys.stdout.isatty() else ("", "", "")


def say(text: str) -> None:
    print(f"{BOLD}{text}{RESET}", flush=True)


def note(text: str) -> None:
    print(f"{DIM}{text}{RESET}", flush=True)


def domain_xml(name: str, uuid: str | None = None) -> str:
    return (f"<domain type='test'><name>{name}</name><uuid>{uuid or uuid_mod.uuid4()}</uuid>"
            "<memory unit='MiB'>128</memory><vcpu>1</vcpu><os><type arch='x86_64'>hvm</type></os>"
            "<devices><graphics type='vnc' port='-1' passwd='hunter2'/></devices></domain>")


@contextmanager
def process(args: list[str], log: Path | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """Run a child process; SIGTERM (then SIGKILL) it on exit."""
    out = log.open("ab") if log else None
    proc = subprocess.Popen(args, stdout=out or None, stderr=subprocess.STDOUT if out else None)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if out:
            out.close()


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "bridge", *args]


def show(cmd: list[str]) -> None:
    shown = ["libvirt-kafka-bridge", *cmd[3:]] if cmd[1:3] == ["-m", "bridge"] else cmd
    note("  $ " + shlex.join(shown))


def resyncs_completed(state_dir: Path) -> int:
    """What the agent's ``status.json`` says (0 before it first writes one)."""
    try:
        return int(json.loads((state_dir / "status.json").read_text()).get("resyncs_completed", 0))
    except (FileNotFoundError, ValueError):
        return 0


def latest_records(bootstrap: str) -> tuple[dict[str, DomainRecord | None], list[HostRecord]]:
    """Latest record per domain key (None after a tombstone), and the host records, read from the log."""
    from confluent_kafka import Consumer, TopicPartition  # noqa: PLC0415

    decoder = MessageDecoder(RecordCodec(), TOPIC, HOSTS_TOPIC)
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "demo", "enable.auto.commit": False})
    domains: dict[str, DomainRecord | None] = {}
    hosts: list[HostRecord] = []
    try:
        for topic in (TOPIC, HOSTS_TOPIC):
            parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
            for p in parts:
                low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
                if high <= low:
                    continue
                consumer.assign([TopicPartition(topic, p, low)])
                while True:
                    msg = consumer.poll(5)
                    if msg is None or msg.error():
                        break
                    payload = decoder.decode(topic, msg.key(), msg.value(), msg.headers).payload
                    if isinstance(payload, DomainTombstone):
                        domains[payload.uuid] = None
                    elif isinstance(payload, DomainRecord):
                        domains[payload.uuid] = payload
                    elif isinstance(payload, HostRecord):
                        hosts.append(payload)
                    if (msg.offset() or 0) + 1 >= high:
                        break
    finally:
        consumer.close()
    return domains, hosts


def print_table(domains: dict[str, DomainRecord | None]) -> None:
    rows = [("NAME", "UUID", "KIND", "STATE", "ACTIVE", "PERSISTENT", "VERSION", "EVENTS IN LAST RECORD")]
    for key, rec in sorted(domains.items(), key=lambda kv: kv[1].name if kv[1] else "~"):
        if rec is None:
            rows.append(("(tombstone)", key, "-", "-", "-", "-", "-", "compaction will remove this key"))
            continue
        events = ", ".join(e.label() for e in rec.events) or "-"
        rows.append((rec.name, rec.uuid, rec.kind.value, f"{rec.state or '-'}/{rec.reason or '-'}",
                     str(rec.active).lower(), str(rec.persistent).lower(), str(rec.version), events))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for i, row in enumerate(rows):
        line = "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True))
        print(f"{BOLD}{line}{RESET}" if i == 0 else line)


def workload(conn: libvirt.virConnect, pause: float) -> None:
    def step(text: str) -> None:
        say(f"\n▶ {text}")

    def settle() -> None:
        time.sleep(pause)  # pacing for human eyes, not synchronisation

    step("define web-1 (a persistent domain)")
    web = conn.defineXML(domain_xml("web-1"))
    settle()
    step("start web-1")
    web.create()
    settle()
    step("pause web-1")
    web.suspend()
    settle()
    step("resume web-1")
    web.resume()
    settle()
    step("tag web-1 with a description (METADATA_CHANGE event)")
    web.setMetadata(libvirt.VIR_DOMAIN_METADATA_DESCRIPTION, "frontend", None, None, 0)
    settle()
    step("create batch-7, a transient domain (it exists only while it runs)")
    batch = conn.createXML(domain_xml("batch-7"), 0)
    settle()
    step("stop batch-7: a stopped transient domain is gone, so the agent publishes DELETED + a tombstone")
    batch.destroy()
    settle()
    step("define and at once undefine 'blink' (the seed report's 'Domain not found' race)")
    conn.defineXML(domain_xml("blink")).undefine()
    settle()
    step("define db-1 and start it")
    conn.defineXML(domain_xml("db-1")).create()
    settle()
    step("stop and undefine web-1")
    web.destroy()
    web.undefine()
    settle()


def main() -> int:
    pause = float(os.environ.get("DEMO_PAUSE", "0.8"))
    work = Path(tempfile.mkdtemp(prefix="bridge-demo-"))
    say("libvirt-kafka-bridge demo: libvirt domain events → versioned, compacted Kafka log\n")
    note(f"working directory: {work} (logs of every process are here)")
    with ExitStack() as stack:
        stack.callback(lambda: say("\nstopped everything the demo started."))
        t0 = time.monotonic()
        say("1. starting a single-node Kafka 4 broker (KRaft, from the Maven jars)…")
        kafka = stack.enter_context(KafkaCluster(work / "kafka"))
        note(f"   broker at {kafka.bootstrap_servers} ({time.monotonic() - t0:.1f}s)")
        say("2. starting an isolated libvirtd with the test driver…")
        host = stack.enter_context(LibvirtHost(work / "libvirt", name="demo"))
        note(f"   libvirt URI {host.test_uri}")

        say("3. starting the agent for this host:")
        run = cli("run", "--libvirt-uri", host.test_uri, "--bootstrap-servers", kafka.bootstrap_servers,
                  "--host-id", HOST_ID, "--state-dir", str(work / "state"), "--heartbeat-interval", "5s",
                  "--partitions", "3", "--status-interval", "1s")
        show(run)
        agent_log = work / "agent.log"
        agent = stack.enter_context(process(run, agent_log))
        wait_until(lambda: resyncs_completed(work / "state") >= 1 or agent.poll() is not None,
                   timeout=60, what="the agent's first resync (its status.json)")
        if agent.poll() is not None:
            print(agent_log.read_text(), file=sys.stderr)
            return 1
        note(f"   agent up; its log: {agent_log}")

        say("4. watching the topics, as a consumer would:")
        tail = cli("tail", "--bootstrap-servers", kafka.bootstrap_servers, "--from-beginning", "--output", "text")
        show(tail)
        tailer = stack.enter_context(process(tail))
        time.sleep(2.0)  # a head start for the reader, so records print under the step that caused them

        conn = libvirt.open(host.test_uri)
        stack.callback(conn.close)
        note("\n(the test driver starts with one domain, 'test'; the agent's startup resync published it)")
        workload(conn, pause)
        time.sleep(max(pause, 1.0))  # let the last records scroll by before the summary
        tailer.send_signal(signal.SIGINT)
        tailer.wait(10)

        say("\n5. the latest record per domain key, rebuilt from the log alone:")
        domains, hosts = latest_records(kafka.bootstrap_servers)
        print_table(domains)
        if hosts:
            h = hosts[-1]
            note(f"\nhost {h.host}: {h.status.value}, inventory of {len(h.domains)} domains at listed_at={h.listed_at}")
        say("\n6. the same fleet as a consumer service sees it (the consumer library behind `state`):")
        state = cli("state", "--bootstrap-servers", kafka.bootstrap_servers)
        show(state)
        subprocess.run(state, check=False, timeout=60)
        secret_seen = any(r is not None and r.xml and "hunter2" in r.xml for r in domains.values())
        note(f"VNC password 'hunter2' in any published XML: {secret_seen}")

        say("\n7. stopping the agent with SIGTERM (it flushes, publishes STOPPING, exits 0)…")
        agent.send_signal(signal.SIGTERM)
        code = agent.wait(30)
        note(f"   agent exited with status {code}")
        say("\nnext steps:")
        note("  libvirt-kafka-bridge run --help        every setting, as flag, BRIDGE_* env var or TOML key")
        note("  libvirt-kafka-bridge state --help      the fleet's domains from the log (consumer library)")
        note("  make test                              the whole suite against a real broker and libvirtd")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
