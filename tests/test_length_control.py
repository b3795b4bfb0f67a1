"""Length-controlled win rate (tpo.length_control): AlpacaEval 2's GLM without the difficulty term.

The judges here are simulated with a known length bias, so each test knows the answer the GLM
must recover: the candidate's preference at equal length.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tpo.evaluate import win_rate
from tpo.length_control import (
    NOTE_CONSTANT,
    NOTE_NO_SPREAD,
    PENALTY_C,
    lc_win_rate,
    length_difference,
    response_chars,
)


def _judge(rng: np.random.Generator, d: np.ndarray, quality: float, bias: float) -> list[float]:
    """A judge preferring the candidate with logit `quality + bias * tanh(d / sd)`."""
    sd = np.std(d, ddof=1)
    p = 1.0 / (1.0 + np.exp(-(quality + bias * np.tanh(d / sd))))
    return [float(v) for v in (rng.random(len(d)) < p)]


def test_winning_only_by_length_gives_lc_near_half():
    # The candidate is as good as the baseline (quality 0) but usually ~100 chars longer, and
    # the judge likes length: raw is high, LC must fall back to about 0.5.
    rng = np.random.default_rng(1)
    d = rng.normal(100.0, 100.0, 400)
    y = _judge(rng, d, quality=0.0, bias=3.0)
    lc = lc_win_rate(y, list(d))
    assert win_rate(y).rate > 0.65
    assert lc.low <= 0.5 <= lc.high
    assert abs(lc.rate - 0.5) < 0.08
    assert lc.length_weight is not None and lc.length_weight > 1.5  # the bias was found


def test_length_independent_outcomes_give_lc_equal_to_raw_within_interval():
    # Lengths vary, but the judge ignores them: LC estimates the same thing as raw.
    rng = np.random.default_rng(2)
    d = rng.normal(0.0, 150.0, 400)
    y = _judge(rng, d, quality=0.8, bias=0.0)  # P(win) = 0.69
    lc = lc_win_rate(y, list(d))
    raw = win_rate(y).rate
    assert lc.low <= raw <= lc.high
    assert abs(lc.rate - raw) < 0.03
    assert lc.high - lc.low < 0.15  # n=400: an interval of the raw rate's order


def test_identical_lengths_make_the_length_term_drop_out():
    y = [1.0, 0.0, 1.0, 0.5, 1.0, 0.0, 1.0, 1.0]
    lc = lc_win_rate(y, [0] * len(y))
    raw = win_rate(y)
    assert (lc.rate, lc.low, lc.high) == pytest.approx((raw.rate, raw.low, raw.high))
    assert lc.length_weight is None and lc.note == NOTE_NO_SPREAD


def test_constant_nonzero_difference_cannot_be_told_from_the_model_term():
    # Always 50 chars longer: length and model are the same column; LC = raw, said so.
    y = [1.0, 0.0, 1.0, 1.0, 0.0, 1.0]
    lc = lc_win_rate(y, [50] * len(y))
    assert lc.rate == pytest.approx(sum(y) / len(y))
    assert lc.note == NOTE_NO_SPREAD


def test_shorter_winner_keeps_its_win_and_gains_from_the_control():
    # The candidate is better (quality 1.5) yet usually shorter, and the judge likes length:
    # raw understates it; at equal length it wins more, never less.
    rng = np.random.default_rng(3)
    d = rng.normal(-100.0, 100.0, 400)
    y = _judge(rng, d, quality=1.5, bias=2.0)
    lc = lc_win_rate(y, list(d))
    raw = win_rate(y).rate
    assert raw > 0.5
    assert lc.low > 0.5
    assert lc.rate > raw + 0.05
    assert lc.rate == pytest.approx(1.0 / (1.0 + math.exp(-1.5)), abs=0.07)


def test_all_wins_is_lc_one_without_a_fit_and_the_raw_interval():
    # Every resample of 12 wins is 12 wins: a bootstrap band would be [1, 1], claiming
    # certainty from 12 prompts. LC is the raw rate here, so it takes the raw rate's interval.
    lc = lc_win_rate([1.0] * 12, list(range(12)))
    assert (lc.rate, lc.high) == (1.0, 1.0)
    assert lc.low == pytest.approx(win_rate([1.0] * 12).low) and lc.low < 0.8
    assert lc.note == NOTE_CONSTANT and lc.model_term is None


def test_all_ties_is_half():
    lc = lc_win_rate([0.5] * 9, [10, -5, 3, 0, 7, 1, -2, 4, 9])
    assert (lc.rate, lc.note) == (0.5, NOTE_CONSTANT)


@pytest.mark.parametrize("n", [1, 2, 3])
def test_tiny_n_gives_numbers_not_nan(n):
    y = [1.0, 0.0, 1.0][:n]
    lc = lc_win_rate(y, [5, -5, 20][:n], draws=50)
    for v in (lc.rate, lc.low, lc.high):
        assert math.isfinite(v) and 0.0 <= v <= 1.0
    assert lc.low <= lc.rate <= lc.high
    assert lc.n == n


def test_perfect_split_by_length_stays_finite():
    # Every longer answer wins, every shorter one loses: unpenalized, phi diverges. The weak
    # penalty keeps it finite, and symmetric differences put LC at 0.5.
    d = [-40, -30, -20, -10, 10, 20, 30, 40]
    y = [0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0]
    lc = lc_win_rate(y, d, draws=200)
    assert lc.length_weight is not None and math.isfinite(lc.length_weight)
    assert lc.rate == pytest.approx(0.5, abs=1e-3)
    assert lc.high - lc.low > 0.2  # the interval says how little is known


def _oracle(y: np.ndarray, x: np.ndarray) -> tuple[float, float]:
    """(theta, phi) from an independent optimizer on the objective the module states:
    sum_i [y_i log s_i + (1 - y_i) log(1 - s_i)], s_i = sigmoid(theta + phi x_i), minus
    phi^2 / (2 C). Not scikit-learn: checks the duplicated-row trick (how alpaca_eval fits
    fractional preferences) and that only phi is penalized."""
    from scipy.optimize import minimize

    def nll(w):
        eta = w[0] + w[1] * x
        return float(
            np.sum(y * np.logaddexp(0, -eta) + (1 - y) * np.logaddexp(0, eta))
            + w[1] ** 2 / (2 * PENALTY_C)
        )

    theta, phi = minimize(nll, [0.0, 0.0], method="BFGS", options={"gtol": 1e-8}).x
    return float(theta), float(phi)


def test_fit_matches_the_weighted_likelihood_optimum():
    rng = np.random.default_rng(4)
    d = rng.normal(30.0, 80.0, 120)
    y = np.array(_judge(rng, d, quality=0.3, bias=1.0))
    y[::7] = 0.5  # ties
    y[::11] = 0.75  # both orders averaged
    theta, phi = _oracle(y, np.tanh(d / np.std(d, ddof=1)))
    lc = lc_win_rate(list(y), list(d), draws=10)
    assert lc.model_term == pytest.approx(theta, abs=1e-3)
    assert lc.length_weight == pytest.approx(phi, abs=1e-3)
    assert lc.rate == pytest.approx(1.0 / (1.0 + math.exp(-theta)), abs=1e-4)


def test_unjudged_prompts_enter_at_zero_difference_and_not_in_the_spread():
    # A prompt decided by rule (a side failed to parse) has no length effect: None. It enters
    # the fit at x = 0 (its outcome counts) and stays out of sd.
    rng = np.random.default_rng(5)
    d = rng.normal(40.0, 100.0, 60)
    y = np.array([*_judge(rng, d, quality=0.0, bias=2.0), 0.0, 0.0, 0.0, 1.0])
    lc = lc_win_rate(list(y), [*d, None, None, None, None], draws=10)
    x = np.concatenate([np.tanh(d / np.std(d, ddof=1)), np.zeros(4)])
    theta, phi = _oracle(y, x)
    assert lc.n == 64
    assert lc.model_term == pytest.approx(theta, abs=1e-3)
    assert lc.length_weight == pytest.approx(phi, abs=1e-3)


def test_seeded_bootstrap_is_reproducible():
    rng = np.random.default_rng(6)
    d = list(rng.normal(0.0, 50.0, 80))
    y = _judge(rng, np.asarray(d), quality=0.5, bias=1.0)
    a = lc_win_rate(y, d, draws=100, seed=7)
    assert a == lc_win_rate(y, d, draws=100, seed=7)
    b = lc_win_rate(y, d, draws=100, seed=8)
    assert b.rate == a.rate  # the point estimate does not depend on the seed
    assert (b.low, b.high) != (a.low, a.high)  # the resamples do


def test_bad_input_names_what_is_wrong():
    with pytest.raises(ValueError, match="2 outcomes but 1 length"):
        lc_win_rate([1.0, 0.0], [3])
    with pytest.raises(ValueError, match="n=0"):
        lc_win_rate([], [])
    with pytest.raises(ValueError, match=r"outcome 1 is 1\.5"):
        lc_win_rate([1.0, 1.5], [1, 2])
    with pytest.raises(ValueError, match="length difference 0 is nan"):
        lc_win_rate([1.0], [float("nan")])
    with pytest.raises(ValueError, match="draws"):
        lc_win_rate([1.0], [1], draws=0)


def test_length_is_characters_of_the_response_only():
    assert response_chars(None) == 0
    assert response_chars("héllo") == 5
    assert length_difference("a" * 10, "b" * 3) == 7
    assert length_difference(None, "xyz") == -3


@settings(max_examples=25, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0]),
            st.one_of(st.none(), st.integers(-500, 500)),
        ),
        min_size=1,
        max_size=40,
    )
)
def test_any_input_gives_a_rate_inside_its_interval(rows):
    lc = lc_win_rate([o for o, _ in rows], [d for _, d in rows], draws=20)
    for v in (lc.rate, lc.low, lc.high):
        assert math.isfinite(v) and 0.0 <= v <= 1.0
    assert lc.low <= lc.rate <= lc.high


def test_the_compare_with_head_to_head_gets_its_lc_rate_in_status_and_report():
    """evaluation.compareWith: this run's M(t) vs the other run's M(t), fitted as the baseline
    comparison is (tpo.phases._versus_summary), shown in report.md's two-arm table."""
    from tpo.phases import _versus_summary
    from tpo.report import comparison_table
    from tpo.spec import IterationStatus, TPORunStatus

    rng = np.random.default_rng(9)
    d = rng.normal(60.0, 80.0, 60)
    y = _judge(rng, d, quality=0.0, bias=3.0)  # the longer side wins, nothing else
    prompts = [{"prompt_id": str(i), "category": None} for i in range(60)]
    cand = [{"response": "x" * int(200 + v), "parse_ok": True, "thought_tokens": 1} for v in d]
    other = [
        {"response": "x" * 200, "parse_ok": True, "thought_tokens": 1, "response_tokens": 1}
        for _ in d
    ]
    out = _versus_summary("twin", prompts, cand, other, y, None, None, 20, seed=0)
    lc = lc_win_rate(y, [int(200 + v) - 200 for v in d], seed=0)
    assert out["lc_win_rate"] == pytest.approx(lc.rate, abs=1e-4)
    assert out["win_rate"] > 0.65 and out["lc_win_rate_low"] <= 0.5 <= out["lc_win_rate_high"]
    status = TPORunStatus(history=[IterationStatus(iteration=1, compare=out)])
    c = status.history[0].compare
    assert c is not None and c.lc_win_rate == out["lc_win_rate"]
    cell = f"{c.lc_win_rate:.3f} [{c.lc_win_rate_low:.3f}, {c.lc_win_rate_high:.3f}]"
    assert f"| {cell} |" in comparison_table(status)
