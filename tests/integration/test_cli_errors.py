"""User errors exit with status 2 and a one-line message naming the problem, never a traceback."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest
from confluent_kafka.admin import AdminClient, NewTopic

from tests.support.topics import unique_topics


def run_cli(*args, timeout=60):
    return subprocess.run([sys.executable, "-m", "bridge", *args], capture_output=True, text=True, timeout=timeout,
                          check=False)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def assert_user_error(result, *fragments):
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["run", "--resync-interval", "soon"], ["--resync-interval", "not a duration"]),
        (["run", "--partitions", "0"], ["--partitions", "greater than zero"]),
        (["run", "--config", "/nonexistent/bridge.toml"], ["config file", "does not exist"]),
        (["run", "--host-id", "two words"], ["--host-id"]),
        (["run", "--kafka-config", "acks=1", "--bootstrap-servers", "127.0.0.1:1"], ["acks=1", "not allowed"]),
        (["run", "--topic", "same", "--hosts-topic", "same"], ["must differ"]),
        (["run", "--read-only", "maybe"], ["--read-only", "not a boolean"]),
        (["run", "--nice", "20"], ["--nice", "outside 0 to 19"]),
        (["run", "--nice", "low"], ["--nice", "not a whole number from 0 to 19"]),
        (["frobnicate"], ["invalid choice"]),
    ],
)
def test_bad_settings(args, fragments, tmp_path):
    assert_user_error(run_cli(*args, "--state-dir", str(tmp_path)) if args[0] == "run" else run_cli(*args),
                      *fragments)


def test_env_and_config_file_errors_name_their_source(tmp_path):
    cfg = tmp_path / "bridge.toml"
    cfg.write_text("heartbeat_interval = 'often'\n")
    assert_user_error(run_cli("run", "--config", str(cfg)), "bridge.toml", "heartbeat_interval")
    env_run = subprocess.run([sys.executable, "-m", "bridge", "run"], capture_output=True, text=True, timeout=60,
                             check=False,
                             env={"BRIDGE_RESYNC_INTERVAL": "0s", "PATH": "/usr/bin:/bin"})
    assert_user_error(env_run, "BRIDGE_RESYNC_INTERVAL")


def test_unreachable_kafka(tmp_path):
    result = run_cli("run", "--bootstrap-servers", f"127.0.0.1:{free_port()}", "--kafka-connect-timeout", "2s",
                     "--state-dir", str(tmp_path), "--libvirt-uri", "test:///default")
    assert_user_error(result, "cannot reach Kafka", "--bootstrap-servers")


def test_unreachable_libvirt(kafka, tmp_path):
    result = run_cli("run", "--bootstrap-servers", kafka.bootstrap_servers, "--state-dir", str(tmp_path),
                     "--libvirt-uri", f"test+unix:///default?socket={tmp_path}/no-such-sock",
                     "--topic", "errs.domains", "--hosts-topic", "errs.hosts")
    assert_user_error(result, "cannot connect to libvirt", "--libvirt-uri")


def test_refuses_a_topic_that_is_not_compacted(kafka, tmp_path):
    domains, hosts = unique_topics("delete")
    admin = AdminClient({"bootstrap.servers": kafka.bootstrap_servers})
    admin.create_topics([NewTopic(domains, 1, 1, config={"cleanup.policy": "delete"})])[domains].result(30)
    result = run_cli("run", "--bootstrap-servers", kafka.bootstrap_servers, "--state-dir", str(tmp_path),
                     "--libvirt-uri", "test:///default", "--topic", domains, "--hosts-topic", hosts)
    assert_user_error(result, domains, "cleanup.policy=delete", "compact")


def test_unusable_state_dir(kafka, tmp_path):
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    result = run_cli("run", "--bootstrap-servers", kafka.bootstrap_servers, "--state-dir", str(not_a_dir),
                     "--libvirt-uri", "test:///default")
    assert_user_error(result, "--state-dir", str(not_a_dir))


def test_help_teaches():
    result = run_cli("run", "--help")
    assert result.returncode == 0
    for flag in ("--libvirt-uri", "--bootstrap-servers", "--topic", "--hosts-topic", "--host-id", "--state-dir",
                 "--resync-interval", "--heartbeat-interval", "--kafka-config", "BRIDGE_LIBVIRT_URI"):
        assert flag in result.stdout
    top = run_cli("--help")
    assert all(cmd in top.stdout for cmd in ("run", "tail", "state", "watch"))
