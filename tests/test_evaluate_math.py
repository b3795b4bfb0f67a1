"""Win rates, their intervals, per-category rates and small aggregates (evaluation math)."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tpo.evaluate import (
    UNCATEGORIZED,
    category_win_rates,
    mean_or_none,
    parse_failure_rate,
    win_rate,
)

outcomes_st = st.lists(st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0]), min_size=1, max_size=400)


def test_win_rate_counts_and_tie_half():
    wr = win_rate([1.0, 1.0, 0.5, 0.0])
    assert (wr.wins, wr.ties, wr.losses, wr.n) == (2, 1, 1, 4)
    assert wr.rate == pytest.approx(0.625)


def test_win_rate_averaged_orders():
    # A judge that rates both orders averages them: win + tie = 0.75, tie + loss = 0.25.
    wr = win_rate([0.75, 0.25, 0.5, 1.0])
    assert wr.rate == pytest.approx(0.625)
    assert (wr.wins, wr.ties, wr.losses) == (2, 1, 1)


def test_win_rate_wilson_known_value():
    # Wilson 95% for 50 wins of 100: 0.5 +- 0.0962 (textbook value 0.4038..0.5962).
    wr = win_rate([1.0] * 50 + [0.0] * 50)
    assert wr.low == pytest.approx(0.4038, abs=1e-4)
    assert wr.high == pytest.approx(0.5962, abs=1e-4)


def test_win_rate_extremes_stay_in_unit_interval():
    allwin = win_rate([1.0] * 20)
    assert allwin.rate == 1.0 and allwin.high == pytest.approx(1.0) and 0.8 < allwin.low < 1.0
    alllose = win_rate([0.0] * 20)
    assert alllose.low == pytest.approx(0.0) and 0.0 < alllose.high < 0.2


def test_win_rate_wider_at_higher_confidence():
    o = [1.0] * 30 + [0.5] * 10 + [0.0] * 20
    a, b = win_rate(o, 0.8), win_rate(o, 0.99)
    assert b.low < a.low < a.rate < a.high < b.high


def test_win_rate_bad_input():
    with pytest.raises(ValueError, match="n=0"):
        win_rate([])
    with pytest.raises(ValueError, match=r"outcome 1 is 1\.5; expected a number in \[0, 1\]"):
        win_rate([1.0, 1.5])
    with pytest.raises(ValueError, match="outcome 0 is None"):
        win_rate([None])
    with pytest.raises(ValueError, match="outcome 0 is nan"):
        win_rate([float("nan")])
    with pytest.raises(ValueError, match="confidence"):
        win_rate([1.0], confidence=1.0)


@given(outcomes_st)
def test_win_rate_interval_contains_rate(o):
    wr = win_rate(o)
    assert 0.0 <= wr.low <= wr.rate <= wr.high <= 1.0
    assert wr.wins + wr.ties + wr.losses == wr.n == len(o)
    assert wr.rate == pytest.approx(sum(o) / len(o))
    if set(o) <= {0.0, 0.5, 1.0}:
        assert wr.rate == pytest.approx((wr.wins + wr.ties / 2) / wr.n)


def test_win_rate_interval_covers_at_nominal_rate():
    # Coverage check by simulation: the interval is conservative with ties, so it should
    # cover a true mean of 0.6 at least ~95% of the time with n=100.
    rng = random.Random(0)
    covered = 0
    trials = 400
    for _ in range(trials):
        o = [rng.choices([1.0, 0.5, 0.0], weights=[0.5, 0.2, 0.3])[0] for _ in range(100)]
        wr = win_rate(o)
        covered += wr.low <= 0.6 <= wr.high
    assert covered / trials >= 0.93


def test_mean_or_none():
    assert mean_or_none([]) is None
    assert mean_or_none([None, None]) is None
    assert mean_or_none([1, None, 2]) == pytest.approx(1.5)
    assert mean_or_none(x for x in [3.0]) == 3.0


def test_parse_failure_rate():
    assert parse_failure_rate([True, False, False, True]) == 0.5
    assert parse_failure_rate([True]) == 0.0
    assert parse_failure_rate([]) == 0.0


def test_category_win_rates():
    o = [1.0] * 20 + [0.0] * 5 + [0.5] * 19
    c = ["math"] * 25 + ["poetry"] * 19
    math_, poetry = category_win_rates(o, c)
    assert (math_.category, math_.n) == ("math", 25)
    assert math_.win_rate == pytest.approx(0.8)
    assert math_.win_rate_low < 0.8 < math_.win_rate_high
    assert math_.note is None
    assert (poetry.category, poetry.n, poetry.win_rate) == ("poetry", 19, None)
    # the default threshold is 20 prompts: 19 says so instead of printing a bare 0.5
    assert poetry.win_rate_low is None and poetry.note == "too few prompts (n=19)"
    assert category_win_rates(o, c, min_n=19)[1].win_rate == pytest.approx(0.5)


def test_category_win_rates_uncategorized_and_none():
    assert category_win_rates([1.0, 0.0], [None, None]) == []
    rows = category_win_rates([1.0, 0.0, 1.0], ["b", None, "a"], min_n=1)
    assert [r.category for r in rows] == ["a", "b", UNCATEGORIZED]
    assert [r.win_rate for r in rows] == [1.0, 1.0, 0.0]
    with pytest.raises(ValueError, match="categories"):
        category_win_rates([1.0], ["a", "b"])


@given(outcomes_st, st.data())
def test_category_counts_add_up(o, data):
    cats = data.draw(st.lists(st.sampled_from(["x", "y", None]), min_size=len(o), max_size=len(o)))
    rows = category_win_rates(o, cats, min_n=5)
    if all(c is None for c in cats):
        assert rows == []
        return
    assert sum(r.n for r in rows) == len(o)
    for r in rows:
        assert (r.win_rate is None) == (r.n < 5)
        if r.win_rate is not None:
            assert not math.isnan(r.win_rate)
