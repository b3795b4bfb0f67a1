"""Evaluation math: win rates with intervals, per-category rates, simple aggregates."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from statistics import NormalDist

from tpo.spec import CategoryWinRate

UNCATEGORIZED = "uncategorized"
# Below this many prompts a category gets a note, not a rate (evaluation.minCategoryPrompts):
# at n=20 a 95% Wilson interval around 0.5 is already 0.30-0.70 wide.
MIN_CATEGORY_PROMPTS = 20


@dataclass(frozen=True)
class WinRate:
    rate: float
    low: float
    high: float
    wins: int
    ties: int
    losses: int
    n: int


def _wilson(p: float, n: int, z: float) -> tuple[float, float]:
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(max(p * (1.0 - p), 0.0) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def win_rate(outcomes: Sequence[float], confidence: float = 0.95) -> WinRate:
    """Tie-adjusted win rate (a tie counts half) with a Wilson score interval.

    Outcomes are 1 (win), 0.5 (tie), 0 (loss), or any credit in between: a judge that rates
    both orders averages them (e.g. 0.75 for a win and a tie). The rate is their mean; wins,
    ties and losses count outcomes above, at and below 0.5.

    Wilson rather than the normal interval because eval sets are small (hundreds) and rates
    can sit near 0 or 1, where the normal interval leaves [0, 1] and undercovers. Treating the
    mean as a binomial proportion is conservative: an outcome in [0, 1] with mean p has
    variance at most p(1 - p), with equality when every outcome is 0 or 1.
    """
    if not outcomes:
        raise ValueError("win_rate: no outcomes (n=0); at least one judged prompt is needed")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"win_rate: confidence must be in (0, 1), got {confidence}")
    for i, o in enumerate(outcomes):
        if o is None or not 0.0 <= o <= 1.0:
            raise ValueError(f"win_rate: outcome {i} is {o!r}; expected a number in [0, 1]")
    n = len(outcomes)
    wins = sum(1 for o in outcomes if o > 0.5)
    ties = sum(1 for o in outcomes if o == 0.5)
    rate = sum(float(o) for o in outcomes) / n
    z = NormalDist().inv_cdf(0.5 + confidence / 2.0)
    low, high = _wilson(rate, n, z)
    return WinRate(rate, low, high, wins, ties, n - wins - ties, n)


def mean_or_none(xs: Iterable[float | None]) -> float | None:
    """Mean of the non-None values; None when there are none (status fields stay unset)."""
    vals = [float(x) for x in xs if x is not None]
    return sum(vals) / len(vals) if vals else None


def parse_failure_rate(parse_ok: Sequence[bool]) -> float:
    """Share of outputs without a usable response; 0.0 for no outputs (nothing failed)."""
    if not parse_ok:
        return 0.0
    return sum(1 for ok in parse_ok if not ok) / len(parse_ok)


def category_win_rates(
    outcomes: Sequence[float],
    categories: Sequence[str | None],
    *,
    min_n: int = MIN_CATEGORY_PROMPTS,
    confidence: float = 0.95,
) -> list[CategoryWinRate]:
    """Win rate per instruction category (paper, Figure 3), sorted by category name.

    Categories with fewer than min_n prompts get no rate, only a note: a rate from a handful
    of prompts is noise dressed as a finding. No categories at all (the dataset has none)
    gives []; prompts without one are grouped as "uncategorized".
    """
    if len(outcomes) != len(categories):
        raise ValueError(f"{len(outcomes)} outcomes but {len(categories)} categories")
    if all(c is None for c in categories):
        return []
    by_cat: dict[str, list[float]] = {}
    for o, c in zip(outcomes, categories, strict=True):
        by_cat.setdefault(UNCATEGORIZED if c is None else str(c), []).append(o)
    out = []
    for cat in sorted(by_cat):
        os_ = by_cat[cat]
        if len(os_) < min_n:
            out.append(
                CategoryWinRate(category=cat, n=len(os_), note=f"too few prompts (n={len(os_)})")
            )
            continue
        wr = win_rate(os_, confidence)
        out.append(
            CategoryWinRate(
                category=cat,
                n=wr.n,
                win_rate=wr.rate,
                win_rate_low=wr.low,
                win_rate_high=wr.high,
            )
        )
    return out
