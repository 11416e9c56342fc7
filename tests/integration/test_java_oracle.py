"""The agent's topics, checked by Apache Kafka's and Apache Avro's own Java code (issue 7, outside oracles).

``oracle check-topics`` (tests/java/oracle) is an independent oracle on purpose: a Java consumer that
decodes every message with ``BinaryMessageDecoder`` built from the ``.avsc`` files alone, and checks
each key's partition with the Java producer's own partitioner (``BuiltInPartitioner.partitionForKey``,
``toPositive(murmur2(key)) % partitions``), so neither the wire format nor the partitioning is
checked by the Python code that produced it.
"""

from __future__ import annotations

import json
import subprocess
import sys

from tests.support.checks import wait_all_published
from tests.support.domains import remove_domains, unique_name
from tests.support.java import DOMAIN_AVSC, HOST_AVSC, oracle_jar, run_java
from tests.support.topics import read_all

DOMAIN_PARTITIONS = 6  # the agent gives the hosts topic min(3, this)


def test_java_decodes_every_message_and_agrees_on_every_partition(kafka, libvirt_host, topics, agent_factory,
                                                                    test_conn, recorder):
    """After a 220-operation churn, the Java oracle (independent on purpose: Kafka's and Avro's own code)
    decodes 100% of the topics and finds every key in the partition a Java producer would pick."""
    jar = oracle_jar()
    agent = agent_factory(libvirt_host.test_uri, extra=["--partitions", str(DOMAIN_PARTITIONS)]).start()
    prefix = unique_name("oracle")
    try:
        out = subprocess.run(
            [sys.executable, "-m", "devenv.churn", "--uri", libvirt_host.test_uri, "--ops", "220",
             "--seed", "20260107", "--prefix", prefix, "--pool", "10"],
            check=True, capture_output=True, text=True, timeout=120,
        )
        touched = set(json.loads(out.stdout)["touched"])
        wait_all_published(kafka.bootstrap_servers, topics[0], recorder, touched, timeout=90)
        # Stopped, so both readers see the same topics (heartbeats would keep the hosts topic growing).
        assert agent.terminate() == 0, agent.tail()
    finally:
        remove_domains(test_conn, prefix)

    result = run_java(jar, ["check-topics", "--bootstrap-servers", kafka.bootstrap_servers,
                            "--domains-topic", topics[0], "--hosts-topic", topics[1],
                            "--domain-schema", str(DOMAIN_AVSC), "--host-schema", str(HOST_AVSC),
                            "--timeout-s", "60"], timeout=90)
    assert result.stdout.strip(), f"no summary from the oracle ({result.returncode}):\n{result.stderr[-3000:]}"
    summary = json.loads(result.stdout.splitlines()[-1])
    assert result.returncode == 0 and summary["ok"], json.dumps(summary, indent=2)

    domains, hosts = summary["topics"][topics[0]], summary["topics"][topics[1]]
    assert (domains["partitions"], hosts["partitions"]) == (DOMAIN_PARTITIONS, 3)
    for topic, java in ((topics[0], domains), (topics[1], hosts)):
        raws = read_all(kafka.bootstrap_servers, topic)
        tombstones = sum(1 for r in raws if r.value is None)
        assert (java["messages"], java["tombstones"]) == (len(raws), tombstones), topic
        assert java["decoded"] == java["messages"] - java["tombstones"] > 0, topic  # 100% decoded
        assert java["decode_failures"] == java["wrong_partition"] == java["key_mismatch"] == 0, topic
    # Heartbeats are HostRecords on their own topic: the same schema, the same checks.
    beats_topic = f"{topics[1]}.heartbeats"
    beats_run = run_java(jar, ["check-topics", "--bootstrap-servers", kafka.bootstrap_servers,
                               "--domains-topic", topics[0], "--hosts-topic", beats_topic,
                               "--domain-schema", str(DOMAIN_AVSC), "--host-schema", str(HOST_AVSC),
                               "--timeout-s", "60"], timeout=90)
    beats_summary = json.loads(beats_run.stdout.splitlines()[-1])
    assert beats_run.returncode == 0 and beats_summary["ok"], json.dumps(beats_summary, indent=2)
    beats = beats_summary["topics"][beats_topic]
    assert beats["messages"] == len(read_all(kafka.bootstrap_servers, beats_topic))
    assert beats["decoded"] == beats["messages"] > 0 and beats["decode_failures"] == beats["wrong_partition"] == \
        beats["key_mismatch"] == 0
    # Keys spread over the domains topic's partitions, or partitioning was not really tested. (The hosts
    # topic has one key here, so one partition: the oracle still checks it is the Java producer's.)
    assert len({r.partition for r in read_all(kafka.bootstrap_servers, topics[0])}) >= 3
    assert domains["tombstones"] > 0, "the churn undefines domains: DELETED records and tombstones"
