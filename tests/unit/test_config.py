import argparse

import pytest

from bridge.config import Option, add_options, parse_duration, parse_key_values, resolve
from bridge.errors import UserError

OPTS = (
    Option("resync_interval", "x", 300.0, parse_duration),
    Option("topic", "x", "libvirt.domains"),
    Option("kafka_config", "x", None, parse_key_values, repeatable_kv=True),
)


def parse(argv, env=None, opts=OPTS):
    p = argparse.ArgumentParser()
    add_options(p, opts)
    return resolve(p.parse_args(argv), opts, env or {})


def test_precedence_flag_over_env_over_file_over_default(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('resync_interval = "1m"\ntopic = "from-file"\n[kafka]\n"security.protocol" = "SSL"\n')
    assert parse([])["resync_interval"] == 300.0
    assert parse(["--config", str(cfg)])["resync_interval"] == 60.0
    assert parse(["--config", str(cfg)], {"BRIDGE_RESYNC_INTERVAL": "2m"})["resync_interval"] == 120.0
    v = parse(["--config", str(cfg), "--resync-interval", "5s", "--kafka-config", "acks=all"],
              {"BRIDGE_RESYNC_INTERVAL": "2m"})
    assert v["resync_interval"] == 5.0
    assert v["topic"] == "from-file"
    assert v["kafka_config"] == {"security.protocol": "SSL", "acks": "all"}


@pytest.mark.parametrize(
    ("argv", "env", "fragment"),
    [
        (["--resync-interval", "soon"], {}, "--resync-interval from flag"),
        ([], {"BRIDGE_RESYNC_INTERVAL": "-5s"}, "environment variable BRIDGE_RESYNC_INTERVAL"),
        (["--kafka-config", "novalue"], {}, "kafka_config from flag --kafka-config"),
        (["--config", "/nonexistent.toml"], {}, "does not exist"),
    ],
)
def test_bad_values_name_the_setting_and_its_source(argv, env, fragment):
    with pytest.raises(UserError, match=fragment.replace("-", r"\-")):
        parse(argv, env)


def test_unknown_and_malformed_config_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("resync_intervall = 5\n")
    with pytest.raises(UserError, match="unknown setting"):
        parse(["--config", str(bad)])
    broken = tmp_path / "broken.toml"
    broken.write_text("= = =")
    with pytest.raises(UserError, match="not valid TOML"):
        parse(["--config", str(broken)])


def test_durations():
    assert parse_duration("250ms") == 0.25
    assert parse_duration("2h") == 7200
    assert parse_duration("7") == 7
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration("5 minutes")
