"""`tpo tiny build`: the embedded example's seed model M0 and its instructions, offline.

The seed must be IMPERFECT in the way the paper's seed is: it already writes thoughts before
answering, but its thoughts are a mix of good, careless and useless ones, so sampling K outputs
per prompt gives the judge something to prefer. We get there with a short SFT on a deliberately
noisy mix (correct / slipped / useless scratchpads, bare answers, some missing separators), all
under the paper's generic thought prompt and the model's own chat template, plus raw
instructions answered directly (the "direct" baseline, which a tiny model gets mostly wrong).

Cached: `stamp.json` holds a hash of the build parameters and of this code; a second build with
the same inputs is a no-op unless forced. Deterministic given `BuildConfig.seed`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tpo import artifacts as A
from tpo.spec import GENERIC_SEPARATOR, GENERIC_THOUGHT_HEADER, GENERIC_THOUGHT_PROMPT
from tpo.tiny import task

USELESS_THOUGHTS = (
    "Let me think about this.",
    "This is an easy one.",
    "I know this.",
    "I will answer quickly.",
    "Numbers are fun.",
    "Hmm, let me see.",
)


@dataclasses.dataclass(frozen=True)
class TinyTraining:
    """The model shape and the SFT settings of a tiny build (the seed's and the judge's)."""

    seed: int = 0
    epochs: float = 1.0
    batch_size: int = 32
    learning_rate: float = 2e-3
    hidden: int = 128
    layers: int = 4
    heads: int = 4  # head_dim 32: vLLM's CPU attention needs it
    vocab_size: int = 512
    max_positions: int = 512


@dataclasses.dataclass(frozen=True)
class BuildConfig(TinyTraining):
    """Everything that shapes the seed; its hash is the cache key."""

    sft_examples: int = 24000  # distinct SFT instructions, disjoint from the TPO ones
    instructions: int = 1600  # for TPO: 3 x 300 + 300 eval + margin
    # The noisy mix, per thought-prompted example (sums to 1). Tuned on the demo (3 iterations,
    # sampled evaluation vs the seed): 55% correct scratchpads gave a seed whose errors are mostly
    # capacity-limited arithmetic, which DPO barely moved (0.56 -> 0.55); 35% gave a seed too weak
    # to produce pairs (15% right); 40% with a fifth useless thoughts leaves the seed a choice
    # between thinking usefully and not, which is what TPO learns (0.58 -> 0.60).
    p_correct: float = 0.40
    p_slip: float = 0.10
    p_useless: float = 0.20
    p_bare: float = 0.15
    p_no_separator: float = 0.15
    # Share of the data that is a raw instruction answered directly (the no-thought baseline).
    p_direct: float = 0.1
    p_guess_right: float = 0.3  # a bare or useless-thought answer happens to be right

    def digest(self) -> str:
        code = "".join(
            Path(m.__file__).read_text(encoding="utf-8") for m in (task, sys.modules[__name__])
        )
        blob = json.dumps(dataclasses.asdict(self), sort_keys=True) + code
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- the SFT mix


def wrong_answer(answer: str, rng: random.Random) -> str:
    """A plausible wrong number: one or two digits changed."""
    digits = list(answer)
    while "".join(digits) == answer:
        for _ in range(rng.randint(1, 2)):
            digits[rng.randrange(len(digits))] = str(rng.randint(0, 9))
    out = "".join(digits)
    return str(int(out)) if len(out) > 1 and out[0] == "0" and len(answer) <= 3 else out


def _response(answer: str) -> str:
    return f"{task.RESPONSE_PREFIX} {answer}."


def _pad_steps(category: str, ops: dict) -> int:
    return 3 if category in ("add", "sub") else len(ops["s"])


def thought_output(
    kind: str, category: str, ops: dict, answer: str, rng: random.Random, p_right: float
) -> str:
    """One assistant output under the generic thought prompt, of the given noisy kind."""
    guess = answer if rng.random() < p_right else wrong_answer(answer, rng)
    if kind == "bare":
        return f"{GENERIC_SEPARATOR} {_response(guess)}"
    if kind == "useless":
        pad = rng.choice(USELESS_THOUGHTS)
        return f"{GENERIC_THOUGHT_HEADER} {pad}\n{GENERIC_SEPARATOR} {_response(guess)}"
    err = rng.randrange(_pad_steps(category, ops)) if kind == "slip" else None
    pad, result = task.scratchpad(category, ops, err, rng if kind == "slip" else None)
    sep = "" if kind == "no_separator" else f"{GENERIC_SEPARATOR} "
    return f"{GENERIC_THOUGHT_HEADER} {pad}\n{sep}{_response(result)}"


def pick_kind(rng: random.Random, shares: Sequence[tuple[str, float]], rest: str) -> str:
    """A kind drawn by its share (one rng.random() draw); `rest` takes what the shares leave."""
    r, acc = rng.random(), 0.0
    for kind, p in shares:
        acc += p
        if r < acc:
            return kind
    return rest


def _kind(cfg: BuildConfig, rng: random.Random) -> str:
    shares = [
        ("correct", cfg.p_correct),
        ("slip", cfg.p_slip),
        ("useless", cfg.p_useless),
        ("bare", cfg.p_bare),
    ]
    return pick_kind(rng, shares, "no_separator")


def sft_rows(cfg: BuildConfig, exclude: set[str]) -> list[dict[str, Any]]:
    """Conversational prompt/completion rows: TRL applies the chat template, loss on outputs."""
    rng = random.Random(cfg.seed + 1)
    rows = []
    for rec in task.make_instructions(cfg.sft_examples, cfg.seed + 2, exclude=exclude):
        cat, ops = task.parse_problem(rec["instruction"])
        if rng.random() < cfg.p_direct:
            user, out = rec["instruction"], _response(rec["answer"])
        else:
            user = GENERIC_THOUGHT_PROMPT.replace("{instruction}", rec["instruction"])
            kind = _kind(cfg, rng)
            out = thought_output(kind, cat, ops, rec["answer"], rng, cfg.p_guess_right)
        rows.append(
            {
                "prompt": [{"role": "user", "content": user}],
                "completion": [{"role": "assistant", "content": out}],
            }
        )
    return rows


# --------------------------------------------------------------------------- build


def _tokenizer_corpus(rows: list[dict[str, Any]]) -> list[str]:
    return [r["prompt"][0]["content"] + "\n" + r["completion"][0]["content"] for r in rows[:4000]]


def _sft(
    model_dir: Path,
    rows: list[dict[str, Any]],
    cfg: TinyTraining,
    work: Path,
    label: str = "tiny seed",
) -> dict:
    """TRL's SFTTrainer on CPU; returns the last logged training loss and the step count.
    Progress (steps done, rate, ETA) goes to stderr as `label` (tpo.progress)."""
    import datasets
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from tpo import progress

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    args = SFTConfig(
        output_dir=str(work),
        num_train_epochs=cfg.epochs,
        per_device_train_batch_size=cfg.batch_size,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=0.05,
        weight_decay=0.0,
        max_length=cfg.max_positions,
        completion_only_loss=True,
        gradient_checkpointing=False,  # TRL turns it on by default: pure overhead at this size
        seed=cfg.seed,
        bf16=False,
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        logging_steps=50,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=datasets.Dataset.from_list(rows),
        processing_class=tok,
        callbacks=[progress.trainer_callback(label)],
    )
    result = trainer.train()
    trainer.save_model(str(model_dir))
    tok.save_pretrained(model_dir)
    return {"steps": result.global_step, "train_loss": round(result.training_loss, 4)}


def stamp_matches(
    out: Path, digest: str, required: tuple[str, ...] = ("instructions.jsonl",)
) -> bool:
    """A build in `out` made from this digest, with its model and the `required` files."""
    stamp = out / "stamp.json"
    needed = [stamp, out / "model" / "config.json", *(out / r for r in required)]
    if not all(f.exists() for f in needed):
        return False
    try:
        return A.read_json(stamp).get("digest") == digest
    except A.ArtifactError:
        return False


def build(out: Path, force: bool = False, cfg: BuildConfig | None = None) -> Path:
    """Build (or reuse) `out/model/` and `out/instructions.jsonl`; returns `out/model`."""
    from tpo.tiny.model import build_causal_lm, train_tokenizer

    cfg = cfg or BuildConfig()
    out = Path(out)
    digest = cfg.digest()
    if not force and stamp_matches(out, digest):
        return out / "model"
    started = time.monotonic()
    instructions = task.make_instructions(cfg.instructions, cfg.seed)
    rows = sft_rows(cfg, exclude={r["instruction"] for r in instructions})
    with A.atomic_dir(out / "model") as model_dir:
        tok = train_tokenizer(_tokenizer_corpus(rows), vocab_size=cfg.vocab_size)
        build_causal_lm(
            model_dir,
            tok,
            hidden=cfg.hidden,
            layers=cfg.layers,
            heads=cfg.heads,
            max_positions=cfg.max_positions,
            seed=cfg.seed,
        )
        work = out / ".sft-work"
        sft = _sft(model_dir, rows, cfg, work)
        shutil.rmtree(work, ignore_errors=True)
    A.write_jsonl(out / "instructions.jsonl", instructions)
    A.write_json(
        out / "stamp.json",
        {
            "digest": digest,
            "config": dataclasses.asdict(cfg),
            "sft": sft,
            "seconds": round(time.monotonic() - started, 1),
        },
    )
    return out / "model"


def main(args) -> int:
    """`tpo tiny build --out DIR [--force]`."""
    out = Path(args.out)
    started = time.monotonic()
    cfg = BuildConfig()
    reused = not args.force and stamp_matches(out, cfg.digest())
    model = build(out, force=args.force, cfg=cfg)
    took = time.monotonic() - started
    if reused:
        print(f"tiny seed up to date: {model} (stamp {cfg.digest()}; --force rebuilds)")
    else:
        stamp = A.read_json(out / "stamp.json")
        print(
            f"built tiny seed {model} in {took:.0f}s "
            f"(SFT {stamp['sft']['steps']} steps, loss {stamp['sft']['train_loss']}); "
            f"{cfg.instructions} instructions in {out / 'instructions.jsonl'}"
        )
    return 0
