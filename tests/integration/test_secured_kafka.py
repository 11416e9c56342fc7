"""Secured Kafka (issue 11, must-show 2): TLS + SASL/SCRAM-SHA-512 for the agent and every reading command.

The broker has a SASL_SSL listener with a CA made at test time and SCRAM users created with Kafka's
admin API (devenv.kafka_security). The agent runs with its security settings given as
``--kafka-config`` flags, and once as the ``[kafka]`` table of a config file; ``state``, ``tail`` and
``watch`` read what it published over SASL_SSL. A wrong password or an untrusted certificate exits 2
with one line naming the setting, and the password is in no log, stderr, status.json or /metrics.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import libvirt
import pytest

from devenv import LibvirtHost, free_port, wait_until
from devenv.kafka_security import SecuredKafkaCluster
from tests.support.agent_proc import AgentProcess
from tests.support.domains import remove_domains, unique_name, xml_for_test_driver
from tests.support.topics import unique_topics

WRONG_PASSWORD = "not-the-Pw-d41c07"  # noqa: S105 - a wrong password is the point


@pytest.fixture(scope="module")
def secure_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecuredKafkaCluster]:
    with SecuredKafkaCluster(tmp_path_factory.mktemp("secure-kafka")) as cluster:
        yield cluster


@pytest.fixture
def agents() -> Iterator[list[AgentProcess]]:
    made: list[AgentProcess] = []
    yield made
    for agent in made:
        agent.kill()


@pytest.fixture
def domains(test_conn: libvirt.virConnect) -> Iterator[str]:
    """A name prefix; every test-driver domain named with it is removed at teardown."""
    prefix = unique_name("sec")
    yield prefix
    remove_domains(test_conn, prefix)


def security_flags(conf: dict[str, str]) -> list[str]:
    flags: list[str] = []
    for key in ("security.protocol", "sasl.mechanism", "sasl.username", "sasl.password", "ssl.ca.location"):
        flags += ["--kafka-config", f"{key}={conf[key]}"]
    return flags


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bridge", *args], capture_output=True, text=True, timeout=timeout,
                          check=False, stdin=subprocess.DEVNULL, env={**os.environ, **(env or {})})


def assert_exit_2_naming(result: subprocess.CompletedProcess[str], setting: str, *secrets: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("libvirt-kafka-bridge: error:")]
    assert len(lines) == 1 and setting in lines[0], result.stderr
    assert "--kafka-config" in lines[0] and "[kafka]" in lines[0], lines[0]
    for secret in secrets:
        assert secret not in result.stderr + result.stdout


def start_domain(conn: libvirt.virConnect, prefix: str) -> tuple[str, str]:
    name = f"{prefix}-a"
    dom = conn.defineXML(xml_for_test_driver(name))
    dom.create()
    return name, dom.UUIDString()


def reading_args(cluster: SecuredKafkaCluster, topics: tuple[str, str]) -> list[str]:
    return ["--bootstrap-servers", cluster.secure_bootstrap_servers, "--topic", topics[0], "--hosts-topic", topics[1]]


def state_json(args: list[str], env: dict[str, str] | None = None) -> list[dict[str, Any]]:
    result = cli("state", "--output", "json", "--sync-timeout", "30s", *args, env=env)
    assert result.returncode == 0, result.stderr
    return list(json.loads(result.stdout))


def wait_running_in_state(args: list[str], uuid: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    def running() -> bool:
        for domain in state_json(args, env):
            if domain["uuid"] == uuid and domain["state"] == "RUNNING":
                seen.update(domain)
                return True
        return False

    wait_until(running, timeout=60, what=f"state to show {uuid} RUNNING over SASL_SSL", interval=0.5)
    return seen


def http_text(port: int, path: str) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
        return str(resp.read().decode())


def test_agent_and_every_reading_command_over_sasl_ssl_without_showing_the_password(
    secure_kafka: SecuredKafkaCluster, libvirt_host: LibvirtHost, test_conn: libvirt.virConnect, domains: str,
    agents: list[AgentProcess], tmp_path: Path,
) -> None:
    conf = secure_kafka.client_config()
    password = conf["sasl.password"]
    topics = unique_topics("sec")
    port = free_port()
    agent = AgentProcess(tmp_path, libvirt_host.test_uri, secure_kafka.secure_bootstrap_servers, *topics,
                         extra=[*security_flags(conf), "--metrics-address", f"127.0.0.1:{port}"])
    agents.append(agent)
    agent.start(wait_resync=True, timeout=90)
    name, uuid = start_domain(test_conn, domains)
    args = [*reading_args(secure_kafka, topics), *security_flags(conf)]

    domain = wait_running_in_state(args, uuid)
    assert domain["name"] == name and domain["host"] == "host1"

    # define and create land as one record or two, as the coalescer merges them or not; the first
    # record names the DEFINED event either way.
    tail = cli("tail", "--from-beginning", "--output", "json", "--uuid", uuid, "--max-messages", "1",
               "--idle-timeout", "30s", *args)
    assert tail.returncode == 0, tail.stderr
    records = [json.loads(line) for line in tail.stdout.splitlines()]
    assert len(records) == 1 and records[0]["uuid"] == uuid and records[0]["name"] == name, records
    assert records[0]["kind"] == "EVENT" and records[0]["events"][0]["type"] == "DEFINED", records[0]

    watch_out = tmp_path / "watch.out"
    with watch_out.open("w") as out:
        watch = subprocess.Popen([sys.executable, "-m", "bridge", "watch", "--output", "json", *args],
                                 stdout=out, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    try:
        def listed() -> bool:
            assert watch.poll() is None, watch.communicate(timeout=10)[1]
            return any(json.loads(line)["domain"]["uuid"] == uuid
                       for line in watch_out.read_text().splitlines() if line.strip())

        wait_until(listed, timeout=60, what="watch to list the domain over SASL_SSL", interval=0.3)
        watch.send_signal(signal.SIGTERM)
        _, watch_err = watch.communicate(timeout=30)
    finally:
        if watch.poll() is None:
            watch.kill()
            watch.wait(10)
    assert watch.returncode == 0, watch_err
    first = json.loads(watch_out.read_text().splitlines()[0])
    assert first["event"] == "LISTED" and first["domain"]["state"] == "RUNNING"

    metrics = http_text(port, "/metrics")
    assert "libvirt_kafka_bridge_records_published_total" in metrics
    status_file = agent.state_dir / "status.json"
    wait_until(status_file.exists, timeout=30, what="status.json")
    assert agent.terminate() == 0
    status = status_file.read_text()
    assert json.loads(status)["records"] >= 1

    log = agent.log_text()
    assert "DEBUG" in log and "publishing host host1" in log
    for where, text in {"agent log": log, "status.json": status, "/metrics": metrics, "tail stderr": tail.stderr,
                        "watch stderr": watch_err}.items():
        assert password not in text, f"the password appears in the {where}"


def test_security_settings_from_the_config_file_and_the_environment(
    secure_kafka: SecuredKafkaCluster, libvirt_host: LibvirtHost, test_conn: libvirt.virConnect, domains: str,
    agents: list[AgentProcess], tmp_path: Path,
) -> None:
    conf = secure_kafka.client_config()
    topics = unique_topics("sectoml")
    config_file = tmp_path / "bridge.toml"
    table = "".join(f'"{k}" = "{conf[k]}"\n' for k in
                    ("security.protocol", "sasl.mechanism", "sasl.username", "sasl.password", "ssl.ca.location"))
    config_file.write_text(f'bootstrap_servers = "{secure_kafka.secure_bootstrap_servers}"\n\n[kafka]\n{table}')
    agent = AgentProcess(tmp_path, libvirt_host.test_uri, secure_kafka.secure_bootstrap_servers, *topics,
                         extra=["--config", str(config_file)])
    agents.append(agent)
    agent.start(wait_resync=True, timeout=90)
    _, uuid = start_domain(test_conn, domains)

    wait_running_in_state(["--config", str(config_file), "--topic", topics[0], "--hosts-topic", topics[1]], uuid)
    env = {"BRIDGE_KAFKA_CONFIG": ",".join(f"{k}={conf[k]}" for k in ("security.protocol", "sasl.mechanism",
                                                                       "sasl.username", "sasl.password",
                                                                       "ssl.ca.location"))}
    domain = wait_running_in_state(reading_args(secure_kafka, topics), uuid, env=env)
    assert domain["host"] == "host1"
    assert agent.terminate() == 0
    assert conf["sasl.password"] not in agent.log_text()


@pytest.mark.parametrize("command", ["run", "state", "tail", "watch"])
def test_a_wrong_password_exits_2_naming_sasl_password(
    secure_kafka: SecuredKafkaCluster, tmp_path: Path, command: str,
) -> None:
    conf = secure_kafka.client_config(password=WRONG_PASSWORD)
    base = [*reading_args(secure_kafka, unique_topics("secbad")), *security_flags(conf)]
    extra = {"run": ["--state-dir", str(tmp_path), "--libvirt-uri", "test:///default"],
             "state": ["--sync-timeout", "60s"], "tail": [], "watch": []}[command]
    result = cli("--log-level", "DEBUG", command, *base, *extra, timeout=60)
    assert_exit_2_naming(result, "sasl.password", WRONG_PASSWORD, secure_kafka.users["bridge"])
    assert "refused the SASL credentials of user 'bridge'" in result.stderr


def test_a_wrong_password_in_the_config_file_is_not_shown_either(
    secure_kafka: SecuredKafkaCluster, tmp_path: Path,
) -> None:
    conf = secure_kafka.client_config(password=WRONG_PASSWORD)
    config_file = tmp_path / "bridge.toml"
    config_file.write_text("[kafka]\n" + "".join(f'"{k}" = "{v}"\n' for k, v in conf.items()
                                                 if k != "bootstrap.servers"))
    result = cli("run", "--config", str(config_file), *reading_args(secure_kafka, unique_topics("secbad")),
                 "--state-dir", str(tmp_path / "state"), "--libvirt-uri", "test:///default")
    assert_exit_2_naming(result, "sasl.password", WRONG_PASSWORD)


@pytest.mark.parametrize("command", ["run", "state"])
def test_an_untrusted_broker_certificate_exits_2_naming_ssl_ca_location(
    secure_kafka: SecuredKafkaCluster, tmp_path: Path, command: str,
) -> None:
    assert secure_kafka.pki is not None
    conf = secure_kafka.client_config(ca_location=secure_kafka.pki.untrusted_ca_cert)
    extra = ["--state-dir", str(tmp_path), "--libvirt-uri", "test:///default"] if command == "run" else []
    result = cli(command, *reading_args(secure_kafka, unique_topics("secca")), *security_flags(conf), *extra,
                 timeout=60)
    assert_exit_2_naming(result, "ssl.ca.location", conf["sasl.password"])
    assert "not trusted" in result.stderr and str(secure_kafka.pki.untrusted_ca_cert) in result.stderr
