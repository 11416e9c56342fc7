"""Golden vectors from Apache Avro's own Java library (issue 7, outside oracles).

The Java program (tests/java/oracle, built by deploy/dev/bootstrap.sh) is an independent oracle on
purpose: it parses the ``.avsc`` files as they are, with ``new Schema.Parser()`` each, and computes the
fingerprint (``SchemaNormalization.parsingFingerprint("CRC-64-AVRO", s)``) and the single-object
encoding (``BinaryMessageEncoder``) with Avro's reference implementation, so a mistake shared by the
bridge's Python serde and a Python check (such as the fingerprint's byte order) cannot hide.

fastavro only prepares the input here: it writes each datum as Avro JSON, which Java reads back with
``JsonDecoder``. The bytes compared are the bridge's own: ``RecordCodec.encode_domain`` (the agent's
hand-written DomainRecord writer) and ``bridge.serde.single_object`` for host records. Avro leaves
the order of map entries to the writer (Java's maps are hash maps), so data with a map of several
entries are compared the other way round: Java's ``BinaryMessageDecoder`` reads the bridge's bytes
back to an equal datum. That check runs for every case.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import fastavro
import pytest
from fastavro.schema import to_parsing_canonical_form

from bridge.records import AgentInfo, DomainEvent, DomainRecord, HostRecord, HostStatus, InventoryEntry, RecordKind
from bridge.serde import RecordCodec
from bridge.serde.schema_files import domain_schema, host_schema
from bridge.serde.single_object import SingleObjectSerializer, schema_fingerprint
from tests.support.java import DOMAIN_AVSC, HOST_AVSC, oracle_jar, run_java

AGENT = AgentInfo(instance_id="5f0c7a52-6c36-4d36-9a0e-0123456789ab", software_version="0.2.0",
                  libvirt_version="9.0.0")
UUID = "0b6c2f1e-3c53-4a8f-9f5e-6d0c1b2a3f4e"
T0 = 1_764_000_000_123_456  # microseconds, 2025-11-24

XML = ("<domain type='test'>\n  <name>golden \u00fcn\u00efc\u00f8d\u00e9 \u2713</name>\n"
       f"  <uuid>{UUID}</uuid>\n  <description>\"q\" &amp; &lt;lt&gt; \U0001f600</description>\n</domain>\n")

DOMAINS = {
    # Every union on its non-null branch, filled maps, three array items, non-ASCII text.
    "event": DomainRecord(
        uuid=UUID, name="golden \u00fcn\u00efc\u00f8d\u00e9 \u2713", host="hv-017", version=T0 + 7,
        kind=RecordKind.EVENT, agent=AGENT, observed_at=T0 + 900,
        events=(
            DomainEvent(id="LIFECYCLE", received_at=T0, type="STARTED", detail="BOOTED"),
            DomainEvent(id="DEVICE_ADDED", received_at=T0 + 250, data={"dev_alias": "net0"}),
            DomainEvent(id="METADATA_CHANGE", received_at=T0 + 251, data={"caf\u00e9": "\u00e9t\u00e9 \u2713"}),
        ),
        events_elided=3, state="RUNNING", reason="BOOTED", active=True, persistent=True, xml=XML,
        resync_id="r-42",
    ),
    # A map of several entries: compared by Java decoding the bridge's bytes (see the docstring).
    "map-order": DomainRecord(
        uuid=UUID, name="m", host="hv-017", version=T0, kind=RecordKind.EVENT, agent=AGENT, observed_at=T0,
        events=(DomainEvent(id="TUNABLE", received_at=T0, data={
            "cputune.vcpupin0": "0-1", "cputune.emulatorpin": "1", "empty": "", "k\u00e9": "v"}),),
        state="RUNNING", reason="BOOTED", active=True, xml="<domain/>",
    ),
    # Every union null, empty arrays, and the other enum symbols.
    "deleted": DomainRecord(
        uuid=UUID, name="gone", host="hv-017", version=2**62 + 1, kind=RecordKind.DELETED, agent=AGENT,
        observed_at=0, events=(DomainEvent(id="LIFECYCLE", received_at=1, type="UNDEFINED", detail="REMOVED"),),
    ),
    "resync": DomainRecord(
        uuid=UUID, name="r", host="h", version=1, kind=RecordKind.RESYNC, agent=AGENT, observed_at=T0,
        state="SHUTOFF", reason="UNKNOWN", persistent=True, xml="<domain/>", resync_id="r-1",
    ),
}
HOSTS = {
    "inventory": HostRecord(
        host="hv-017", agent=AGENT, heartbeat_at=T0, status=HostStatus.STOPPING, resync_id="r-42",
        listed_at=T0 - 1, domains=(InventoryEntry(UUID, T0 + 7), InventoryEntry("a" * 8 + "-0000", 1)),
        heartbeat_interval_ms=1000,
    ),
    "first-heartbeat": HostRecord(host="h\u00f6st", agent=AGENT, heartbeat_at=T0),
}


@pytest.fixture(scope="module")
def java_golden(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """What the Java oracle says for every datum above, by case name (one JVM for all of them)."""
    jar = oracle_jar()
    tmp: Path = tmp_path_factory.mktemp("golden")
    cases = [(f"domain/{n}", DOMAIN_AVSC, domain_schema(), r.to_avro()) for n, r in DOMAINS.items()]
    cases += [(f"host/{n}", HOST_AVSC, host_schema(), r.to_avro()) for n, r in HOSTS.items()]
    args: list[str] = []
    for i, (name, avsc, schema, datum) in enumerate(cases):
        path = tmp / f"datum{i}.json"
        with path.open("w", encoding="utf-8") as fo:
            fastavro.json_writer(fo, schema, [datum])
        ours = tmp / f"datum{i}.bin"
        ours.write_bytes(_ours(name))
        args += [str(avsc), str(path), str(ours)]
    out = run_java(jar, ["golden", *args], timeout=60)
    assert out.returncode == 0, f"oracle golden failed ({out.returncode}):\n{out.stderr[-3000:]}"
    lines = [json.loads(line) for line in out.stdout.splitlines() if line.strip()]
    assert len(lines) == len(cases), out.stdout
    return {name: line for (name, *_rest), line in zip(cases, lines, strict=True)}


@pytest.mark.parametrize(("name", "schema"), [("domain_record", domain_schema), ("host_record", host_schema)])
def test_fingerprint_matches_avro_java(java_golden, name, schema):
    """The 8 bytes after ``C3 01`` are Java's ``parsingFingerprint("CRC-64-AVRO", s)``, in its byte order.

    Avro's Java library is the independent oracle on purpose: it is the reference the spec is read by.
    """
    java = next(v for v in java_golden.values() if Path(v["schema"]).stem == name)
    assert to_parsing_canonical_form(schema()) == java["canonical_form"], "parsing canonical forms differ"
    assert schema_fingerprint(schema()).hex() == java["fingerprint"]


CASES = [f"domain/{n}" for n in DOMAINS] + [f"host/{n}" for n in HOSTS]


def _ours(case: str) -> bytes:
    """The bytes the bridge writes for ``case``."""
    kind, name = case.split("/")
    if kind == "domain":
        return RecordCodec().encode_domain(DOMAINS[name])
    return SingleObjectSerializer(host_schema())(HOSTS[name].to_avro())


@pytest.mark.parametrize("case", CASES)
def test_avro_java_decodes_our_encoding_to_the_same_datum(java_golden, case):
    """Java's ``BinaryMessageDecoder``, knowing only the ``.avsc``, reads the bridge's bytes (independent oracle)."""
    java = java_golden[case]
    assert java["round_trip_equal"], "Java's decoder reads back what Java's encoder wrote"
    assert java["other_equal"], f"Java's BinaryMessageDecoder on the bridge's bytes: {java['other_error']}"


@pytest.mark.parametrize("case", [c for c in CASES if c != "domain/map-order"])
def test_single_object_encoding_matches_avro_java_byte_for_byte(java_golden, case):
    """The bridge's single-object bytes equal Java's ``BinaryMessageEncoder``'s (independent oracle)."""
    java = java_golden[case]
    ours = _ours(case).hex()
    assert ours[:4] == java["encoding"][:4] == "c301"
    assert ours[4:20] == java["encoding"][4:20] == java["fingerprint"], "fingerprint in the header"
    assert ours == java["encoding"]
