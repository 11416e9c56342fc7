"""The installed wheel is the product (issue 7, must-show 5).

Editable installs hide packaging bugs (0.1.0's wheel shipped no .avsc files and did ship the dev
environment). This builds the sdist and, from it, the wheel with PyPA's ``build``, installs the wheel
(not editable) into a fresh venv, and runs the console script from a directory outside the repo with no
``PYTHONPATH``: ``--version``, ``run --help``, and a real ``run`` + ``state`` round trip.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import uuid as uuid_mod
import zipfile
from pathlib import Path

import pytest

import bridge
from bridge.cli import run
from devenv import wait_until
from tests.support.domains import unique_name, xml_for_test_driver
from tests.support.procfs import thread_niceness
from tests.support.topics import unique_topics

REPO = Path(__file__).resolve().parents[2]
# What `python -m build` needs from the tree; a copy keeps stale build/ and egg-info out of the test.
SOURCES = ("bridge", "schemas", "pyproject.toml", "README.md", "LICENSE")


def _run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, f"{cmd} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def clean_env() -> dict[str, str]:
    """The environment minus anything that would let the repo's sources leak into the installed product."""
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME"}}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory, clean_env: dict[str, str]) -> Path:
    src = tmp_path_factory.mktemp("src")
    for name in SOURCES:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, src / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(path, src / name)
    dist = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "build", "--outdir", str(dist), str(src)], src, clean_env)
    (built,) = dist.glob("*.whl")
    return built


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory, wheel: Path, clean_env: dict[str, str]) -> Path:
    root = tmp_path_factory.mktemp("venv")
    _run([sys.executable, "-m", "venv", str(root)], root, clean_env)
    _run([str(root / "bin" / "python"), "-m", "pip", "install", "-q", str(wheel)], root, clean_env)
    return root


def test_the_wheel_ships_the_schemas_and_no_dev_environment(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        for schema in ("domain_record.avsc", "host_record.avsc"):
            shipped = zf.read(f"bridge/_schemas/{schema}")
            assert shipped == (REPO / "schemas" / schema).read_bytes(), f"{schema} differs from schemas/"
        metadata = zf.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "bridge/py.typed" in names
    assert not [n for n in names if n.startswith(("devenv/", "tests/", "bridge/devenv/", "examples/"))]
    assert {n.split("/")[0] for n in names} == {"bridge", f"libvirt_kafka_bridge-{bridge.__version__}.dist-info"}
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert f"Version: {bridge.__version__}" in metadata
    assert "License-Expression: Apache-2.0" in metadata
    assert "Classifier: Typing :: Typed" in metadata


def test_every_command_runs_from_the_installed_wheel(venv: Path, tmp_path: Path, clean_env: dict[str, str],
                                                     kafka, libvirt_host, test_conn) -> None:
    exe = str(venv / "bin" / "libvirt-kafka-bridge")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    version = _run([exe, "--version"], outside, clean_env)
    assert version.stdout.strip().endswith(bridge.__version__)
    help_text = _run([exe, "run", "--help"], outside, clean_env).stdout
    assert "--bootstrap-servers" in help_text and "--libvirt-uri" in help_text
    # The installed package is the one imported, not the repo's.
    where = _run([str(venv / "bin" / "python"), "-c", "import bridge; print(bridge.__file__)"], outside, clean_env)
    assert where.stdout.strip().startswith(str(venv))

    domains_topic, hosts_topic = unique_topics("wheel")
    kafka_args = ["--bootstrap-servers", kafka.bootstrap_servers, "--topic", domains_topic,
                  "--hosts-topic", hosts_topic]
    log = (tmp_path / "agent.log").open("wb")
    agent = subprocess.Popen(
        [exe, "run", "--libvirt-uri", libvirt_host.test_uri, *kafka_args, "--host-id", "wheel-host",
         "--state-dir", str(tmp_path / "state"), "--heartbeat-interval", "1s"],
        cwd=outside, env=clean_env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    uuid = str(uuid_mod.uuid4())
    dom = None
    try:
        dom = test_conn.defineXML(xml_for_test_driver(unique_name("wheel"), uuid))
        dom.create()

        def listed() -> dict[str, dict[str, object]]:
            if agent.poll() is not None:
                raise AssertionError(f"agent exited {agent.returncode}: {(tmp_path / 'agent.log').read_text()}")
            out = _run([exe, "state", "--output", "json", *kafka_args, "--sync-timeout", "20s"], outside, clean_env)
            return {d["uuid"]: d for d in json.loads(out.stdout)}

        wait_until(lambda: listed().get(uuid, {}).get("state") == "RUNNING", timeout=60,
                   what="the installed agent's record of the running domain in `state`")
        row = listed()[uuid]
        assert row["host"] == "wheel-host" and row["active"] is True and row["persistent"] is True
        # Every thread the agent started, librdkafka's and libvirt's too, runs at the default --nice
        # (or at this test's own niceness, if that is lower still: the agent never raises it).
        default_nice = next(o.default for o in run.OPTIONS if o.name == "nice")
        expected = max(default_nice, os.getpriority(os.PRIO_PROCESS, 0))
        assert default_nice > 0
        threads = thread_niceness(agent.pid)
        assert len(threads) > 5 and set(threads.values()) == {expected}, threads
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(30) == 0, (tmp_path / "agent.log").read_text()
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()
        log.close()
        if dom is not None:
            if dom.isActive():
                dom.destroy()
            dom.undefine()
