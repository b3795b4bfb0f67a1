"""Truncation and the guards on REAL outputs: the generate phase replays SmolLM2-135M-Instruct's
committed completions (tests/data/smollm2/generations.jsonl: text, token count and vLLM's
finish_reason, exactly as the engine returned them) in place of the engine, and must fail the
run there with the measured rate instead of succeeding on noise."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from smollm2 import arm

from tpo import guards
from tpo import phases as P
from tpo.artifacts import RunDir, read_jsonl
from tpo.errors import EXIT_BAD_INPUT
from tpo.generate import Completion
from tpo.prompts import wrap
from tpo.spec import GENERIC_SEPARATOR, Guards, ThoughtPrompt
from tpo.thoughts import split_output, truncated


class Replay:
    """The engine's real completions, by the instruction in the prompt it was given."""

    def __init__(self, arm_name: str, tp: ThoughtPrompt):
        self.by_prompt: dict[str, list[Completion]] = {}
        for r in arm(arm_name):
            key = wrap(tp, r["instruction"])
            comp = Completion(r["text"], r["tokens"], r["finish_reason"])
            self.by_prompt.setdefault(key, []).append(comp)
        self.calls: list[dict] = []

    def generate(self, prompts, **kw):
        self.calls.append(kw)
        return [self.by_prompt[p][: kw["n"]] for p in prompts]

    def count_tokens(self, texts):
        return [len(t.split()) for t in texts]

    def close(self):
        pass


def real_run(tmp_path: Path, monkeypatch, arm_name: str, **spec_over) -> tuple[RunDir, Replay]:
    rows = arm(arm_name)
    instructions = sorted({r["instruction"] for r in rows})
    ds = tmp_path / "mtbench.jsonl"
    ds.write_text("".join(json.dumps({"instruction": i}) + "\n" for i in instructions))
    model = tmp_path / "smollm2"
    model.mkdir()
    (model / "config.json").write_text("{}")
    tp = spec_over.pop("thoughtPrompt", {"type": "generic"})
    spec = {
        "model": {"path": str(model)},
        "dataset": {"path": str(ds), "promptsPerIteration": 20, "evalPrompts": 4},
        "thoughtPrompt": tp,
        "iterations": 1,
        "generation": {"samples": 2, "maxTokens": 384, "backend": "transformers"},
        "judge": {"type": "programmatic", "programmatic": {"function": "judge_fixtures:by_length"}},
        **spec_over,
    }
    replay = Replay(arm_name, ThoughtPrompt(**tp))
    monkeypatch.setattr("tpo.generate.load_generator", lambda *a, **k: replay)
    run = RunDir(tmp_path / "run")
    P.run_phase("prepare", run, 0, spec_json=json.dumps(spec))
    return run, replay


def test_truncated_real_outputs_are_failures_of_their_own_kind():
    """mtbench-93 sample 1 holds the separator on a line of its own but was cut at 384
    tokens: the plain split would have let the judge choose its cut response."""
    (row,) = [r for r in arm("generic") if (r["id"], r["sample"]) == ("mtbench-93", 1)]
    assert row["finish_reason"] == "length"
    s = split_output(row["text"], GENERIC_SEPARATOR)
    assert s.parse_ok
    t = truncated(s, row["finish_reason"])
    assert (t.parse_ok, t.failure) == (False, "truncated") and t.response == s.response


def test_generate_on_real_outputs_fails_with_the_measured_rate(tmp_path, monkeypatch, capsys):
    run, _ = real_run(tmp_path, monkeypatch, "generic")
    args = SimpleNamespace(
        name="generate", run_dir=str(run.path), iteration=1, shard=None, spec=None
    )
    code = P.main(args)
    err = capsys.readouterr().err
    assert code == EXIT_BAD_INPUT, err
    # 20 prompts x 2 real samples; the rates are the ones measured on them (samples kept).
    samples = read_jsonl(run.samples(1, 0))
    failed = sum(not r["parse_ok"] for r in samples)
    cut = sum(r["failure"] == "truncated" for r in samples)
    assert len(samples) == 40 and cut == sum(r["finish_reason"] == "length" for r in samples)
    pct = f"{100 * failed / 40:.1f}%".replace(".0%", "%")
    assert f"generate: {pct} of samples failed to parse ({failed} of 40: " in err, err
    assert f"{cut} truncated" in err and "guards.maxParseFailureRate 90%" in err
    assert not run.done("generate", 1, 0).exists()


def test_softer_levels_warn_in_the_summary(tmp_path, monkeypatch):
    run, replay = real_run(
        tmp_path,
        monkeypatch,
        "generic-prefill",
        thoughtPrompt={"type": "generic", "prefill": "Here is my thought process:"},
        guards={"maxParseFailureRate": 1.0},
    )
    summary = P.run_phase("generate", run, 1)
    assert replay.calls[0]["prefill"] == "Here is my thought process:"
    assert summary["truncated"] == sum(
        r["finish_reason"] == "length" for r in read_jsonl(run.samples(1, 0))
    )
    assert summary["truncated_rate"] == round(summary["truncated"] / 40, 4)
    warned = " ".join(w["message"] for w in summary["warnings"])
    guards_crossed = {w["guard"] for w in summary["warnings"]}
    assert guards_crossed >= {"warnParseFailureRate", "warnTruncatedRate"}
    assert "of samples failed to parse" in warned and "guards.warnParseFailureRate 50%" in warned
    assert "of samples were cut at maxTokens" in warned


def test_judge_guards_name_rate_threshold_and_cause():
    """The judge's replies measured on the committed real ones: none holds a verdict."""
    with pytest.raises(guards.GuardTripped) as e:
        guards.check(Guards(), guards.judge_measures(replies=20, unread=20, pairs=3, prompts=10))
    assert str(e.value).startswith(
        "judge: 100% of judge replies had no verdict (20 of 20; guards.maxJudgeNoVerdictRate 90%)"
    )
    low = guards.check(Guards(), guards.judge_measures(replies=20, unread=0, pairs=2, prompts=10))
    assert low == [
        "warning: judge: 20% of prompts gave a preference pair (2 of 10; guards.warnPairYield "
        "25%): most prompts have no parsed sample, or the judge scored their samples alike"
    ]
    with pytest.raises(guards.GuardTripped, match=r"train: 0 preference pair\(s\)"):
        guards.check_pairs(Guards(), 0, 1)
