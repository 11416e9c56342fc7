from bridge.core.inventory import ResyncTracker
from bridge.records import InventoryEntry


def test_complete_only_after_every_listed_domain_is_acked_or_dropped():
    t = ResyncTracker("r", listed_at=100, uuids=["a", "b", "c"])
    t.assigned("a", 101)
    t.assigned("b", 102)
    t.acked("a")
    assert not t.complete
    t.dropped("c")
    t.acked("b")
    assert t.complete
    assert t.inventory() == (InventoryEntry("a", 101), InventoryEntry("b", 102))


def test_ack_before_assignment_and_unknown_uuids_are_ignored():
    t = ResyncTracker("r", 1, ["a"])
    t.acked("a")
    t.assigned("zzz", 5)
    assert not t.complete and t.outstanding == 1
