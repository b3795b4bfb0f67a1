"""Guard warnings through the pure planner: a phase whose summary carries guard warnings
(tpo.guards.warn, the records the phases write) turns the run's QualityWarning condition True,
reason naming the guard, and posts ONE Warning Event per distinct warning, not one per
reconcile; a run without warnings says False / NoWarnings. The metric counts them per guard."""

from __future__ import annotations

from condition_rules import problems
from harness import manifest, summary
from tpo_operator import metrics
from tpo_operator.reconcile import CreateJob, Event, ObservedJob, plan

from tpo import guards
from tpo.spec import Guards, TPORunStatus, parse_manifest

NOW = "2026-01-01T00:00:00Z"
_, SPEC = parse_manifest(manifest(iterations=2))


def _warnings(phase: str) -> list[dict]:
    """Real guard records: generate with 60% parse failures, judge with a 20% pair yield."""
    if phase == "generate":
        ok = [i >= 6 for i in range(10)]
        rows = [{"parse_ok": o, "failure": None if o else "no_separator"} for o in ok]
        measures = guards.generate_measures(rows, prefilled=False, budgeted=False)
    else:
        measures = guards.judge_measures(replies=20, unread=0, pairs=2, prompts=10)
    return [w.model_dump() for w in guards.warn(Guards(), measures)]


def _job(name: str, phase: str, t: int, warn: bool) -> ObservedJob:
    warns = warn and (phase, t) in (("generate", 1), ("judge", 1))
    extra = {"warnings": _warnings(phase)} if warns else {}
    return ObservedJob(
        name, phase, t, succeeded=1, complete=True, summaries=(summary(phase, t, **extra),)
    )


def drive(warn: bool = True):
    """The whole run, every Job completing before the next pass; also replans each pass's
    input a second time (a repeated reconcile) to see it post nothing new."""
    status, jobs, events, statuses = TPORunStatus(), {}, [], []
    for _ in range(50):
        p = plan(SPEC, status, list(jobs.values()), NOW, "demo")
        again = plan(SPEC, p.status, list(jobs.values()), NOW, "demo")
        assert not [e for e in again.of(Event) if e.reason == "QualityWarning"]
        status = p.status
        events += p.of(Event)
        statuses.append(status)
        for a in p.of(CreateJob):
            jobs[a.name] = _job(a.name, a.phase, a.iteration, warn)
        if status.phase in ("Succeeded", "Failed"):
            return status, events, statuses
    raise AssertionError("run did not finish")


def _cond(status: TPORunStatus):
    return next((c for c in status.conditions if c.type == "QualityWarning"), None)


def test_warnings_become_one_event_each_and_a_condition():
    status, events, statuses = drive()
    assert status.phase == "Succeeded"
    warned = [e for e in events if e.reason == "QualityWarning"]
    expected = _warnings("generate") + _warnings("judge")
    assert len(expected) == 2  # parse failures (generate) and pair yield (judge)
    assert [e.type for e in warned] == ["Warning", "Warning"]
    assert [e.message for e in warned] == [f"iteration 1: {w['message']}" for w in expected]
    assert "guards.warnParseFailureRate 50%" in warned[0].message
    assert "20% of prompts gave a preference pair (2 of 10; guards.warnPairYield 25%)" in (
        warned[1].message
    )
    cond = _cond(status)
    assert cond is not None and cond.status == "True"
    assert cond.reason == "ParseFailureRate,PairYield"
    assert all(w["message"] in cond.message for w in expected)
    h1 = next(h for h in status.history if h.iteration == 1)
    assert [w.guard for w in h1.warnings] == ["warnParseFailureRate", "warnPairYield"]
    assert [w.rate for w in h1.warnings] == [0.6, 0.2]
    for st in statuses:
        assert problems(st) == [], problems(st)
    # before iteration 1's generate was recorded the run had none
    early = next(st for st in statuses if st.history and _cond(st) is not None)
    assert (_cond(early).status, _cond(early).reason) == ("False", "NoWarnings")
    series = metrics.run_series("ns", "demo", status)
    assert series[(metrics.GUARD_WARNINGS, ("ns", "demo", "1", "warnParseFailureRate"))] == 1.0
    assert series[(metrics.GUARD_WARNINGS, ("ns", "demo", "1", "warnPairYield"))] == 1.0


def test_a_run_without_warnings_says_so():
    status, events, _ = drive(warn=False)
    assert not [e for e in events if e.reason == "QualityWarning"]
    cond = _cond(status)
    assert cond is not None and (cond.status, cond.reason) == ("False", "NoWarnings")
    assert not any(k[0] is metrics.GUARD_WARNINGS for k in metrics.run_series("n", "d", status))


def test_the_final_message_says_what_the_win_rate_is_over():
    status, _, _ = drive(warn=False)
    last = summary("evaluate", 2)
    assert status.message == (
        f"2 iteration(s) done, win rate {last['win_rate']:.3f} over {last['n']} rated "
        f"prompt(s) ({last['both_failed']} with neither side parsed)"
    )


def test_shards_warnings_are_all_kept_and_recording_twice_changes_nothing():
    from tpo.status import apply_summary, merge_shards, set_quality

    one, two = (
        summary("generate", 1, shard=i, shards=2, warnings=_warnings("generate")) for i in (0, 1)
    )
    two["warnings"][0]["message"] += " (shard 1)"
    merged = merge_shards([one, two])
    assert [w["message"] for w in merged["warnings"]] == [
        one["warnings"][0]["message"],
        two["warnings"][0]["message"],
    ]
    status = set_quality(apply_summary(TPORunStatus(), merged), NOW)
    again = set_quality(apply_summary(status, merged), NOW)
    assert again == status and len(status.history[0].warnings) == 2
    cleared = set_quality(apply_summary(status, {**merged, "warnings": []}), NOW)
    assert cleared.history[0].warnings == []
    assert _cond(cleared).status == "False" and _cond(cleared).reason == "NoWarnings"


def test_a_summary_too_big_for_the_termination_message_keeps_its_warnings():
    """The operator reads summaries from 4096-byte termination messages: trimming one drops
    categories before the guard warnings the QualityWarning condition is made from."""
    import json

    from tpo.phases import TERMINATION_LIMIT, compact

    cat = {"category": "c" * 200, "n": 30, "winRate": 0.5, "prompts": 32, "wins": 10}
    big = summary(
        "evaluate",
        1,
        categories=[{**cat, "category": f"{i:03}" * 66} for i in range(30)],
        compare={"run": "twin", "win_rate": 0.5, "categories": [cat] * 30},
        warnings=_warnings("generate") + _warnings("judge"),
    )
    line = compact(big)
    assert len(line.encode()) <= TERMINATION_LIMIT
    got = json.loads(line)
    assert got["warnings"] == big["warnings"] and got["win_rate"] == big["win_rate"]
    assert 0 < len(got["categories"]) <= 8  # trimmed, not dropped, while that fits
