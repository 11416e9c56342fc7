"""``libvirt-kafka-bridge config show``: run's effective settings, each with its source, secrets masked."""

from __future__ import annotations

import json
import os
import socket
import tomllib
from pathlib import Path

import pytest

from bridge.cli import run
from bridge.cli.config_show import MASK, is_secret, mask_url
from bridge.cli.main import build_parser, main
from bridge.config import resolve

SECRETS = {
    "sasl.password": "s3cr3t-sasl",
    "ssl.key.password": "s3cr3t-keypw",
    "ssl.keystore.password": "s3cr3t-keystore",
    "ssl.key.pem": "-----BEGIN PRIVATE KEY-----s3cr3t-pem",
    "sasl.oauthbearer.client.secret": "s3cr3t-oauth",
    "sasl.jaas.config": "s3cr3t-jaas",
}


def clear_bridge_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("BRIDGE_"):
            monkeypatch.delenv(name)


def show(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    status = main(["config", "show", *args])
    out = capsys.readouterr()
    return status, out.out, out.err


@pytest.fixture
def sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """A file, an environment and flags that each win for some settings; the args to pass."""
    clear_bridge_env(monkeypatch)
    cfg = tmp_path / "bridge.toml"
    cfg.write_text(
        'bootstrap_servers = "file:9092"\nresync_interval = "10m"\nhost_id = "from-file"\n'
        '[kafka]\n"security.protocol" = "SASL_SSL"\n"sasl.username" = "bridge"\n'
        f'"sasl.password" = "{SECRETS["sasl.password"]}"\n"ssl.key.location" = "/etc/bridge/key.pem"\n'
        '[schema_registry]\n"basic.auth.user.info" = "reg:s3cr3t-registry"\n"ssl.ca.location" = "/etc/ca.pem"\n'
    )
    monkeypatch.setenv("BRIDGE_HOST_ID", "from-env")
    monkeypatch.setenv("BRIDGE_HEARTBEAT_INTERVAL", "20s")
    monkeypatch.setenv("BRIDGE_KAFKA_CONFIG", f"ssl.key.password={SECRETS['ssl.key.password']},sasl.username=env-user")
    monkeypatch.setenv("BRIDGE_SCHEMA_REGISTRY_URL", "https://reg:s3cr3t-url@registry.example:8081/api")
    kafka_flags = [f"{k}={v}" for k, v in SECRETS.items() if k not in ("sasl.password", "ssl.key.password")]
    return ["--config", str(cfg), "--metrics-address", ":9731", "--read-only", "false",
            *(x for kv in kafka_flags for x in ("--kafka-config", kv))]


def test_json_names_each_settings_source_and_agrees_with_run(capsys, sources):
    status, out, err = show(capsys, *sources, "--output", "json")
    assert status == 0, err
    shown = json.loads(out)
    cfg = sources[1]
    assert shown["bootstrap_servers"] == {"value": "file:9092", "source": f"file {cfg}"}
    assert shown["resync_interval"] == {"value": 600.0, "source": f"file {cfg}"}
    assert shown["host_id"] == {"value": "from-env", "source": "env BRIDGE_HOST_ID"}  # env beats the file
    assert shown["heartbeat_interval"] == {"value": 20.0, "source": "env BRIDGE_HEARTBEAT_INTERVAL"}
    assert shown["read_only"] == {"value": False, "source": "flag --read-only"}
    assert shown["metrics_address"] == {"value": ":9731", "source": "flag --metrics-address"}
    assert shown["libvirt_uri"] == {"value": "qemu:///system", "source": "default"}
    assert shown["config"] == {"value": cfg, "source": "flag --config"}
    kafka = shown["kafka_config"]
    assert kafka["security.protocol"] == {"value": "SASL_SSL", "source": f"file {cfg}"}
    assert kafka["sasl.username"] == {"value": "env-user", "source": "env BRIDGE_KAFKA_CONFIG"}
    assert kafka["ssl.key.location"] == {"value": "/etc/bridge/key.pem", "source": f"file {cfg}"}  # a path
    assert kafka["sasl.password"] == {"value": MASK, "source": f"file {cfg}"}
    assert kafka["ssl.key.password"] == {"value": MASK, "source": "env BRIDGE_KAFKA_CONFIG"}
    assert kafka["ssl.key.pem"] == {"value": MASK, "source": "flag --kafka-config"}
    assert shown["schema_registry_config"]["basic.auth.user.info"] == {"value": MASK, "source": f"file {cfg}"}
    assert shown["schema_registry_config"]["ssl.ca.location"]["value"] == "/etc/ca.pem"
    assert shown["schema_registry_url"] == {"value": f"https://reg:{MASK}@registry.example:8081/api",
                                            "source": "env BRIDGE_SCHEMA_REGISTRY_URL"}
    # Every setting of run is shown, with the value run resolves.
    values = resolve(build_parser().parse_args(["run", *sources]), run.OPTIONS)
    assert set(shown) == {o.name for o in run.OPTIONS} | {"config"}
    for opt in run.OPTIONS:
        if not opt.repeatable_kv and opt.name not in ("state_dir", "metrics_address", "schema_registry_url"):
            assert shown[opt.name]["value"] == values[opt.name], opt.name
        elif opt.repeatable_kv:
            assert set(shown[opt.name]) == set(values[opt.name])


def test_no_secret_is_ever_printed(capsys, sources):
    for output in ("toml", "json"):
        status, out, err = show(capsys, *sources, "--output", output)
        assert status == 0, err
        for secret in [*SECRETS.values(), "s3cr3t-registry", "s3cr3t-url"]:
            assert secret not in out and secret not in err, (output, secret)
        assert MASK in out


def test_the_toml_output_is_a_config_file_with_the_same_settings(capsys, sources, tmp_path, monkeypatch):
    status, out, _ = show(capsys, *sources)
    assert status == 0
    assert f'"sasl.password" = "{MASK}"  # file ' in out and "host_id = \"from-env\"  # env BRIDGE_HOST_ID" in out
    assert "# replication_factor = (not set)  # default" in out
    written = tomllib.loads(out)  # valid TOML: comments carry the sources
    assert written["kafka"]["sasl.username"] == "env-user" and written["metrics_address"] == ":9731"
    clear_bridge_env(monkeypatch)
    cfg = tmp_path / "shown.toml"
    cfg.write_text(out)
    status, again, _ = show(capsys, "--config", str(cfg), "--output", "json")
    assert status == 0
    reread = json.loads(again)
    assert reread["resync_interval"]["value"] == 600.0 and reread["read_only"]["value"] is False
    assert reread["host_id"] == {"value": "from-env", "source": f"file {cfg}"}


def test_defaults_and_the_host_name(capsys, monkeypatch):
    clear_bridge_env(monkeypatch)
    status, out, _ = show(capsys, "--output", "json")
    shown = json.loads(out)
    assert status == 0
    assert shown["host_id"] == {"value": socket.gethostname(), "source": "default (the host name)"}
    assert all(v["source"] == "default" for k, v in shown.items() if k not in ("host_id", "kafka_config",
                                                                               "schema_registry_config"))
    assert shown["kafka_config"] == {} and shown["config"] == {"value": None, "source": "default"}


def test_a_bad_setting_exits_2_like_run(capsys, tmp_path):
    status, out, err = show(capsys, "--resync-interval", "soon")
    assert status == 2 and out == "" and "--resync-interval" in err
    with pytest.raises(SystemExit) as exc:
        main(["config", "show", "--no-such-flag"])
    assert exc.value.code == 2


@pytest.mark.parametrize("key", [*SECRETS, "basic.auth.user.info", "sasl.oauthbearer.token", "bearer.auth.credentials",
                                 "ssl.keystore.password", "SASL.PASSWORD", "ssl_key.pem"])
def test_secret_keys(key):
    assert is_secret(key)


@pytest.mark.parametrize("key", ["security.protocol", "sasl.username", "sasl.mechanism", "ssl.ca.location",
                                 "ssl.key.location", "ssl.keystore.location", "bootstrap.servers", "acks"])
def test_keys_that_are_shown(key):
    assert not is_secret(key)


def test_mask_url():
    assert mask_url("https://u:p@h:1/x") == f"https://u:{MASK}@h:1/x"
    assert mask_url("https://h/x") == "https://h/x"
