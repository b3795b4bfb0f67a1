"""train: the phase's `tpo.train.train_dpo` vs a bare TRL `DPOTrainer` script, same pairs/config.

Same base model (a tiny Llama built offline), same pairs (conversational rows), same DPO
hyperparameters (beta, lr, epochs, batch, max length, precomputed reference log-probs, seed).
What the phase adds: a file-backed dataset, checkpoints every quarter of the run (with optimizer
state, for resumption), a log event every 5% of steps, metric callbacks, the atomic publish of
M(t). Each side runs in its own process, order alternating.

  steps/s       optimizer steps over trainer.train() (timed by the same callback on both sides)
  peak memory   the process's peak RSS (ru_maxrss)

    python benchmarks/train.py [--pairs 256] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C

C.setup_env()


def pairs(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for ins in C.instructions(n):
        a, b = (int(x) for x in ins[8:-1].split(" + "))
        good = f"Here is my thought process: {a} plus {b}. Here is my response: {a + b}"
        bad = f"Here is my thought process: hmm. Here is my response: {a + b + rng.randint(1, 9)}"
        out.append({"prompt": ins, "chosen": good, "rejected": bad})
    return out


def _timer():
    from transformers import TrainerCallback

    class Timer(TrainerCallback):
        start = end = 0.0
        steps = 0

        def on_train_begin(self, args, state, control, **kw):
            self.start = time.perf_counter()

        def on_train_end(self, args, state, control, **kw):
            self.end = time.perf_counter()
            self.steps = state.global_step

    return Timer()


def child(side: str, model: str, n: int, work: Path) -> dict:
    import torch

    from tpo.spec import parse_spec
    from tpo.train import dpo_rows

    torch.set_num_threads(1)  # both sides alike; the machine is shared
    spec = parse_spec(C.tiny_spec(Path(model), work / "unused.jsonl", n))
    data = pairs(n)
    timer = _timer()
    t0 = time.perf_counter()
    if side == "phase":
        from tpo.train import train_dpo

        train_dpo(
            spec,
            base_model=Path(model),
            pairs=data,
            out_dir=work / "model",
            work_dir=work / "ckpt",
            callbacks=[timer],
        )
    else:
        from datasets import Dataset
        from transformers import AutoTokenizer
        from trl import DPOConfig, DPOTrainer

        tr = spec.training
        args = DPOConfig(
            output_dir=str(work / "bare"),
            beta=tr.beta,
            learning_rate=tr.learning_rate,
            num_train_epochs=tr.epochs,
            per_device_train_batch_size=tr.per_device_batch_size,
            gradient_accumulation_steps=tr.gradient_accumulation_steps,
            max_length=tr.max_length,
            loss_type=list(tr.loss_type),
            precompute_ref_log_probs=tr.precompute_ref_log_probs,
            seed=tr.seed,
            bf16=False,
            use_cpu=True,
            model_init_kwargs={"dtype": spec.model.dtype},
            report_to=[],
            save_strategy="no",
            disable_tqdm=True,
        )
        tok = AutoTokenizer.from_pretrained(model)
        trainer = DPOTrainer(
            model=model,
            args=args,
            train_dataset=Dataset.from_list(dpo_rows(data)),
            processing_class=tok,
            callbacks=[timer],
        )
        trainer.train()
        trainer.save_model(str(work / "bare-model"))
    total = time.perf_counter() - t0
    return {
        "steps": timer.steps,
        "train_s": timer.end - timer.start,
        "steps_per_second": timer.steps / (timer.end - timer.start),
        "total_s": total,
        "peak_rss_mb": C.peak_rss_mb(),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--pairs", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="tiny sizes, one repeat (smoke test)")
    p.add_argument("--child", choices=["phase", "bare"], help=argparse.SUPPRESS)
    p.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    models = C.tiny_models()
    if a.child:
        print(json.dumps(child(a.child, str(models["lm"]), a.pairs, a.work)))
        return 0
    if a.quick:
        a.pairs, a.repeats = 32, 1
    C.header("train phase vs bare TRL DPOTrainer", "trl", "torch", "transformers", "datasets")
    print(f"# {a.pairs} pairs, batch 8, 1 epoch, {a.repeats} repeat(s), alternating order")
    res: dict[str, list[dict]] = {"phase": [], "bare": []}
    with tempfile.TemporaryDirectory(prefix="tpo-bench-train-") as tmp:
        for rep in range(a.repeats):
            for side in ("phase", "bare") if rep % 2 == 0 else ("bare", "phase"):
                work = Path(tmp) / f"{side}-{rep}"
                work.mkdir()
                r = C.run_json(
                    [__file__, "--child", side, "--pairs", str(a.pairs), "--work", str(work)]
                )
                res[side].append(r)
                print(
                    f"  rep {rep} {side:5}: {r['steps']} steps, {r['steps_per_second']:.2f} "
                    f"steps/s, train() {r['train_s']:.1f} s, call {r['total_s']:.1f} s, "
                    f"peak RSS {r['peak_rss_mb']:.0f} MB",
                    flush=True,
                )
    sp = C.median([r["steps_per_second"] for r in res["phase"]])
    sb = C.median([r["steps_per_second"] for r in res["bare"]])
    mp = C.median([r["peak_rss_mb"] for r in res["phase"]])
    mb = C.median([r["peak_rss_mb"] for r in res["bare"]])
    tp = C.median([r["total_s"] for r in res["phase"]])
    tb = C.median([r["total_s"] for r in res["bare"]])
    print(
        f"median: steps/s phase {sp:.2f} bare {sb:.2f}; peak RSS phase {mp:.0f} MB "
        f"bare {mb:.0f} MB; whole call phase {tp:.1f} s bare {tb:.1f} s"
    )
    print(C.ratio_line("train whole call bare/phase", tb / tp, "-", None))
    print(C.ratio_line("train peak RSS phase/bare", mp / mb, "<= 1.10", mp / mb <= 1.10))
    print(C.ratio_line("train steps/s phase/bare", sp / sb, ">= 0.95", sp / sb >= 0.95))
    return 0


if __name__ == "__main__":
    sys.exit(main())
