"""The CloudEvents ``ce_time`` attribute against Python's own datetime, the other implementation.

(The integration test reads the agent's messages with the CloudEvents SDK.)
"""

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.serde.cloud_events import _rfc3339

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
FIRST = (datetime(1000, 1, 1, tzinfo=UTC) - EPOCH) // timedelta(microseconds=1)  # 4-digit years
LAST = (datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC) - EPOCH) // timedelta(microseconds=1)


NOW_ISH = st.integers(1_700_000_000 * 10**6, 1_900_000_000 * 10**6)


@given(st.integers(FIRST, LAST) | st.integers(-10**7, 10**7) | NOW_ISH)
def test_ce_time_is_the_exact_utc_instant_in_rfc_3339(micros):
    text = _rfc3339(micros)
    assert text.endswith("Z") and len(text) == len("2026-12-07T14:00:00.123456Z")
    assert datetime.fromisoformat(text) == EPOCH + timedelta(microseconds=micros)


@pytest.mark.parametrize("micros", [LAST + 1, -(10**20)])
def test_a_time_past_the_years_it_can_write_is_an_overflow_error(micros):
    with pytest.raises(OverflowError, match="outside the years"):
        _rfc3339(micros)
