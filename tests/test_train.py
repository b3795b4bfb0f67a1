"""The train phase for real: TRL DPO on CPU with the tiny fixture model, DeepSpeed ZeRO with gloo.

Nothing is mocked. The pairs teach a visible preference (an arithmetic answer over junk words), so
a working DPO run must raise the chosen-over-rejected log-prob margin of the SAVED model, measured
here independently of TRL's own logs.
"""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tpo import artifacts as A
from tpo.artifacts import RunDir
from tpo.errors import EXIT_OK, BadInput
from tpo.spec import TPORunSpec, parse_spec

TESTS = Path(__file__).parent
sys.path.insert(0, str(TESTS))
from tinyrun import tiny_spec  # noqa: E402

torch = pytest.importorskip("torch")


def make_pairs(n: int = 8, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        rows.append(
            {
                "prompt_id": f"p{i}",
                "prompt": f"Q: What is {a} + {b}?\n",
                "chosen": f"{a} + {b} a {a + b}. = {a + b}.",
                "rejected": "zz qq xx kk",
                "chosen_score": 1.0,
                "rejected_score": 0.0,
            }
        )
    return rows


def spec_for(model: Path, tmp: Path, **training) -> TPORunSpec:
    base = {"learningRate": 1e-3, "epochs": 2, "maxLength": 64, "lossType": ["sigmoid"]}
    data = tiny_spec(model, tmp / "unused.jsonl", training={**base, **training})
    return parse_spec(data)


def completion_logp(model, tok, prompt: str, completion: str) -> float:
    """Sum of log p(completion | chat-formatted prompt): the quantity DPO moves."""
    user = [{"role": "user", "content": prompt}]
    head = tok.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
    full = tok.apply_chat_template(
        [*user, {"role": "assistant", "content": completion}], tokenize=False
    )
    head_ids = tok(head, add_special_tokens=False).input_ids
    ids = tok(full, add_special_tokens=False).input_ids
    assert ids[: len(head_ids)] == head_ids
    x = torch.tensor([ids])
    with torch.no_grad():
        logps = model(x).logits[0, :-1].log_softmax(-1)
    token_logps = logps.gather(-1, x[0, 1:, None])[:, 0]
    return float(token_logps[len(head_ids) - 1 :].sum())


def margin(model_dir: Path, pairs: list[dict]) -> float:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    diffs = [
        completion_logp(model, tok, p["prompt"], p["chosen"])
        - completion_logp(model, tok, p["prompt"], p["rejected"])
        for p in pairs
    ]
    return sum(diffs) / len(diffs)


def changed_tensors(a_dir: Path, b_dir: Path) -> tuple[int, int]:
    """(tensors that differ, tensors in all); both load as plain HF causal LMs with equal keys."""
    from transformers import AutoModelForCausalLM

    a = AutoModelForCausalLM.from_pretrained(str(a_dir)).state_dict()
    b = AutoModelForCausalLM.from_pretrained(str(b_dir)).state_dict()
    assert set(a) == set(b)
    return sum(not torch.equal(a[k], b[k]) for k in a), len(a)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------- pure parts


def test_deepspeed_config_follows_spec(tiny_lm, tmp_path):
    from tpo.train import deepspeed_config

    assert deepspeed_config(spec_for(tiny_lm, tmp_path).training) is None
    z2 = deepspeed_config(spec_for(tiny_lm, tmp_path, deepspeed={"zeroStage": 2}).training)
    assert z2["zero_optimization"]["stage"] == 2
    assert "stage3_gather_16bit_weights_on_model_save" not in z2["zero_optimization"]
    assert z2["train_micro_batch_size_per_gpu"] == "auto"
    z3 = deepspeed_config(
        spec_for(tiny_lm, tmp_path, deepspeed={"zeroStage": 3, "offloadOptimizer": True}).training
    )
    zo = z3["zero_optimization"]
    assert zo["stage"] == 3 and zo["stage3_gather_16bit_weights_on_model_save"] is True
    assert zo["offload_optimizer"]["device"] == "cpu"
    json.dumps(z3)  # goes into TrainingArguments as a dict: must be plain JSON


def test_dpo_rows_are_conversational_and_checked():
    from tpo.train import dpo_rows

    rows = dpo_rows(make_pairs(2))
    assert rows[0]["prompt"] == [{"role": "user", "content": make_pairs(2)[0]["prompt"]}]
    assert rows[0]["chosen"][0]["role"] == "assistant"
    assert set(rows[0]) == {"prompt", "chosen", "rejected"}
    bad = make_pairs(3)
    bad[2]["rejected"] = None
    with pytest.raises(BadInput, match=r"pairs\[2\]: field\(s\) rejected"):
        dpo_rows(bad)


def test_latest_checkpoint_skips_half_written(tmp_path):
    from tpo.train import latest_checkpoint

    assert latest_checkpoint(tmp_path / "absent") is None
    for step, complete in ((2, True), (10, True), (12, False)):
        d = tmp_path / f"checkpoint-{step}"
        d.mkdir()
        if complete:
            (d / "trainer_state.json").write_text("{}")
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoint-10"


def test_summarize_takes_last_logged_values():
    from tpo.train import summarize

    hist = [
        {"loss": 0.69, "rewards/margins": 0.0, "step": 1},
        {"loss": 0.3, "rewards/margins": 2.0, "rewards/accuracies": 1.0, "step": 4},
        {"train_loss": 0.5, "step": 4},
    ]
    s = summarize(hist, steps=4, pairs=8, resumed_from_step=None)
    assert s["train_loss"] == 0.5 and s["final_loss"] == 0.3 and s["first_loss"] == 0.69
    assert s["reward_margin"] == 2.0 and s["reward_accuracy"] == 1.0
    assert "resumed_from_step" not in s and s["steps"] == 4


# --------------------------------------------------------------------------- real training


def test_single_process_dpo_improves_margin_and_saves(tiny_lm, tmp_path, capsys):
    from tpo.train import train_dpo

    pairs = make_pairs()
    out = tmp_path / "model"
    summary = train_dpo(
        spec_for(tiny_lm, tmp_path),
        base_model=tiny_lm,
        pairs=pairs,
        out_dir=out,
        work_dir=tmp_path / "work",
    )
    for key in ("steps", "train_loss", "reward_margin", "reward_accuracy", "seconds", "pairs"):
        assert key in summary, key
    assert summary["pairs"] == 8 and summary["steps"] == 16  # 8 pairs x 2 epochs, batch 1
    assert summary["model_path"] == str(out)
    assert summary["final_loss"] < 0.6931  # below log 2: the policy separates the pairs
    json.dumps(summary)
    assert list(out.glob("*.safetensors")) and (out / "tokenizer.json").exists()
    changed, total = changed_tensors(tiny_lm, out)
    assert changed == total
    before, after = margin(tiny_lm, pairs), margin(out, pairs)
    assert after > before + 1.0, (before, after)
    # checkpoints are dropped once M(t) is published; no temp dirs left beside the model
    assert not list((tmp_path / "work").glob("checkpoint-*"))
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    metrics = [
        json.loads(line.removeprefix("TPO_METRIC "))
        for line in capsys.readouterr().out.splitlines()
        if line.startswith("TPO_METRIC ")
    ]
    steps = [m for m in metrics if "loss" in m]
    assert steps[0]["step"] == 1 and steps[-1]["step"] == 16
    assert "rewards/margins" in steps[-1]


def test_lora_merged_output_is_a_plain_model(tiny_lm, tmp_path):
    from tpo.train import train_dpo

    out = tmp_path / "model"
    train_dpo(
        spec_for(tiny_lm, tmp_path, epochs=1, learningRate=1e-2, lora={"enabled": True, "r": 4}),
        base_model=tiny_lm,
        pairs=make_pairs(),
        out_dir=out,
        work_dir=tmp_path / "work",
    )
    assert not (out / "adapter_config.json").exists()
    changed, total = changed_tensors(tiny_lm, out)  # same keys: no lora_A/lora_B left
    assert 0 < changed < total  # adapted linears changed; embeddings and norms did not


def test_the_trained_model_is_freed_before_publish_reloads_the_base(tiny_lm, tmp_path, monkeypatch):
    """publish() loads the base again for the LoRA merge; the trainer's model (and its optimizer
    state) must be gone by then, else both sit in memory at once (the real model's peak)."""
    import weakref

    from transformers import TrainerCallback

    import tpo.train as T

    held: list[weakref.ref] = []

    class Grab(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kw):
            held.append(weakref.ref(model))

    alive_at_publish: list[bool] = []
    real_publish = T.publish

    def publish(*a, **kw):
        alive_at_publish.append(held[0]() is not None)
        return real_publish(*a, **kw)

    monkeypatch.setattr(T, "publish", publish)
    T.train_dpo(
        spec_for(tiny_lm, tmp_path, epochs=1, lora={"enabled": True, "r": 4}),
        base_model=tiny_lm,
        pairs=make_pairs(),
        out_dir=tmp_path / "model",
        work_dir=tmp_path / "work",
        callbacks=[Grab()],
    )
    assert alive_at_publish == [False]


class Crash(Exception):
    pass


def test_killed_training_resumes_from_its_checkpoint(tiny_lm, tmp_path):
    from transformers import TrainerCallback

    from tpo.train import train_dpo

    class CrashAt(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 5:
                raise Crash("killed at step 5")

    class Record(TrainerCallback):
        begin: int | None = None
        steps: list[int] = []

        def on_train_begin(self, args, state, control, **kw):
            Record.begin = state.global_step

        def on_step_end(self, args, state, control, **kw):
            Record.steps.append(state.global_step)

    spec = spec_for(tiny_lm, tmp_path, epochs=1)  # 8 steps, a checkpoint every 2
    work, out = tmp_path / "work", tmp_path / "model"
    kw = dict(base_model=tiny_lm, pairs=make_pairs(), out_dir=out, work_dir=work)
    with pytest.raises(Crash):
        train_dpo(spec, callbacks=[CrashAt()], **kw)
    assert not out.exists()  # nothing half-published
    assert sorted(p.name for p in work.glob("checkpoint-*")) == ["checkpoint-4"]
    summary = train_dpo(spec, callbacks=[Record()], **kw)
    assert Record.begin == 4 and Record.steps == [5, 6, 7, 8]
    assert summary["resumed_from_step"] == 4 and summary["steps"] == 8
    assert (out / "config.json").exists()


def test_bad_input_names_what_is_wrong(tiny_lm, tmp_path):
    from tpo.train import train_dpo

    spec = spec_for(tiny_lm, tmp_path)
    kw = dict(out_dir=tmp_path / "m", work_dir=tmp_path / "w")
    with pytest.raises(BadInput, match="no preference pairs"):
        train_dpo(spec, base_model=tiny_lm, pairs=[], **kw)
    missing = tmp_path / "no-model"
    with pytest.raises(BadInput, match=str(missing)):
        train_dpo(spec, base_model=missing, pairs=make_pairs(), **kw)
    bad = tmp_path / "pairs.jsonl"
    bad.write_text(json.dumps(make_pairs(1)[0]) + "\n{not json\n")
    with pytest.raises(BadInput, match=rf"{bad}:2: invalid JSON"):
        train_dpo(spec, base_model=tiny_lm, pairs=bad, **kw)
    assert not (tmp_path / "m").exists()


# --------------------------------------------------------------------------- DeepSpeed


def staged_run(tiny_lm: Path, tmp_path: Path, **training) -> RunDir:
    """A run dir as the judge phase leaves it, so `tpo phase train` runs as in a Job."""
    run = RunDir(tmp_path / "run")
    A.write_json(run.spec, spec_for(tiny_lm, tmp_path, **training).dump())
    A.write_jsonl(run.pairs(1, 0), make_pairs())
    A.write_done(run.done("judge", 1, 0), {"phase": "judge", "iteration": 1})
    return run


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_zero3_two_processes_under_torchrun(tiny_lm, tmp_path, lora):
    """The exact entrypoint the multi-node train Job runs, on 2 CPU processes with gloo.

    LoRA under ZeRO-3 once hung at the merge (rank 0 reloaded the base partitioned)."""
    extra = {"lora": {"enabled": True, "r": 4}, "learningRate": 1e-2} if lora else {}
    run = staged_run(tiny_lm, tmp_path, epochs=1, deepspeed={"zeroStage": 3}, **extra)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes",
        "1",
        "--nproc-per-node",
        "2",
        "--node-rank",
        "0",
        "--rdzv-backend",
        "c10d",
        "--rdzv-endpoint",
        f"127.0.0.1:{free_port()}",
        "-m",
        "tpo.cli",
        "phase",
        "train",
        "--run-dir",
        str(run.path),
        "--iteration",
        "1",
    ]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=os.environ.copy())
    assert p.returncode == EXIT_OK, p.stderr[-4000:]
    done = A.read_done(run.done("train", 1))
    assert done is not None and done["pairs"] == 8
    assert done["steps"] == 4  # 8 pairs over 2 ranks, batch 1 each: 4 steps
    changed, total = changed_tensors(tiny_lm, run.model(1))
    assert 0 < changed < total if lora else changed == total
    assert any(line.startswith("TPO_METRIC ") for line in p.stdout.splitlines())


def test_zero2_single_process_without_launcher(tiny_lm, tmp_path):
    """No torchrun: train_dpo sets RANK/WORLD_SIZE/MASTER_* itself (else DeepSpeed wants MPI)."""
    run = staged_run(tiny_lm, tmp_path, epochs=1, deepspeed={"zeroStage": 2})
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    }
    cmd = [sys.executable, "-m", "tpo.cli", "phase", "train", "--run-dir", str(run.path)]
    p = subprocess.run(
        [*cmd, "--iteration", "1"], capture_output=True, text=True, timeout=300, env=env
    )
    assert p.returncode == EXIT_OK, p.stderr[-4000:]
    summary = json.loads(p.stdout.strip().splitlines()[-1])
    assert summary["steps"] == 8 and summary["reward_margin"] > 0
    assert margin(run.model(1), make_pairs()) > margin(tiny_lm, make_pairs())
