"""Honest win rates on REAL outputs: the evaluate phase replays SmolLM2-135M-Instruct's committed
completions (tests/data/smollm2/generations.jsonl) for both the candidate M(1) and the seed
baseline, both prompted with the same thought prompt, as in the real run whose iteration 1
reported 0.500 made of 19 prompts where neither side parsed. A prompt where both failed is
counted as both_failed and left out of the rate; nothing left to rate fails the phase."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from smollm2 import arm
from test_guards_real import Replay, real_run

from tpo import artifacts as A
from tpo import phases as P
from tpo.artifacts import RunDir
from tpo.errors import EXIT_BAD_INPUT
from tpo.evaluate import category_tallies, tally
from tpo.spec import ThoughtPrompt
from tpo.thoughts import split_output


class EvalReplay(Replay):
    """Each model answers with its own real sample of each prompt: M(1) (the candidate) with
    sample 1, the seed (the baseline) with sample 0: two different real outputs per prompt."""

    def __init__(self, arm_name: str, tp: ThoughtPrompt):
        super().__init__(arm_name, tp)
        self.sample = 0
        self.loads: list[str] = []

    def load(self, run: RunDir, loc: str) -> EvalReplay:
        self.loads.append(loc)
        self.sample = 1 if loc == str(run.model(1)) else 0
        return self

    def generate(self, prompts, **kw):
        self.calls.append(kw)
        return [[self.by_prompt[self.key(p)][self.sample]] for p in prompts]

    def key(self, prompt: str) -> str:
        """The recorded prompt this one asks (an eval prompt may carry an added constraint)."""
        if prompt in self.by_prompt:
            return prompt
        (hit,) = [q for q in self.by_prompt if _question(q) in prompt]
        return hit


def _question(wrapped: str) -> str:
    return wrapped.split("User query: ", 1)[-1]


def eval_run(tmp_path, monkeypatch, arm_name: str, tp: dict) -> tuple[RunDir, EvalReplay]:
    """24 real MT-Bench questions: 20 for evaluation, 4 for the one iteration; M(1) on disk
    as train leaves it (its outputs are the replayed ones); the baseline is the seed."""
    dataset = {"path": str(tmp_path / "mtbench.jsonl"), "promptsPerIteration": 4}
    run, _ = real_run(
        tmp_path,
        monkeypatch,
        arm_name,
        thoughtPrompt=tp,
        dataset={**dataset, "evalPrompts": 20},
        evaluation={"baseline": "seed", "minCategoryPrompts": 1},
    )
    replay = EvalReplay(arm_name, ThoughtPrompt(**tp))
    monkeypatch.setattr("tpo.generate.load_generator", lambda loc, *a, **k: replay.load(run, loc))
    model = run.model(1)
    model.mkdir(parents=True)
    (model / "config.json").write_text("{}")
    A.write_done(run.done("train", 1), {"phase": "train", "iteration": 1}, [model])
    return run, replay


def real_flags(run: RunDir, arm_name: str, sep: str | None) -> list[tuple[bool, bool]]:
    """(candidate parsed, baseline parsed) per eval prompt, from the committed outputs alone."""
    rows = arm(arm_name)

    def parsed(instruction: str, sample: int) -> bool:
        (text,) = [
            r["text"] for r in rows if r["sample"] == sample and r["instruction"] in instruction
        ]
        return split_output(text, sep).parse_ok

    prompts = A.read_jsonl(run.eval_prompts)
    return [(parsed(p["instruction"], 1), parsed(p["instruction"], 0)) for p in prompts]


def test_both_failed_prompts_are_counted_not_rated(tmp_path, monkeypatch):
    run, replay = eval_run(tmp_path, monkeypatch, "generic", {"type": "generic"})
    result = P.run_phase("evaluate", run, 1)
    assert {str(run.model(1)), str(tmp_path / "smollm2")} <= set(replay.loads)  # both models
    flags = real_flags(run, "generic", "Here is my response:")
    both = sum(not c and not b for c, b in flags)
    wins = sum(c and not b for c, b in flags)
    losses = sum(b and not c for c, b in flags)
    judged = sum(c and b for c, b in flags)
    assert both >= 15, "the real outputs barely parse: most eval prompts have neither side"
    assert result["both_failed"] == both
    assert result["eval_prompts"] == len(flags) == 20
    # The rate is over the decisive prompts and the ties only, never the both-failed ones.
    assert result["n"] == result["wins"] + result["ties"] + result["losses"] == len(flags) - both
    assert result["wins"] >= wins and result["losses"] >= losses
    assert result["wins"] + result["losses"] + result["ties"] == wins + losses + judged
    rate = (result["wins"] + result["ties"] / 2) / result["n"]
    assert result["win_rate"] == pytest.approx(rate, abs=1e-4)
    assert result["eval_parse_failure_rate"] == pytest.approx(
        sum(not c for c, _ in flags) / 20, abs=1e-4
    )
    assert result["baseline_parse_failure_rate"] == pytest.approx(
        sum(not b for _, b in flags) / 20, abs=1e-4
    )
    rows = A.read_jsonl(run.eval_outputs(1))
    assert sum(r["both_failed"] for r in rows) == both
    assert all(r["outcome"] is None for r in rows if r["both_failed"])


def test_nothing_left_to_rate_fails_loudly(tmp_path, monkeypatch, capsys):
    """The specific prompt's real outputs never write `<R>`: both sides fail on every eval
    prompt. Evaluate must fail with the bad-input exit code naming the counts, not say 0.5."""
    run, _ = eval_run(tmp_path, monkeypatch, "specific", {"type": "specific"})
    flags = real_flags(run, "specific", "<R>")
    assert not any(c or b for c, b in flags)
    args = SimpleNamespace(
        name="evaluate", run_dir=str(run.path), iteration=1, shard=None, spec=None
    )
    assert P.main(args) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert (
        "evaluation (iteration 1): no prompt left to rate (20 eval prompt(s): 20 with both " in err
    )
    assert "candidate parse failures 20 of 20, baseline 20 of 20" in err
    assert not run.done("evaluate", 1).exists() and not run.eval_result(1).exists()


def test_tally_counts_each_kind():
    """The rule on its own (tpo.evaluate.tally), one prompt of each kind."""
    # win, loss (one side parsed), judged tie, judged win, both failed x2, judge error
    t = tally(
        [None, None, 0.5, 1.0, 0.5, None, None],
        [True, False, True, True, False, False, True],
        [False, True, True, True, False, False, True],
    )
    assert (t.prompts, t.both_failed, t.judge_errors) == (7, 2, 1)
    assert t.rate is not None and (t.rate.wins, t.rate.ties, t.rate.losses) == (2, 1, 1)
    assert t.rate.rate == pytest.approx(2.5 / 4)  # both-failed prompts are not half wins
    assert t.candidate_parse_failure_rate == pytest.approx(3 / 7)
    assert t.baseline_parse_failure_rate == pytest.approx(3 / 7)
    assert tally([0.5], [False], [False]).rate is None


def test_category_records_count_both_failed_and_rate_only_the_rest():
    cats = category_tallies(
        [None, None, None, 1.0, None],
        [False, True, False, True, False],
        [False, False, False, True, True],
        ["a", "a", "a", "b", "b"],
        min_n=1,
    )
    a, b = cats
    assert (a.category, a.prompts, a.both_failed, a.n, a.wins) == ("a", 3, 2, 1, 1)
    assert a.win_rate == 1.0 and a.parse_failure_rate == pytest.approx(0.6667, abs=1e-4)
    assert (b.n, b.wins, b.losses, b.both_failed, b.win_rate) == (2, 1, 1, 0, 0.5)
    assert b.baseline_parse_failure_rate == 0.0
    (only,) = category_tallies([None], [False], [False], ["c"], min_n=1)
    assert only.win_rate is None and only.note == "too few prompts (n=0)"


def test_status_report_and_metrics_show_the_counts(tmp_path, monkeypatch):
    """The real evaluation's counts reach the status history, report.md (with what each
    column is over) and the operator's series, the both-failed prompts beside the rate."""
    from tpo_operator import metrics

    from tpo.report import write_report
    from tpo.spec import TPORunStatus, parse_spec
    from tpo.status import apply_summary

    run, _ = eval_run(tmp_path, monkeypatch, "generic", {"type": "generic"})
    result = P.run_phase("evaluate", run, 1)
    status = apply_summary(TPORunStatus(), result)
    (h,) = status.history
    assert (h.n, h.both_failed, h.eval_prompts) == (result["n"], result["both_failed"], 20)
    assert h.baseline_parse_failure_rate == result["baseline_parse_failure_rate"]
    report = write_report(run, status, parse_spec(A.read_json(run.spec))).read_text()
    counts = f"| {h.wins} / {h.ties} / {h.losses} / {h.both_failed} |"
    assert counts in report and f"| {h.n} |" in report
    assert "over the n rated prompts (wins + ties + losses; ties count half)" in report
    assert f"{h.eval_parse_failure_rate:.3f} / {h.baseline_parse_failure_rate:.3f}" in report
    series = metrics.run_series("ns", "r", status)
    it = ("ns", "r", "1")
    assert series[(metrics.EVAL_OUTCOMES, (*it, "both_failed"))] == h.both_failed
    assert series[(metrics.ITERATION_GAUGES["n"], it)] == h.n
    assert series[(metrics.ITERATION_GAUGES["baseline_parse_failure_rate"], it)] == pytest.approx(
        h.baseline_parse_failure_rate
    )
