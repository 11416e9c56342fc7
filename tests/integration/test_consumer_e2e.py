"""The consumer library against the real agent, broker and libvirtd (issue 3, must-show 2, 3, 4)."""

from __future__ import annotations

import json
import subprocess
import sys
import time

from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from bridge.cli.main import main as cli_main
from tests.support.agent_proc import wait_for
from tests.support.checks import wait_all_published
from tests.support.domains import remove_domains, unique_name, xml_for_test_driver
from tests.support.topics import read_all
from tests.support.view import fresh_view, truth, view_diff, wait_view_exact

# Compaction that a test can watch: tiny segments, an eager cleaner, tombstones kept only briefly.
COMPACT_FAST = {
    "cleanup.policy": "compact",
    "segment.ms": "500",
    "min.cleanable.dirty.ratio": "0.01",
    "delete.retention.ms": "500",
    "min.compaction.lag.ms": "0",
}


def churn(uri, prefix, ops, seed):
    out = subprocess.run(
        [sys.executable, "-m", "devenv.churn", "--uri", uri, "--ops", str(ops), "--seed", str(seed),
         "--prefix", prefix, "--pool", "12"],
        check=True, capture_output=True, text=True, timeout=300)
    return json.loads(out.stdout)


def state_json(capsys, bootstrap, topics, *extra):
    assert cli_main(["state", "--bootstrap-servers", bootstrap, "--topic", topics[0], "--hosts-topic", topics[1],
                     "--output", "json", *extra]) == 0
    return json.loads(capsys.readouterr().out)


def test_state_json_equals_virsh_list_after_churn(kafka, libvirt_host, topics, agent_factory, test_conn, recorder,
                                                  capsys):
    agent_factory(libvirt_host.test_uri).start()
    prefix = unique_name("state")
    summary = churn(libvirt_host.test_uri, prefix, ops=220, seed=11)
    assert {"define", "create_transient"} <= set(summary["by_op"])
    assert {"undefine", "undefine_running", "destroy"} & set(summary["by_op"])
    wait_all_published(kafka.bootstrap_servers, topics[0], recorder, set(summary["touched"]))
    wait_view_exact(kafka.bootstrap_servers, topics, test_conn, "host1")

    rows = state_json(capsys, kafka.bootstrap_servers, topics)
    virsh = subprocess.run(["virsh", "-c", libvirt_host.test_uri, "list", "--all", "--uuid"], check=True,
                           capture_output=True, text=True).stdout.split()
    assert sorted(r["uuid"] for r in rows) == sorted(virsh)
    want = truth(test_conn)
    for row in rows:
        assert (row["name"], row["state"], row["reason"], row["active"], row["persistent"]) == want[row["uuid"]]
        assert row["host"] == "host1" and row["version"] > 0
    running = state_json(capsys, kafka.bootstrap_servers, topics, "--state", "RUNNING")
    assert {r["uuid"] for r in running} == {u for u, t in want.items() if t[1] == "RUNNING"}
    remove_domains(test_conn, prefix)


def test_deletes_missed_while_the_agent_was_stopped(kafka, libvirt_host, topics, agent_factory, test_conn):
    agent = agent_factory(libvirt_host.test_uri).start()
    prefix = unique_name("missed")
    doms = [test_conn.defineXML(xml_for_test_driver(f"{prefix}-{i}")) for i in range(4)]
    doms[0].create()
    uuids = {d.UUIDString() for d in doms}
    wait_for(lambda: uuids <= set(fresh_view(kafka.bootstrap_servers, topics).domains), 30, "the domains in view")
    assert agent.terminate() == 0
    doms[0].destroy()
    for d in doms[:3]:
        d.undefine()  # nobody is listening: no event, no DELETED, no tombstone
    agent.start()
    wait_view_exact(kafka.bootstrap_servers, topics, test_conn, "host1")
    view = fresh_view(kafka.bootstrap_servers, topics)
    gone = {d.UUIDString() for d in doms[:3]}
    assert not gone & set(view.domains) and doms[3].UUIDString() in view.domains
    tombstoned = {(r.key or b"").decode() for r in read_all(kafka.bootstrap_servers, topics[0]) if r.value is None}
    assert not gone & tombstoned, "the view dropped them through the inventory alone"
    doms[3].undefine()


def _written(bootstrap, topic):
    """Messages ever written to ``topic``: the sum of its partitions' high watermarks."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"size-{time.time_ns()}", "enable.auto.commit": False})
    try:
        parts = c.list_topics(topic, timeout=10).topics[topic].partitions
        return sum(c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts)
    finally:
        c.close()


def test_compaction_for_real_then_a_rebuilt_view_is_still_exact(kafka, libvirt_host, topics, agent_factory,
                                                                test_conn):
    admin = AdminClient({"bootstrap.servers": kafka.bootstrap_servers})
    # One partition: a segment rolls only on an append to its own partition, and the keeper below
    # appends to one key.
    futures = admin.create_topics([NewTopic(t, 1, 1, config=COMPACT_FAST) for t in topics])
    for fut in futures.values():
        fut.result(30)
    agent_factory(libvirt_host.test_uri).start()  # accepts the existing compacted topics
    prefix = unique_name("compact")
    summary = churn(libvirt_host.test_uri, prefix, ops=200, seed=23)
    # The cleaner may already be at work, so "every event published" can't be checked by reading
    # back; the view equal to libvirt's truth is the barrier instead.
    wait_view_exact(kafka.bootstrap_servers, topics, test_conn, "host1")
    deleted = set(summary["touched"]) - set(truth(test_conn))
    assert deleted, "the churn deleted some domains"

    # The cleaner never touches the active segment, and a time-based roll happens on the next append
    # after segment.ms: keep appending (a metadata change) until the log has shrunk.
    keep = test_conn.defineXML(xml_for_test_driver(f"{prefix}-keeper"))
    state: dict[str, int] = {}

    def compacted() -> bool:
        keep.setMetadata(0, f"tick {time.monotonic()}", None, None, 0)  # VIR_DOMAIN_METADATA_DESCRIPTION
        raws = read_all(kafka.bootstrap_servers, topics[0])
        state["present"], state["written"] = len(raws), _written(kafka.bootstrap_servers, topics[0])
        keys = {(r.key or b"").decode() for r in raws}
        return state["present"] < state["written"] // 2 and not deleted & keys

    wait_for(compacted, 120, "the cleaner to compact the log and drop the tombstones", interval=1.0)
    print(f"\ncompaction: {state['written']} messages written, {state['present']} left; "
          f"{len(deleted)} deleted domains gone from the log, tombstones included")
    wait_view_exact(kafka.bootstrap_servers, topics, test_conn, "host1")
    view = fresh_view(kafka.bootstrap_servers, topics)
    assert not view_diff(view, test_conn, "host1")
    assert not deleted & set(view.domains)
    remove_domains(test_conn, prefix)
