"""Schema Registry client settings: --schema-registry-config, BRIDGE_SCHEMA_REGISTRY_CONFIG, [schema_registry].

The real registry (with basic auth) is in tests/integration/test_schema_registry.py; here only the
settings plumbing, the client config it builds, and that secrets stay out of messages.
"""

from __future__ import annotations

import argparse
import socket

import pytest

from bridge.cli.common import KAFKA_OPTIONS
from bridge.config import add_options, resolve
from bridge.errors import UserError
from bridge.kafka_settings import KafkaSettings
from bridge.serde.confluent_wire import client_config, connect_registry, redact, registry_client

SECRET = "hunter2:with-colon"  # noqa: S105 (a made-up password the messages must not show)


def values(argv: list[str], env: dict[str, str] | None = None) -> dict:
    parser = argparse.ArgumentParser()
    add_options(parser, KAFKA_OPTIONS)
    return resolve(parser.parse_args(argv), KAFKA_OPTIONS, env or {})


def test_precedence_per_key_flag_over_env_over_file_table(tmp_path):
    cfg = tmp_path / "bridge.toml"
    cfg.write_text('schema_registry_url = "https://sr:8081"\n'
                   '[schema_registry]\n"basic.auth.user.info" = "file:pw"\n"ssl.ca.location" = "/ca.pem"\n'
                   '"max.retries" = 5\n')
    assert values(["--config", str(cfg)])["schema_registry_config"] == {
        "basic.auth.user.info": "file:pw", "ssl.ca.location": "/ca.pem", "max.retries": "5"}
    env = {"BRIDGE_SCHEMA_REGISTRY_CONFIG": "basic.auth.user.info=env:pw,timeout=3"}
    v = values(["--config", str(cfg)], env)
    assert v["schema_registry_config"]["basic.auth.user.info"] == "env:pw"
    assert v["schema_registry_config"]["timeout"] == "3"
    v = values(["--config", str(cfg), "--schema-registry-config", "basic.auth.user.info=flag:pw",
                "--schema-registry-config", "max.retries=1"], env)
    assert v["schema_registry_config"] == {"basic.auth.user.info": "flag:pw", "ssl.ca.location": "/ca.pem",
                                           "max.retries": "1", "timeout": "3"}
    settings = KafkaSettings.from_values(v)
    assert settings.schema_registry_url == "https://sr:8081"
    assert settings.schema_registry_config == v["schema_registry_config"]
    assert "flag:pw" not in repr(settings)


def test_the_table_is_not_an_unknown_setting_and_kafka_table_still_works(tmp_path):
    cfg = tmp_path / "bridge.toml"
    cfg.write_text('[kafka]\n"security.protocol" = "SSL"\n[schema_registry]\n"timeout" = "2"\n')
    v = values(["--config", str(cfg)])
    assert v["kafka_config"] == {"security.protocol": "SSL"}
    assert v["schema_registry_config"] == {"timeout": "2"}


def test_a_malformed_item_is_named_by_source_without_echoing_it():
    with pytest.raises(UserError) as err:
        values(["--schema-registry-config", f"basic.auth.user.info:{SECRET}"])
    assert "--schema-registry-config" in str(err.value)
    assert "hunter2" not in str(err.value)
    with pytest.raises(UserError, match="BRIDGE_SCHEMA_REGISTRY_CONFIG") as err:
        values([], {"BRIDGE_SCHEMA_REGISTRY_CONFIG": SECRET})
    assert "hunter2" not in str(err.value)


def test_client_config_types_and_url_credentials():
    conf = client_config("https://sr:8081", {"max.retries": "2", "retries.wait.ms": "50", "timeout": "2.5",
                                             "basic.auth.credentials.source": "USER_INFO",
                                             "basic.auth.user.info": f"u:{SECRET}"})
    assert conf == {"url": "https://sr:8081", "max.retries": 2, "retries.wait.ms": 50, "timeout": 2.5,
                    "basic.auth.user.info": f"u:{SECRET}"}
    # user:password@ in the URL becomes basic.auth.user.info, so no URL with a password reaches httpx.
    conf = client_config("http://u:p%40ss@sr1:8081/apis/ccompat/v7, http://sr2:8081", {})
    assert conf == {"url": "http://sr1:8081/apis/ccompat/v7,http://sr2:8081", "basic.auth.user.info": "u:p@ss"}


@pytest.mark.parametrize(
    ("url", "config", "fragment"),
    [
        ("http://sr", {"max.retries": "many"}, "max.retries"),
        ("http://u:pw@sr", {"basic.auth.user.info": f"u:{SECRET}"}, "give them once"),
        ("http://sr", {"basic.auth.credentials.source": "SASL_INHERIT"}, "basic.auth.credentials.source"),
        ("http://sr", {"basic.auth.user.info": "hunter2-no-colon"}, "must be user:password"),
        ("http://sr", {"ssl.ca.location": "/nonexistent/ca.pem"}, "ssl.ca.location"),
        ("http://sr", {"no.such.key": "1", "basic.auth.user.info": f"u:{SECRET}"}, "no.such.key"),
    ],
)
def test_bad_client_settings_are_user_errors_without_secrets(url, config, fragment):
    with pytest.raises(UserError, match=fragment) as err:
        registry_client(url, config)
    assert "hunter2" not in str(err.value)


def test_redact_masks_user_info_and_the_password_alone():
    conf = {"basic.auth.user.info": f"u:{SECRET}", "ssl.key.password": "keypw"}
    text = f"x u:{SECRET} y {SECRET} z keypw"
    assert redact(text, conf) == "x *** y *** z ***"


def test_config_without_url_is_refused():
    with pytest.raises(UserError, match="--schema-registry-url is not"):
        KafkaSettings(schema_registry_config={"basic.auth.user.info": f"u:{SECRET}"}).codec()


def test_mock_registry_passes_the_start_up_check():
    codec = KafkaSettings(schema_registry_url="mock://registry-settings-test").codec()
    assert codec is not None
    assert connect_registry("mock://registry-settings-test") is not None


def test_unreachable_registry_is_a_user_error_naming_the_url_setting():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(UserError, match="cannot reach the schema registry") as err:
        connect_registry(f"http://u:{SECRET.replace(':', '%3A')}@127.0.0.1:{port}", {"max.retries": "0"})
    assert "--schema-registry-url" in str(err.value)
    assert "hunter2" not in str(err.value)
