"""Benchmark 5: the cost of one record on the wire, ours beside bare fastavro.

One DomainRecord like the agent publishes (a ~1.6 KB domain XML, two events) is

- encoded with :meth:`RecordCodec.encode_domain` and decoded with :meth:`MessageDecoder.decode` (the one
  path every reader takes: header check, fingerprint, Avro, record validation, key check);
- written and read with bare ``fastavro.schemaless_writer``/``schemaless_reader`` on the same parsed
  schema: the floor for any Python implementation of the format.

Each figure is the best of several timed rounds (µs per record), so other work on the machine inflates
it as little as possible. No broker or libvirtd needed.

``python -m tests.bench.bench_codec``
"""

from __future__ import annotations

import io
import sys
import timeit
import uuid as uuid_mod
from collections.abc import Callable

import fastavro

from bridge.records import AgentInfo, DomainEvent, DomainRecord, RecordKind
from bridge.serde import MessageDecoder, RecordCodec, domain_schema
from tests.bench import BenchEnv, BenchResult, main_one, progress

NAME = "codec"
TITLE = "encode / decode one record"
NEEDS: tuple[str, ...] = ()

ROUNDS = 7
NUMBER = 2000


def sample_record() -> DomainRecord:
    """A record the size the agent publishes for a small test-driver or QEMU domain."""
    uuid = str(uuid_mod.uuid4())
    disks = "".join(f"<disk type='file' device='disk'><source file='/var/lib/libvirt/images/d{i}.qcow2'/>"
                    f"<target dev='vd{chr(97 + i)}' bus='virtio'/></disk>" for i in range(8))
    xml = (f"<domain type='kvm' id='7'><name>web-17</name><uuid>{uuid}</uuid><memory unit='KiB'>1048576</memory>"
           f"<vcpu placement='static'>2</vcpu><os><type arch='x86_64' machine='pc-q35-7.2'>hvm</type></os>"
           f"<devices>{disks}<interface type='network'><mac address='52:54:00:12:34:56'/>"
           f"<source network='default'/><model type='virtio'/></interface></devices></domain>")
    events = (DomainEvent("LIFECYCLE", 1_700_000_000_000_000, "STARTED", "BOOTED"),
              DomainEvent("LIFECYCLE", 1_700_000_000_000_500, "RESUMED", "UNPAUSED"))
    return DomainRecord(uuid, "web-17", "hv-017", 1_700_000_000_001_000, RecordKind.EVENT,
                        AgentInfo(uuid_mod.uuid4().hex, "0.2.0", "9.0.0"), 1_700_000_000_001_000, events,
                        state="RUNNING", reason="BOOTED", active=True, persistent=True, xml=xml)


def _best_us(stmt: Callable[[], object]) -> float:
    times = timeit.repeat(stmt, number=NUMBER, repeat=ROUNDS)
    return min(times) / NUMBER * 1e6


def run(env: BenchEnv) -> BenchResult:
    del env
    record = sample_record()
    codec = RecordCodec()
    decoder = MessageDecoder(codec, "libvirt.domains", "libvirt.hosts")
    data = codec.encode_domain(record)
    key = record.uuid.encode()
    assert decoder.decode("libvirt.domains", key, data).payload == record
    schema = domain_schema()
    avro = record.to_avro()
    body = data[10:]

    def bare_write() -> bytes:
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, schema, avro)
        return buf.getvalue()

    progress(f"{NAME}: {len(data):,}-byte record, best of {ROUNDS} x {NUMBER:,}")
    encode_us = _best_us(lambda: codec.encode_domain(record))
    decode_us = _best_us(lambda: decoder.decode("libvirt.domains", key, data))
    bare_encode_us = _best_us(bare_write)
    bare_decode_us = _best_us(lambda: fastavro.schemaless_reader(io.BytesIO(body), schema, None))

    result = BenchResult(NAME, TITLE, params={"record_bytes": len(data), "xml_bytes": len(record.xml or ""),
                                              "rounds": ROUNDS, "number": NUMBER})
    result.add("codec_encode_us", "encode one record (RecordCodec)", encode_us, "µs",
               "DomainRecord -> single-object bytes: to_avro() + header + fastavro write")
    result.add("codec_decode_us", "decode one record (MessageDecoder)", decode_us, "µs",
               "single-object bytes -> validated DomainRecord: the path every reader takes")
    result.add("codec_bare_encode_us", "bare fastavro write, same schema", bare_encode_us, "µs",
               "schemaless_writer of the dict alone: the floor for encoding")
    result.add("codec_bare_decode_us", "bare fastavro read, same schema", bare_decode_us, "µs",
               "schemaless_reader of the body alone: the floor for decoding")
    result.notes.append(f"decode costs {decode_us / bare_decode_us:.2f}x bare fastavro, encode "
                        f"{encode_us / bare_encode_us:.2f}x")
    return result


if __name__ == "__main__":
    sys.exit(main_one(sys.modules[__name__]))
