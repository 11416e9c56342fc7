"""The Kafka Streams example (examples/java/fleet-table) rebuilds the fleet the bridge's own view shows.

The example is an independent oracle on purpose: Apache Kafka Streams' KTable (latest value per key,
a tombstone removes the key) over the compacted domains topic, decoded by Apache Avro's
``BinaryMessageDecoder`` from the ``.avsc`` file alone, with none of the bridge's code. After a churn
with deletes its table must equal ``libvirt-kafka-bridge state``: the log alone, read the Java way,
says what the bridge's consumer says. It is also what a Java team copies, so it is tested as shipped.
"""

from __future__ import annotations

import json
import subprocess
import sys

import libvirt

from tests.support.checks import wait_all_published
from tests.support.domains import remove_domains, unique_name
from tests.support.java import DOMAIN_AVSC, fleet_table_jar, run_java


def test_kafka_streams_table_equals_the_bridge_state_command(kafka, libvirt_host, topics, agent_factory,
                                                              test_conn, recorder, tmp_path):
    """Kafka Streams' KTable (an independent oracle on purpose) and the bridge's view agree per UUID."""
    jar = fleet_table_jar()
    agent = agent_factory(libvirt_host.test_uri).start()
    prefix = unique_name("ktable")
    try:
        out = subprocess.run(
            [sys.executable, "-m", "devenv.churn", "--uri", libvirt_host.test_uri, "--ops", "200",
             "--seed", "20260108", "--prefix", prefix, "--pool", "8"],
            check=True, capture_output=True, text=True, timeout=120,
        )
        summary = json.loads(out.stdout)
        touched = set(summary["touched"])
        wait_all_published(kafka.bootstrap_servers, topics[0], recorder, touched, timeout=90)
        gone = {u for u in touched if not _exists(test_conn, u)}
        assert summary["by_op"].get("undefine", 0) + summary["by_op"].get("undefine_running", 0) > 0
        assert gone, "the churn should leave some domains deleted"
        # Stopped, so both readers see the same log.
        assert agent.terminate() == 0, agent.tail()
    finally:
        remove_domains(test_conn, prefix)

    streams = run_java(jar, ["--bootstrap-servers", kafka.bootstrap_servers, "--topic", topics[0],
                             "--schema", str(DOMAIN_AVSC), "--state-dir", str(tmp_path / "streams"),
                             "--print-when-caught-up", "--timeout-s", "60"], timeout=90)
    assert streams.returncode == 0 and streams.stdout.strip(), \
        f"fleet-table exited {streams.returncode}:\n{streams.stderr[-3000:]}"
    table: dict[str, dict[str, object]] = json.loads(streams.stdout.splitlines()[-1])

    state = subprocess.run(
        [sys.executable, "-m", "bridge", "state", "--bootstrap-servers", kafka.bootstrap_servers,
         "--topic", topics[0], "--hosts-topic", topics[1], "--output", "json", "--sync-timeout", "30s"],
        check=True, capture_output=True, text=True, timeout=60,
    )
    view = {d["uuid"]: d for d in json.loads(state.stdout)}

    assert set(table) == set(view), (f"only in the KTable: {sorted(set(table) - set(view))}, "
                                     f"only in `state`: {sorted(set(view) - set(table))}")
    assert touched - gone <= set(table) and not gone & set(table)
    for uuid, row in table.items():
        want = view[uuid]
        assert (row["version"], row["state"], row["host"], row["name"]) == \
            (want["version"], want["state"], want["host"], want["name"]), uuid


def _exists(conn: libvirt.virConnect, uuid: str) -> bool:
    try:
        conn.lookupByUUIDString(uuid)
    except libvirt.libvirtError:
        return False
    return True
