"""``libvirt-kafka-bridge doctor`` against the real broker and libvirtd (issue 11, must-show 2).

A healthy setup passes; a non-compacted topic, an unreachable libvirt and a too-short
``delete.retention.ms`` each fail with the fix on their line; a bad setting exits 2.
Doctor takes ``run``'s own argument list here (the agent's, with ``run`` replaced by ``doctor``).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from bridge.agent.topics import DEFAULT_COMPACTION_LAG, compaction_lags_ms
from bridge.cli.doctor_result import TOMBSTONE_RESYNCS
from bridge.cli.run import TEST_CLOCK_OFFSET
from tests.support.topics import create_compacted, unique_topics

AGENT_LAGS = compaction_lags_ms(3600)  # AgentProcess runs with --compaction-lag 1h
DEFAULT_LAGS = compaction_lags_ms(DEFAULT_COMPACTION_LAG)


def doctor(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bridge", "doctor", *args], capture_output=True, text=True,
                          timeout=timeout, check=False, stdin=subprocess.DEVNULL)


def lines(result: subprocess.CompletedProcess[str], status: str) -> list[str]:
    return [line for line in result.stdout.splitlines() if line.startswith(status)]


def settings(kafka, topics: tuple[str, str], uri: str, state_dir: Path, *extra: str) -> list[str]:
    return ["--libvirt-uri", uri, "--bootstrap-servers", kafka.bootstrap_servers, "--topic", topics[0],
            "--hosts-topic", topics[1], "--state-dir", str(state_dir), "--kafka-connect-timeout", "5s", *extra]


def test_a_healthy_setup_passes_next_to_its_running_agent(kafka, libvirt_host, agent_factory):
    agent = agent_factory(libvirt_host.test_uri).start()
    agent.wait_host_record()
    run_args = agent.args[agent.args.index("run") + 1:]  # exactly the agent's settings
    result = doctor(*run_args)
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert not lines(result, "FAIL"), out
    for check in ("libvirt: connected to", "read-only", "libvirt events: 27 of the 27", "kafka: 1 broker(s)",
                  f"topic {agent.domains_topic} cleanup.policy: compact",
                  f"topic {agent.hosts_topic} cleanup.policy: compact",
                  f"topic {agent.domains_topic} delete.retention.ms: 86400000 ms >= {TOMBSTONE_RESYNCS} x",
                  f"topic {agent.domains_topic} max.compaction.lag.ms: history compacted within "
                  f"{AGENT_LAGS['domains']} ms",
                  f"topic {agent.hosts_topic} max.compaction.lag.ms: history compacted within "
                  f"{AGENT_LAGS['hosts']} ms",
                  f"topic {agent.hosts_topic}.heartbeats max.compaction.lag.ms: history compacted within "
                  f"{AGENT_LAGS['heartbeats']} ms",
                  "no clock ahead of this host's by more than --max-clock-skew 50 ms (1 heartbeat(s) on "
                  f"{agent.hosts_topic}.heartbeats"):
        assert check in out, out
    # The running agent holds the state directory's lock: said, with what to do, but not a failure.
    (in_use,) = [line for line in lines(result, "WARN") if "state dir" in line]
    assert "in use by a running agent" in in_use and "Fix:" in in_use
    assert out.splitlines()[-1] == "doctor: 16 ok, 1 warning(s), 0 failed, 0 skipped", out
    assert "Traceback" not in result.stderr

    agent.terminate()
    again = doctor(*run_args)
    assert again.returncode == 0 and "WARN" not in again.stdout, again.stdout  # lock released: all ok
    assert f"state dir: {agent.state_dir} is writable and not in use" in again.stdout


def test_a_host_clock_ahead_of_this_one_is_a_warning_with_the_fix(kafka, libvirt_host, agent_factory, tmp_path):
    fast = agent_factory(libvirt_host.test_uri, host_id="fast-clock", env={TEST_CLOCK_OFFSET: "2000"}).start()
    run_args = fast.args[fast.args.index("run") + 1:]
    args = [*run_args, "--host-id", "doctor-host", "--state-dir", str(tmp_path / "mine")]  # another host
    result = doctor(*args)
    assert result.returncode == 0, result.stdout + result.stderr  # a warning, not a failure
    (clock,) = [line for line in lines(result, "WARN") if line.startswith("WARN  clock:")]
    assert "host fast-clock's clock is" in clock and "ahead of this host's (more than --max-clock-skew 50 ms" in clock
    ahead_ms = int(clock.split("clock is ")[1].split(" ms")[0])
    assert 2000 - 1100 <= ahead_ms <= 2000, clock  # the offset less the heartbeat's age (--heartbeat-interval 1s)
    assert "Fix: run NTP" in clock
    # A bound wider than the offset accepts it.
    assert "ok    clock:" in doctor(*args, "--max-clock-skew", "5s").stdout


def test_a_topic_that_is_not_compacted_fails_with_the_fix(kafka, libvirt_host, tmp_path):
    topics = unique_topics("doctor-delete")
    create_compacted(kafka.bootstrap_servers, topics[0], config={"cleanup.policy": "delete"})
    create_compacted(kafka.bootstrap_servers, topics[1])
    result = doctor(*settings(kafka, topics, libvirt_host.test_uri, tmp_path / "state"))
    assert result.returncode == 1, result.stdout + result.stderr
    (failed,) = lines(result, "FAIL")
    assert result.stdout.splitlines()[-1].endswith(", 1 failed, 1 skipped")  # the clock: no heartbeats
    assert f"topic {topics[0]} cleanup.policy: is delete, not compacted" in failed
    assert (f"Fix: kafka-configs --bootstrap-server {kafka.bootstrap_servers} --alter --entity-type topics "
            f"--entity-name {topics[0]} --add-config cleanup.policy=compact") in failed
    assert f"ok    topic {topics[1]} cleanup.policy: compact" in result.stdout


def test_an_unreachable_libvirt_fails_with_the_fix(kafka, tmp_path):
    uri = f"test+unix:///default?socket={tmp_path}/no-such-sock"
    result = doctor(*settings(kafka, unique_topics("doctor-nolibvirt"), uri, tmp_path / "state"))
    assert result.returncode == 1, result.stdout + result.stderr
    (failed,) = lines(result, "FAIL")
    assert failed.startswith(f"FAIL  libvirt: cannot connect to --libvirt-uri {uri} read-only")
    assert "Fix: start libvirtd" in failed and "/run/libvirt/libvirt-sock-ro" in failed
    assert "skip  libvirt events: libvirt not reachable" in result.stdout
    assert "ok    kafka:" in result.stdout  # the other checks still run
    # Topics that do not exist yet are the agent's to create: a warning with its condition, no failure.
    assert sum("does not exist; run creates it compacted" in line for line in lines(result, "WARN")) == 3


def test_a_too_short_delete_retention_fails_with_the_fix(kafka, libvirt_host, tmp_path):
    topics = unique_topics("doctor-retention")
    create_compacted(kafka.bootstrap_servers, topics[0], config={"delete.retention.ms": "60000"})
    create_compacted(kafka.bootstrap_servers, topics[1], config={"delete.retention.ms": "900000"})
    result = doctor(*settings(kafka, topics, libvirt_host.test_uri, tmp_path / "state", "--resync-interval", "5m"))
    assert result.returncode == 1, result.stdout + result.stderr
    (failed,) = lines(result, "FAIL")
    assert (f"FAIL  topic {topics[0]} delete.retention.ms: 60000 ms is shorter than 3 x --resync-interval 300s "
            "= 900000 ms") in failed
    assert f"--entity-name {topics[0]} --add-config delete.retention.ms=900000" in failed
    # Exactly at the bound passes; a shorter interval on the same topics passes both.
    assert f"ok    topic {topics[1]} delete.retention.ms: 900000 ms >= 3 x --resync-interval 300s" in result.stdout
    shorter = doctor(*settings(kafka, topics, libvirt_host.test_uri, tmp_path / "state", "--resync-interval", "20s"))
    assert shorter.returncode == 0, shorter.stdout
    # Topics made without a compaction lag keep a week of history for a fresh consumer: a warning, with the fix.
    lag = [line for line in lines(shorter, "WARN") if "max.compaction.lag.ms" in line]
    assert len(lag) == 2, shorter.stdout
    assert "unset (segment.ms 604800000)" in lag[0] and "a fresh consumer reads that much history" in lag[0]
    assert f"--entity-name {topics[0]} --add-config max.compaction.lag.ms={DEFAULT_LAGS['domains']}" in lag[0]
    assert "every heartbeat" not in lag[1], "heartbeats have their own topic (which does not exist here)"
    assert f"--add-config max.compaction.lag.ms={DEFAULT_LAGS['hosts']}" in lag[1]


def test_bad_settings_exit_2_without_a_traceback(tmp_path):
    for args, fragment in ((["--resync-interval", "soon"], "--resync-interval"),
                           (["--no-such-flag"], "unrecognized arguments"),
                           (["--topic", "same", "--hosts-topic", "same"], "must differ")):
        result = doctor(*args, "--state-dir", str(tmp_path))
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert fragment in result.stderr and "Traceback" not in result.stderr, result.stderr
        assert result.stdout == ""  # nothing was checked
