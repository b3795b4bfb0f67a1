"""Automatic rho on length-biased judge scores: does `choose_rho` keep chosen <= rejected length?

The paper tunes the length penalty rho by hand "until the average chosen length is not longer
than the average rejected length" and reports responses growing without it. Here the judge
scores are simulated WITH a length bias over several iterations whose lengths grow ~15% each
(as the paper observed without control):

  quality  q ~ N(0, 1) per sample (what an unbiased judge would rank by)
  length   lognormal around 300 * 1.15^(t-1) tokens, independent of q
  score    q + bias * z(log length) + N(0, noise^2)       (the judge likes longer answers)
  failures a few samples fail to parse (score None; they are the rejected ones)

Per iteration it prints, for rho = 0 and for `choose_rho(groups, band=(-0.05, 0.0))`, the
relative gap (mean chosen len - mean rejected len) / mean rejected len, and the latent quality
of the chosen samples (what the penalty costs). Deterministic given --seed.

    python benchmarks/auto_rho.py [--markdown]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tpo.scoring import choose_rho, length_control, select_pair

BAND = (-0.05, 0.0)

Group = tuple[list[float | None], list[int], list[bool]]


@dataclass(frozen=True)
class Recorded:
    """One iteration's judge output, plus the latent quality the judge saw through its bias."""

    groups: list[Group]
    quality: list[np.ndarray]


def simulate_iteration(
    t: int,
    *,
    prompts: int = 400,
    k: int = 8,
    base_len: float = 300.0,
    growth: float = 1.15,
    bias: float = 0.5,
    noise: float = 0.3,
    failure_rate: float = 0.03,
    seed: int = 0,
) -> Recorded:
    rng = np.random.default_rng([seed, t])
    median = base_len * growth ** (t - 1)
    groups, quality = [], []
    for _ in range(prompts):
        q = rng.standard_normal(k)
        log_len = np.log(median) + 0.35 * rng.standard_normal(k)
        lengths = np.maximum(1, np.round(np.exp(log_len))).astype(int)
        z = (log_len - log_len.mean()) / (log_len.std() or 1.0)
        scores = q + bias * z + noise * rng.standard_normal(k)
        ok = rng.random(k) >= failure_rate
        groups.append(
            (
                [float(s) if good else None for s, good in zip(scores, ok, strict=True)],
                [int(x) for x in lengths],
                [bool(x) for x in ok],
            )
        )
        quality.append(q)
    return Recorded(groups, quality)


@dataclass(frozen=True)
class Outcome:
    rho: float
    chosen_len: float
    rejected_len: float
    chosen_quality: float  # mean latent quality of the chosen samples

    @property
    def gap(self) -> float:
        return (self.chosen_len - self.rejected_len) / self.rejected_len


def evaluate(rec: Recorded, rho: float) -> Outcome:
    """The judge phase's own pair selection at this rho."""
    c_len, r_len, c_q = [], [], []
    for (scores, lengths, ok), q in zip(rec.groups, rec.quality, strict=True):
        pair = select_pair(length_control(scores, lengths, rho), ok)
        if pair is None:
            continue
        c_len.append(lengths[pair.chosen])
        r_len.append(lengths[pair.rejected])
        c_q.append(q[pair.chosen])
    return Outcome(rho, float(np.mean(c_len)), float(np.mean(r_len)), float(np.mean(c_q)))


@dataclass(frozen=True)
class Row:
    iteration: int
    mean_len: float
    fixed: Outcome  # rho = 0 (no control)
    auto: Outcome


def run(iterations: int = 4, *, seed: int = 0, prompts: int = 400) -> list[Row]:
    rows = []
    for t in range(1, iterations + 1):
        rec = simulate_iteration(t, seed=seed, prompts=prompts)
        rho = choose_rho(rec.groups, band=BAND)
        mean_len = float(np.mean([x for _, lens, _ in rec.groups for x in lens]))
        rows.append(Row(t, mean_len, evaluate(rec, 0.0), evaluate(rec, rho)))
    return rows


def in_band(gap: float, band: tuple[float, float] = BAND) -> bool:
    return band[0] <= gap <= band[1] and not math.isnan(gap)


HEAD = [
    "iteration",
    "mean len",
    "rho=0 gap",
    "rho=0 chosen q",
    "auto rho",
    "auto gap",
    "auto chosen q",
    "auto in band",
]


def format_rows(rows: Sequence[Row], markdown: bool) -> str:
    lines = [
        [
            str(r.iteration),
            f"{r.mean_len:.0f}",
            f"{100 * r.fixed.gap:+.1f}%",
            f"{r.fixed.chosen_quality:.2f}",
            f"{r.auto.rho:.3f}",
            f"{100 * r.auto.gap:+.1f}%",
            f"{r.auto.chosen_quality:.2f}",
            "yes" if in_band(r.auto.gap) else "NO",
        ]
        for r in rows
    ]
    if markdown:
        out = ["| " + " | ".join(HEAD) + " |", "|" + "---|" * len(HEAD)]
        return "\n".join(out + ["| " + " | ".join(x) + " |" for x in lines])
    widths = [max(len(h), *(len(x[i]) for x in lines)) for i, h in enumerate(HEAD)]
    fmt = "  ".join(f"{{:>{w}}}" for w in widths)
    return "\n".join([fmt.format(*HEAD)] + [fmt.format(*x) for x in lines])


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--iterations", type=int, default=4)
    ap.add_argument("--prompts", type=int, default=400)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    rows = run(args.iterations, seed=args.seed, prompts=args.prompts)
    print(format_rows(rows, args.markdown))
    print(f"\n({time.perf_counter() - t0:.1f} s)")
    return 0 if all(in_band(r.auto.gap) for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
