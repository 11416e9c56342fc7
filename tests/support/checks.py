"""Assertions shared by the agent's integration tests."""

from __future__ import annotations

from collections import defaultdict

import libvirt

from bridge.agent.libvirt_names import reason_name, state_name
from bridge.records import DomainRecord, RecordKind
from bridge.serde import RecordCodec
from tests.support.agent_proc import wait_for
from tests.support.java_partitioner import java_partition
from tests.support.recorder import EventRecorder
from tests.support.topics import Raw, read_all

Ev = tuple[str, str | None, str | None]


def decode_log(raws: list[Raw]) -> list[tuple[Raw, DomainRecord | None]]:
    """Each message with its decoded record (None for a tombstone)."""
    codec = RecordCodec()
    return [(r, None if r.value is None else codec.decode_domain(r.value, r.key).record) for r in raws]


def by_uuid(log: list[tuple[Raw, DomainRecord | None]]) -> dict[str, list[DomainRecord]]:
    out: dict[str, list[DomainRecord]] = defaultdict(list)
    for _raw, rec in log:
        if rec is not None:
            out[rec.uuid].append(rec)
    return out


def published_events(records: list[DomainRecord]) -> list[Ev]:
    """The events of a domain's records, flattened in version order."""
    return [(e.id, e.type, e.detail) for r in sorted(records, key=lambda r: r.version) for e in r.events]


def wait_all_published(bootstrap: str, topic: str, recorder: EventRecorder, uuids: set[str],
                       timeout: float = 60.0) -> list[tuple[Raw, DomainRecord | None]]:
    """Wait until, for every UUID, the published events equal libvirt's own stream; return the log."""
    state: dict[str, list[tuple[Raw, DomainRecord | None]]] = {}

    def caught_up() -> bool:
        log = decode_log(read_all(bootstrap, topic))
        state["log"] = log
        per = by_uuid(log)
        return all(published_events(per.get(u, [])) == recorder.events(u) for u in uuids)

    try:
        wait_for(caught_up, timeout, "every recorded event to be published", interval=0.3)
    except TimeoutError:
        per = by_uuid(state.get("log", []))
        diff = {u: (recorder.events(u), published_events(per.get(u, []))) for u in uuids
                if published_events(per.get(u, [])) != recorder.events(u)}
        raise AssertionError(f"recorded vs published events differ for {len(diff)} domains: "
                             f"{list(diff.items())[:3]}") from None
    return state["log"]


def assert_versions_increase_per_key(log: list[tuple[Raw, DomainRecord | None]]) -> None:
    """Within each partition, every key's records appear in strictly increasing version order."""
    last: dict[tuple[int, str], int] = {}
    for raw, rec in log:
        if rec is None:
            continue
        k = (raw.partition, rec.uuid)
        assert rec.version > last.get(k, 0), f"version went down/repeated for {rec.uuid} at offset {raw.offset}"
        last[k] = rec.version


def assert_java_partitioning(log: list[tuple[Raw, DomainRecord | None]], partitions: int) -> None:
    """Every message sits where a Java producer would put its key (DESIGN: murmur2 placement)."""
    for raw, _rec in log:
        assert raw.key is not None
        assert raw.partition == java_partition(raw.key, partitions), f"{raw.key!r} in partition {raw.partition}"


def assert_latest_matches_libvirt(conn: libvirt.virConnect, log: list[tuple[Raw, DomainRecord | None]],
                                  uuids: set[str]) -> None:
    """The last record per key says what libvirt says now; gone domains end DELETED + tombstone."""
    last_msg: dict[str, tuple[Raw, DomainRecord | None]] = {}
    last_rec: dict[str, DomainRecord] = {}
    for raw, rec in log:
        key = raw.key.decode() if raw.key else ""
        last_msg[key] = (raw, rec)
        if rec is not None:
            last_rec[key] = rec
    for uuid in uuids:
        try:
            dom = conn.lookupByUUIDString(uuid)
        except libvirt.libvirtError:
            dom = None
        rec = last_rec.get(uuid)
        assert rec is not None, f"no record for {uuid}"
        if dom is None:
            assert rec.kind is RecordKind.DELETED, f"{uuid} is gone but its last record is {rec.kind}"
            assert last_msg[uuid][1] is None, f"{uuid}: no tombstone after DELETED"
            continue
        state, reason = dom.state()
        assert rec.kind is not RecordKind.DELETED, f"{uuid} exists but its last record is DELETED"
        assert (rec.state, rec.reason) == (state_name(state), reason_name(state, reason)), uuid
        assert rec.active == bool(dom.isActive()) and rec.persistent == bool(dom.isPersistent()), uuid
        assert rec.name == dom.name()
        assert rec.xml == dom.XMLDesc(0), f"{uuid}: XML differs"
