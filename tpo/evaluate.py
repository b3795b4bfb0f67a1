"""Evaluation math: win rates with intervals, per-category rates, simple aggregates.

Honest counting (`tally`): a prompt where the candidate and the baseline BOTH failed to parse
is no half win: it is counted as `both_failed` and left out of the rate, which is over the
decisive prompts (wins, losses) and the ties only; `n` says how many. A real SmolLM2 run once
reported 0.500 made of 19 such prompts.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from statistics import NormalDist

from tpo.errors import BadInput
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


# --------------------------------------------------------------------------- honest counting


def outcome_of(candidate_ok: bool, baseline_ok: bool, judged: float | None) -> float | None:
    """One prompt's credit for the candidate: the judge's verdict when both sides parsed, a
    win (1) or loss (0) when only one did, None when both failed (no comparison was made) or
    the judge gave no verdict."""
    if candidate_ok and baseline_ok:
        return judged
    if candidate_ok != baseline_ok:
        return float(candidate_ok)
    return None


@dataclass(frozen=True)
class Tally:
    """One head-to-head over an eval set (or one category of it), as counts.

    `rate` is over the rated prompts only (wins + ties + losses = `rate.n`); `both_failed`
    prompts (neither side parsed) and `judge_errors` (both parsed, no verdict) are outside it.
    The parse failure rates are over all `prompts`. A field per measure, so records can grow
    (a length-controlled rate beside the raw one) without parsing strings.
    """

    prompts: int
    both_failed: int
    judge_errors: int
    candidate_parse_failures: int
    baseline_parse_failures: int
    rate: WinRate | None  # None: nothing left to rate

    @property
    def rated(self) -> int:
        return self.rate.n if self.rate else 0

    @property
    def candidate_parse_failure_rate(self) -> float | None:
        return self.candidate_parse_failures / self.prompts if self.prompts else None

    @property
    def baseline_parse_failure_rate(self) -> float | None:
        return self.baseline_parse_failures / self.prompts if self.prompts else None

    def counts(self) -> str:
        """The counts in words, for messages and notes."""
        return (
            f"{self.prompts} eval prompt(s): {self.both_failed} with both sides unparsed, "
            f"{self.judge_errors} without a judge verdict; candidate parse failures "
            f"{self.candidate_parse_failures} of {self.prompts}, baseline "
            f"{self.baseline_parse_failures} of {self.prompts}"
        )


def tally(
    outcomes: Sequence[float | None],
    candidate_ok: Sequence[bool],
    baseline_ok: Sequence[bool],
    confidence: float = 0.95,
) -> Tally:
    """Count one head-to-head: `outcomes` are the judge's verdicts (read where both sides
    parsed; anything elsewhere is ignored), combined with the parse flags by `outcome_of`."""
    if not len(outcomes) == len(candidate_ok) == len(baseline_ok):
        raise ValueError(
            f"{len(outcomes)} outcomes, {len(candidate_ok)} candidate and "
            f"{len(baseline_ok)} baseline parse flags: one each per prompt"
        )
    rated, both_failed, errors = [], 0, 0
    for o, c, b in zip(outcomes, candidate_ok, baseline_ok, strict=True):
        credit = outcome_of(c, b, o)
        if credit is not None:
            rated.append(credit)
        elif not c and not b:
            both_failed += 1
        else:
            errors += 1
    return Tally(
        prompts=len(outcomes),
        both_failed=both_failed,
        judge_errors=errors,
        candidate_parse_failures=sum(not c for c in candidate_ok),
        baseline_parse_failures=sum(not b for b in baseline_ok),
        rate=win_rate(rated, confidence) if rated else None,
    )


def require_rated(t: Tally, what: str = "evaluation") -> WinRate:
    """The tally's rate, or BadInput naming the counts: a rate over nothing is no 0.5."""
    if t.rate is None:
        raise BadInput(
            f"{what}: no prompt left to rate ({t.counts()}): a prompt where both sides failed "
            "to parse is no half win; see the thought format (docs/thought-format.md) and the "
            "judge's verdict format"
        )
    return t.rate


def category_tallies(
    outcomes: Sequence[float | None],
    candidate_ok: Sequence[bool],
    baseline_ok: Sequence[bool],
    categories: Sequence[str | None],
    *,
    min_n: int = MIN_CATEGORY_PROMPTS,
    confidence: float = 0.95,
) -> list[CategoryWinRate]:
    """Per-category records of `tally` (sorted by name; [] when the dataset has none).

    `n` is the category's rated prompts, what its rate is over; under `min_n` of them the
    category gets a note instead of a rate. Every category states its counts and both sides'
    parse failure rates, rated or not."""
    if len(categories) != len(outcomes):
        raise ValueError(f"{len(outcomes)} outcomes but {len(categories)} categories")
    if all(c is None for c in categories):
        return []
    by_cat: dict[str, list[int]] = {}
    for i, c in enumerate(categories):
        by_cat.setdefault(UNCATEGORIZED if c is None else str(c), []).append(i)
    out = []
    for cat in sorted(by_cat):
        idx = by_cat[cat]
        t = tally(
            [outcomes[i] for i in idx],
            [candidate_ok[i] for i in idx],
            [baseline_ok[i] for i in idx],
            confidence,
        )
        wr = t.rate
        rate_ok = wr is not None and wr.n >= min_n
        out.append(
            CategoryWinRate(
                category=cat,
                n=t.rated,
                prompts=t.prompts,
                wins=wr.wins if wr else 0,
                ties=wr.ties if wr else 0,
                losses=wr.losses if wr else 0,
                both_failed=t.both_failed,
                parse_failure_rate=_r(t.candidate_parse_failure_rate),
                baseline_parse_failure_rate=_r(t.baseline_parse_failure_rate),
                win_rate=_r(wr.rate) if rate_ok and wr else None,
                win_rate_low=_r(wr.low) if rate_ok and wr else None,
                win_rate_high=_r(wr.high) if rate_ok and wr else None,
                note=None if rate_ok else f"too few prompts (n={t.rated})",
            )
        )
    return out


def _r(x: float | None) -> float | None:
    return None if x is None else round(float(x), 4)
