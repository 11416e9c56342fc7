"""Positions, change queues and the change history of the consumer library."""

from __future__ import annotations

import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.consumer import Change, ChangeCause, ChangeType, Offset, Position, PositionExpired
from bridge.consumer.changes import ChangeQueue
from bridge.consumer.history import ChangeHistory
from bridge.records import AgentInfo, DomainRecord, RecordKind

AGENT = AgentInfo("a", "0.1.0", "10.0.0")
U1, U2 = "00000000-0000-4000-8000-000000000001", "00000000-0000-4000-8000-000000000002"


def rec(uuid: str, version: int) -> DomainRecord:
    return DomainRecord(uuid, "vm", "hv1", version, RecordKind.EVENT, AGENT, version, state="RUNNING")


def change(kind: ChangeType, uuid: str, old: int | None, new: int | None, offset: int | None = None) -> Change:
    return Change(kind, uuid, None if old is None else rec(uuid, old), None if new is None else rec(uuid, new),
                  ChangeCause.RECORD, None if offset is None else Offset("t", 0, offset))


def test_position_text_round_trip_and_coverage():
    p = Position({("libvirt.hosts", 0): 7, ("libvirt.domains", 1): 17, ("libvirt.domains", 0): 42})
    assert p.encode() == "libvirt.domains:0:42,libvirt.domains:1:17,libvirt.hosts:0:7"
    assert Position.decode(p.encode()) == p
    assert hash(Position.decode(p.encode())) == hash(p)
    assert p.covers(Offset("libvirt.domains", 0, 41)) and not p.covers(Offset("libvirt.domains", 0, 42))
    assert not p.covers(Offset("other", 0, 0))
    assert p.advanced({("libvirt.hosts", 0): 3, ("libvirt.hosts", 1): 2}).encode() == (
        "libvirt.domains:0:42,libvirt.domains:1:17,libvirt.hosts:0:7,libvirt.hosts:1:2")
    assert Position.decode("") == Position()
    for bad in ("x", "t:0", "t:a:1", "t:0:-1"):
        with pytest.raises(ValueError):
            Position.decode(bad)


def test_queue_merges_changes_of_one_domain_while_the_reader_lags():
    q = ChangeQueue()
    q.put([change(ChangeType.ADDED, U1, None, 1), change(ChangeType.ADDED, U2, None, 1)])
    q.put([change(ChangeType.UPDATED, U1, 1, 2), change(ChangeType.UPDATED, U1, 2, 3)])
    first = q.get(0)
    assert first is not None and first.uuid == U1  # keeps its place in line
    assert (first.type, first.old, first.new) == (ChangeType.ADDED, None, rec(U1, 3))
    q.put([change(ChangeType.DELETED, U2, 1, None)])  # added then deleted before it was read
    assert q.get(0) is None
    q.put([change(ChangeType.UPDATED, U1, 3, 4), change(ChangeType.DELETED, U1, 4, None)])
    gone = q.get(0)
    assert gone is not None and (gone.type, gone.old) == (ChangeType.DELETED, rec(U1, 3))
    q.put([change(ChangeType.DELETED, U2, 1, None), change(ChangeType.ADDED, U2, None, 5)])
    back = q.get(0)
    assert back is not None and (back.type, back.old, back.new) == (ChangeType.UPDATED, rec(U2, 1), rec(U2, 5))


def test_queue_drops_what_its_start_position_covers_and_wakes_on_close():
    q = ChangeQueue(after=Position({("t", 0): 10}))
    q.put([change(ChangeType.ADDED, U1, None, 1, offset=9), change(ChangeType.ADDED, U2, None, 1, offset=10)])
    got = q.get(0)
    assert got is not None and got.uuid == U2 and q.get(0) is None
    result: list[Change | None] = []
    reader = threading.Thread(target=lambda: result.append(q.get(None)))
    reader.start()
    q.close()
    reader.join(10)
    assert result == [None] and q.closed
    q.put([change(ChangeType.ADDED, U1, None, 1)])
    assert len(q) == 0


def test_history_replays_after_a_position_until_it_has_dropped_what_that_needs():
    h = ChangeHistory(capacity=2)
    h.extend([change(ChangeType.ADDED, U1, None, 1, offset=0)], Position({("t", 0): 1}))
    h.extend([change(ChangeType.ADDED, U2, None, 1, offset=1)], Position({("t", 0): 2}))
    assert [c.source.offset for c in h.since(Position()) if c.source] == [0, 1]
    assert [c.source.offset for c in h.since(Position({("t", 0): 1})) if c.source] == [1]
    h.extend([change(ChangeType.UPDATED, U1, 1, 2, offset=2), change(ChangeType.UPDATED, U2, 1, 2, offset=3)],
             Position({("t", 0): 4}))
    with pytest.raises(PositionExpired):
        h.since(Position({("t", 0): 1}))  # offset 1's change is gone
    assert [c.source.offset for c in h.since(Position({("t", 0): 2})) if c.source] == [2, 3]
    h.extend([change(ChangeType.DELETED, U1, 2, None, offset=4)], Position({("t", 0): 5}))
    # Offset 2's change is gone, so a position inside its batch is expired though offset 3's is held.
    with pytest.raises(PositionExpired):
        h.since(Position({("t", 0): 3}))
    assert [c.source.offset for c in h.since(Position({("t", 0): 4})) if c.source] == [4]
    assert h.since(Position({("t", 0): 5})) == []


@settings(max_examples=300, deadline=None)
@given(capacity=st.integers(0, 6),
       batches=st.lists(st.lists(st.tuples(st.integers(0, 2), st.integers(-3, 2)), max_size=5), max_size=8),
       probe=st.lists(st.integers(0, 30), min_size=3, max_size=3))
def test_history_since_never_misses_a_dropped_change_and_is_exact_between_batches(capacity, batches, probe):
    # Each message's changes, mostly in its partition's offset order (steps 0-2 ahead, 0 = the same
    # message), sometimes replayed from lower offsets; the model keeps every change, the batch it
    # came in and each batch's end (the reader's position after it, which never moves back).
    h = ChangeHistory(capacity)
    every: list[tuple[Change, int]] = []
    ends: list[Position] = []
    offsets, frontier = [0, 0, 0], {("t", p): 0 for p in range(3)}
    in_order = True  # every batch's offsets above those of the batches before it, in each partition
    for i, batch in enumerate(batches):
        made = []
        before = dict(frontier)
        for partition, step in batch:
            offsets[partition] = max(0, offsets[partition] + step)
            in_order &= offsets[partition] >= before[("t", partition)]
            made.append(Change(ChangeType.ADDED, U1, None, rec(U1, 1), ChangeCause.RECORD,
                               Offset("t", partition, offsets[partition])))
            frontier[("t", partition)] = max(frontier[("t", partition)], offsets[partition] + 1)
        ends.append(Position(frontier))
        h.extend(made, ends[-1])
        every.extend((c, i) for c in made)
    kept = every[len(every) - min(capacity, len(every)):]
    dropped = every[:len(every) - len(kept)]
    newest_losing = max((i for _, i in dropped), default=None)

    def check(position: Position, exact: bool) -> None:
        missed = [c for c, _ in dropped if c.source is not None and not position.covers(c.source)]
        expired = newest_losing is not None and any(
            position.next_offset(t, p) < end for (t, p), end in ends[newest_losing].items())
        assert expired or not missed  # a change it needs is never silently left out
        if exact:
            assert expired == bool(missed)
        if expired:
            with pytest.raises(PositionExpired):
                h.since(position)
        else:
            assert h.since(position) == [c for c, _ in kept if c.source is not None and not position.covers(c.source)]

    check(Position({("t", p): probe[p] for p in range(3)}), exact=False)
    for end in [Position(), *ends]:  # the positions a view hands out: between its batches
        check(end, exact=in_order)
    assert len(h) == len(kept)
