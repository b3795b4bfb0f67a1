"""The embedded example's ingredients: the digit task, its judge, the seed builder, the manifest.

The seed build here is a reduced one (2 layers, a few hundred SFT examples) through the same
`build()` the demo uses, with real TRL SFT and a real reload; the full-size numbers are measured
by the demo itself (README).
"""

from __future__ import annotations

import random
import time
from argparse import Namespace
from collections import Counter
from pathlib import Path

import pytest
import yaml

from tpo import artifacts as A
from tpo.spec import GENERIC_SEPARATOR, GENERIC_THOUGHT_PROMPT, parse_manifest
from tpo.thoughts import split_output
from tpo.tiny import seed, task

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "tiny-cpu.yaml"


def _solve(category: str, ops: dict) -> str:
    """An independent reference solver (not the scratchpad code)."""
    if category == "add":
        return str(ops["a"] + ops["b"])
    if category == "sub":
        return str(ops["a"] - ops["b"])
    if category == "count":
        return str(ops["s"].count(ops["d"]))
    return ops["s"][::-1]


# --------------------------------------------------------------------------- task


def test_instructions_are_deterministic_distinct_balanced_and_right():
    a, b = task.make_instructions(400, seed=7), task.make_instructions(400, seed=7)
    assert a == b
    assert a != task.make_instructions(400, seed=8)
    assert len({r["instruction"] for r in a}) == 400
    assert len({r["id"] for r in a}) == 400
    counts = Counter(r["category"] for r in a)
    assert set(counts) == set(task.CATEGORIES) and len(counts) >= 4
    assert max(counts.values()) - min(counts.values()) <= 1
    for r in a:
        category, ops = task.parse_problem(r["instruction"])
        assert category == r["category"]
        assert r["answer"] == _solve(category, ops)


def test_exclude_keeps_sets_disjoint():
    first = task.make_instructions(300, seed=0)
    other = task.make_instructions(300, seed=1, exclude={r["instruction"] for r in first})
    assert not {r["instruction"] for r in first} & {r["instruction"] for r in other}


def test_dataset_lines_validate(tmp_path):
    path = task.write_dataset(tmp_path / "d" / "instructions.jsonl", 60, seed=3)
    rows = A.read_jsonl(path, required=("id", "instruction", "category", "answer"))
    assert rows == task.make_instructions(60, seed=3)
    for r in rows:
        assert all(isinstance(r[k], str) and r[k] for k in ("id", "instruction", "answer"))
        assert r["category"] in task.CATEGORIES


@pytest.mark.parametrize("category", task.CATEGORIES)
def test_scratchpads_lead_to_the_answer_and_slips_do_not(category):
    rng = random.Random(0)
    slipped_wrong = 0
    for _ in range(200):
        _, answer, ops = task.make_problem(category, rng)
        thought, result = task.scratchpad(category, ops)
        assert result == answer and thought.endswith(f"So {answer}.")
        steps = 3 if category in ("add", "sub") else len(ops["s"])
        _, bad = task.scratchpad(category, ops, rng.randrange(steps), rng)
        slipped_wrong += bad != answer
    assert slipped_wrong >= 190  # a slip almost always changes the answer


# --------------------------------------------------------------------------- judge


REC = {"instruction": "What is 347 + 582?", "answer": "929", "category": "add"}


@pytest.mark.parametrize(
    ("response", "lo", "hi"),
    [
        ("The answer is 929.", 1.0, 1.0),
        ("929", 1.0, 1.0),
        ("the answer is 929", 1.0, 1.0),
        ("The answer is 928.", 0.1, 0.3),
        ("The answer is 1.", 0.1, 0.3),
        ("", 0.0, 0.0),
        ("I do not know.", 0.0, 0.0),
        ("answer answer answer", 0.0, 0.0),
    ],
)
def test_judge_scores_right_wrong_garbage(response, lo, hi):
    assert lo <= task.judge(REC["instruction"], response, REC) <= hi


def test_wrong_numbers_earn_a_flat_little_never_graded_by_closeness():
    near = task.judge("", "The answer is 928.", REC)
    far = task.judge("", "The answer is 111.", REC)
    assert near == far == task.WRONG
    assert 0.0 < task.WRONG < 1.0
    rambling = "The answer is 929. " + "and more words " * 5
    assert task.judge("", rambling, REC) == 0.5


def test_judge_reads_the_response_never_the_thought():
    wrong_thought = "Here is my thought process: 7+2+0=9 c0. So 111.\n"
    right_thought = "Here is my thought process: 7+2+0=9 c0. So 929.\n"
    sep = GENERIC_SEPARATOR
    good = split_output(wrong_thought + f"{sep} The answer is 929.", sep)
    bad = split_output(right_thought + f"{sep} The answer is 111.", sep)
    assert task.judge(REC["instruction"], good.response, REC) == 1.0
    assert task.judge(REC["instruction"], bad.response, REC) < 0.5
    # The instruction is not consulted either: the record's answer decides.
    assert task.judge("What is 1 + 1?", "The answer is 929.", REC) == 1.0


def test_exact_for_accuracy():
    assert task.exact(REC, "The answer is 929.")
    assert not task.exact(REC, "The answer is 9290.")
    assert not task.exact(REC, None)


# --------------------------------------------------------------------------- seed


SMALL = seed.BuildConfig(
    sft_examples=480, instructions=40, batch_size=16, learning_rate=3e-3, layers=2
)


@pytest.fixture(scope="module")
def small_seed(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tiny-seed")
    seed.build(out, cfg=SMALL)
    return out


def test_sft_mix_is_noisy_and_uses_the_generic_prompt():
    rows = seed.sft_rows(seed.BuildConfig(sft_examples=400), exclude=set())
    users = [r["prompt"][0]["content"] for r in rows]
    outs = [r["completion"][0]["content"] for r in rows]
    prefix = GENERIC_THOUGHT_PROMPT.split("{instruction}")[0]
    thought_rows = [o for u, o in zip(users, outs, strict=True) if u.startswith(prefix)]
    assert 0.6 < len(thought_rows) / len(rows) < 0.95  # the rest: raw instructions, direct
    assert sum(GENERIC_SEPARATOR not in o for o in thought_rows) > 20  # missing separators
    assert sum(o.startswith(GENERIC_SEPARATOR) for o in thought_rows) > 10  # bare answers
    assert sum(any(u in o for u in seed.USELESS_THOUGHTS) for o in thought_rows) > 10


def test_seed_loads_and_sampling_emits_the_separator_sometimes(small_seed):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = small_seed / "model"
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    rows = A.read_jsonl(small_seed / "instructions.jsonl")
    assert len(rows) == SMALL.instructions
    user = GENERIC_THOUGHT_PROMPT.replace("{instruction}", rows[0]["instruction"])
    text = tok.apply_chat_template(
        [{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True
    )
    ids = tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    torch.manual_seed(0)
    out = model.generate(
        ids, do_sample=True, temperature=0.8, max_new_tokens=48, num_return_sequences=16
    )
    texts = tok.batch_decode(out[:, ids.shape[1] :], skip_special_tokens=True)
    assert any(GENERIC_SEPARATOR in t for t in texts), texts


def test_stamp_prevents_rebuild_and_force_rebuilds(small_seed, capsys):
    weights = small_seed / "model" / "model.safetensors"
    before = weights.stat().st_mtime_ns
    started = time.monotonic()
    seed.build(small_seed, cfg=SMALL)
    assert time.monotonic() - started < 2.0
    assert weights.stat().st_mtime_ns == before
    # A different parameter is a different seed: the stamp no longer matches.
    assert seed.BuildConfig(learning_rate=1e-3).digest() != seed.BuildConfig().digest()
    assert not seed.stamp_matches(small_seed, seed.BuildConfig(seed=1).digest())
    fast = seed.BuildConfig(**{**SMALL.__dict__, "sft_examples": 32})
    seed.build(small_seed, force=True, cfg=fast)
    assert weights.stat().st_mtime_ns != before
    assert A.read_json(small_seed / "stamp.json")["config"]["sft_examples"] == 32


# --------------------------------------------------------------------------- manifest


def test_example_manifest_parses_and_points_at_the_build():
    meta, spec = parse_manifest(yaml.safe_load(EXAMPLE.read_text()))
    assert meta["name"] == "tiny-cpu"
    assert spec.iterations == 3 and spec.generation.backend == "vllm"
    assert spec.generation.samples == 8 and spec.generation.temperature == 0.8
    assert spec.training.loss_type == ["sigmoid", "sft"] and spec.training.gpus_per_node == 0
    assert spec.dataset.eval_prompts >= 300 and spec.dataset.category_field == "category"
    need = spec.dataset.eval_prompts + spec.iterations * spec.dataset.prompts_per_iteration
    assert seed.BuildConfig().instructions >= need
    assert spec.judge.programmatic.function == "tpo.tiny.task:judge"
    cache = (ROOT / ".cache" / "tiny").resolve()
    assert (EXAMPLE.parent / spec.model.path).resolve() == cache / "model"
    assert (EXAMPLE.parent / spec.dataset.path).resolve() == cache / "instructions.jsonl"
    assert all(getattr(spec.pools, p).gpus == 0 for p in ("generate", "judge", "train"))


def test_cli_main_reports_a_cached_build(small_seed, capsys, monkeypatch):
    stamped = seed.BuildConfig(**A.read_json(small_seed / "stamp.json")["config"])
    monkeypatch.setattr(seed, "BuildConfig", lambda: stamped)
    assert seed.main(Namespace(out=str(small_seed), force=False)) == 0
    assert "up to date" in capsys.readouterr().out
