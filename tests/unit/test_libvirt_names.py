import libvirt
import pytest

from bridge.agent import libvirt_names as names
from bridge.agent.event_capture import EVENT_ARGS, event_data, supported_event_ids


def _const(name):
    return getattr(libvirt, name, None)


def test_state_and_reason_tables_match_the_binding():
    checked = 0
    for value, state in enumerate(names.STATES):
        assert _const(f"VIR_DOMAIN_{state}") == value
        for reason_value, reason in enumerate(names.REASONS[state]):
            const = _const(f"VIR_DOMAIN_{state}_{reason}")
            if const is not None:  # newer libvirt values may be missing from this binding
                assert const == reason_value, (state, reason)
                checked += 1
    assert checked > 40


def test_lifecycle_tables_match_the_binding():
    for value, type_name in enumerate(names.LIFECYCLE_TYPES):
        assert _const(f"VIR_DOMAIN_EVENT_{type_name}") == value
        for detail_value, detail in enumerate(names.LIFECYCLE_DETAILS[type_name]):
            const = _const(f"VIR_DOMAIN_EVENT_{type_name}_{detail}")
            if const is not None:
                assert const == detail_value, (type_name, detail)
    assert names.lifecycle_names(2, 0) == ("STARTED", "BOOTED")
    assert names.lifecycle_names(99, 1) == ("UNKNOWN_99", "UNKNOWN_1")
    assert names.reason_name(1, 99) == "UNKNOWN_99"


def test_every_event_id_of_the_binding_has_named_arguments():
    ids = supported_event_ids()
    assert "LIFECYCLE" in ids and "REBOOT" in ids and "DEVICE_ADDED" in ids
    assert set(ids) <= set(EVENT_ARGS), set(ids) - set(EVENT_ARGS)


@pytest.mark.parametrize(
    ("event_id", "args", "expected"),
    [
        ("DEVICE_ADDED", ("net0",), {"dev_alias": "net0"}),
        ("JOB_COMPLETED", ({"time_elapsed": 5, "type": 3},), {"time_elapsed": "5", "type": "3"}),
        ("GRAPHICS", (0, {"node": "a"}, {}, "vnc", []), {"phase": "0", "local": '{"node": "a"}',
                                                         "remote": "{}", "auth_scheme": "vnc", "subject": "[]"}),
        ("FUTURE_EVENT", (1, "x"), {"arg0": "1", "arg1": "x"}),
    ],
)
def test_event_data_names_every_argument(event_id, args, expected):
    assert event_data(event_id, args) == expected
