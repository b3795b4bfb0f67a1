"""The length-controlled win rate through the real evaluate phase, on tiny untrained models
(tests/tinyrun.py): M(1), a second random model, against the seed, both with the thought
prompt, judged by a judge that likes length and nothing else (judge_fixtures.longer). LC must
be fitted on what the judge saw, find the judge's bias, and land in eval.json, the status
history (overall and per category), report.md and the operator's series."""

from __future__ import annotations

import json

import pytest
from tinyrun import tiny_spec, write_dataset

from tpo import artifacts as A
from tpo import phases as P
from tpo.artifacts import RunDir
from tpo.length_control import lc_win_rate, length_difference
from tpo.spec import TPORunStatus, parse_spec
from tpo.thoughts import split_output

pytestmark = pytest.mark.slow  # two tiny models generate 96 outputs: 20-90 s on 2 cores, by load


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, tiny_lm, tiny_tokenizer):
    from tpo.tiny.model import build_causal_lm

    tmp = tmp_path_factory.mktemp("lc-eval")
    ds = write_dataset(tmp / "ds.jsonl", n=60)
    spec = tiny_spec(
        tiny_lm,
        ds,
        iterations=1,
        judge={"type": "programmatic", "programmatic": {"function": "judge_fixtures:longer"}},
        evaluation={"baseline": "seed", "minCategoryPrompts": 10, "temperature": 1.0},
        guards={"ifevalPrompts": 0, "judgeProbePrompts": 0},  # not what this test is about
    )
    spec["dataset"].update(evalPrompts=48, promptsPerIteration=6)
    run = RunDir(tmp / "run")
    P.run_phase("prepare", run, 0, spec_json=json.dumps(spec))
    # M(1) as train leaves it: here another random model, so both arms' lengths overlap.
    build_causal_lm(run.model(1), tiny_tokenizer, layers=2, seed=1)
    A.write_done(run.done("train", 1), {"phase": "train", "iteration": 1}, [run.model(1)])
    return run, P.run_phase("evaluate", run, 1)


def test_lc_is_fitted_on_what_the_judge_saw(evaluated):
    """Recomputed from the eval outputs (responses split off their thoughts, both sides
    parsed or decided by rule), the GLM gives the phase's numbers; the judge's bias shows."""
    run, result = evaluated
    rows = A.read_jsonl(run.eval_outputs(1))
    credit, diffs = [], []
    for r in rows:
        if r["outcome"] is None:
            continue
        c = split_output(r["candidate"], "a")
        b = split_output(r["baseline"], "a")
        both = r["candidate_parse_ok"] and r["baseline_parse_ok"]
        credit.append(r["outcome"])
        diffs.append(length_difference(c.response, b.response) if both else None)
    assert len(credit) == result["n"] >= 30
    assert sum(d is not None for d in diffs) >= 20  # most were judged, not decided by rule
    lc = lc_win_rate(credit, diffs, seed=0)
    assert result["lc_win_rate"] == pytest.approx(lc.rate, abs=1e-4)
    assert result["lc_win_rate_low"] <= result["lc_win_rate"] <= result["lc_win_rate_high"]
    assert result["lc_length_weight"] > 2.0  # the judge rewards length, and the fit sees it
    # Length is all this judge sees: at equal length, neither model is preferred.
    assert result["lc_win_rate_low"] <= 0.5 <= result["lc_win_rate_high"]


def test_lc_reaches_status_report_and_metrics(evaluated):
    from tpo_operator import metrics

    from tpo.report import write_report
    from tpo.status import apply_summary

    run, result = evaluated
    status = apply_summary(TPORunStatus(), result)
    (h,) = status.history
    assert (h.lc_win_rate, h.lc_win_rate_low, h.lc_win_rate_high) == (
        result["lc_win_rate"],
        result["lc_win_rate_low"],
        result["lc_win_rate_high"],
    )
    rated = [c for c in h.categories if c.win_rate is not None]
    assert rated, "some category has a raw rate (minCategoryPrompts 10)"
    for c in h.categories:  # LC exactly where a raw rate is
        assert (c.lc_win_rate is None) == (c.win_rate is None)
        if c.lc_win_rate is not None:
            assert c.lc_win_rate_low <= c.lc_win_rate <= c.lc_win_rate_high

    report = write_report(run, status, parse_spec(A.read_json(run.spec))).read_text()
    cell = f"{h.lc_win_rate:.3f} [{h.lc_win_rate_low:.3f}, {h.lc_win_rate_high:.3f}]"
    assert f"| {cell} | {h.n} |" in report  # the summary table, beside the raw rate and n
    assert "LC win rate [95% CI]" in report and "length-controlled-win-rate.md" in report
    c = rated[0]
    assert f"{c.lc_win_rate:.3f} [{c.lc_win_rate_low:.3f}, {c.lc_win_rate_high:.3f}]" in report

    series = metrics.run_series("ns", "r", status)
    it = ("ns", "r", "1")
    assert series[(metrics.ITERATION_GAUGES["lc_win_rate"], it)] == pytest.approx(h.lc_win_rate)
    assert series[(metrics.ITERATION_GAUGES["lc_win_rate_high"], it)] == pytest.approx(
        h.lc_win_rate_high
    )
    assert series[(metrics.CATEGORY_LC_WIN_RATE, (*it, c.category))] == pytest.approx(c.lc_win_rate)


def test_the_summary_with_lc_fits_a_termination_message(evaluated):
    _, result = evaluated
    line = P.compact(result)
    assert len(line.encode()) <= 4096
    assert json.loads(line)["lc_win_rate"] == result["lc_win_rate"]


def test_tpo_run_prints_lc_beside_the_raw_rate(evaluated):
    from tpo.local import describe

    _, result = evaluated
    line = describe(result)
    assert f"win_rate={result['win_rate']:.3g}" in line
    assert f"lc_win_rate={result['lc_win_rate']:.3g}" in line
    assert f"lc_win_rate_high={result['lc_win_rate_high']:.3g}" in line
