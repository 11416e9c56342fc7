"""The snapshot reader's share of recent reads that found their domain gone, hammered."""

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from bridge.core.gone_share import GoneShare

GROUPS = st.lists(st.integers(1, 40).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n))), max_size=30)


def fed(groups: list[tuple[int, int]]) -> GoneShare:
    share = GoneShare()
    for gone, reads in groups:
        share.add(gone, reads)
    return share


@given(GROUPS, st.lists(st.integers(1, 40), min_size=1, max_size=5))
@example([(11, 11)], [3])  # once lowered the share by float rounding: 0.9999999999999999 -> ...98
def test_reads_that_all_found_their_domain_gone_make_it_high_after_any_history_of_ten_reads(history, sizes):
    share = fed(history)
    for n in sizes:
        share.add(n, n)
    if sum(sizes) >= 10:
        assert share.high
    assert share.share >= fed(history).share


@given(GROUPS, st.lists(st.integers(1, 40), min_size=1, max_size=5))
def test_seven_reads_that_found_their_domain_are_enough_to_make_it_low_after_any_history(history, sizes):
    share = fed(history)
    for n in sizes:
        share.add(0, n)
    if sum(sizes) >= 7:  # the history weighs at most 0.9 ** 7 < 0.5 then
        assert not share.high
    assert share.share <= fed(history).share


@given(GROUPS)
def test_the_share_is_a_fraction_and_a_group_weighs_as_its_reads_in_a_row(groups):
    share = fed(groups)
    assert 0.0 <= share.share <= 1.0
    one, many = GoneShare(), GoneShare()
    one.add(0, 1)
    for _ in range(3):
        one.add(1, 1)
    many.add(0, 1)
    many.add(3, 3)
    assert one.share == pytest.approx(many.share)


def test_one_lone_gone_read_after_found_ones_is_not_a_churn():
    share = GoneShare()
    for _ in range(10):
        share.add(0, 1)
    share.add(1, 1)
    assert not share.high
    assert GoneShare().share == 0.0 and not GoneShare().high


def test_nonsense_is_refused():
    with pytest.raises(ValueError, match="between 0 and reads"):
        GoneShare().add(3, 2)
    with pytest.raises(ValueError, match="between 0 and 1"):
        GoneShare(decay=1.0)
