"""judge: reward-model scoring (`tpo.judges.RewardModelJudge.score_groups`) vs a bare batched
forward pass of the same model over the same texts.

Same reward model (a tiny Llama sequence classifier built offline), same texts (the
instruction + response conversation the judge builds), same batch size and max length. Each
side runs in its own process, order alternating; samples/s over the scoring call, median of
`--repeats`.

    python benchmarks/judge.py [--samples 2048] [--batch 32] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C

C.setup_env()


def items(n: int, seed: int = 0) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    words = ["the", "sum", "is", "carry", "digit", "units", "tens", "so", "we", "add"]
    out = []
    for i, ins in enumerate(C.instructions(n // 8 + 1)):
        for _ in range(8):
            resp = " ".join(rng.choices(words, k=rng.randint(4, 40))) + f" {i}."
            out.append((ins, resp))
    return out[:n]


def child(side: str, model: str, n: int, batch: int) -> dict:
    import torch

    from tpo.judges import JudgeItem, RewardModelJudge, reward_text
    from tpo.spec import RewardModelJudge as RMSpec

    torch.set_num_threads(1)  # both sides alike; the machine is shared
    data = items(n)
    cfg = RMSpec(path=model, batch_size=batch, max_length=512)
    if side == "phase":
        judge = RewardModelJudge(cfg)
        groups = [
            [JudgeItem(ins, resp, {}) for ins, resp in data[i : i + 8]] for i in range(0, n, 8)
        ]
        t0 = time.perf_counter()
        scores = judge.score_groups(groups)
        elapsed = time.perf_counter() - t0
        flat = [s for g in scores for s in g]
    else:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        tok = AutoTokenizer.from_pretrained(model)
        rm = AutoModelForSequenceClassification.from_pretrained(model, dtype="auto").eval()
        texts = [reward_text(tok, JudgeItem(ins, resp, {})) for ins, resp in data]
        t0 = time.perf_counter()
        flat = []
        with torch.no_grad():
            for i in range(0, len(texts), batch):
                enc = tok(
                    texts[i : i + batch],
                    add_special_tokens=False,
                    truncation=True,
                    max_length=512,
                    padding=True,
                    return_tensors="pt",
                )
                flat.extend(rm(**enc).logits[:, 0].tolist())
        elapsed = time.perf_counter() - t0
    return {
        "samples": len(flat),
        "samples_per_second": len(flat) / elapsed,
        "score_s": elapsed,
        "first": flat[0],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--samples", type=int, default=2048)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="tiny sizes, one repeat (smoke test)")
    p.add_argument("--child", choices=["phase", "bare"], help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    models = C.tiny_models()
    if a.child:
        print(json.dumps(child(a.child, str(models["rm"]), a.samples, a.batch)))
        return 0
    if a.quick:
        a.samples, a.repeats = 128, 1
    C.header("judge (reward model) vs bare batched forward", "torch", "transformers")
    print(f"# {a.samples} responses, batch {a.batch}, {a.repeats} repeat(s), alternating order")
    res: dict[str, list[dict]] = {"phase": [], "bare": []}
    for rep in range(a.repeats):
        for side in ("phase", "bare") if rep % 2 == 0 else ("bare", "phase"):
            r = C.run_json(
                [__file__, "--child", side, "--samples", str(a.samples), "--batch", str(a.batch)]
            )
            res[side].append(r)
            print(
                f"  rep {rep} {side:5}: {r['samples_per_second']:.0f} samples/s "
                f"({r['score_s']:.2f} s), process {r['wall_s']:.1f} s",
                flush=True,
            )
    assert abs(res["phase"][0]["first"] - res["bare"][0]["first"]) < 1e-4, "scores differ"
    ph = C.median([r["samples_per_second"] for r in res["phase"]])
    ba = C.median([r["samples_per_second"] for r in res["bare"]])
    print(f"median samples/s: judge {ph:.0f}, bare {ba:.0f} (same scores)")
    print(C.ratio_line("judge samples/s judge/bare", ph / ba, ">= 0.95", ph / ba >= 0.95))
    return 0


if __name__ == "__main__":
    sys.exit(main())
