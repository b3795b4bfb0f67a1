"""Bradley-Terry/ELO, length control, pair selection and automatic rho (paper, section 2.3)."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from tpo.scoring import (
    Battle,
    Pair,
    bradley_terry,
    choose_rho,
    length_control,
    pair_length_gap,
    select_pair,
)

scores_st = st.lists(
    st.one_of(st.none(), st.floats(-1e3, 1e3, allow_nan=False)), min_size=1, max_size=10
)


def round_robin(strength: list[float], rng: random.Random) -> list[Battle]:
    """Both orders of every pair, outcomes drawn from a true Bradley-Terry model."""
    out = []
    for a in range(len(strength)):
        for b in range(len(strength)):
            if a != b:
                p = 1 / (1 + math.exp(strength[b] - strength[a]))
                out.append(Battle(a, b, 1.0 if rng.random() < p else 0.0))
    return out


# --------------------------------------------------------------------------- Bradley-Terry


def test_bt_known_two_player_value():
    # 3 wins of 4 and a prior of one tie against an average player: the MAP is finite and
    # below the unregularised MLE log(3) (about 191 ELO).
    r = bradley_terry(2, [Battle(0, 1, 1.0)] * 3 + [Battle(0, 1, 0.0)])
    assert r[0] == pytest.approx(-r[1])
    assert 100 < r[0] - r[1] < 400 / math.log(10) * math.log(3)


def test_bt_tie_is_half_a_win_and_both_orders_count():
    same = bradley_terry(2, [Battle(0, 1, 0.5), Battle(1, 0, 0.5)])
    assert same == pytest.approx([0.0, 0.0], abs=1e-9)
    halves = bradley_terry(2, [Battle(0, 1, 0.5)] * 4 + [Battle(1, 0, 0.0)] * 2)
    wins = bradley_terry(2, [Battle(0, 1, 1.0)] * 4 + [Battle(0, 1, 0.0)] * 2)
    # 0: 2 (ties) + 2 (wins in reversed order) of 6 games vs 4 of 6 games: the same record.
    assert halves == pytest.approx(wins, abs=1e-6)


def test_bt_undefeated_and_disconnected_stay_finite():
    r = bradley_terry(4, [Battle(0, 1, 1.0)] * 50 + [Battle(2, 3, 0.0)] * 50)
    assert all(math.isfinite(x) for x in r)
    assert r[0] > r[1] and r[3] > r[2]
    assert r[0] == pytest.approx(r[3], abs=1e-6)  # symmetric records, symmetric strengths


def test_bt_ignores_judge_errors_and_unplayed_players():
    r = bradley_terry(3, [Battle(0, 1, 1.0), Battle(1, 0, None), Battle(0, 1, None)])
    # The unplayed sample sits at the average; the one decided battle separates 0 and 1.
    assert r[2] == pytest.approx(0.0, abs=1e-6)
    assert r[0] > r[2] > r[1]
    assert r[0] == pytest.approx(-r[1])


def test_bt_recovers_true_order():
    rng = random.Random(0)
    truth = [0.0, 0.7, 1.4, 2.1]
    battles = [b for _ in range(30) for b in round_robin(truth, rng)]
    r = bradley_terry(4, battles)
    assert np.argsort(r).tolist() == [0, 1, 2, 3]
    # ELO scale: 400*log10 of the odds; 2.1 nats of true log-odds is 365 points.
    assert r[3] - r[0] == pytest.approx(400 * 2.1 / math.log(10), rel=0.2)


def test_bt_rejects_bad_battles():
    with pytest.raises(ValueError, match="distinct"):
        bradley_terry(2, [Battle(0, 0, 1.0)])
    with pytest.raises(ValueError, match=r"0\.\.1"):
        bradley_terry(2, [Battle(0, 2, 1.0)])
    with pytest.raises(ValueError, match="outcome"):
        bradley_terry(2, [Battle(0, 1, 2.0)])
    with pytest.raises(ValueError, match="prior"):
        bradley_terry(2, [], prior=0)
    assert bradley_terry(0, []) == []


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(2, 8),
    seed=st.integers(0, 10_000),
    top=st.integers(0, 7),
    reps=st.integers(1, 3),
)
def test_bt_strictly_dominant_sample_ranks_first(n, seed, top, reps):
    top %= n
    rng = random.Random(seed)
    battles = []
    for _ in range(reps):
        for a in range(n):
            for b in range(n):
                if a == b:
                    continue
                if top in (a, b):
                    outcome = 1.0 if a == top else 0.0
                else:
                    outcome = rng.choice([None, 0.0, 0.5, 1.0])
                battles.append(Battle(a, b, outcome))
    r = bradley_terry(n, battles)
    assert all(r[top] > r[k] for k in range(n) if k != top)
    assert sum(r) == pytest.approx(0.0, abs=1e-6)
    assert r == bradley_terry(n, battles)  # deterministic


# --------------------------------------------------------------------------- length control


def test_length_control_formula():
    scores, lens = [1.0, 2.0, None, 3.0], [10, 20, 999, 60]
    out = length_control(scores, lens, 0.5)
    s, ln = np.array([1.0, 2.0, 3.0]), np.array([10.0, 20.0, 60.0])
    want = (s - s.mean()) / s.std() - 0.5 * (ln - ln.mean()) / ln.std()
    assert out[2] is None
    assert [out[0], out[1], out[3]] == pytest.approx(want.tolist())


def test_length_control_zero_std():
    assert length_control([2.0, 2.0], [5, 9], 1.0) == pytest.approx([1.0, -1.0])
    assert length_control([1.0, 3.0], [7, 7], 1.0) == pytest.approx([-1.0, 1.0])
    assert length_control([4.0, None], [7, 1], 1.0) == [0.0, None]
    assert length_control([None], [1], 0.3) == [None]


def test_length_control_rejects_bad_input():
    with pytest.raises(ValueError, match="lengths"):
        length_control([1.0], [1, 2], 0.0)
    with pytest.raises(ValueError, match="rho"):
        length_control([1.0], [1], -0.1)


@given(scores_st, st.data())
def test_length_control_rho_zero_keeps_ranking(scores, data):
    lens = data.draw(st.lists(st.integers(0, 5000), min_size=len(scores), max_size=len(scores)))
    out = length_control(scores, lens, 0.0)
    idx = [i for i, s in enumerate(scores) if s is not None]
    assert all(out[i] is None for i in range(len(scores)) if i not in idx)
    for i in idx:
        for j in idx:
            if scores[i] < scores[j]:
                assert out[i] <= out[j]
            if scores[i] == scores[j]:
                assert out[i] == out[j]


@given(st.lists(st.floats(-10, 10), min_size=2, max_size=8), st.floats(0.01, 1.0))
def test_length_control_penalises_longer_at_equal_score(base, rho):
    # Two samples with the same score: after control the shorter one is strictly ahead
    # (whenever lengths vary at all).
    scores = [*base, 0.0, 0.0]
    lens = [100] * len(base) + [50, 500]
    out = length_control(scores, lens, rho)
    assert out[-2] > out[-1]


# --------------------------------------------------------------------------- pair selection


def test_select_pair_basic():
    assert select_pair([0.1, 0.9, 0.5], [True] * 3) == Pair(1, 0)


def test_select_pair_parse_failure_is_rejected():
    assert select_pair([0.1, 0.9, None, None], [True, True, False, False]) == Pair(1, 2)


def test_select_pair_ties_break_to_lowest_index():
    assert select_pair([1.0, 1.0, 0.0, 0.0], [True] * 4) == Pair(0, 2)


def test_select_pair_none_cases():
    assert select_pair([None, None], [False, False]) is None  # nothing valid to choose
    # A scored failure is never chosen; the unscored parsed sample is, against it.
    assert select_pair([None, 1.0], [True, False]) == Pair(0, 1)
    assert select_pair([0.3, 0.3, 0.3], [True] * 3) is None  # one distinct score
    assert select_pair([0.3], [True]) is None
    assert select_pair([0.3, None], [True, False]) == Pair(0, 1)  # failure gives a pair
    assert select_pair([0.3, None], [True, True]) is None  # judge error is not a failure


def test_select_pair_when_the_judge_decided_nothing():
    """No verdict: every sample scores None. A parsed sample still beats a failed one (the
    paper's rule); the old rule skipped prompts with two or more parsed samples."""
    assert select_pair([None, None, None], [True, True, False]) == Pair(0, 2)
    assert select_pair([None, None], [False, True]) == Pair(1, 0)
    assert select_pair([None, None], [True, True]) is None  # nothing known to prefer
    assert select_pair([None, None], [False, False]) is None


def test_select_pair_length_mismatch():
    with pytest.raises(ValueError):
        select_pair([1.0], [True, False])


@given(scores_st, st.data())
def test_select_pair_properties(scores, data):
    ok = data.draw(st.lists(st.booleans(), min_size=len(scores), max_size=len(scores)))
    pair = select_pair(scores, ok)
    if pair is None:
        return
    assert ok[pair.chosen], "a parse failure was chosen"
    assert pair.chosen != pair.rejected
    valid = [s for s, o in zip(scores, ok, strict=True) if o and s is not None]
    if not valid:  # the judge decided nothing: the first parsed sample vs the first failure
        assert (pair.chosen, pair.rejected) == (ok.index(True), ok.index(False))
        return
    assert scores[pair.chosen] == max(valid)
    if ok[pair.rejected]:
        assert all(ok), "a valid sample was rejected although a parse failure existed"
        assert len(set(valid)) >= 2, "pair built from a single distinct score"
        assert scores[pair.rejected] == min(valid) < scores[pair.chosen]


# --------------------------------------------------------------------------- automatic rho


def biased_groups(n: int, seed: int, bias: float, k: int = 8):
    """A judge that likes length: score = quality + bias * length (in hundreds of tokens)."""
    rng = random.Random(seed)
    groups = []
    for _ in range(n):
        lens = [rng.randint(50, 800) for _ in range(k)]
        scores = [rng.gauss(0, 1) + bias * ln / 100 for ln in lens]
        ok = [rng.random() > 0.05 for _ in range(k)]
        groups.append(([s if o else None for s, o in zip(scores, ok, strict=True)], lens, ok))
    return groups


def gap(groups, rho):
    c, r = pair_length_gap(groups, rho)
    return (c - r) / r


def test_pair_length_gap_matches_selection():
    groups = [([1.0, 2.0, 3.0], [10, 20, 30], [True] * 3), ([5.0, 1.0], [7, 9], [True, True])]
    assert pair_length_gap(groups, 0.0) == (pytest.approx((30 + 7) / 2), pytest.approx(19 / 2))
    assert all(math.isnan(x) for x in pair_length_gap([([1.0], [3], [True])], 0.0))


def test_choose_rho_zero_when_not_length_biased():
    groups = [([3.0, 2.0, 1.0], [10, 20, 30], [True] * 3)] * 4
    assert choose_rho(groups) == 0.0
    assert choose_rho([]) == 0.0


def test_choose_rho_removes_length_bias():
    groups = biased_groups(300, seed=1, bias=0.6)
    assert gap(groups, 0.0) > 0.3  # the judge's length bias shows in the pairs
    rho = choose_rho(groups)
    assert 0 < rho <= 1
    assert -0.05 <= gap(groups, rho) <= 0.0
    # smallest: a slightly smaller rho is still above the band
    assert gap(groups, rho - 1e-3) > 0.0 or rho < 1e-3


def test_choose_rho_unreachable_returns_best_reachable():
    # Score is exactly length: at rho < 1 the longest always wins, at rho = 1 all tie.
    groups = [([1.0, 2.0, 3.0], [10, 20, 30], [True] * 3)] * 3
    assert choose_rho(groups) == 0.0
    # A smaller rho_max cannot reach the band; the closest reachable rho is rho_max.
    g = biased_groups(200, seed=2, bias=3.0)
    best = choose_rho(g, rho_max=0.05)
    assert gap(g, best) > 0.0  # still above the band
    assert 0 < best <= 0.05
    assert gap(g, best) <= min(gap(g, r) for r in np.linspace(0, 0.05, 21)) + 1e-12


def test_choose_rho_rejects_empty_band():
    with pytest.raises(ValueError, match="band"):
        choose_rho([], band=(0.1, 0.0))


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), bias=st.floats(0.0, 2.0), n=st.integers(20, 50))
def test_choose_rho_lands_in_band_whenever_reachable(seed, bias, n):
    groups = biased_groups(n, seed, bias)
    band = (-0.05, 0.0)
    rho = choose_rho(groups, band=band)
    g = gap(groups, rho)
    if gap(groups, 0.0) <= band[1]:
        assert rho == 0.0
        return
    grid = [gap(groups, r) for r in np.linspace(0, 1, 101)]
    reachable = any(band[0] <= x <= band[1] for x in grid)
    assume(reachable)
    assert band[0] <= g <= band[1]


def test_non_finite_scores_are_judge_errors():
    assert length_control([1.0, math.nan, 3.0], [1, 2, 3], 0.0) == [-1.0, None, 1.0]
    assert select_pair([math.inf, 0.2, 0.1], [True] * 3) == Pair(1, 2)
    assert select_pair([math.nan, 0.2], [True, True]) is None


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.integers(1, 6).flatmap(
            lambda k: st.tuples(
                st.lists(st.one_of(st.none(), st.floats(-5, 5)), min_size=k, max_size=k),
                st.lists(st.integers(0, 300), min_size=k, max_size=k),
                st.lists(st.booleans(), min_size=k, max_size=k),
            )
        ),
        max_size=6,
    ),
    st.floats(0, 1),
)
def test_pair_length_gap_equals_length_control_then_select_pair(groups, rho):
    chosen, rejected = [], []
    for scores, lens, ok in groups:
        pair = select_pair(length_control(scores, lens, rho), ok)
        if pair:
            chosen.append(lens[pair.chosen])
            rejected.append(lens[pair.rejected])
    got = pair_length_gap(groups, rho)
    if not chosen:
        assert all(math.isnan(x) for x in got)
    else:
        assert got == (pytest.approx(np.mean(chosen)), pytest.approx(np.mean(rejected)))
