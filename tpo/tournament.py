"""Cheap pairwise judging: a simultaneous min/max tournament instead of all pairs.

The paper's pairwise judge plays all K(K-1) ordered pairs (56 calls per prompt at K=8) and fits
ELO, yet DPO only needs the best and the worst sample. Pohl's simultaneous min/max needs
ceil(3K/2) - 2 comparisons (10 at K=8, 20 calls with both orders): pair the samples up; winners
go to a max bracket, losers to a min bracket (an odd one out enters both); each bracket is a
knockout. Knockouts (not a sequential scan) keep the depth at O(log K) rounds, so a judge can
batch one round of every prompt into one vLLM call.

Judges are noisy and position-biased: a match is judged in both orders, and a match whose
verdicts contradict each other (the two orders disagree) or that got no verdict at all is
replayed up to `max_repeats` times. A tie the judge states in both orders is a verdict, not a
contradiction: it is not replayed (on the tiny task, where most pairs are two wrong answers,
a sampled judge replaying ties too cost 22.7 calls per prompt, max 40; without, 13.2, max 26,
for about the same agreement with the round-robin). A match that stays level goes
to the sample with more points in its earlier matches (evidence from the same judge), then
the lower index (samples are exchangeable draws, so this is an arbitrary but reproducible
coin). Repeats help only a judge that samples: a greedy judge repeats its verdict, so use
`max_repeats=0` with one.

Samples that failed to parse never enter: they are the rejected candidates by definition
(paper), so with one present only the max bracket is played (K_valid - 1 matches).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

Outcome = float | None  # 1.0 a wins, 0.5 tie, 0.0 b wins, None judge error
JudgeBatch = Callable[[list[tuple[int, int, int]]], list[Outcome]]


def minmax_bound(n: int) -> int:
    """Pohl's lower bound on comparisons to find both the max and the min of n items."""
    return 0 if n < 2 else (3 * n + 1) // 2 - 2


@dataclass
class _Match:
    a: int
    b: int
    bracket: str  # "split" (first round), "max" or "min"
    verdicts: list[float] = field(default_factory=list)  # from a's side, all attempts
    waiting: list[tuple[int, int]] = field(default_factory=list)  # orders not yet recorded
    attempts: int = 1
    winner: int | None = None

    @property
    def loser(self) -> int | None:
        if self.winner is None:
            return None
        return self.b if self.winner == self.a else self.a


class MinMaxTournament:
    """Simultaneous min/max selection for one prompt's K samples, driven round by round.

    Call `pending()` for the ordered pairs (a shown first) to judge now, `record()` each verdict,
    repeat until `done`. Matches of the max and the min bracket run side by side.
    """

    def __init__(
        self,
        k: int,
        *,
        both_orders: bool = True,
        max_repeats: int = 1,
        valid: Sequence[bool] | None = None,
    ):
        if k < 0:
            raise ValueError(f"k must be >= 0, got {k}")
        if max_repeats < 0:
            raise ValueError(f"max_repeats must be >= 0, got {max_repeats}")
        if valid is not None and len(valid) != k:
            raise ValueError(f"valid has {len(valid)} flags for k={k} samples")
        self.k = k
        self.both_orders = both_orders
        self.max_repeats = max_repeats
        flags = [True] * k if valid is None else [bool(v) for v in valid]
        self.valid = flags
        self.invalid = [i for i, ok in enumerate(flags) if not ok]
        self.calls = 0  # judge calls recorded (errors included)
        self.matches = 0  # distinct pairings played (repeats not counted)
        self.battles: list[dict] = []  # every verdict: {"a", "b", "outcome"} as shown
        self.points = [0.0] * k  # verdict points won so far: the tie-break evidence
        self.wins = [0] * k
        self.losses = [0] * k
        self.decisive = 0  # matches a verdict decided (not a tie-break)
        self._active: list[_Match] = []
        self._max: list[int] = []  # the max bracket's current pool
        self._min: list[int] = []
        self._min_last: dict[int, int] = {}  # odd one's last min-bracket opponent (see worst)
        self._odd: int | None = None
        entrants = [i for i, ok in enumerate(flags) if ok]
        if self.invalid:
            self._max = entrants  # a failure is the rejected one: no min bracket needed
        elif len(entrants) >= 2:
            self._start_split(entrants)
        else:
            self._max = entrants
        self._advance()

    # ------------------------------------------------------------------ driving

    def pending(self) -> list[tuple[int, int]]:
        """Ordered pairs (first shown, second shown) still to judge; [] when finished."""
        return [o for m in self._active for o in m.waiting]

    def record(self, a: int, b: int, outcome: Outcome) -> None:
        if outcome is not None and not 0.0 <= outcome <= 1.0:
            raise ValueError(f"outcome {outcome!r} for ({a}, {b}) is not in [0, 1] or None")
        match = next((m for m in self._active if (a, b) in m.waiting), None)
        if match is None:
            raise ValueError(f"({a}, {b}) is not pending: {self.pending()}")
        match.waiting.remove((a, b))
        self.calls += 1
        self.battles.append({"a": a, "b": b, "outcome": outcome})
        if outcome is not None:
            self.points[a] += outcome
            self.points[b] += 1.0 - outcome
            match.verdicts.append(outcome if a == match.a else 1.0 - outcome)
        if not match.waiting:
            self._settle(match)
            self._advance()

    @property
    def done(self) -> bool:
        return not self._active

    def best(self) -> int | None:
        """The max bracket's champion (None: no valid sample, or not done)."""
        if not self.done or len(self._max) != 1:
            return None
        return self._max[0]

    def worst(self) -> int | None:
        """A parse failure if any (the first), else the min bracket's last sample."""
        if self.invalid:
            return self.invalid[0]
        if not self.done or len(self._min) != 1:
            return None
        worst = self._min[0]
        if worst == self.best() and worst in self._min_last:
            # Only the odd one out plays both brackets; a noisy judge can crown it in both.
            # Then the sample it lost to last in the min bracket is the next-worst candidate.
            return self._min_last[worst]
        return worst

    def scores(self) -> list[float | None]:
        """Ordinal scores whose argmax is best() and argmin worst() among valid samples.

        For judges that must hand pointwise scores on (length control, pair selection): wins
        minus losses, then the best lifted above and the worst pushed below everything else.
        Parse failures score None, as with every judge. A tournament in which no match was
        decided by a verdict (every one level, settled by tie-break) found no preference: all
        valid samples score 0, so pair selection skips the prompt as it does for a round-robin
        whose ELO ties everything (else DPO would learn one of two equal responses over the
        other: on the tiny task, most often two different wrong answers).
        """
        if not self.decisive:
            return [0.0 if ok else None for ok in self.valid]
        out: list[float | None] = [
            float(self.wins[i] - self.losses[i]) if ok else None for i, ok in enumerate(self.valid)
        ]
        vals = [v for v in out if v is not None]
        best, worst = self.best(), self.worst()
        if best is not None and vals:
            out[best] = max(vals) + 1.0
        if worst is not None and self.valid[worst] and worst != best and vals:
            out[worst] = min(vals) - 1.0
        return out

    # ------------------------------------------------------------------ internals

    def _new_match(self, a: int, b: int, bracket: str) -> _Match:
        self.matches += 1
        m = _Match(a, b, bracket)
        m.waiting = self._orders(a, b)
        return m

    def _orders(self, a: int, b: int) -> list[tuple[int, int]]:
        return [(a, b), (b, a)] if self.both_orders else [(a, b)]

    def _start_split(self, entrants: list[int]) -> None:
        pairs = list(zip(entrants[0::2], entrants[1::2], strict=False))
        self._active = [self._new_match(a, b, "split") for a, b in pairs]
        if len(entrants) % 2:
            self._odd = entrants[-1]
            self._max.append(self._odd)
            self._min.append(self._odd)

    def _settle(self, m: _Match) -> None:
        """Decide a match whose attempt is complete, or schedule another attempt."""
        mean = sum(m.verdicts) / len(m.verdicts) if m.verdicts else 0.5
        contradicted = not m.verdicts or any(v != 0.5 for v in m.verdicts)  # not a stated tie
        if mean == 0.5 and contradicted and m.attempts <= self.max_repeats:
            m.attempts += 1
            m.waiting = self._orders(m.a, m.b)
            return
        if mean != 0.5:
            m.winner = m.a if mean > 0.5 else m.b
            self.decisive += 1
        else:
            m.winner = max((m.a, m.b), key=lambda i: (self.points[i], -i))
        self.wins[m.winner] += 1
        self.losses[m.loser] += 1  # type: ignore[index]

    def _advance(self) -> None:
        """Move decided matches' players on; start a bracket's next round when it is idle."""
        still = [m for m in self._active if m.winner is None]
        for m in self._active:
            if m.winner is None:
                continue
            if m.bracket in ("split", "max"):
                self._max.append(m.winner)
            if m.bracket in ("split", "min"):
                self._min.append(m.loser)  # type: ignore[arg-type]
            if m.bracket == "min" and self._odd in (m.a, m.b) and m.loser == self._odd:
                self._min_last[self._odd] = m.winner
        self._active = still
        if any(m.bracket == "split" for m in still):
            return
        for bracket in ("max", "min"):
            if any(m.bracket == bracket for m in self._active):
                continue
            pool = self._max if bracket == "max" else self._min
            if len(pool) < 2:
                continue
            pairs = list(zip(pool[0::2], pool[1::2], strict=False))
            bye = pool[len(pairs) * 2 :]  # the odd one waits for the next round
            pool[:] = bye
            self._active += [self._new_match(a, b, bracket) for a, b in pairs]


def run_tournaments(tournaments: Sequence[MinMaxTournament], judge_batch: JudgeBatch) -> int:
    """Play all tournaments to the end, one `judge_batch` call per round across prompts.

    judge_batch gets (tournament index, first shown, second shown) triples and returns one
    outcome per triple. Returns the number of rounds (batches) it took.
    """
    rounds = 0
    while True:
        jobs = [(i, a, b) for i, t in enumerate(tournaments) for a, b in t.pending()]
        if not jobs:
            return rounds
        outcomes = judge_batch(jobs)
        if len(outcomes) != len(jobs):
            raise ValueError(f"judge_batch returned {len(outcomes)} outcomes for {len(jobs)} jobs")
        for (i, a, b), o in zip(jobs, outcomes, strict=True):
            tournaments[i].record(a, b, o)
        rounds += 1
