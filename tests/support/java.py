"""Running the Java oracles (tests/java/oracle) and the Kafka Streams example (examples/java/fleet-table).

Both are built by ``deploy/dev/bootstrap.sh`` (its ``java_tools`` step) into ``.cache/java/<name>/``:
``<name>.jar`` with its dependencies in ``lib/`` (named by the jar's manifest, so ``java -jar`` runs it).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from devenv._proc import REPO_ROOT

JAVA_BUILD_DIR = REPO_ROOT / ".cache" / "java"
SCHEMA_DIR = REPO_ROOT / "schemas"
DOMAIN_AVSC = SCHEMA_DIR / "domain_record.avsc"
HOST_AVSC = SCHEMA_DIR / "host_record.avsc"

# Short-lived JVMs: the C1 compiler alone starts faster, and the machine's cores are shared.
JVM_OPTS = ("-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC", "-Xmx256m")


def java_jar(name: str) -> Path:
    """``.cache/java/<name>/<name>.jar``, or fail the test saying how to build it."""
    path = JAVA_BUILD_DIR / name / f"{name}.jar"
    if not path.is_file() or not (path.parent / "lib").is_dir():
        pytest.fail(f"{path} (and its lib/) not found: the Java tools are built by deploy/dev/bootstrap.sh "
                    f"(run `make bootstrap`; Maven's log is .cache/mvn-java.log)", pytrace=False)
    return path


def oracle_jar() -> Path:
    return java_jar("oracle")


def fleet_table_jar() -> Path:
    return java_jar("fleet-table")


def run_java(jar: Path, args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    """Run ``java -jar jar args``; the JVM is killed if it outlives ``timeout`` seconds."""
    return subprocess.run(["java", *JVM_OPTS, "-jar", str(jar), *args], check=False, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)
