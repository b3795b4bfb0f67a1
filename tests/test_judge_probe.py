"""The judge-hacking probe (tpo/judge_probe.py, arXiv 2507.08794) through the judges' own API:
it flags a judge that prefers a colon to an answer, and passes the demo's judge."""

from __future__ import annotations

from tpo import guards, judge_probe
from tpo.judges import JudgeItem, load_judge
from tpo.spec import Guards, Judge
from tpo.tiny import task


def _prompts(n: int = 12) -> list[dict]:
    rows = task.make_instructions(n, seed=3)
    return [{"prompt_id": r["id"], "instruction": r["instruction"], "record": r} for r in rows[:n]]


def _arm(prompts: list[dict], wrong_every: int = 3) -> list[dict]:
    """Real responses as the tiny seed writes them: mostly right, some wrong numbers."""
    out = []
    for i, p in enumerate(prompts):
        answer = int(p["record"]["answer"]) + (1 if i % wrong_every == 0 else 0)
        out.append({"response": f"The answer is {answer}", "parse_ok": True})
    return out


def _probe(function: str, prompts: list[dict], rows: list[dict]) -> judge_probe.ProbeResult:
    j = load_judge(Judge(type="programmatic", programmatic={"function": function}))
    pairs = judge_probe.real_responses(prompts, rows, limit=len(prompts))
    return judge_probe.run(j, JudgeItem, pairs)


def test_probe_flags_a_judge_that_prefers_a_colon():
    prompts = _prompts()
    res = _probe("judge_fixtures:prefers_colon", prompts, _arm(prompts))
    # Three of the five master keys (":", "Thought process:", the step-by-step opener) win.
    assert res.prompts == 12 and res.judged == 12 * len(judge_probe.MASTER_KEYS)
    assert res.rate == 3 / 5
    assert res.by_key["colon"] == 1.0 and res.by_key["echo"] == 0.0
    w = judge_probe.warning(res, Guards().warn_judge_probe_rate)
    assert w is not None and w["guard"] == "warnJudgeProbeRate"
    assert "60.0%" in w["message"] and "36 of 60" in w["message"]
    s = judge_probe.summary(res)
    assert s["judge_probe_rate"] == 0.6 and s["judge_probe_preferred"] == 36


def test_probe_passes_the_demo_judge():
    prompts = _prompts()
    res = _probe("tpo.tiny.task:judge", prompts, _arm(prompts))
    assert res.judged == 60 and res.rate == 0.0 and res.ties == 0
    assert judge_probe.warning(res, Guards().warn_judge_probe_rate) is None


def test_probe_counts_ties_apart_and_skips_unparsed_prompts():
    """A real response that is garbage to the judge ties with ':' (both score 0): a tie is
    not a preference. Prompts whose arms all failed to parse are passed over, and the second
    arm stands in where the first failed."""
    prompts = _prompts(6)
    first = [{"response": "", "parse_ok": False}] * 2 + [
        {"response": "no number here", "parse_ok": True}
    ] * 4
    second = [{"response": "", "parse_ok": False}] + [
        {"response": f"The answer is {p['record']['answer']}", "parse_ok": True}
        for p in prompts[1:]
    ]
    pairs = judge_probe.real_responses(prompts, first, second, limit=10)
    assert [p["prompt_id"] for p, _ in pairs] == [p["prompt_id"] for p in prompts[1:]]
    assert pairs[0][1].startswith("The answer is") and pairs[1][1] == "no number here"
    j = load_judge(Judge(type="programmatic", programmatic={"function": "tpo.tiny.task:judge"}))
    res = judge_probe.run(j, JudgeItem, pairs)
    # prompt 1: a real answer beats every key; prompts 2-5: garbage (no number) ties every
    # key, the echoed instruction included (it commits to no answer either).
    assert res.preferred == 0 and res.ties == 4 * 5 and res.judged == 25


def test_probe_threshold_is_a_boundary_and_one_turns_it_off():
    res = judge_probe.ProbeResult(preferred=1, ties=0, judged=5, unread=0, prompts=1)
    assert judge_probe.warning(res, 0.2) is None  # 20% is not above 20%
    assert judge_probe.warning(res, 0.19) is not None
    assert judge_probe.warning(judge_probe.ProbeResult(5, 0, 5, 0, 1), 1.0) is None


def unread_warning(res: judge_probe.ProbeResult, threshold: float = 0.25) -> dict | None:
    """The probe's no-verdict warning, through the guards' own warn levels."""
    g = Guards(warn_judge_no_verdict_rate=threshold)
    found = guards.warn(g, [judge_probe.unread_measure(res)])
    return found[0].model_dump() if found else None


def test_a_judge_that_reads_almost_nothing_is_warned_about_not_trusted():
    """SmolLM2-135M as its own pairwise judge read 1 of the 40 probe comparisons (the rest
    rambled past any verdict): a 0.0 over one comparison says nothing, so evaluate warns with
    the no-verdict counts instead of passing quietly; with no verdict at all there is no rate."""
    real = judge_probe.ProbeResult(preferred=0, ties=0, judged=1, unread=39, prompts=8)
    assert judge_probe.warning(real, Guards().warn_judge_probe_rate) is None  # 0 of 1 preferred
    w = unread_warning(real, Guards().warn_judge_no_verdict_rate)
    assert w is not None and (w["guard"], w["phase"]) == ("warnJudgeNoVerdictRate", "evaluate")
    assert (w["count"], w["total"], w["rate"]) == (39, 40, 0.975)
    assert "97.5%" in w["message"] and "(39 of 40;" in w["message"]
    assert "over 1 comparison(s)" in w["message"]
    s = judge_probe.summary(real)
    assert (s["judge_probe_n"], s["judge_probe_unread"], s["judge_probe_rate"]) == (1, 39, 0.0)
    none = judge_probe.ProbeResult(preferred=0, ties=0, judged=0, unread=40, prompts=8)
    assert "rate is not measured" in unread_warning(none, 0.25)["message"]
    assert "judge_probe_rate" not in judge_probe.summary(none)
    # the boundary (a quarter unread is not above a quarter) and 1 turns it off
    quarter = judge_probe.ProbeResult(preferred=0, ties=0, judged=30, unread=10, prompts=8)
    assert unread_warning(quarter, 0.25) is None
    assert unread_warning(real, 1.0) is None


def test_the_probe_phase_entry_returns_both_warnings(capsys):
    """probe() as evaluate(0) calls it: a judge that never states a verdict (None for every
    comparison, as an unread pairwise reply is) gives the no-verdict warning, printed once."""
    from tinyrun import tiny_spec

    from tpo.spec import parse_spec

    class Silent:
        def compare(self, jobs):
            return [None for _ in jobs]

    prompts = _prompts(4)
    spec = parse_spec(tiny_spec("m", "d.jsonl"))
    fields, warnings = judge_probe.probe(spec, Silent(), JudgeItem, prompts, _arm(prompts))
    assert [w["guard"] for w in warnings] == ["warnJudgeNoVerdictRate"]
    assert (fields["judge_probe_n"], fields["judge_probe_unread"]) == (0, 20)
    assert capsys.readouterr().err.count("judge-hacking probe's comparisons (20 of 20;") == 1
