"""slot_builder: the reader's fast constructor builds exactly what the dataclass's __init__ builds."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.records import AgentInfo, DomainEvent, DomainRecord, RecordKind
from bridge.slot_builder import slot_builder

AGENT = AgentInfo("i", "0.1.0", "9.0.0")
opt_text = st.none() | st.text(max_size=8)


@given(uuid=st.text(max_size=8), version=st.integers(), kind=st.sampled_from(RecordKind), state=opt_text,
       active=st.booleans(), xml=opt_text, events=st.lists(st.builds(DomainEvent, st.text(max_size=4), st.integers()),
                                                           max_size=2).map(tuple))
def test_a_built_record_equals_the_constructed_one_field_for_field(uuid, version, kind, state, active, xml, events):
    fields = (uuid, "vm", "h", version, kind, AGENT, 7, events, 0, state, None, active, False, xml, None)
    built, made = slot_builder(DomainRecord)(*fields), DomainRecord(*fields)
    assert built == made
    assert dataclasses.astuple(built) == dataclasses.astuple(made)


def test_what_it_builds_stays_frozen_and_every_field_is_required():
    event = slot_builder(DomainEvent)("LIFECYCLE", 7, "STARTED", "BOOTED", {})
    assert event == DomainEvent("LIFECYCLE", 7, "STARTED", "BOOTED", {})
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.id = "REBOOT"  # type: ignore[misc]
    with pytest.raises(TypeError):
        slot_builder(DomainEvent)("LIFECYCLE", 7, "STARTED", "BOOTED")  # data left out, default or not


def test_it_refuses_classes_whose_init_does_more_than_fill_slots():
    @dataclasses.dataclass(frozen=True)
    class NoSlots:
        a: int

    @dataclasses.dataclass(frozen=True, slots=True)
    class Checked:
        a: int

        def __post_init__(self) -> None:
            if self.a < 0:
                raise ValueError("negative")

    for cls in (NoSlots, Checked):
        with pytest.raises(TypeError):
            slot_builder(cls)
