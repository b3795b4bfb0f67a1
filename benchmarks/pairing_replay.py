"""Replay logged round-robin battle matrices through the min/max tournament.

For every prompt, the reference is what the paper does: all ordered pairs judged once, then
Bradley-Terry/ELO (`tpo.scoring.bradley_terry`, the judge phase's own fit). The tournament is
replayed on the SAME verdicts (a call (a, b) reads the logged verdict of that order), so the
question is only "does the cheap pairing pick what ELO over the full matrix picks?":

  calls      judge calls per prompt (round-robin: K(K-1) = 56 at K=8)
  best       % of prompts whose tournament-chosen sample has the top ELO rating
  bottom2    % whose tournament-rejected sample is among the two lowest ELO ratings

Repeated matches need a verdict the log may not have: a simulated judge draws a fresh one (a
sampling judge would); a real log re-reads the last logged verdict (a greedy judge repeats
itself), so repeats cannot help on a real greedy log.

Inputs:
  --battles FILE   JSONL rows {"prompt", "a", "b", "outcome"} as `Judge.battles` logs them
                   (prompt: any key; samples that never appear count as parse failures).
  (default)        simulated judges on a latent quality: accuracy 0.6-0.9, two noise models:
                   flat  each verdict names the better sample with probability p;
                   gap   P(correct) = Phi(|q_a - q_b| / s), s set so the mean accuracy is p
                         (close samples are confused more often, as with real judges).

    python benchmarks/pairing_replay.py [--prompts 2000] [--markdown]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from itertools import permutations
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tpo.scoring import Battle, bradley_terry
from tpo.tournament import MinMaxTournament, run_tournaments

Fresh = Callable[[int, int], float | None]  # a new verdict for a repeat, from a's side


@dataclass
class Matrix:
    """One prompt's logged battles: verdicts per ordered pair, in log order."""

    k: int
    log: dict[tuple[int, int], list[float | None]] = field(default_factory=dict)
    fresh: Fresh | None = None  # simulated judges draw repeats; real logs re-read the last

    @property
    def valid(self) -> list[bool]:
        seen = {i for pair in self.log for i in pair}
        return [i in seen for i in range(self.k)]

    def verdict(self, a: int, b: int, attempt: int) -> float | None:
        got = self.log.get((a, b))
        if not got:
            return None  # never judged: the judge errored on it
        if attempt < len(got):
            return got[attempt]
        return self.fresh(a, b) if self.fresh else got[-1]

    def elo(self) -> list[float | None]:
        """The paper's reference: BT/ELO over the first verdict of every ordered pair."""
        ok = [i for i, v in enumerate(self.valid) if v]
        local = {s: j for j, s in enumerate(ok)}
        battles = [Battle(local[a], local[b], v[0]) for (a, b), v in self.log.items() if v]
        ratings = bradley_terry(len(ok), battles)
        out: list[float | None] = [None] * self.k
        for s, r in zip(ok, ratings, strict=True):
            out[s] = r
        return out


# --------------------------------------------------------------------------- inputs


def read_battles(rows: Iterable[dict], k: int | None = None) -> list[Matrix]:
    """Group `Judge.battles` rows by prompt into matrices (K = largest index + 1 unless given)."""
    by_prompt: dict[object, list[dict]] = defaultdict(list)
    for n, row in enumerate(rows, 1):
        missing = [f for f in ("prompt", "a", "b", "outcome") if f not in row]
        if missing:
            raise ValueError(f"battle row {n}: missing field(s) {missing}")
        by_prompt[row["prompt"]].append(row)
    out = []
    for rows_p in by_prompt.values():
        size = k or 1 + max(max(int(r["a"]), int(r["b"])) for r in rows_p)
        m = Matrix(size)
        for r in rows_p:
            m.log.setdefault((int(r["a"]), int(r["b"])), []).append(r["outcome"])
        out.append(m)
    return out


def read_battle_file(path: Path, k: int | None = None) -> list[Matrix]:
    rows = []
    with path.open() as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{n}: not JSON ({e.msg})") from None
    return read_battles(rows, k)


def calibrate_gap_scale(accuracy: float, rng: np.random.Generator, n: int = 200_000) -> float:
    """s with mean over N(0,1) quality pairs of Phi(|q_a - q_b| / s) equal to `accuracy`."""
    gaps = np.abs(rng.standard_normal(n) - rng.standard_normal(n))
    lo, hi = 1e-3, 1e3
    for _ in range(60):
        s = math.sqrt(lo * hi)
        acc = float(np.mean(0.5 * (1.0 + _erf(gaps / s / math.sqrt(2.0)))))
        lo, hi = (s, hi) if acc > accuracy else (lo, s)
    return math.sqrt(lo * hi)


def _erf(x: np.ndarray) -> np.ndarray:
    """Abramowitz-Stegun 7.1.26 (|error| < 1.5e-7), vectorised: enough for calibration."""
    t = 1.0 / (1.0 + 0.3275911 * np.abs(x))
    y = 1.0 - (
        ((((1.061405429 * t - 1.453152027) * t) + 1.421413741) * t - 0.284496736) * t + 0.254829592
    ) * t * np.exp(-x * x)
    return np.sign(x) * y


def simulate(
    prompts: int,
    k: int,
    accuracy: float,
    *,
    model: str = "flat",
    seed: int = 0,
    position_bias: float = 0.0,
) -> tuple[list[Matrix], list[np.ndarray]]:
    """Round-robin logs of a noisy judge over latent qualities q ~ N(0, 1) (and the q's).

    position_bias: share of calls answered "first shown wins" whatever the samples.
    """
    rng = np.random.default_rng(seed)
    scale = calibrate_gap_scale(accuracy, rng) if model == "gap" else 0.0
    mats, qualities = [], []
    for _ in range(prompts):
        q = rng.standard_normal(k)

        def draw(a: int, b: int, q: np.ndarray = q) -> float:
            if rng.random() < position_bias:
                return 1.0
            if model == "flat":
                p = accuracy
            else:
                p = 0.5 * (1.0 + math.erf(abs(q[a] - q[b]) / scale / math.sqrt(2.0)))
            correct = rng.random() < p
            return 1.0 if (q[a] > q[b]) == correct else 0.0

        m = Matrix(k, fresh=draw)
        for a, b in permutations(range(k), 2):
            m.log[(a, b)] = [draw(a, b)]
        mats.append(m)
        qualities.append(q)
    return mats, qualities


# --------------------------------------------------------------------------- replay


@dataclass
class Outcome:
    calls: int
    chosen: int | None
    rejected: int | None


def replay(mats: Sequence[Matrix], *, max_repeats: int, both_orders: bool = True) -> list[Outcome]:
    """Run every prompt's tournament on its log, batched across prompts as the judge would."""
    ts = [MinMaxTournament(m.k, both_orders=both_orders, max_repeats=max_repeats, valid=m.valid)
          for m in mats]  # fmt: skip
    asked: dict[tuple[int, int, int], int] = defaultdict(int)

    def judge_batch(jobs: list[tuple[int, int, int]]) -> list[float | None]:
        out = []
        for job in jobs:
            i, a, b = job
            out.append(mats[i].verdict(a, b, asked[job]))
            asked[job] += 1
        return out

    run_tournaments(ts, judge_batch)
    return [Outcome(t.calls, t.best(), t.worst()) for t in ts]


def _top(values: Sequence[float | None], n: int, *, lowest: bool) -> set[int]:
    """Indices whose value is among the n lowest (or highest) distinct ranks, ties included."""
    vals = [(v, i) for i, v in enumerate(values) if v is not None]
    if not vals:
        return set()
    ordered = sorted(v for v, _ in vals)
    cut = ordered[min(n, len(ordered)) - 1] if lowest else ordered[-min(n, len(ordered))]
    tol = 1e-9
    return {i for v, i in vals if (v <= cut + tol if lowest else v >= cut - tol)}


@dataclass
class Summary:
    prompts: int
    calls_mean: float
    calls_max: int
    best: float  # % chosen has the top ELO rating
    bottom2: float  # % rejected among the two lowest ELO ratings
    true_best: float | None = None  # simulated only: vs the latent quality
    true_bottom2: float | None = None
    rr_true_best: float | None = None  # the round-robin ELO itself vs the latent quality
    rr_true_bottom2: float | None = None


def summarize(
    mats: Sequence[Matrix], outs: Sequence[Outcome], qualities: Sequence[np.ndarray] | None = None
) -> Summary:
    """Prompts with a parse failure are scored on `best` only (their rejected is the failure)."""
    best_hits, bottom_hits, bottom_n = 0, 0, 0
    tb = tb2 = rb = rb2 = 0
    for n, (m, o) in enumerate(zip(mats, outs, strict=True)):
        elo = m.elo()
        best_hits += o.chosen in _top(elo, 1, lowest=False)
        if all(m.valid):
            bottom_n += 1
            bottom_hits += o.rejected in _top(elo, 2, lowest=True)
        if qualities is not None:
            q = list(qualities[n])
            tb += o.chosen == int(np.argmax(q))
            tb2 += o.rejected in _top(q, 2, lowest=True)
            rb += int(np.argmax(q)) in _top(elo, 1, lowest=False)
            rb2 += bool(_top(elo, 1, lowest=True) & _top(q, 2, lowest=True))
    n = len(mats)
    pct = 100.0 / n
    s = Summary(
        n,
        float(np.mean([o.calls for o in outs])),
        max(o.calls for o in outs),
        best_hits * pct,
        100.0 * bottom_hits / bottom_n if bottom_n else math.nan,
    )
    if qualities is not None:
        s.true_best, s.true_bottom2 = tb * pct, tb2 * pct
        s.rr_true_best, s.rr_true_bottom2 = rb * pct, rb2 * pct
    return s


# --------------------------------------------------------------------------- report


def simulated_table(
    prompts: int, k: int, seed: int
) -> list[tuple[str, float, float, int, Summary]]:
    rows = []
    for model, bias in (("flat", 0.0), ("gap", 0.0), ("gap", 0.2)):
        for acc in (0.6, 0.7, 0.8, 0.9):
            mats, qs = simulate(prompts, k, acc, model=model, seed=seed, position_bias=bias)
            for rep in (0, 1):
                rows.append(
                    (model, bias, acc, rep, summarize(mats, replay(mats, max_repeats=rep), qs))
                )
    return rows


def _f(x: float | None) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.1f}"


HEAD = [
    "judge",
    "pos.bias",
    "accuracy",
    "repeats",
    "calls",
    "max",
    "best%",
    "bottom2%",
    "true-best%",
    "true-bottom2%",
    "RR true-best%",
    "RR worst in true-bottom2%",
]


def format_rows(rows, markdown: bool) -> str:
    head = HEAD
    lines = []
    for model, bias, acc, rep, s in rows:
        lines.append([model, f"{bias:.1f}", f"{acc:.1f}", str(rep), f"{s.calls_mean:.1f}",
                      str(s.calls_max), _f(s.best), _f(s.bottom2), _f(s.true_best),
                      _f(s.true_bottom2), _f(s.rr_true_best), _f(s.rr_true_bottom2)])  # fmt: skip
    if markdown:
        out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        return "\n".join(out + ["| " + " | ".join(r) + " |" for r in lines])
    widths = [max(len(h), *(len(r[i]) for r in lines)) for i, h in enumerate(head)]
    fmt = "  ".join(f"{{:>{w}}}" for w in widths)
    return "\n".join([fmt.format(*head)] + [fmt.format(*r) for r in lines])


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--battles", type=Path, help="JSONL of Judge.battles rows (real run)")
    ap.add_argument("--k", type=int, default=None, help="samples per prompt (default: inferred)")
    ap.add_argument("--prompts", type=int, default=2000, help="simulated prompts per setting")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    if args.battles:
        mats = read_battle_file(args.battles, args.k)
        rows = [("log", 0.0, math.nan, rep, summarize(mats, replay(mats, max_repeats=rep)))
                for rep in (0, 1)]  # fmt: skip
    else:
        rows = simulated_table(args.prompts, args.k or 8, args.seed)
    print(format_rows(rows, args.markdown))
    print(f"\n({time.perf_counter() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
