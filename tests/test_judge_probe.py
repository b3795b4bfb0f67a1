"""The judge-hacking probe (tpo/judge_probe.py, arXiv 2507.08794) through the judges' own API:
it flags a judge that prefers a colon to an answer, and passes the demo's judge."""

from __future__ import annotations

from tpo import judge_probe
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
