"""The Confluent wire format against a real Confluent-compatible Schema Registry (issue 7).

Apicurio Registry (devenv.registry, from Maven Central) requires HTTP basic auth on its APIs here, so
every test also exercises the registry credentials (``--schema-registry-config``). The checks are
independent of the bridge's own decoder: the registry's REST API says which schema each id is, and
confluent_kafka's AvroDeserializer decodes every message.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext

from bridge.records import DomainRecord, RecordKind
from bridge.serde import RecordCodec
from bridge.serde.confluent_wire import registry_client
from devenv import free_port, wait_until
from devenv.registry import SchemaRegistry
from tests.support.checks import by_uuid, published_events
from tests.support.domains import unique_name, xml_for_test_driver
from tests.support.topics import Raw, read_all, unique_topics

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
USER = "bridge"
PASSWORD = "s3cr3t-Pa55:word"  # noqa: S105 (a test registry's user; a colon inside, as basic auth allows)
USER_INFO = f"{USER}:{PASSWORD}"


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SchemaRegistry]:
    """One Apicurio Registry for the module; its APIs need basic auth as USER."""
    with SchemaRegistry(tmp_path_factory.mktemp("registry"), users={USER: PASSWORD}) as reg:
        yield reg


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    import os  # noqa: PLC0415

    return subprocess.run([sys.executable, "-m", "bridge", *args], capture_output=True, text=True, timeout=timeout,
                          check=False, env={**os.environ, **(env or {})})


def assert_secret_absent(text: str) -> None:
    token = base64.b64encode(USER_INFO.encode()).decode()
    for secret in (PASSWORD, token, "s3cr3t"):
        assert secret not in text, f"a secret ({secret[:3]}…) leaked"


def assert_user_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("libvirt-kafka-bridge: error:"), result.stderr
    for fragment in fragments:
        assert fragment in last, last
    assert_secret_absent(result.stderr + result.stdout)


def wait_published(bootstrap: str, topic: str, codec: RecordCodec, recorder, uuids: set[str],
                   timeout: float = 60.0) -> list[tuple[Raw, DomainRecord | None]]:
    """Until every recorded event of ``uuids`` is published; the log decoded with ``codec``."""
    state: dict[str, list[tuple[Raw, DomainRecord | None]]] = {}

    def caught_up() -> bool:
        log = [(r, None if r.value is None else codec.decode_domain(r.value, r.key).record)
               for r in read_all(bootstrap, topic)]
        state["log"] = log
        per = by_uuid(log)
        return all(published_events(per.get(u, [])) == recorder.events(u) for u in uuids)

    wait_until(caught_up, timeout=timeout, what="every recorded event published", interval=0.3)
    return state["log"]


def test_agent_writes_confluent_wire_format_registered_in_a_real_registry(
        kafka, libvirt_host, registry, topics, agent_factory, test_conn, recorder, tmp_path):
    domains_topic, hosts_topic = topics
    agent = agent_factory(libvirt_host.test_uri, extra=[
        "--schema-registry-url", registry.url, "--schema-registry-config", f"basic.auth.user.info={USER_INFO}",
    ]).start()
    kept = test_conn.defineXML(xml_for_test_driver(unique_name("sr-kept")))
    kept.create()
    kept.suspend()
    kept.resume()
    gone = test_conn.defineXML(xml_for_test_driver(unique_name("sr-gone")))
    gone.create()
    gone.destroy()
    gone.undefine()
    uuids = {kept.UUIDString(), gone.UUIDString()}
    codec = RecordCodec(registry_client(registry.url, {"basic.auth.user.info": USER_INFO}),
                        domains_topic, hosts_topic)
    log = wait_published(kafka.bootstrap_servers, domains_topic, codec, recorder, uuids)
    assert by_uuid(log)[gone.UUIDString()][-1].kind is RecordKind.DELETED

    def inventory_published() -> bool:
        hosts = [codec.decode_host(r.value, r.key).record for r in read_all(kafka.bootstrap_servers, hosts_topic)
                 if r.value is not None]
        return any(h.resync_id for h in hosts)

    wait_until(inventory_published, timeout=60, what="a HostRecord with an inventory")

    # Every value: magic 0, a 4-byte big-endian id, and that id is our schema in the registry's own API,
    # registered under <topic>-value (TopicNameStrategy).
    subjects = set(registry.get_json("/subjects"))
    assert {f"{domains_topic}-value", f"{hosts_topic}-value"} <= subjects
    sr = SchemaRegistryClient({"url": registry.url, "basic.auth.user.info": USER_INFO})
    for topic, schema_file, record_name in ((domains_topic, "domain_record.avsc", "DomainRecord"),
                                            (hosts_topic, "host_record.avsc", "HostRecord")):
        raws = [r for r in read_all(kafka.bootstrap_servers, topic) if r.value is not None]
        assert raws, topic
        assert all(r.value is not None and r.value[:1] == b"\x00" for r in raws), topic
        ids = {int.from_bytes(r.value[1:5], "big") for r in raws if r.value is not None}
        assert len(ids) == 1, f"{topic}: one schema, one id; got {ids}"
        schema_id = ids.pop()
        registered = registry.get_json(f"/schemas/ids/{schema_id}")
        assert json.loads(registered["schema"]) == json.loads((SCHEMAS / schema_file).read_text())
        latest = registry.get_json(f"/subjects/{topic}-value/versions/latest")
        assert latest["id"] == schema_id
        assert json.loads(latest["schema"])["name"] == record_name

        # confluent_kafka's own deserializer (fetches the writer schema by id) reads every message.
        deserialize = AvroDeserializer(sr)
        ctx = SerializationContext(topic, MessageField.VALUE)
        for raw in raws:
            value = deserialize(raw.value, ctx)
            assert isinstance(value, dict)
            if topic == domains_topic:
                ours = codec.decode_domain(raw.value, raw.key).record
                assert (value["uuid"], value["version"], value["kind"], value["name"], value["xml"]) == \
                    (ours.uuid, ours.version, ours.kind.value, ours.name, ours.xml)
                assert [e["id"] for e in value["events"]] == [e.id for e in ours.events]
            else:
                host = codec.decode_host(raw.value, raw.key).record
                assert (value["host"], value["status"]) == (host.host, host.status.value)

    # The state command rebuilds the view through the registry; its credentials from a config file's
    # [schema_registry] table this time.
    cfg = tmp_path / "bridge.toml"
    cfg.write_text(f'[schema_registry]\n"basic.auth.user.info" = "{USER_INFO}"\n')
    result = run_cli("state", "--bootstrap-servers", kafka.bootstrap_servers, "--topic", domains_topic,
                     "--hosts-topic", hosts_topic, "--schema-registry-url", registry.url, "--config", str(cfg),
                     "--output", "json")
    assert result.returncode == 0, result.stderr
    view = {d["uuid"]: d for d in json.loads(result.stdout)}
    assert gone.UUIDString() not in view
    assert view[kept.UUIDString()]["state"] == "RUNNING"
    assert view[kept.UUIDString()]["version"] == by_uuid(log)[kept.UUIDString()][-1].version
    assert_secret_absent(result.stderr)

    kept.destroy()
    kept.undefine()
    agent.check_alive()
    # The agent logs at DEBUG (HTTP client included): the credentials appear nowhere in it.
    assert_secret_absent(agent.log_text())


@pytest.mark.parametrize(
    ("command", "config", "fragments"),
    [
        ("run", f"basic.auth.user.info={USER}:wrong-password", ["refused the credentials", "HTTP 401",
                                                                      "basic.auth.user.info"]),
        ("run", None, ["requires credentials", "HTTP 401", "basic.auth.user.info"]),
        ("state", f"basic.auth.user.info={USER}:wrong", ["refused the credentials", "basic.auth.user.info"]),
    ],
)
def test_wrong_or_missing_credentials_exit_2_naming_the_setting(kafka, registry, tmp_path, command, config,
                                                                 fragments):
    domains_topic, hosts_topic = unique_topics("srauth")
    args = [command, "--bootstrap-servers", kafka.bootstrap_servers, "--topic", domains_topic,
            "--hosts-topic", hosts_topic, "--schema-registry-url", registry.url]
    if command == "run":
        args += ["--state-dir", str(tmp_path / "state"), "--libvirt-uri", "test:///default"]
    # Through the environment variable this time.
    env = {"BRIDGE_SCHEMA_REGISTRY_CONFIG": config} if config else {}
    result = run_cli(*args, env=env)
    assert_user_error(result, *fragments, registry.url)
    assert "wrong" not in result.stderr


def test_unreachable_registry_at_start_up_exits_2(kafka, tmp_path):
    domains_topic, hosts_topic = unique_topics("srdown")
    url = f"http://127.0.0.1:{free_port()}/apis/ccompat/v7"
    started = time.monotonic()
    result = run_cli("run", "--bootstrap-servers", kafka.bootstrap_servers, "--topic", domains_topic,
                     "--hosts-topic", hosts_topic, "--state-dir", str(tmp_path / "state"),
                     "--libvirt-uri", "test:///default", "--schema-registry-url", url,
                     "--schema-registry-config", f"basic.auth.user.info={USER_INFO}")
    assert_user_error(result, "cannot reach the schema registry", url, "--schema-registry-url")
    assert time.monotonic() - started < 60


def test_a_url_that_is_not_the_confluent_api_exits_2(kafka, registry, tmp_path):
    """The server root instead of /apis/ccompat/v7: a 404 that says what to check."""
    domains_topic, hosts_topic = unique_topics("srpath")
    result = run_cli("run", "--bootstrap-servers", kafka.bootstrap_servers, "--topic", domains_topic,
                     "--hosts-topic", hosts_topic, "--state-dir", str(tmp_path / "state"),
                     "--libvirt-uri", "test:///default", "--schema-registry-url", registry.base_url,
                     "--schema-registry-config", f"basic.auth.user.info={USER_INFO}")
    assert_user_error(result, "HTTP 404", "--schema-registry-url", "Confluent-compatible")
