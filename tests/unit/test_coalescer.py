from hypothesis import given
from hypothesis import strategies as st

from bridge.core.coalescer import Coalescer
from bridge.records import DomainEvent


def ev(n, id_="LIFECYCLE"):
    return DomainEvent(id_, n, "STARTED" if id_ == "LIFECYCLE" else None, None, {"n": str(n)})


def test_one_batch_in_flight_per_domain_and_coalescing():
    c = Coalescer()
    c.add("a", ev(1))
    [b1] = c.take(10)
    assert [e.received_at for e in b1.events] == [1]
    c.add("a", ev(2))
    c.add("a", ev(3))
    assert c.take(10) == []  # a's record is in flight
    c.done("a")
    [b2] = c.take(10)
    assert [e.received_at for e in b2.events] == [2, 3]


def test_cap_elides_oldest_non_lifecycle_first():
    c = Coalescer(max_events_per_domain=3)
    c.add("a", ev(1))
    c.add("a", ev(2, "REBOOT"))
    c.add("a", ev(3))
    c.add("a", ev(4, "REBOOT"))
    [b] = c.take(1)
    assert [e.received_at for e in b.events] == [1, 3, 4]
    assert b.elided == 1
    assert c.elided_total == 1


def test_requeue_puts_events_back_first():
    c = Coalescer()
    c.add("a", ev(1), "vm")
    [b] = c.take(1)
    c.add("a", ev(2))
    c.requeue(b)
    [again] = c.take(1)
    assert [e.received_at for e in again.events] == [1, 2]
    assert again.name == "vm"


def test_take_more_grows_the_in_flight_batch():
    c = Coalescer()
    c.add("a", ev(1))
    c.take(1)
    assert c.take_more("a") is None
    c.add("a", ev(2))
    more = c.take_more("a")
    assert more is not None and [e.received_at for e in more.events] == [2]
    assert not c.has_pending("a")


def test_resync_request_without_events():
    c = Coalescer()
    c.request_resync("a", "r1", now=5)
    [b] = c.take(1)
    assert b.events == () and b.resync_id == "r1" and b.queued_at == 5


ops = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.sampled_from("abcd")),
        st.tuples(st.just("take"), st.integers(1, 3)),
        st.tuples(st.just("done"), st.sampled_from("abcd")),
    ),
    max_size=300,
)


@given(ops, st.integers(1, 5))
def test_every_event_delivered_once_in_order_and_memory_bounded(script, cap):
    c = Coalescer(max_events_per_domain=cap)
    sent: dict[str, list[int]] = {}
    got: dict[str, list[int]] = {}
    in_flight: set[str] = set()
    elided = 0
    n = 0
    for op, arg in script:
        if op == "add":
            n += 1
            sent.setdefault(arg, []).append(n)
            c.add(arg, ev(n, "REBOOT"))
        elif op == "take":
            for b in c.take(arg):
                assert b.uuid not in in_flight, "two batches of one domain in flight"
                in_flight.add(b.uuid)
                got.setdefault(b.uuid, []).extend(e.received_at for e in b.events)
                elided += b.elided
                assert len(b.events) <= cap
        elif arg in in_flight:
            in_flight.discard(arg)
            c.done(arg)
    for u in list(in_flight):
        c.done(u)
    for b in c.take(100):
        got.setdefault(b.uuid, []).extend(e.received_at for e in b.events)
        elided += b.elided
    for u, events in got.items():
        assert events == sorted(events)
        assert set(events) <= set(sent[u])
    assert sum(len(v) for v in got.values()) + elided == n
