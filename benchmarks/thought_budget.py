"""Thought budget on the tiny example: adherence per budget, and its win-rate cost.

For each budget B (default 16, 32, 64 tokens) a TPORun identical to `examples/tiny-cpu.yaml`
but for `generation.thoughtBudget: B` and `evaluation.compareWith: <the unbudgeted run>` runs
beside the unbudgeted run itself, all through `tpo run` (the same phases as the operator's
Jobs). Reported per budget:

  within budget   share of thoughts (training samples, K per prompt; and eval outputs) whose
                  re-tokenised thought has <= B tokens: what the status reports as length
  forced          share whose thought reached B and had the separator appended
  win rate        vs the seed (as the demo reports it; the seed arm runs under the same budget)
  head to head    the budgeted run's M(t) vs the unbudgeted run's M(t), same eval prompts,
                  same judge: 0.5 = no cost; cost = 0.5 - rate
  accuracy        exact answers of M(t) on the eval prompts (tpo.tiny.task.exact)

The seed and instructions are a snapshot of `.cache/tiny` (built by `tpo tiny build`), copied
so a rebuild during the measurement cannot change them; the manifests are generated at run time.

    python benchmarks/thought_budget.py [--budgets 16 32 64] [--iterations 1]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C

C.setup_env()

import yaml  # noqa: E402

from tpo import artifacts as A  # noqa: E402
from tpo.artifacts import RunDir  # noqa: E402
from tpo.spec import TPORunStatus, parse_spec  # noqa: E402
from tpo.thoughts import split_output  # noqa: E402

RESULTS = C.ROOT / "benchmarks" / "results" / "thought_budget.md"
EXAMPLE = C.ROOT / "examples" / "tiny-cpu.yaml"
TINY = C.ROOT / ".cache" / "tiny"
WORK = C.CACHE / "thought-budget"


def snapshot_seed() -> dict:
    stamp = TINY / "stamp.json"
    if not stamp.exists():
        sys.exit(f"{stamp} missing: run `tpo tiny build --out .cache/tiny` first")
    info = json.loads(stamp.read_text())
    dest = WORK / "seed" / info["digest"]
    if not (dest / "stamp.json").exists():
        tmp = dest.with_name(dest.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(TINY / "model", tmp / "model")
        shutil.copy(TINY / "instructions.jsonl", tmp / "instructions.jsonl")
        shutil.copy(stamp, tmp / "stamp.json")
        tmp.rename(dest)
    return {"dir": dest, "digest": info["digest"]}


def manifests(seed: Path, budgets: list[int], iterations: int) -> list[tuple[str, Path]]:
    base = yaml.safe_load(EXAMPLE.read_text())
    spec = base["spec"]
    spec["model"]["path"] = str(seed / "model")
    spec["dataset"]["path"] = str(seed / "instructions.jsonl")
    spec["iterations"] = iterations
    out = []
    for b in [None, *budgets]:
        name = "tb-none" if b is None else f"tb-{b}"
        doc = json.loads(json.dumps(base))
        doc["metadata"] = {"name": name}
        if b is not None:
            doc["spec"]["generation"]["thoughtBudget"] = b
            doc["spec"]["evaluation"]["compareWith"] = "tb-none"
        path = WORK / "manifests" / f"{name}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        out.append((name, path))
    return out


def accuracy(run: RunDir, t: int) -> float:
    from tpo.tiny.task import exact

    spec = parse_spec(A.read_json(run.spec))
    _, sep = spec.thought_prompt.resolved()
    records = {p["prompt_id"]: p["record"] for p in A.read_jsonl(run.eval_prompts)}
    rows = A.read_jsonl(run.eval_outputs(t))
    hits = [
        exact(records[r["prompt_id"]], split_output(r["candidate"], sep).response) for r in rows
    ]
    return sum(hits) / len(hits)


def measure(name: str, root: Path, budget: int | None, t: int) -> dict:
    run = RunDir(root / "default" / name)
    status = TPORunStatus.model_validate(A.read_json(run.status))
    h = next(x for x in status.history if x.iteration == t)
    samples = [
        r for i in range(64) if run.samples(t, i).exists() for r in A.iter_jsonl(run.samples(t, i))
    ]
    ev = A.read_json(run.eval_result(t))
    out = {
        "name": name,
        "budget": budget,
        "samples": len(samples),
        "thought_tokens": sum(r["thought_tokens"] for r in samples) / len(samples),
        "max_thought": max(r["thought_tokens"] for r in samples),
        "eval_thought_tokens": h.mean_thought_tokens,
        "win_rate": (h.win_rate, h.win_rate_low, h.win_rate_high),
        "accuracy": accuracy(run, t),
        "parse_fail": h.eval_parse_failure_rate,
    }
    if budget is not None:
        out["within"] = sum(r["thought_tokens"] <= budget for r in samples) / len(samples)
        out["forced"] = sum(bool(r.get("forced")) for r in samples) / len(samples)
        out["generated_within"] = sum(
            (r.get("thought_generated_tokens") or 0) <= budget for r in samples
        ) / len(samples)
        out["eval_within"] = ev.get("eval_within_budget_rate")
        out["eval_forced"] = ev.get("eval_forced_thought_rate")
        c = h.compare
        out["h2h"] = (
            None
            if c is None or c.win_rate is None
            else (c.win_rate, c.win_rate_low, c.win_rate_high, c.wins, c.ties, c.losses)
        )
        out["h2h_note"] = None if c is None else c.note
    return out


def fmt_ci(x) -> str:
    return "-" if x is None or x[0] is None else f"{x[0]:.3f} [{x[1]:.3f}, {x[2]:.3f}]"


def report(rows: list[dict], seed: dict, iterations: int, seconds: float) -> str:
    none = next(r for r in rows if r["budget"] is None)
    t = iterations
    lines = [
        "# Thought budget on the tiny example",
        "",
        f"`python benchmarks/thought_budget.py` ({time.strftime('%Y-%m-%d')}, "
        f"{seconds / 60:.0f} min on this 2-core CPU machine, shared). `examples/tiny-cpu.yaml` "
        f"with {iterations} iteration(s) (the demo runs 3), 400 prompts x K=8, 400 eval prompts "
        f"sampled at T=0.8; seed snapshot `{seed['digest']}` of `.cache/tiny`. Each budgeted "
        f"run sets `generation.thoughtBudget` and `evaluation.compareWith: tb-none` (the "
        f"unbudgeted run); budget forcing is two-stage generation (vLLM): thoughts stop at B "
        f"tokens or at the separator, the separator is appended where B was reached, then the "
        f"response is generated with the tokens left of maxTokens (96).",
        "",
        f"Unbudgeted: mean thought {none['thought_tokens']:.1f} tokens (max "
        f"{none['max_thought']}), win rate vs seed at iteration {t} {fmt_ci(none['win_rate'])}, "
        f"accuracy {none['accuracy']:.3f}.",
        "",
        "| budget | thoughts within budget (train samples / eval) | forced | mean thought tok "
        f"| win rate vs seed, iter {t} | M({t}) vs unbudgeted M({t}) [95% CI] (W/T/L) "
        "| win-rate cost | accuracy (unbudgeted "
        f"{none['accuracy']:.3f}) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r["budget"] is None:
            continue
        h2h = r["h2h"]
        cost = "-" if h2h is None else f"{0.5 - h2h[0]:+.3f}"
        h2h_cell = (
            f"not compared: {r['h2h_note']}"
            if h2h is None
            else f"{fmt_ci(h2h[:3])} ({h2h[3]}/{h2h[4]}/{h2h[5]})"
        )
        ev_within = "-" if r["eval_within"] is None else f"{r['eval_within']:.3f}"
        lines.append(
            f"| {r['budget']} | {r['within']:.3f} / {ev_within} | {r['forced']:.3f} "
            f"| {r['thought_tokens']:.1f} | {fmt_ci(r['win_rate'])} | {h2h_cell} | {cost} "
            f"| {r['accuracy']:.3f} |"
        )
    lines += [
        "",
        "Within budget counts the thought as the status does: the text before the separator, "
        "header stripped, re-tokenised; the tokens generated before the cut are never above the "
        "budget ("
        + ", ".join(f"B={r['budget']}: {r['generated_within']:.3f}" for r in rows if r["budget"])
        + " of samples). Win-rate cost = 0.5 - head-to-head win rate (positive: the budget "
        "costs quality). The win rate vs the seed compares each run with its own seed under the "
        "same budget, so it measures what TPO gains within the budget, not the budget's cost.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--budgets", type=int, nargs="+", default=[16, 32, 64])
    ap.add_argument("--iterations", type=int, default=1)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    started = time.time()
    seed = snapshot_seed()
    runs = manifests(seed["dir"], args.budgets, args.iterations)
    root = WORK / "runs" / seed["digest"]
    cmd = [sys.executable, "-m", "tpo.cli", "run", *(str(p) for _, p in runs), "--out", str(root)]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    rows = [
        measure(n, root, None if n == "tb-none" else int(n[3:]), args.iterations) for n, _ in runs
    ]
    text = report(rows, seed, args.iterations, time.time() - started)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
