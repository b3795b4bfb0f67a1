"""Length-controlled win rate: what the win rate would be if both arms answered at equal length.

A judge that likes longer answers lets a model "win" by talking more. AlpacaEval 2 answers with
a GLM (Dubois et al. 2024, arXiv 2404.04475): regress the judge's preference on a model term and
tanh of the standardized length difference, then predict with the length difference set to 0.
AlpacaEval's formula also has an instruction-difficulty term fitted on its own 805 prompts; for
a custom prompt set its maintainers advise dropping it (alpaca_eval issues 316 and 346: Arena
correlation 0.98 with it, 0.96 without), which is what is fitted here:

    P(candidate preferred | prompt i) = sigmoid(theta + phi * tanh(d_i / sd(d)))
    LC = sigmoid(theta)                      (d = 0: the same prediction for every prompt)

with d_i = len(candidate response) - len(baseline response) in characters, sd the sample
standard deviation of the d_i (not centred: d = 0 must stay "equal length"), and the outcome
y_i in [0, 1] (a tie 0.5) fitted as alpaca_eval does: each prompt twice, labelled 1 with weight
y_i and 0 with weight 1 - y_i. scikit-learn's LogisticRegression fits it (lbfgs, the intercept
theta unpenalized, a weak L2 penalty C=100 on phi so that a perfect split by length stays
finite). The interval resamples prompts (a seeded percentile bootstrap, the whole procedure
refitted each draw, sd included). docs/length-controlled-win-rate.md states the method and its
limits; this module is pure (no I/O) and numeric only.

Degenerate inputs, each a stated result rather than a crash or a NaN (`note` says which):
- every outcome the same (all wins, all losses, all ties): nothing for length to explain,
  LC = raw, no fit;
- fewer than 2 prompts with a length difference, or all differences equal (sd 0, e.g. equal
  lengths throughout): the length term cannot be told from the model term and drops out,
  LC = raw;
  in both cases LC is the raw rate by rule and its interval is the raw rate's (Wilson), not a
  bootstrap's (which would be [0, 0] for all losses);
- a perfect split by length (every longer answer wins, every shorter loses): the penalty keeps
  phi finite; LC is the penalized fit's sigmoid(theta), and the bootstrap interval is wide.
A prompt decided without the judge (a side failed to parse, the rule scored it) has no length
effect to control: its difference is None, it enters the fit at d = 0 and not in sd.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

# Bootstrap draws: 500 keep the 2.5/97.5 percentiles stable to about +-0.01 at n=400 (seed to
# seed, measured) at ~1 s a rate; the evaluate phase fits one per iteration and category.
DRAWS = 500
# Inverse L2 strength on the length weight; the intercept (model term) is not penalized.
# Weak: 100 is alpaca_eval's C for its unvalidated fit; it only matters under a perfect split.
PENALTY_C = 100.0
NOTE_CONSTANT = "every outcome is the same: nothing for length to explain, LC = raw"
NOTE_NO_SPREAD = "length differences do not vary (sd 0 or under 2 prompts): LC = raw"
NOTE_NO_CONVERGE = "the logistic fit did not converge"


@dataclass(frozen=True)
class LengthControlled:
    """One length-controlled win rate: point estimate, bootstrap interval, the fit's weights."""

    rate: float
    low: float
    high: float
    raw: float  # the mean outcome (tie-adjusted raw win rate), for comparison
    n: int
    length_weight: float | None  # phi; None when the length term dropped out
    model_term: float | None  # theta (logit of LC); None when no fit was needed
    note: str | None = None


def response_chars(response: str | None) -> int:
    """Length of what the judge saw: the response with the thought stripped, in characters
    (alpaca_eval's unit; tokenizer-free, so two models with different tokenizers compare)."""
    return len(response or "")


def length_difference(candidate: str | None, baseline: str | None) -> int:
    """d = len(candidate response) - len(baseline response), in characters."""
    return response_chars(candidate) - response_chars(baseline)


def _check(outcomes: Sequence[float], diffs: Sequence[float | None]) -> None:
    if len(outcomes) != len(diffs):
        raise ValueError(
            f"length control: {len(outcomes)} outcomes but {len(diffs)} length differences"
        )
    if not outcomes:
        raise ValueError("length control: no outcomes (n=0); at least one judged prompt is needed")
    for i, o in enumerate(outcomes):
        if o is None or not 0.0 <= float(o) <= 1.0:
            raise ValueError(f"length control: outcome {i} is {o!r}; expected a number in [0, 1]")
    for i, d in enumerate(diffs):
        if d is not None and not math.isfinite(float(d)):
            raise ValueError(f"length control: length difference {i} is {d!r}; expected finite")


def _model() -> Any:
    import scipy.optimize  # noqa: F401  (loads the BLAS lbfgs calls, for threadpool_limits)
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=PENALTY_C, l1_ratio=0.0, solver="lbfgs", max_iter=1000)


def _fit(
    y: np.ndarray, d: np.ndarray, judged: np.ndarray, model: Any
) -> tuple[float, float | None, float | None, str | None]:
    """(LC, phi, theta, note) for one sample; y outcomes, d differences (0 where unjudged)."""
    raw = float(y.mean())
    if np.all(y == y[0]):
        return raw, None, None, NOTE_CONSTANT
    dj = d[judged]
    sd = float(np.std(dj, ddof=1)) if dj.size >= 2 else 0.0
    if not sd > 0.0:
        return raw, None, None, NOTE_NO_SPREAD
    from sklearn.exceptions import ConvergenceWarning

    x = np.tanh(d / sd)
    # alpaca_eval's trick for a probability target: every prompt once per label, weighted.
    xs = np.concatenate([x, x]).reshape(-1, 1)
    labels = np.concatenate([np.ones_like(y), np.zeros_like(y)])
    weights = np.concatenate([y, 1.0 - y])
    keep = weights > 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        model.fit(xs[keep], labels[keep], sample_weight=weights[keep])
    note = (
        NOTE_NO_CONVERGE
        if any(issubclass(w.category, ConvergenceWarning) for w in caught)
        else None
    )
    theta = float(model.intercept_[0])
    phi = float(model.coef_[0][0])
    return 1.0 / (1.0 + math.exp(-theta)), phi, theta, note


def lc_win_rate(
    outcomes: Sequence[float],
    length_diffs: Sequence[float | None],
    *,
    draws: int = DRAWS,
    confidence: float = 0.95,
    seed: int = 0,
) -> LengthControlled:
    """Length-controlled win rate of the candidate over the baseline (module docstring).

    `outcomes[i]` is the candidate's credit on prompt i (1 win, 0.5 tie, 0 loss, or between);
    `length_diffs[i]` is d_i (candidate minus baseline, characters), or None for a prompt the
    judge did not decide. The interval is the bootstrap's (1 - confidence) percentile band over
    `draws` resamples of the prompts, seeded by `seed` (the same inputs give the same numbers).
    """
    _check(outcomes, length_diffs)
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"length control: confidence must be in (0, 1), got {confidence}")
    if draws < 1:
        raise ValueError(f"length control: draws must be at least 1, got {draws}")
    y = np.asarray([float(o) for o in outcomes])
    judged = np.asarray([d is not None for d in length_diffs])
    d = np.asarray([0.0 if v is None else float(v) for v in length_diffs])
    from threadpoolctl import threadpool_limits  # a scikit-learn dependency

    # One BLAS thread: a 1-feature fit gains nothing from threads, and on a busy machine
    # they made each fit up to 20x slower (2 ms -> 45 ms, 2 cores at load 10). The model is
    # made first: threadpoolctl limits only the libraries already loaded (scipy's BLAS).
    model = _model()
    with threadpool_limits(limits=1):
        rate, phi, theta, note = _fit(y, d, judged, model)
        if note in (NOTE_CONSTANT, NOTE_NO_SPREAD):
            # LC is the raw rate by rule, so its uncertainty is the raw rate's: resampling an
            # all-loss set gives all losses, a [0, 0] band that would claim certainty.
            from tpo.evaluate import win_rate

            wr = win_rate(list(y), confidence)
            return LengthControlled(rate, wr.low, wr.high, rate, len(y), None, None, note)
        rng = np.random.default_rng(seed)
        n = len(y)
        boot = np.empty(draws)
        for b in range(draws):
            idx = rng.integers(0, n, n)
            boot[b] = _fit(y[idx], d[idx], judged[idx], model)[0]
    alpha = (1.0 - confidence) / 2.0
    low, high = (float(v) for v in np.quantile(boot, [alpha, 1.0 - alpha]))
    return LengthControlled(
        rate=rate,
        low=min(low, rate),
        high=max(high, rate),
        raw=float(y.mean()),
        n=n,
        length_weight=phi,
        model_term=theta,
        note=note,
    )


# --------------------------------------------------------------------------- evaluate's fields


def _r(x: float | None) -> float | None:
    return None if x is None else round(float(x), 4)


def fields(lc: LengthControlled) -> dict[str, Any]:
    """The record fields of one rate, named as the status and the metrics name them."""
    out: dict[str, Any] = {
        "lc_win_rate": _r(lc.rate),
        "lc_win_rate_low": _r(lc.low),
        "lc_win_rate_high": _r(lc.high),
        "lc_length_weight": _r(lc.length_weight),
    }
    if lc.note:
        out["lc_note"] = lc.note
    return out


def evaluate_fields(
    outcomes: Sequence[float | None],
    candidate: Sequence[dict[str, Any]],
    baseline: Sequence[dict[str, Any]],
    categories: Sequence[str | None],
    rated_categories: Iterable[str],
    *,
    seed: int = 0,
    draws: int = DRAWS,
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """LC fields for the evaluate phase: (overall, {category: fields}).

    Over exactly the prompts the raw rate is over (tpo.evaluate.outcome_of: both-failed and
    no-verdict prompts are left out). `candidate`/`baseline` are the arms' eval rows (`response`
    with the thought stripped, `parse_ok`); a prompt one side failed to parse was decided by
    rule, not by the judge, and enters with no length difference. Only the categories in
    `rated_categories` (those given a raw rate, i.e. at least evaluation.minCategoryPrompts
    rated prompts) get an LC rate. Nothing rated at all gives ({}, {}).
    """
    from tpo.evaluate import UNCATEGORIZED, outcome_of

    credit: list[float] = []
    diffs: list[float | None] = []
    cats: list[str] = []
    for o, c, b, cat in zip(outcomes, candidate, baseline, categories, strict=True):
        x = outcome_of(bool(c["parse_ok"]), bool(b["parse_ok"]), o)
        if x is None:
            continue
        credit.append(x)
        judged = bool(c["parse_ok"]) and bool(b["parse_ok"])
        diffs.append(length_difference(c.get("response"), b.get("response")) if judged else None)
        cats.append(UNCATEGORIZED if cat is None else str(cat))
    if not credit:
        return {}, {}
    overall = fields(lc_win_rate(credit, diffs, seed=seed, draws=draws))
    per_cat: dict[str, dict[str, Any]] = {}
    for name in sorted(set(rated_categories)):
        idx = [i for i, c in enumerate(cats) if c == name]
        if idx:
            lc = lc_win_rate(
                [credit[i] for i in idx], [diffs[i] for i in idx], seed=seed, draws=draws
            )
            per_cat[name] = fields(lc)
    return overall, per_cat
