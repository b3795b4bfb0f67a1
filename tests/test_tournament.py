"""Min/max tournament pairing: exact on a noiseless judge, bounded, never picks a parse failure."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tpo.tournament import MinMaxTournament, minmax_bound, run_tournaments


def order_judge(quality: list[list[float]]):
    """A noiseless judge: the sample with the higher latent quality wins, ties are ties."""

    def judge(jobs):
        return [
            1.0 if quality[i][a] > quality[i][b] else 0.0 if quality[i][a] < quality[i][b] else 0.5
            for i, a, b in jobs
        ]

    return judge


perms = st.integers(2, 16).flatmap(lambda k: st.permutations(list(range(k))))


@settings(max_examples=200, deadline=None)
@given(perm=perms, both=st.booleans(), repeats=st.integers(0, 3))
def test_noiseless_total_order_finds_max_and_min_within_pohl_bound(perm, both, repeats):
    k = len(perm)
    t = MinMaxTournament(k, both_orders=both, max_repeats=repeats)
    run_tournaments([t], order_judge([list(map(float, perm))]))
    assert t.done and t.pending() == []
    assert t.best() == perm.index(k - 1)
    assert t.worst() == perm.index(0)
    assert t.matches <= minmax_bound(k)
    assert t.calls == t.matches * (2 if both else 1)  # a noiseless judge never needs repeats


def test_pohl_bound_values():
    assert [minmax_bound(k) for k in range(1, 9)] == [0, 1, 3, 4, 6, 7, 9, 10]


@settings(max_examples=200, deadline=None)
@given(
    valid=st.lists(st.booleans(), min_size=0, max_size=16),
    seed=st.integers(0, 2**32 - 1),
    repeats=st.integers(0, 2),
    error_rate=st.sampled_from([0.0, 0.3, 1.0]),
)
def test_any_judge_terminates_and_never_chooses_an_invalid_sample(valid, seed, repeats, error_rate):
    """Arbitrary (random, erroring, intransitive) verdicts: bounded calls, sane picks."""
    rng = random.Random(seed)
    k = len(valid)
    t = MinMaxTournament(k, max_repeats=repeats, valid=valid)

    def judge(jobs):
        return [None if rng.random() < error_rate else rng.choice([0.0, 0.5, 1.0]) for _ in jobs]

    rounds = run_tournaments([t], judge)
    assert t.done
    n_valid = sum(valid)
    assert t.calls <= 2 * minmax_bound(n_valid) * (repeats + 1)
    assert rounds <= 2 * (repeats + 1) * (k.bit_length() + 1)  # logarithmic depth
    best, worst = t.best(), t.worst()
    if n_valid == 0:
        assert best is None
    else:
        assert best is not None and valid[best]
    if not all(valid):
        assert worst is not None and not valid[worst]  # a failure is the rejected one
        assert t.calls <= 2 * max(n_valid - 1, 0) * (repeats + 1)  # no min bracket
    elif n_valid >= 2:
        assert worst is not None and worst != best
    scores = t.scores()
    assert [s is None for s in scores] == [not v for v in valid]
    if not t.decisive:  # every match level: no preference among the valid samples
        assert len({s for s in scores if s is not None}) <= 1
        return
    if best is not None and n_valid >= 2:
        top = max(s for s in scores if s is not None)
        assert scores[best] == top and scores.count(top) == 1
    if all(valid) and n_valid >= 2:
        low = min(scores)
        assert scores[worst] == low and scores.count(low) == 1


def test_disagreeing_orders_are_repeated_then_settled_by_evidence():
    """A judge that always prefers the first-shown sample gives no information: every match is
    replayed max_repeats times and then settled by earlier points, then the lower index."""
    t = MinMaxTournament(4, max_repeats=2)
    run_tournaments([t], lambda jobs: [1.0] * len(jobs))
    assert t.matches == minmax_bound(4)
    assert t.calls == 2 * 3 * minmax_bound(4)  # both orders x (1 + 2 repeats) each
    assert (t.best(), t.worst()) == (0, 3)


def test_a_tie_stated_in_both_orders_is_not_replayed_but_no_verdict_is():
    t = MinMaxTournament(4, max_repeats=2)
    run_tournaments([t], lambda jobs: [0.5] * len(jobs))
    assert t.calls == 2 * minmax_bound(4) and t.best() is not None and t.worst() is not None
    assert t.scores() == [0.0] * 4  # no verdict decided anything: no preference to hand on
    t = MinMaxTournament(4, max_repeats=2)
    run_tournaments([t], lambda jobs: [None] * len(jobs))
    assert t.calls == 2 * 3 * minmax_bound(4)  # errors only: replayed like a contradiction


def test_one_decided_match_is_enough_to_hand_on_best_and_worst():
    """Samples 0-2 tie with each other; sample 3 loses every match it plays."""
    t = MinMaxTournament(4, valid=[True, True, True, True])
    run_tournaments(
        [t], lambda jobs: [0.0 if a == 3 else 1.0 if b == 3 else 0.5 for _, a, b in jobs]
    )
    s = t.scores()
    assert t.decisive >= 1 and s.index(min(s)) == 3 and max(s) > s[3]
    # a parse failure is the rejected one; all-level matches among the rest give equal scores
    t = MinMaxTournament(3, valid=[True, True, False])
    run_tournaments([t], lambda jobs: [0.5] * len(jobs))
    assert t.scores() == [0.0, 0.0, None] and t.worst() == 2


def test_repeat_resolves_a_position_biased_first_attempt():
    calls: list[tuple[int, int]] = []
    t = MinMaxTournament(2, max_repeats=1)

    def judge(jobs):
        calls.extend((a, b) for _, a, b in jobs)
        if len(calls) <= 2:
            return [1.0, 1.0]  # both orders say "first wins": they disagree
        return [0.0 if (a, b) == (0, 1) else 1.0 for _, a, b in jobs]  # sample 1 is better

    run_tournaments([t], judge)
    assert calls == [(0, 1), (1, 0), (0, 1), (1, 0)]
    assert (t.best(), t.worst()) == (1, 0)


def test_rounds_are_batched_across_prompts():
    rng = random.Random(7)
    quality = [[rng.random() for _ in range(8)] for _ in range(5)]
    ts = [MinMaxTournament(8) for _ in quality]
    batches: list[int] = []
    judge = order_judge(quality)

    def batch(jobs):
        batches.append(len(jobs))
        assert {i for i, _, _ in jobs} == set(range(5))  # every prompt in every round
        return judge(jobs)

    rounds = run_tournaments(ts, batch)
    assert rounds == 3 and batches == [5 * 8, 5 * 8, 5 * 4]  # split, semis, finals (both orders)
    for q, t in zip(quality, ts, strict=True):
        assert t.best() == q.index(max(q)) and t.worst() == q.index(min(q))
        assert t.calls == 20


def test_bad_records_are_refused():
    t = MinMaxTournament(3)
    with pytest.raises(ValueError, match="not pending"):
        t.record(0, 2, 1.0)
    with pytest.raises(ValueError, match="not in"):
        t.record(0, 1, 2.0)
    with pytest.raises(ValueError, match="flags"):
        MinMaxTournament(3, valid=[True])
    with pytest.raises(ValueError, match="outcomes"):
        run_tournaments([MinMaxTournament(2)], lambda jobs: [])


# --------------------------------------------------------------------------- replay benchmark


def load_benchmark(name: str):
    """benchmarks/ is scripts, not a package: load one by path."""
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up while being built
    spec.loader.exec_module(mod)
    return mod


def test_replay_reads_the_pairwise_judges_battle_log():
    """Battles logged by the real pairwise judge code (PairwiseCore; its model replaced by a
    noiseless reader of a latent quality written in each response) replay to ELO's own picks."""
    import re

    from tpo.judges import JudgeItem, PairwiseCore

    bench = load_benchmark("pairing_replay")
    rng = random.Random(3)
    groups = []
    for p in range(6):
        qs = rng.sample(range(100), 8)
        groups.append(
            [
                JudgeItem(f"prompt {p}", None if (p == 5 and s == 2) else f"quality {q}")
                for s, q in enumerate(qs)
            ]
        )

    def complete(prompts):
        out = []
        for text in prompts:
            a, b = (int(x) for x in re.findall(r"quality (\d+)", text))
            out.append("[[A]]" if a > b else "[[B]]")
        return out

    core = PairwiseCore(complete, template=None)
    core.score_groups(groups)
    mats = bench.read_battles(core.battles, k=8)
    assert len(mats) == 6 and mats[5].valid.count(False) == 1
    outs = bench.replay(mats, max_repeats=0)
    s = bench.summarize(mats, outs)
    assert (s.best, s.bottom2) == (100.0, 100.0)
    assert [o.calls for o in outs] == [20] * 5 + [12]  # the failure skips the min bracket
    assert outs[5].rejected == 2
    with pytest.raises(ValueError, match="row 1: missing"):
        bench.read_battles([{"prompt": 0, "a": 1}])


def test_replay_on_simulated_judges_meets_the_goal_only_for_an_accurate_judge():
    """Pinned seeds; the thresholds are the benchmark's findings with a margin, so a broken
    tournament (e.g. a wrong bracket) fails them."""
    bench = load_benchmark("pairing_replay")
    mats, qs = bench.simulate(300, 8, 0.9, model="gap", seed=1)
    s = bench.summarize(mats, bench.replay(mats, max_repeats=0), qs)
    assert s.calls_mean == 20 and s.calls_max == 20
    assert s.best >= 88 and s.bottom2 >= 92
    mats, qs = bench.simulate(300, 8, 0.8, model="flat", seed=1)
    s0 = bench.summarize(mats, bench.replay(mats, max_repeats=0), qs)
    s1 = bench.summarize(mats, bench.replay(mats, max_repeats=1), qs)
    assert s1.calls_mean < 28  # ~half of round-robin's 56
    # A sampling judge's repeats recover the latent best about as often as all 56 calls do.
    assert s1.true_best > s0.true_best + 8
    assert s1.true_best >= s1.rr_true_best - 6
