"""From judge scores to one preference pair per prompt (paper, section 2.3).

Pure functions over plain numbers: Bradley-Terry/ELO for pairwise battles, length control,
pair selection and the automatic length-penalty weight.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

ELO_SCALE = 400.0 / math.log(10.0)  # natural-log strength -> ELO points (400 * log10)

Group = tuple[Sequence[float | None], Sequence[int], Sequence[bool]]


# --------------------------------------------------------------------------- Bradley-Terry


@dataclass(frozen=True)
class Battle:
    a: int
    b: int
    outcome: float | None  # 1.0 a wins, 0.5 tie, 0.0 b wins, None judge error (ignored)


def _check_battles(n: int, battles: Sequence[Battle]) -> list[Battle]:
    decided = []
    for i, bt in enumerate(battles):
        if not (0 <= bt.a < n and 0 <= bt.b < n) or bt.a == bt.b:
            raise ValueError(f"battle {i}: players ({bt.a}, {bt.b}) must be distinct in 0..{n - 1}")
        if bt.outcome is None:
            continue
        if not 0.0 <= bt.outcome <= 1.0 or math.isnan(bt.outcome):
            raise ValueError(f"battle {i}: outcome {bt.outcome!r} is not in [0, 1]")
        decided.append(bt)
    return decided


def _bt_objective(theta: np.ndarray, a, b, w, prior: float) -> float:
    d = theta[a] - theta[b]
    # log sigmoid(x) = -log1p(exp(-x)), written stably with logaddexp.
    ll = -(w * np.logaddexp(0.0, -d) + (1.0 - w) * np.logaddexp(0.0, d)).sum()
    pr = -prior * (0.5 * np.logaddexp(0.0, -theta) + 0.5 * np.logaddexp(0.0, theta)).sum()
    return float(ll + pr)


def bradley_terry(n: int, battles: Sequence[Battle], *, prior: float = 1.0) -> list[float]:
    """Maximum a-posteriori Bradley-Terry strengths on the ELO scale (400 * log10).

    Each battle is one game (a judge that rates both orders yields two battles, both counted);
    a tie counts as half a win for each side. The prior gives every sample `prior` virtual tied
    games against a fixed average player: without it an undefeated sample's strength is
    infinite and disconnected groups have no common scale. The log-posterior is strictly
    concave, so damped Newton finds its unique maximum; the result is deterministic and
    centred on mean 0.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if prior <= 0:
        raise ValueError(f"prior must be > 0 (it keeps strengths finite), got {prior}")
    if n == 0:
        return []
    decided = _check_battles(n, battles)
    a = np.array([bt.a for bt in decided], dtype=int)
    b = np.array([bt.b for bt in decided], dtype=int)
    w = np.array([bt.outcome for bt in decided], dtype=float)
    theta = np.zeros(n)
    f = _bt_objective(theta, a, b, w, prior)
    for _ in range(100):
        d = theta[a] - theta[b]
        p = 1.0 / (1.0 + np.exp(-d))
        r = w - p  # d loglik / d d
        grad = np.bincount(a, r, n) - np.bincount(b, r, n)
        q = 1.0 / (1.0 + np.exp(-theta))
        grad += prior * (0.5 - q)
        v = p * (1.0 - p)
        hess = np.diag(prior * q * (1.0 - q))
        np.add.at(hess, (a, a), v)
        np.add.at(hess, (b, b), v)
        np.add.at(hess, (a, b), -v)
        np.add.at(hess, (b, a), -v)
        step = np.linalg.solve(hess, grad)  # hess is minus the Hessian: positive definite
        t = 1.0
        while t > 1e-8:
            cand = theta + t * step
            fc = _bt_objective(cand, a, b, w, prior)
            if fc >= f - 1e-12:
                break
            t *= 0.5
        theta, f = cand, fc
        if np.max(np.abs(t * step)) < 1e-10:
            break
    theta -= theta.mean()
    return [float(x) for x in theta * ELO_SCALE]


# --------------------------------------------------------------------------- length control


def _usable(s: float | None) -> bool:
    """A score the maths can use: NaN or infinity from a judge is treated like a judge error."""
    return s is not None and math.isfinite(s)


def _standardize(xs: Sequence[float], idx: Sequence[int]) -> dict[int, float]:
    """N(x) = (x - mean) / std (population std) over the entries in idx; std 0 -> N = 0."""
    if not idx:
        return {}
    v = np.array([float(xs[i]) for i in idx])
    sd = float(v.std())
    if sd == 0.0 or not math.isfinite(sd):
        return dict.fromkeys(idx, 0.0)
    z = (v - v.mean()) / sd
    return {i: float(x) for i, x in zip(idx, z, strict=True)}


@dataclass(frozen=True)
class _Standardized:
    """N(score) and N(length) of one prompt's samples: independent of rho, so computed once."""

    n: int
    ns: dict[int, float]
    nl: dict[int, float]

    def adjusted(self, rho: float) -> list[float | None]:
        return [self.ns[i] - rho * self.nl[i] if i in self.ns else None for i in range(self.n)]


def _standardized(scores: Sequence[float | None], lengths: Sequence[int]) -> _Standardized:
    if len(scores) != len(lengths):
        raise ValueError(f"{len(scores)} scores but {len(lengths)} lengths")
    idx = [i for i, s in enumerate(scores) if _usable(s)]
    ns = _standardize([float(s) if _usable(s) else 0.0 for s in scores], idx)
    return _Standardized(len(scores), ns, _standardize(lengths, idx))


def length_control(
    scores: Sequence[float | None], lengths: Sequence[int], rho: float
) -> list[float | None]:
    """Within ONE prompt: s <- N(s) - rho * N(len) (paper, section 2.3).

    Both are standardised over the samples that have a score, so rho trades one standard
    deviation of judge score for one standard deviation of length whatever the judge's scale.
    Unscored samples (parse failures, judge errors, non-finite scores) stay None.
    """
    if not rho >= 0.0 or not math.isfinite(rho):
        raise ValueError(f"rho must be a finite number >= 0, got {rho}")
    return _standardized(scores, lengths).adjusted(rho)


def overrun_penalty(
    scores: Sequence[float | None], forced: Sequence[bool], penalty: float
) -> list[float | None]:
    """Subtract `penalty` from the score of every sample whose thought hit the thought budget
    and had its separator forced (judge.lengthControl.overrunPenalty; the length rewards of
    L1, arXiv 2503.04697, and ThinkPrune, 2504.01296): among equally good responses, the one
    whose thought ended within the budget on its own is preferred. Unscored samples stay None.
    """
    if len(scores) != len(forced):
        raise ValueError(f"{len(scores)} scores but {len(forced)} forced flags")
    if not penalty >= 0.0 or not math.isfinite(penalty):
        raise ValueError(f"overrun penalty must be a finite number >= 0, got {penalty}")
    return [None if s is None else s - penalty * f for s, f in zip(scores, forced, strict=True)]


# --------------------------------------------------------------------------- pair selection


@dataclass(frozen=True)
class Pair:
    chosen: int
    rejected: int


def select_pair(scores: Sequence[float | None], parse_ok: Sequence[bool]) -> Pair | None:
    """The (chosen, rejected) samples of one prompt, or None to skip the prompt.

    chosen: the highest score among samples that parsed and were scored; rejected: a parse
    failure if there is one (the paper uses failed outputs as rejected samples, which teaches
    the format), else the lowest score. Ties break towards the lowest sample index, so the
    result is deterministic. A parse failure (truncated outputs included) is never chosen.
    When the judge scored no parsed sample (no verdict, judge errors) but some parsed and some
    failed, the first parsed sample is chosen against the first failure: parsing is the one
    preference still known, and skipping the prompt would lose it. Prompts with no parsed
    sample, or whose valid scores are all equal with no failure to reject, give no pair:
    there is no preference to learn.
    """
    if len(scores) != len(parse_ok):
        raise ValueError(f"{len(scores)} scores but {len(parse_ok)} parse flags")
    failures = [i for i, ok in enumerate(parse_ok) if not ok]
    valid = [i for i, s in enumerate(scores) if parse_ok[i] and _usable(s)]
    if not valid:
        parsed = [i for i, ok in enumerate(parse_ok) if ok]
        return Pair(parsed[0], failures[0]) if parsed and failures else None
    chosen = max(valid, key=lambda i: (scores[i], -i))
    if failures:
        return Pair(chosen, failures[0])
    rejected = min(valid, key=lambda i: (scores[i], i))
    if scores[rejected] == scores[chosen]:
        return None
    return Pair(chosen, rejected)


# --------------------------------------------------------------------------- automatic rho


def pair_length_gap(groups: Sequence[Group], rho: float) -> tuple[float, float]:
    """(mean chosen length, mean rejected length) over the pairs built at this rho.

    (nan, nan) when no group yields a pair.
    """
    if not rho >= 0.0 or not math.isfinite(rho):
        raise ValueError(f"rho must be a finite number >= 0, got {rho}")
    return _gap_of(_prepare(groups), rho)


_Prepared = list[tuple[_Standardized, Sequence[int], Sequence[bool]]]


def _prepare(groups: Sequence[Group]) -> _Prepared:
    return [(_standardized(s, ln), ln, ok) for s, ln, ok in groups]


def _gap_of(prepared: _Prepared, rho: float) -> tuple[float, float]:
    chosen, rejected = [], []
    for std, lengths, ok in prepared:
        pair = select_pair(std.adjusted(rho), ok)
        if pair is not None:
            chosen.append(lengths[pair.chosen])
            rejected.append(lengths[pair.rejected])
    if not chosen:
        return math.nan, math.nan
    return float(np.mean(chosen)), float(np.mean(rejected))


def _relative_gap(prepared: _Prepared, rho: float) -> float:
    c, r = _gap_of(prepared, rho)
    if math.isnan(c):
        return math.nan
    if r == 0:
        return 0.0 if c == 0 else math.inf
    return (c - r) / r


def _distance(gap: float, band: tuple[float, float]) -> float:
    if math.isnan(gap):
        return math.inf
    return max(band[0] - gap, gap - band[1], 0.0)


def choose_rho(
    groups: Sequence[Group],
    *,
    band: tuple[float, float] = (-0.05, 0.0),
    rho_max: float = 1.0,
    grid: int = 20,
    iterations: int = 30,
) -> float:
    """The smallest rho that makes chosen responses no longer than rejected ones.

    The paper tunes rho by hand "until the average chosen length is not longer than the
    average rejected length"; this automates that with only the scores already given (no new
    judge calls). The relative gap (chosen - rejected) / rejected is a step function of rho
    that falls as rho grows (in practice; it need not be monotone), so: scan a coarse grid
    for the first rho with gap <= band[1], then bisect between it and the grid point before
    it. If that rho overshoots below band[0], or no rho reaches the band, return the
    evaluated rho closest to the band (smallest rho on ties). rho 0 when already <= band[1].
    """
    lo_b, hi_b = band
    if lo_b > hi_b:
        raise ValueError(f"band {band} is empty")
    if not 0.0 <= rho_max <= 1.0e6:
        raise ValueError(f"rho_max must be >= 0, got {rho_max}")
    prepared = _prepare(groups)
    seen: dict[float, float] = {0.0: _relative_gap(prepared, 0.0)}
    if math.isnan(seen[0.0]) or seen[0.0] <= hi_b:
        return 0.0
    points = [rho_max * k / grid for k in range(1, grid + 1)]
    below, above = 0.0, None
    for rho in points:
        seen[rho] = _relative_gap(prepared, rho)
        if seen[rho] <= hi_b:
            above = rho
            break
        below = rho
    if above is not None:
        for _ in range(iterations):
            mid = 0.5 * (below + above)
            seen[mid] = _relative_gap(prepared, mid)
            if seen[mid] <= hi_b:
                above = mid
            else:
                below = mid
        if lo_b <= seen[above]:
            return above
    return min(seen, key=lambda r: (_distance(seen[r], band), r))
