"""Thought budget on the tiny example: adherence per budget, and its win-rate cost.

For each budget B (default 16, 32, 64 tokens) a TPORun identical to `examples/tiny-cpu.yaml`
but for `generation.thoughtBudget: B` and `evaluation.compareWith: tiny-tpo` (the unbudgeted
run) runs beside the unbudgeted run itself, all through `tpo run` (the same phases as the
operator's Jobs). The unbudgeted run is the TPO arm of `two_arms.py` (`tiny-tpo`, compared with
its direct twin `tiny-direct`): both scripts use one run root, so whichever runs second reuses
the runs the first finished (their DONE markers) instead of training them again. Reported per
budget:

  within budget   share of thoughts (training samples, K per prompt; and eval outputs) whose
                  re-tokenised thought has <= B tokens: what the status reports as length
                  (target >= 0.95)
  forced          share whose thought reached B and had the separator appended
  win rate        vs the seed (as the demo reports it; the seed arm runs under the same budget)
  head to head    the budgeted run's M(t) vs the unbudgeted run's M(t), same eval prompts,
                  same judge: 0.5 = no cost; cost = 0.5 - rate, its interval from the rate's
  accuracy        exact answers of M(t) on the eval prompts (tpo.tiny.task.exact)

The default is 1 iteration (the demo runs 3): each run trains once, and 5 runs of 3 iterations
do not fit a benchmark's few minutes on 2 CPU cores. `--iterations 3` measures the budgets after
the demo's full 3 iterations (its own run root; `results/thought_budget-it3.md`). The seed and
instructions are a snapshot of `.cache/tiny` (built by `tpo tiny build`), copied so a rebuild
during the measurement cannot change them; the manifests are generated at run time.

    python benchmarks/thought_budget.py [--budgets 16 32 64] [--iterations 1]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
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


# The unbudgeted run is two_arms.py's TPO arm, compared with its direct twin: one run, both uses.
TPO, TWIN = "tiny-tpo", "tiny-direct"


def run_root(digest: str, iterations: int) -> Path:
    """One `tpo run --out` root per seed and iteration count, shared with two_arms.py."""
    return WORK / "runs" / f"{digest}-it{iterations}"


def manifests(
    seed: Path, iterations: int, budgets: Sequence[int] = ()
) -> list[tuple[str, Path, int | None]]:
    """(name, manifest, budget): the direct twin, the TPO run (compareWith the twin), and one
    run per budget (compareWith the TPO run), all the example but for those fields."""
    base = yaml.safe_load(EXAMPLE.read_text())
    spec = base["spec"]
    spec["model"]["path"] = str(seed / "model")
    spec["dataset"]["path"] = str(seed / "instructions.jsonl")
    spec["iterations"] = iterations
    out = []
    for name, b in [(TWIN, None), (TPO, None), *((f"tb-{b}", b) for b in budgets)]:
        doc = json.loads(json.dumps(base))
        doc["metadata"] = {"name": name}
        if name == TWIN:
            doc["spec"]["thoughtPrompt"] = {"type": "none"}
        elif name == TPO:
            doc["spec"]["evaluation"]["compareWith"] = TWIN
        else:
            doc["spec"]["generation"]["thoughtBudget"] = b
            doc["spec"]["evaluation"]["compareWith"] = TPO
        path = WORK / "manifests" / f"it{iterations}" / f"{name}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        out.append((name, path, b))
    return out


def run_all(paths: list[Path], root: Path) -> None:
    """One `tpo run` over the manifests (it orders them by compareWith; finished phases of
    runs already there are skipped)."""
    cmd = [sys.executable, "-m", "tpo.cli", "run", *(str(p) for p in paths), "--out", str(root)]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def results_path(default: Path, iterations: int) -> Path:
    """results/<name>.md for the default 1 iteration, results/<name>-it<N>.md otherwise."""
    return default if iterations == 1 else default.with_name(f"{default.stem}-it{iterations}.md")


def load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


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


def cost_cell(h2h) -> str:
    """0.5 - head-to-head rate, with the interval that the rate's interval gives."""
    if h2h is None:
        return "-"
    rate, low, high = h2h[:3]
    return f"{0.5 - rate:+.3f} [{0.5 - high:+.3f}, {0.5 - low:+.3f}]"


def report(rows: list[dict], seed: dict, iterations: int, run: dict) -> str:
    none = next(r for r in rows if r["budget"] is None)
    t = iterations
    lines = [
        "# Thought budget on the tiny example",
        "",
        f"`{run['command']}` ({run['date']}, {run['seconds'] / 60:.1f} min wall, load average "
        f"{run['load_start']} at the start and {run['load_end']} at the end (1/5/15 min) on this "
        f"2-core CPU machine, shared; {run['reused']}). `examples/tiny-cpu.yaml` "
        f"with {iterations} iteration(s) (the demo runs 3), 400 prompts x K=8, 400 eval prompts "
        f"sampled at T=0.8; seed snapshot `{seed['digest']}` of `.cache/tiny`. Each budgeted "
        f"run sets `generation.thoughtBudget` and `evaluation.compareWith: {TPO}` (the "
        f"unbudgeted run, also the TPO arm of `two_arms.py`); budget forcing is two-stage "
        f"generation (vLLM): thoughts stop at B tokens or at the separator, the separator is "
        f"appended where B was reached, then the response is generated with the tokens left of "
        f"maxTokens (96).",
        "",
        f"Unbudgeted: mean thought {none['thought_tokens']:.1f} tokens (max "
        f"{none['max_thought']}) in training samples, {none['eval_thought_tokens']:.1f} in eval "
        f"outputs; win rate vs seed at iteration {t} {fmt_ci(none['win_rate'])}, "
        f"accuracy {none['accuracy']:.3f}.",
        "",
        "| budget | thoughts within budget (train samples / eval) | forced (train / eval) "
        f"| mean thought tok (train) | win rate vs seed, iter {t} "
        f"| M({t}) vs unbudgeted M({t}) [95% CI] (W/T/L) | win-rate cost [95% CI] "
        f"| accuracy (unbudgeted {none['accuracy']:.3f}) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r["budget"] is None:
            continue
        h2h = r["h2h"]
        h2h_cell = (
            f"not compared: {r['h2h_note']}"
            if h2h is None
            else f"{fmt_ci(h2h[:3])} ({h2h[3]}/{h2h[4]}/{h2h[5]})"
        )
        ev_within = "-" if r["eval_within"] is None else f"{r['eval_within']:.3f}"
        ev_forced = "-" if r["eval_forced"] is None else f"{r['eval_forced']:.3f}"
        lines.append(
            f"| {r['budget']} | {r['within']:.3f} / {ev_within} | {r['forced']:.3f} / {ev_forced} "
            f"| {r['thought_tokens']:.1f} | {fmt_ci(r['win_rate'])} | {h2h_cell} "
            f"| {cost_cell(h2h)} | {r['accuracy']:.3f} |"
        )
    lines += [
        "",
        "Within budget counts the thought as the status does: the text before the separator, "
        "header stripped, re-tokenised; the tokens generated before the cut, header included, "
        "are never above the budget ("
        + ", ".join(f"B={r['budget']}: {r['generated_within']:.3f}" for r in rows if r["budget"])
        + " of samples). Win-rate cost = 0.5 - head-to-head win rate (positive: the budget "
        "costs quality). The win rate vs the seed compares each run with its own seed under the "
        "same budget, so it measures what TPO gains within the budget, not the budget's cost.",
        "",
    ]
    return "\n".join(lines)


def targets(rows: list[dict]) -> list[str]:
    """The issue's target per budget: >= 95% of thoughts within budget (train and eval)."""
    out = []
    for r in rows:
        if r["budget"] is None:
            continue
        worst = min(x for x in (r["within"], r["eval_within"]) if x is not None)
        verdict = "MET" if worst >= 0.95 else "MISSED"
        out.append(
            f"TARGET B={r['budget']} within_budget = {worst:.3f} "
            f"(train {r['within']:.3f}, eval {r['eval_within']}; target >= 0.95) {verdict}"
        )
    return out


def finished(root: Path, name: str, iterations: int) -> bool:
    return RunDir(root / "default" / name).done("evaluate", iterations).exists()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--budgets", type=int, nargs="+", default=[16, 32, 64])
    ap.add_argument("--iterations", type=int, default=1)
    default = RESULTS.relative_to(C.ROOT)
    ap.add_argument("--out", type=Path, help=f"default {default} (-it<N> for N != 1)")
    args = ap.parse_args()
    args.out = args.out or results_path(RESULTS, args.iterations)
    started, load_start = time.time(), load()
    seed = snapshot_seed()
    runs = manifests(seed["dir"], args.iterations, args.budgets)
    root = run_root(seed["digest"], args.iterations)
    done = [n for n, _, _ in runs if finished(root, n, args.iterations)]
    run_all([p for _, p, _ in runs], root)
    rows = [measure(n, root, b, args.iterations) for n, _, b in runs if n != TWIN]
    command = "python benchmarks/thought_budget.py" + (
        f" --iterations {args.iterations}" if args.iterations != 1 else ""
    )
    if args.budgets != [16, 32, 64]:
        command += " --budgets " + " ".join(map(str, args.budgets))
    info = {
        "command": command,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started)),
        "seconds": time.time() - started,
        "load_start": load_start,
        "load_end": load(),
        "reused": f"reused finished runs: {', '.join(done)}" if done else "every run computed",
    }
    text = report(rows, seed, args.iterations, info)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    print(f"wrote {args.out}")
    for line in targets(rows):
        print(line)


if __name__ == "__main__":
    main()
