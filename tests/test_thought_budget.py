"""Thought budget (generation.thoughtBudget) and two-arm comparison (evaluation.compareWith).

The two-stage logic is checked against a scripted backend (every branch, exact requests); the
real engines are checked in test_generate.py (shared engines); here the phases run in-process
on the tiny untrained LM with the transformers backend (no engine start).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from tinyrun import tiny_spec, write_dataset

from tpo import artifacts as A
from tpo.artifacts import RunDir
from tpo.errors import BadInput
from tpo.generate import Completion, ThoughtBudget, forced_prefix, generate_budgeted
from tpo.phases import run_phase
from tpo.report import write_report
from tpo.scoring import overrun_penalty
from tpo.spec import SpecError, TPORunStatus, parse_spec
from tpo.status import apply_summary

SEP = "=>"


class CharTokenizer:
    """One token per character: token counts are string lengths."""

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(ch) for ch in text]}


class Scripted:
    """A backend whose stage-1 and stage-2 outputs are scripted; records every request."""

    def __init__(self, stage1: list[list[Completion]], reply: str = "ok"):
        self.tokenizer = CharTokenizer()
        self.stage1, self.reply, self.calls = stage1, reply, []

    def _run(self, ids, *, n, temperature, top_p, max_tokens, seeds, stop):
        self.calls.append(dict(ids=ids, n=n, max_tokens=max_tokens, seeds=seeds, stop=stop))
        if len(self.calls) == 1:
            return self.stage1
        return [[Completion(self.reply[:m], min(len(self.reply), m), "stop")] for m in max_tokens]


def test_two_stages_force_the_separator_only_where_the_budget_ran_out():
    stage1 = [
        [
            Completion("abcd", 4, "length"),  # budget reached: separator forced
            Completion("ab", 4, "stop", hit_stop=True),  # emitted the separator itself
        ],
        [
            Completion("xy", 3, "stop"),  # EOS inside the thought: stays a parse failure
            Completion("abc ", 4, "length"),  # ends in a space: no extra newline
        ],
    ]
    g = Scripted(stage1)
    out = generate_budgeted(
        g, [[1, 2], [3]], n=2, temperature=0.8, top_p=0.9, max_tokens=10, seed=5,
        budget=ThoughtBudget(4, SEP),
    )  # fmt: skip
    s1, s2 = g.calls
    assert s1["max_tokens"] == [4, 4] and s1["stop"] == SEP and s1["n"] == 2
    assert s1["seeds"] == [5, 6]
    # stage 2: one request per continued sample, prompt + thought + separator, tokens left
    prefixes = ["abcd\n=>", "ab=>", "abc =>"]
    assert s2["n"] == 1 and s2["stop"] is None
    want = [[1, 2, *map(ord, prefixes[0])], [1, 2, *map(ord, prefixes[1])]]
    assert s2["ids"] == [*want, [3, *map(ord, prefixes[2])]]
    assert s2["max_tokens"] == [10 - len(p) for p in prefixes]
    assert len(set(s2["seeds"])) == 3
    assert [c.text for c in out[0]] == ["abcd\n=>ok", "ab=>ok"]
    assert [c.forced for c in out[0]] == [True, False]
    # untouched: no separator, no response
    assert (out[1][0].text, out[1][0].forced, out[1][0].thought_token_count) == ("xy", False, 3)
    assert [c.thought_token_count for c in out[0]] == [4, 4]
    assert out[1][1].text == "abc =>ok" and out[1][1].forced
    assert all(c.token_count <= 10 for o in out for c in o)


def test_no_tokens_left_gives_an_empty_response_and_greedy_is_generated_once():
    g = Scripted([[Completion("abcdefgh", 8, "length")]])
    out = generate_budgeted(
        g, [[1]], n=3, temperature=0.0, top_p=1.0, max_tokens=9, seed=0,
        budget=ThoughtBudget(8, SEP),
    )  # fmt: skip
    assert len(g.calls) == 1  # "abcdefgh\n=>" is 11 tokens: nothing left for stage 2
    assert g.calls[0]["n"] == 1  # greedy: one sample, repeated
    assert [c.text for c in out[0]] == ["abcdefgh\n=>"] * 3
    assert forced_prefix("", SEP) == SEP


def test_overrun_penalty():
    assert overrun_penalty([1.0, None, 0.5], [True, True, False], 0.3) == [0.7, None, 0.5]
    assert overrun_penalty([1.0], [True], 0.0) == [1.0]
    with pytest.raises(ValueError, match="forced"):
        overrun_penalty([1.0], [True, False], 0.1)


def base_spec(tiny_lm: Path, ds: Path, *, data: dict | None = None, **over) -> dict:
    spec = tiny_spec(tiny_lm, ds, **over)
    spec["dataset"].update(data or {})
    return spec


@pytest.mark.parametrize(
    ("over", "field"),
    [
        ({"generation": {"thoughtBudget": 24}}, "generation.thoughtBudget"),  # = maxTokens
        ({"generation": {"thoughtBudget": 0}}, "spec.generation.thoughtBudget"),
        ({"generation": {"thoughtBudgetInPrompt": True}}, "generation.thoughtBudgetInPrompt"),
        (
            {"judge": {"lengthControl": {"overrunPenalty": 0.5}}},
            "judge.lengthControl.overrunPenalty",
        ),
        (
            {"thoughtPrompt": {"type": "none"}, "generation": {"thoughtBudget": 8}},
            "generation.thoughtBudget",
        ),
        ({"evaluation": {"compareWith": "Not_A_Name"}}, "spec.evaluation.compareWith"),
        ({"evaluation": {"minCategoryPrompts": 0}}, "spec.evaluation.minCategoryPrompts"),
    ],
)
def test_bad_budget_and_compare_specs_name_the_field(tmp_path, tiny_lm, over, field):
    data = base_spec(tiny_lm, tmp_path / "ds.jsonl", **over)
    if "thoughtPrompt" in over:
        data["thoughtPrompt"] = over["thoughtPrompt"]  # replaced, not merged
    with pytest.raises(SpecError) as e:
        parse_spec(data)
    assert field in str(e.value)


@pytest.fixture
def budgeted(tmp_path, tiny_lm):
    ds = write_dataset(tmp_path / "ds.jsonl", n=40)
    spec = base_spec(
        tiny_lm,
        ds,
        generation={"thoughtBudget": 4, "maxTokens": 16},
        data={"evalPrompts": 24, "promptsPerIteration": 6},
        judge={
            "type": "programmatic",
            "programmatic": {"function": "judge_fixtures:by_length"},
            "lengthControl": {"overrunPenalty": 5.0},
        },
    )
    run = RunDir(tmp_path / "runs" / "default" / "a")
    run_phase("prepare", run, 0, spec_json=__import__("json").dumps(spec))
    return run, spec


def test_generate_and_judge_with_a_budget(budgeted, monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    run, _ = budgeted
    s = run_phase("generate", run, 1)
    rows = A.read_jsonl(run.samples(1, 0))
    assert s["thought_budget"] == 4 and len(rows) == 24
    forced = [r for r in rows if r["forced"]]
    assert forced, "an untrained model rarely writes 'a' within 4 tokens: some must be forced"
    for r in rows:
        assert r["tokens"] <= 16
        assert 1 <= r["thought_generated_tokens"] <= 4  # the budget, as generated
        if r["forced"]:
            assert r["thought_generated_tokens"] == 4
            head, sep, _ = r["text"].partition("a")  # the thought: up to the first separator
            assert sep and head.endswith("\n")  # forced on a line of its own
            assert "a" not in head
        elif "a" not in r["text"]:
            assert r["finish_reason"] == "stop"  # EOS inside the thought: not forced
    assert s["forced_thought_rate"] == pytest.approx(len(forced) / len(rows), abs=1e-4)
    within = sum(r["thought_tokens"] <= 4 for r in rows) / len(rows)
    # re-tokenised thoughts (what the status reports) of an untrained model's random tokens
    # often count more than generated (non-canonical merges; a cut UTF-8 character re-encodes
    # as 3 bytes): the rate is what the tokenizer says, not the generated count
    assert s["within_budget_rate"] == pytest.approx(within, abs=1e-4)
    status = apply_summary(TPORunStatus(), s)
    assert status.history[0].within_budget_rate == s["within_budget_rate"]

    run_phase("judge", run, 1)
    scores = A.read_jsonl(run.scores(1, 0))
    by = {(r["prompt_id"], r["sample"]): r for r in rows}
    for sc in scores:
        if sc["chosen"]:
            # penalty 5 (standardised units): a forced sample only wins when all valid are forced
            group = [x for x in scores if x["prompt_id"] == sc["prompt_id"] and x["parse_ok"]]
            if by[(sc["prompt_id"], sc["sample"])]["forced"]:
                assert all(by[(x["prompt_id"], x["sample"])]["forced"] for x in group)


def _with_model(run: RunDir, tiny_lm: Path, t: int) -> None:
    """M(t) without training (the untrained LM): evaluate needs only a model there."""
    shutil.copytree(tiny_lm, run.model(t))


def test_compare_with_another_run_per_category_and_notes(tmp_path, tiny_lm, monkeypatch):
    import json

    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    ds = write_dataset(tmp_path / "ds.jsonl", n=60)
    root = tmp_path / "runs" / "default"
    twin = base_spec(tiny_lm, ds, data={"evalPrompts": 48}, iterations=1)
    twin["thoughtPrompt"] = {"type": "none"}  # the direct twin: same everything, no thoughts
    tpo = base_spec(
        tiny_lm,
        ds,
        data={"evalPrompts": 48},
        iterations=2,
        # sampled: greedy outputs of the untrained LM are mostly the same parse failure
        evaluation={"compareWith": "twin", "minCategoryPrompts": 12, "temperature": 1.0},
    )
    twin_run, tpo_run = RunDir(root / "twin"), RunDir(root / "tpo")
    run_phase("prepare", twin_run, 0, spec_json=json.dumps(twin))
    run_phase("prepare", tpo_run, 0, spec_json=json.dumps(tpo))
    for run in (twin_run, tpo_run):
        _with_model(run, tiny_lm, 1)
    _with_model(tpo_run, tiny_lm, 2)

    e1 = run_phase("evaluate", tpo_run, 1)
    cmp = e1["compare"]
    # a prompt where neither side parsed is counted, not rated (no half win)
    assert cmp["run"] == "twin" and cmp["n"] + cmp["both_failed"] + cmp["judge_errors"] == 48
    assert cmp["wins"] + cmp["ties"] + cmp["losses"] == cmp["n"] >= 40
    assert cmp["wins"] + cmp["losses"] > 0
    assert 0 <= cmp["win_rate_low"] <= cmp["win_rate"] <= cmp["win_rate_high"] <= 1
    cats = {c["category"]: c for c in cmp["categories"]}
    assert set(cats) == {"add", "sub", "rev", "sort"}
    assert sum(c["n"] for c in cats.values()) == cmp["n"]
    assert sum(c["prompts"] for c in cats.values()) == 48
    for c in cats.values():
        if c["n"] >= 12:  # minCategoryPrompts
            assert c["winRateLow"] <= c["winRate"] <= c["winRateHigh"]
        else:
            assert "winRate" not in c and c["note"] == f"too few prompts (n={c['n']})"
    assert any(c["n"] >= 12 for c in cats.values())
    rows = A.read_jsonl(tpo_run.eval_outputs(1))
    assert all("other" in r for r in rows)
    rated = [r for r in rows if r["other_outcome"] is not None]
    assert len(rated) == cmp["n"]
    # the twin answers directly: its outputs carry no thought
    assert cmp["mean_thought_tokens"] == 0 and cmp["mean_response_tokens"] > 0
    assert e1["compare"]["win_rate"] == pytest.approx(
        sum(r["other_outcome"] for r in rated) / len(rated), abs=1e-4
    )

    e2 = run_phase("evaluate", tpo_run, 2)  # the twin has only 1 iteration: a note
    assert e2["compare"] == {"run": "twin", "note": "run twin has only 1 iteration(s)"}

    status = TPORunStatus()
    for s in (e1, e2):
        status = apply_summary(status, s)
    report = write_report(tpo_run, status, parse_spec(tpo)).read_text()
    assert "## Two arms: this run vs `twin`" in report
    assert f"{cmp['win_rate']:.3f} [{cmp['win_rate_low']:.3f}, {cmp['win_rate_high']:.3f}]" in (
        report
    )
    assert "not compared: run twin has only 1 iteration(s)" in report
    for cat, c in cats.items():
        assert f"| {cat} | {c['n']} |" in report


def test_compare_with_itself_is_bad_input_and_small_categories_say_so(tmp_path, tiny_lm):
    import json

    ds = write_dataset(tmp_path / "ds.jsonl")
    spec = tiny_spec(tiny_lm, ds, evaluation={"compareWith": "me"})
    run = RunDir(tmp_path / "runs" / "default" / "me")
    run_phase("prepare", run, 0, spec_json=json.dumps(spec))
    _with_model(run, tiny_lm, 1)
    with pytest.raises(BadInput, match="compareWith"):
        run_phase("evaluate", run, 1)
    status = apply_summary(
        TPORunStatus(),
        {
            "phase": "evaluate",
            "iteration": 1,
            "win_rate": 0.5,
            "categories": [{"category": "add", "n": 7, "note": "too few prompts (n=7)"}],
        },
    )
    report = write_report(run, status, parse_spec(spec)).read_text()
    assert "| add | 7 | too few prompts (n=7) |" in report
