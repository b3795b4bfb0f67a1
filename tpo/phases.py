"""`tpo phase NAME`: the one entrypoint that Kubernetes Jobs and the local runner both call.

Each phase reads the spec snapshot and earlier artifacts, writes its own artifacts atomically,
writes its DONE marker last (the summary), and prints the summary as its last stdout line (and
to the pod's termination log, where the operator reads it). A phase whose DONE exists returns at
once, so retries and restarts never redo finished work. Exit codes: 0 done, 3 bad input (Jobs
fail fast), 1 crash (Jobs retry).
"""

from __future__ import annotations

import errno
import json
import os
import random
import sys
import time
import traceback
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tpo import artifacts as A
from tpo import exports, guards, ifeval_guard, judge_probe, progress
from tpo.artifacts import ArtifactError, RunDir
from tpo.errors import (
    EXIT_BAD_INPUT,
    EXIT_CRASH,
    EXIT_OK,
    EXIT_UPSTREAM_DAMAGED,
    BadInput,
    UpstreamDamaged,
)
from tpo.spec import (
    PHASES,
    Generation,
    ModelRef,
    SpecError,
    ThoughtPrompt,
    TPORunSpec,
    parse_spec,
)

TERMINATION_LIMIT = 4096
_STORAGE_ERRORS = {errno.ENOSPC, errno.EFBIG, errno.EROFS, errno.EDQUOT, errno.EACCES}
POINTWISE_JUDGES = {"rewardModel", "programmatic"}


# --------------------------------------------------------------------------- entry


def main(args: Any) -> int:
    run = RunDir(Path(args.run_dir))
    shard = args.shard or shard_from_env()
    try:
        summary = run_phase(args.name, run, args.iteration, shard, spec_json=args.spec)
    except UpstreamDamaged as e:
        print(
            f"error: {args.name} (iteration {args.iteration}): {e}; {e.phase} of iteration "
            f"{e.iteration} must be redone first",
            file=sys.stderr,
        )
        _write_termination(json.dumps({**e.record(), "error": str(e)[-500:]}))
        return EXIT_UPSTREAM_DAMAGED
    except (BadInput, ArtifactError, SpecError) as e:
        print(f"error: {args.name} (iteration {args.iteration}): {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as e:
        if e.errno not in _STORAGE_ERRORS:
            traceback.print_exc()
            return EXIT_CRASH
        # Disk full, quota, read-only volume: say so plainly; a retry may succeed once space is
        # freed. Atomic writes left no partial file; earlier artifacts are untouched.
        print(
            f"error: {args.name} (iteration {args.iteration}): cannot write artifacts under "
            f"{run.path}: {e.strerror} ({errno.errorcode.get(e.errno, e.errno)}): "
            f"{e.filename or ''}",
            file=sys.stderr,
        )
        return EXIT_CRASH
    except Exception:
        traceback.print_exc()
        return EXIT_CRASH
    emit(summary)
    return EXIT_OK


def shard_from_env() -> tuple[int, int] | None:
    """Indexed Jobs give each pod JOB_COMPLETION_INDEX; the Job sets TPO_SHARDS."""
    if "JOB_COMPLETION_INDEX" in os.environ and "TPO_SHARDS" in os.environ:
        return int(os.environ["JOB_COMPLETION_INDEX"]), int(os.environ["TPO_SHARDS"])
    return None


def compact(summary: dict[str, Any]) -> str:
    """The summary as one line that fits a termination message (4096 bytes).

    Trimmed in steps, what the status needs least first: categories past 8 (both head to
    heads), the comparison's categories, the categories, then every other list or dict but the
    guard warnings (the operator's QualityWarning condition and Events read them), and only
    then those. The phase's own files (eval.json) keep everything."""
    cmp = summary.get("compare")

    def with_categories(n: int | None, compare_n: int | None) -> dict[str, Any]:
        out = dict(summary)
        if "categories" in out:
            out["categories"] = out["categories"][:n] if n is not None else []
        if isinstance(cmp, dict):
            cats = cmp.get("categories") or []
            out["compare"] = {**cmp, "categories": cats[:compare_n] if compare_n else []}
        return out

    candidates = [
        summary,
        with_categories(8, 8),
        with_categories(8, None),
        with_categories(None, None),
        {k: v for k, v in summary.items() if not isinstance(v, list | dict) or k == "warnings"},
    ]
    for candidate in candidates:
        text = json.dumps(candidate, sort_keys=True, separators=(",", ":"))
        if len(text.encode()) <= TERMINATION_LIMIT:
            return text
    slim = {k: v for k, v in summary.items() if not isinstance(v, list | dict)}
    return json.dumps(slim, sort_keys=True, separators=(",", ":"))


def emit(summary: dict[str, Any]) -> None:
    line = compact(summary)
    _write_termination(line)
    sys.stdout.flush()
    print(line, flush=True)


def _write_termination(line: str) -> None:
    path = os.environ.get("TPO_TERMINATION_LOG")
    # Under torchrun every rank runs this; the Job's result is rank 0's (its local rank 0 writes).
    if path and os.environ.get("LOCAL_RANK", "0") == "0":
        try:
            Path(path).write_text(line)
        except OSError as e:
            print(f"warning: cannot write termination log {path}: {e}", file=sys.stderr)


# --------------------------------------------------------------------------- dispatch


def run_phase(
    name: str,
    run: RunDir,
    iteration: int,
    shard: tuple[int, int] | None = None,
    spec_json: str | None = None,
) -> dict[str, Any]:
    if name not in PHASES:
        raise BadInput(f"unknown phase {name!r}; expected one of {', '.join(PHASES)}")
    spec = load_spec(run, spec_json if name == "prepare" else None)
    check_iteration(name, iteration, spec)
    index, count = resolve_shard(name, shard, spec)
    if name != "prepare":  # every phase reads prepare's prompts
        try:
            A.read_done(run.done("prepare", 0))
        except ArtifactError as e:
            raise UpstreamDamaged("prepare", 0, str(e)) from None
    done = run.done(name, iteration, index if name in ("generate", "judge") else None)
    existing = _read_done(done)
    if existing is not None:
        return existing
    _start_pod_metrics(run, name, iteration, index)
    progress.set_step(name, iteration, index if count > 1 else None)
    started = time.time()
    fn: Callable[..., dict[str, Any]] = _PHASES[name]
    summary = fn(spec, run, iteration, index, count)
    summary = {"phase": name, "iteration": iteration, **summary}
    if name in ("generate", "judge"):
        summary.update(shard=index, shards=count)
    summary["seconds"] = round(time.time() - started, 3)
    if name == "train" and int(os.environ.get("RANK", "0")) != 0:
        return summary  # rank 0 alone marks the phase done
    A.write_done(done, summary, outputs(name, spec, run, iteration, index))
    return summary


def outputs(name: str, spec: TPORunSpec, run: RunDir, t: int, index: int) -> list[Path]:
    """The files a phase's DONE marker vouches for (digests checked whenever it is read)."""
    if name == "prepare":
        return [run.eval_prompts] + [run.prompts(i) for i in range(1, spec.iterations + 1)]
    if name == "generate":
        return [run.samples(t, index)]
    if name == "judge":
        return [run.scores(t, index), run.pairs(t, index), run.battles(t, index)]
    if name == "train":
        return [run.model(t)]
    ifeval = [ifeval_guard.outputs_path(run, t)] if spec.guards.ifeval_prompts > 0 else []
    return [run.eval_result(t), run.eval_outputs(t), run.exports_dir(t), *ifeval]


def _start_pod_metrics(run: RunDir, name: str, iteration: int, index: int) -> None:
    """Serve this pod's live gauges when the Job asks for it (TPO_METRICS_PORT); else a no-op."""
    from tpo import podmetrics

    run_name = os.environ.get("TPO_RUN") or run.path.name
    podmetrics.start_if_configured(run=run_name, phase=name, iteration=iteration, shard=index)


def _read_done(path: Path) -> dict[str, Any] | None:
    """A corrupt marker is not trusted: the phase is redone (its outputs are rewritten)."""
    try:
        return A.read_done(path)
    except ArtifactError as e:
        print(f"warning: {e}; redoing the phase", file=sys.stderr)
        path.unlink(missing_ok=True)
        return None


def load_spec(run: RunDir, spec_json: str | None) -> TPORunSpec:
    if spec_json is not None:
        try:
            data = json.loads(spec_json)
        except json.JSONDecodeError as e:
            raise BadInput(f"--spec: invalid JSON ({e.msg} at char {e.pos})") from None
        spec = parse_spec(data)
        if run.spec.exists():
            stored = parse_spec(A.read_json(run.spec))
            diff = spec_diff(stored, spec)
            if diff:
                raise BadInput(
                    f"{run.spec} holds a different spec; differing fields: {', '.join(diff)}"
                )
        else:
            A.write_json(run.spec, spec.dump())
        return spec
    if not run.spec.exists():
        raise BadInput(f"{run.spec}: missing (the prepare phase writes it)")
    return parse_spec(A.read_json(run.spec))


def spec_diff(a: TPORunSpec, b: TPORunSpec) -> list[str]:
    """Dotted paths of fields that differ between two specs."""
    out: list[str] = []

    def walk(x: Any, y: Any, path: str) -> None:
        if isinstance(x, dict) and isinstance(y, dict):
            for k in sorted(set(x) | set(y)):
                walk(x.get(k), y.get(k), f"{path}.{k}" if path else k)
        elif x != y:
            out.append(f"spec.{path}")

    walk(a.dump(), b.dump(), "")
    return out


def check_iteration(name: str, t: int, spec: TPORunSpec) -> None:
    lo = 0 if name in ("prepare", "evaluate") else 1
    hi = 0 if name == "prepare" else spec.iterations
    if not lo <= t <= hi:
        raise BadInput(f"--iteration {t}: phase {name} runs for iterations {lo}..{hi}")


def resolve_shard(name: str, shard: tuple[int, int] | None, spec: TPORunSpec) -> tuple[int, int]:
    expected = {"generate": spec.generation.shards, "judge": spec.judge.shards}.get(name, 1)
    if shard is None:
        if expected != 1:
            raise BadInput(f"phase {name} has {expected} shards: pass --shard I/{expected}")
        return 0, 1
    if shard[1] != expected:
        raise BadInput(f"--shard {shard[0]}/{shard[1]}: the spec says {expected} shard(s)")
    return shard


# --------------------------------------------------------------------------- helpers


def model_location(spec: TPORunSpec, run: RunDir, iteration: int) -> str:
    """M(t): the seed for t = 0, else the model trained in iteration t."""
    if iteration == 0:
        return spec.model.location
    path = run.model(iteration)
    if not (path / "config.json").exists():
        raise BadInput(f"{path}: model of iteration {iteration} is missing (train not done?)")
    try:
        A.read_done(run.done("train", iteration))  # the weights are what train wrote
    except ArtifactError as e:
        raise UpstreamDamaged("train", iteration, str(e)) from None
    return str(path)


def check_model(ref: ModelRef, what: str) -> None:
    """A model given by path must be there; hub ids are resolved by the loader (with HF_TOKEN)."""
    if ref.path and not (Path(ref.path) / "config.json").exists():
        raise BadInput(f"{what}.path: {ref.path}: no model there (config.json not found)")


def done_shards(run: RunDir, phase: str, iteration: int, shards: int) -> list[dict[str, Any]]:
    """All shards' summaries, or BadInput naming the missing ones (never a silent partial merge)."""
    out, missing = [], []
    for i in range(shards):
        try:
            summary = A.read_done(run.done(phase, iteration, i))
        except ArtifactError as e:
            raise UpstreamDamaged(phase, iteration, str(e)) from None
        if summary is None:
            missing.append(i)
        else:
            out.append(summary)
    if missing:
        raise BadInput(
            f"iteration {iteration}: {phase} shard(s) {missing} of {shards} not done; "
            f"run them first"
        )
    return out


def mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def _rnd(x: float | None, nd: int = 4) -> float | None:
    return None if x is None else round(float(x), nd)


# --------------------------------------------------------------------------- prepare


def prepare(spec: TPORunSpec, run: RunDir, iteration: int, index: int, count: int) -> dict:
    from tpo.datasets_io import prompt_records, source_name

    ds = spec.dataset
    records = prompt_records(ds)  # files, directories, hub ids: tpo/datasets_io.py
    need = ds.eval_prompts + spec.iterations * ds.prompts_per_iteration
    if len(records) < need:
        raise BadInput(
            f"{source_name(ds)}: {len(records)} distinct instructions, need {need} "
            f"(evalPrompts {ds.eval_prompts} + iterations {spec.iterations} x "
            f"promptsPerIteration {ds.prompts_per_iteration})"
        )
    random.Random(ds.seed).shuffle(records)
    A.write_jsonl(run.eval_prompts, records[: ds.eval_prompts])
    for t in range(1, spec.iterations + 1):
        lo = ds.eval_prompts + (t - 1) * ds.prompts_per_iteration
        A.write_jsonl(run.prompts(t), records[lo : lo + ds.prompts_per_iteration])
    return {
        "prompts_per_iteration": ds.prompts_per_iteration,
        "eval_prompts": ds.eval_prompts,
        "iterations": spec.iterations,
        "dataset_size": len(records),
    }


# --------------------------------------------------------------------------- generate


def generation_seed(seed: int, iteration: int, shard: int) -> int:
    """The seed of a generate shard's first prompt (prompt i gets this + i): new samples every
    iteration, the same ones on a retry."""
    return seed + 7919 * iteration + shard


def generate(spec: TPORunSpec, run: RunDir, iteration: int, index: int, count: int) -> dict:
    from tpo.generate import budget_of, load_generator, shard_items
    from tpo.prompts import wrap
    from tpo.thoughts import split_output, truncated

    prompts = shard_items(A.read_jsonl(run.prompts(iteration)), index, count)
    check_model(spec.model, "spec.model")
    loc = model_location(spec, run, iteration - 1)
    _, separator = spec.thought_prompt.resolved()
    g = spec.generation
    budget = budget_of(g, separator)
    stated = g.thought_budget if g.thought_budget_in_prompt else None
    gen = load_generator(loc, g, dtype=spec.model.dtype)
    try:
        wrapped = [wrap(spec.thought_prompt, p["instruction"], stated) for p in prompts]
        started = time.time()
        with progress.task("generate", "samples"):  # the engine counts what it finishes
            outs = gen.generate(
                wrapped,
                n=g.samples,
                temperature=g.temperature,
                top_p=g.top_p,
                max_tokens=g.max_tokens,
                seed=generation_seed(g.seed, iteration, index),
                budget=budget,
                prefill=spec.thought_prompt.prefill,
            )
        elapsed = time.time() - started
        rows = []
        for p, w, comps in zip(prompts, wrapped, outs, strict=True):
            for k, c in enumerate(comps):
                s = split_output(c.text, separator)
                if not g.keep_truncated:
                    s = truncated(s, c.finish_reason)
                rows.append(
                    {
                        "prompt_id": p["prompt_id"],
                        "instruction": p["instruction"],
                        "category": p.get("category"),
                        "record": p["record"],
                        "prompt": w,
                        "sample": k,
                        "text": c.text,
                        "thought": s.thought,
                        "response": s.response,
                        "parse_ok": s.parse_ok,
                        "failure": s.failure,
                        "tokens": c.token_count,
                        "finish_reason": c.finish_reason,
                        "forced": c.forced,
                        "thought_generated_tokens": c.thought_token_count,
                    }
                )
        thought_n = gen.count_tokens([r["thought"] for r in rows])
        resp_n = gen.count_tokens([r["response"] for r in rows])
    finally:
        gen.close()
    for r, tn, rn in zip(rows, thought_n, resp_n, strict=True):
        r["thought_tokens"], r["response_tokens"] = tn, rn
    A.write_jsonl(run.samples(iteration, index), rows)
    measures = guards.generate_measures(rows, bool(spec.thought_prompt.prefill), budget is not None)
    warnings = [w.model_dump() for w in guards.warn(spec.guards, measures)]
    ok = [r for r in rows if r["parse_ok"]]
    total_tokens = sum(r["tokens"] for r in rows)
    _pod_metrics(
        "generation", tokens_per_second=total_tokens / max(elapsed, 1e-9), samples=len(rows)
    )
    return {
        "prompts": len(prompts),
        "samples": len(rows),
        "parse_failure_rate": _rnd(1 - len(ok) / len(rows)) if rows else None,
        **failure_counts(rows),
        **({"warnings": warnings} if warnings else {}),
        "mean_thought_tokens": _rnd(mean([r["thought_tokens"] for r in ok]), 2),
        "mean_response_tokens": _rnd(mean([r["response_tokens"] for r in ok]), 2),
        "tokens_per_second": _rnd(total_tokens / max(elapsed, 1e-9), 1),
        **budget_summary(g.thought_budget if budget else None, rows),
    }


def failure_counts(rows: list[dict]) -> dict[str, Any]:
    """Each failure kind's count and share of the samples (guards and status read them)."""
    if not rows:
        return {}
    n = len(rows)
    out: dict[str, Any] = {}
    for kind in ("no_separator", "empty_response", "truncated"):
        k = sum(r.get("failure") == kind for r in rows)
        out[kind] = k
        out[f"{kind}_rate"] = _rnd(k / n)
    return out


def budget_summary(budget: int | None, rows: list[dict]) -> dict[str, Any]:
    """Share of outputs whose separator was forced, and of thoughts within the budget (the
    thought re-tokenised after the split, header stripped, as `thought_tokens` counts it)."""
    if budget is None or not rows:
        return {}
    return {
        "thought_budget": budget,
        "forced_thought_rate": _rnd(sum(bool(r.get("forced")) for r in rows) / len(rows)),
        "within_budget_rate": _rnd(sum(r["thought_tokens"] <= budget for r in rows) / len(rows)),
    }


def _pod_metrics(kind: str, **values: float) -> None:
    """Expose what only this pod knows while it runs (when TPO_METRICS_PORT is set)."""
    try:
        from tpo import podmetrics
    except ImportError:
        return
    if kind == "generation":
        podmetrics.set_generation(values["tokens_per_second"], int(values["samples"]))


# --------------------------------------------------------------------------- judge


def read_samples(spec: TPORunSpec, run: RunDir, iteration: int) -> dict[str, list[dict]]:
    """All generate shards, grouped by prompt; every prompt exactly once with K samples."""
    shards = spec.generation.shards
    done_shards(run, "generate", iteration, shards)
    expected = [p["prompt_id"] for p in A.read_jsonl(run.prompts(iteration))]
    groups: dict[str, list[dict]] = defaultdict(list)
    owner: dict[str, int] = {}
    for i in range(shards):
        path = run.samples(iteration, i)
        for row in A.iter_jsonl(path, required=("prompt_id", "sample", "text", "parse_ok")):
            pid = row["prompt_id"]
            if owner.setdefault(pid, i) != i:
                raise BadInput(f"{path}: prompt {pid} also appears in shard {owner[pid]}")
            groups[pid].append(row)
    missing = [p for p in expected if p not in groups]
    extra = [p for p in groups if p not in set(expected)]
    if missing or extra:
        raise BadInput(
            f"iteration {iteration} samples: {len(missing)} prompt(s) missing "
            f"{missing[:5]}, {len(extra)} unexpected {extra[:5]}"
        )
    k = spec.generation.samples
    for pid, rows in groups.items():
        if sorted(r["sample"] for r in rows) != list(range(k)):
            raise BadInput(
                f"iteration {iteration}: prompt {pid} has samples "
                f"{sorted(r['sample'] for r in rows)}, expected 0..{k - 1}"
            )
    return {pid: sorted(groups[pid], key=lambda r: r["sample"]) for pid in expected}


def judge(spec: TPORunSpec, run: RunDir, iteration: int, index: int, count: int) -> dict:
    from tpo.generate import shard_items
    from tpo.judges import JudgeItem, load_judge
    from tpo.scoring import choose_rho, length_control, overrun_penalty, select_pair

    groups = read_samples(spec, run, iteration)
    mine = shard_items(list(groups), index, count)
    items = [
        [
            JudgeItem(r["instruction"], r["response"] if r["parse_ok"] else None, r["record"])
            for r in groups[pid]
        ]
        for pid in mine
    ]
    j = load_judge(
        spec.judge,
        engine=spec.generation,
        reference_field=spec.dataset.reference_field,
        policy_dtype=spec.model.dtype,
    )
    try:
        with progress.task("judge", "calls"):  # the judge's backend counts its calls
            raw = j.score_groups(items)
    finally:
        j.close()
    # A pairwise judge's calls, logged for replays (benchmarks/pairing_replay.py --battles).
    battles = [
        {"prompt": mine[b["prompt"]], "a": b["a"], "b": b["b"], "outcome": b["outcome"]}
        for b in getattr(j, "battles", None) or []
    ]
    if battles:
        A.write_jsonl(run.battles(iteration, index), battles)
    lengths = [[int(r["response_tokens"]) for r in groups[pid]] for pid in mine]
    oks = [[bool(r["parse_ok"]) for r in groups[pid]] for pid in mine]
    lc = spec.judge.length_control
    rho = choose_rho(list(zip(raw, lengths, oks, strict=True)), rho_max=1.0) if lc.auto else lc.rho
    score_rows, pair_rows, skipped = [], [], 0
    for pid, scores, lens, ok in zip(mine, raw, lengths, oks, strict=True):
        rows = groups[pid]
        adjusted = length_control(scores, lens, rho)
        if lc.overrun_penalty:
            forced = [bool(r.get("forced")) for r in rows]
            adjusted = overrun_penalty(adjusted, forced, lc.overrun_penalty)
        pair = select_pair(adjusted, ok)
        for r, s, a in zip(rows, scores, adjusted, strict=True):
            score_rows.append(
                {
                    "prompt_id": pid,
                    "sample": r["sample"],
                    "score": s,
                    "adjusted": a,
                    "parse_ok": r["parse_ok"],
                    "chosen": pair is not None and r["sample"] == pair.chosen,
                    "rejected": pair is not None and r["sample"] == pair.rejected,
                }
            )
        if pair is None:
            skipped += 1
            continue
        c, rj = rows[pair.chosen], rows[pair.rejected]
        pair_rows.append(
            {
                "prompt_id": pid,
                "prompt": c["prompt"],
                "chosen": c["text"],
                "rejected": rj["text"],
                "chosen_score": scores[pair.chosen],
                "rejected_score": scores[pair.rejected],
                "chosen_tokens": c["response_tokens"],
                "rejected_tokens": rj["response_tokens"],
                "chosen_sample": c["sample"],
                "rejected_sample": rj["sample"],
            }
        )
    A.write_jsonl(run.scores(iteration, index), score_rows)
    A.write_jsonl(run.pairs(iteration, index), pair_rows)
    valid = [s for row in raw for s in row if s is not None]
    n_samples = sum(len(x) for x in oks)
    replies, unread = _judge_replies(spec, j, battles, items)
    warnings = [
        w.model_dump()
        for w in guards.warn(
            spec.guards, guards.judge_measures(replies, unread, len(pair_rows), len(mine))
        )
    ]
    return {
        "pairs": len(pair_rows),
        "pair_yield": _rnd(len(pair_rows) / len(mine)) if mine else None,
        **({"judge_no_verdict_rate": _rnd(unread / replies)} if replies else {}),
        **({"warnings": warnings} if warnings else {}),
        "skipped_prompts": skipped,
        "judge_mean_score": _rnd(mean(valid)),
        "rho": _rnd(rho),
        "chosen_mean_tokens": _rnd(mean([p["chosen_tokens"] for p in pair_rows]), 2),
        "rejected_mean_tokens": _rnd(mean([p["rejected_tokens"] for p in pair_rows]), 2),
        "parse_failure_rate": _rnd(1 - sum(map(sum, oks)) / n_samples) if n_samples else None,
        **(
            {
                "judge_calls": len(battles),
                "judge_calls_per_prompt": _rnd(len(battles) / max(len(mine), 1), 2),
                "judge_no_verdict": sum(b["outcome"] is None for b in battles),
            }
            if battles
            else {}
        ),
    }


def _judge_replies(spec: TPORunSpec, j: Any, battles: list[dict], items: list) -> tuple[int, int]:
    """(judge replies, replies without a verdict): pairwise battles, or a pointwise endpoint's
    ratings; (0, 0) for judges that always score (reward model, programmatic)."""
    if battles:
        return len(battles), sum(b["outcome"] is None for b in battles)
    if spec.judge.type == "endpoint":
        asked = sum(it.response is not None for g in items for it in g)
        return asked, int(getattr(j, "unparsed", 0))
    return 0, 0


# --------------------------------------------------------------------------- train


def read_pairs(spec: TPORunSpec, run: RunDir, iteration: int) -> list[dict]:
    shards = spec.judge.shards
    done_shards(run, "judge", iteration, shards)
    rows, seen = [], {}
    for i in range(shards):
        path = run.pairs(iteration, i)
        for row in A.iter_jsonl(path, required=("prompt_id", "prompt", "chosen", "rejected")):
            if row["prompt_id"] in seen:
                raise BadInput(
                    f"{path}: prompt {row['prompt_id']} duplicated in shard "
                    f"{seen[row['prompt_id']]}"
                )
            seen[row["prompt_id"]] = i
            rows.append(row)
    return rows


def train(spec: TPORunSpec, run: RunDir, iteration: int, index: int, count: int) -> dict:
    from tpo.train import train_dpo

    pairs = read_pairs(spec, run, iteration)
    guards.check_pairs(spec.guards, len(pairs), spec.judge.shards)
    check_model(spec.model, "spec.model")
    base = model_location(spec, run, iteration - 1)
    out = train_dpo(
        spec,
        base_model=Path(base) if Path(base).exists() else base,
        pairs=pairs,
        out_dir=run.model(iteration),
        work_dir=run.checkpoints(iteration),
        callbacks=[progress.trainer_callback(progress.label_of("train", iteration))],
    )
    keep = (
        "train_loss",
        "final_loss",
        "reward_margin",
        "reward_accuracy",
        "steps",
        "pairs",
        "resumed_from_step",
    )
    summary = {k: out.get(k) for k in keep if k in out}
    summary["model_path"] = str(run.model(iteration))
    return summary


# --------------------------------------------------------------------------- evaluate

_DIRECT = ThoughtPrompt(type="none")


def _eval_outputs(
    spec: TPORunSpec,
    loc: str,
    prompts: list[dict],
    arms: dict[str, ThoughtPrompt],
    generation: Generation | None = None,
    arm_prompts: dict[str, list[dict]] | None = None,
) -> dict[str, list[dict]]:
    """Greedy (or spec'd) outputs of one model under each thought prompt; one engine load.

    An arm with thoughts gets the thought budget of `generation` (default: this run's), so a
    budgeted run is evaluated as it generates; compareWith passes the other run's.
    `arm_prompts` gives an arm prompts of its own (the IFEval guard's constrained ones)."""
    from tpo.generate import budget_of, load_generator
    from tpo.prompts import wrap
    from tpo.thoughts import split_output

    ev = spec.evaluation
    budgeting = generation or spec.generation
    stated = budgeting.thought_budget if budgeting.thought_budget_in_prompt else None
    gen = load_generator(loc, spec.generation, dtype=spec.model.dtype)
    out: dict[str, list[dict]] = {}
    try:
        for arm, tp in arms.items():
            _, sep = tp.resolved()
            ps = (arm_prompts or {}).get(arm, prompts)
            wrapped = [wrap(tp, p["instruction"], stated) for p in ps]
            comps = gen.generate(
                wrapped,
                n=1,
                temperature=ev.temperature,
                top_p=spec.generation.top_p if ev.temperature > 0 else 1.0,
                max_tokens=spec.generation.max_tokens,
                seed=spec.generation.seed,
                budget=budget_of(budgeting, sep),
                prefill=tp.prefill,
            )
            rows = []
            for p, c in zip(ps, comps, strict=True):
                s = split_output(c[0].text, sep)
                rows.append(
                    {
                        "prompt_id": p["prompt_id"],
                        "text": c[0].text,
                        "thought": s.thought,
                        "response": s.response,
                        "parse_ok": s.parse_ok,
                        "forced": c[0].forced,
                    }
                )
            tn = gen.count_tokens([r["thought"] for r in rows])
            rn = gen.count_tokens([r["response"] for r in rows])
            for r, a, b in zip(rows, tn, rn, strict=True):
                r["thought_tokens"], r["response_tokens"] = a, b
            out[arm] = rows
    finally:
        gen.close()
    return out


def _cached_arm(
    spec: TPORunSpec, run: RunDir, key: str, loc: str, prompts: list[dict], tp: ThoughtPrompt
) -> list[dict]:
    path = run.baseline_outputs(key)
    if path.exists():
        try:
            return A.read_jsonl(path, required=("prompt_id", "text", "parse_ok"))
        except ArtifactError as e:  # damaged cache: made again, never trusted
            print(f"warning: {e}; generating it again", file=sys.stderr)
    rows = _eval_outputs(spec, loc, prompts, {key: tp})[key]
    A.write_jsonl(path, rows)
    return rows


def _eval_arms(
    spec: TPORunSpec, run: RunDir, iteration: int, prompts: list[dict], ifeval: list[dict]
) -> tuple[list[dict], list[dict], list[dict] | None, str | None, list[dict]]:
    """The outputs evaluate judges: the candidate's, the baseline's, compareWith's; and the
    candidate's answers to the IFEval guard's prompts (`ifeval`; [] when there are none)."""
    seed = spec.model.location
    tp = spec.thought_prompt
    own = {"ifeval": ifeval, f"seed-ifeval-{tp.type}": ifeval}
    if iteration == 0:
        # The paper's first row: the seed with the thought prompt vs the seed answering directly.
        # Both arms from ONE engine load (an engine start is most of this phase on small models).
        arms = {f"seed-{tp.type}": tp, "seed-none": _DIRECT}
        arms.update({f"seed-ifeval-{tp.type}": tp} if ifeval else {})
        missing = {k: v for k, v in arms.items() if not run.baseline_outputs(k).exists()}
        if missing:
            for key, rows in _eval_outputs(spec, seed, prompts, missing, None, own).items():
                A.write_jsonl(run.baseline_outputs(key), rows)
        cand = _cached_arm(spec, run, f"seed-{tp.type}", seed, prompts, tp)
        base = _cached_arm(spec, run, "seed-none", seed, prompts, _DIRECT)
        key = f"seed-ifeval-{tp.type}"
        ifeval_rows = _cached_arm(spec, run, key, seed, ifeval, tp) if ifeval else []
    else:
        arms = {"c": tp, **({"ifeval": tp} if ifeval else {})}
        outs = _eval_outputs(spec, model_location(spec, run, iteration), prompts, arms, None, own)
        cand, ifeval_rows = outs["c"], outs.get("ifeval", [])
        base = _baseline(spec, run, prompts)
    other, note = _other_arm(spec, run, iteration, prompts)
    return cand, base, other, note, ifeval_rows


def evaluate(spec: TPORunSpec, run: RunDir, iteration: int, index: int, count: int) -> dict:
    from tpo.evaluate import require_rated, tally
    from tpo.judges import JudgeItem, load_judge

    prompts = A.read_jsonl(run.eval_prompts)
    if spec.evaluation.prompts:
        prompts = prompts[: spec.evaluation.prompts]
    check_model(spec.model, "spec.model")
    tp = spec.thought_prompt
    ifeval = ifeval_guard.records(spec, prompts)  # docs/guards.md: the IFEval guard
    with progress.task("outputs", "samples"):  # the engine counts every arm's outputs
        cand, base, other, note, ifeval_rows = _eval_arms(spec, run, iteration, prompts, ifeval)
    min_n = spec.evaluation.min_category_prompts
    j = load_judge(
        spec.judge,
        engine=spec.generation,
        reference_field=spec.dataset.reference_field,
        policy_dtype=spec.model.dtype,
    )
    with progress.task("judge", "calls"):  # the judge's backend counts its calls
        try:
            outcomes = _compare(j, JudgeItem, prompts, cand, base)
            cand_score = _pointwise_mean(spec, j, JudgeItem, prompts, cand)
            base_score = _pointwise_mean(spec, j, JudgeItem, prompts, base)
            versus = _compare(j, JudgeItem, prompts, cand, other) if other else None
            other_score = _pointwise_mean(spec, j, JudgeItem, prompts, other) if other else None
            # Before iteration 1 trains on the judge: does it prefer ":" to an answer?
            probe = (
                judge_probe.probe(spec, j, JudgeItem, prompts, cand, base)
                if not iteration
                else ({}, [])
            )
        finally:
            j.close()
    c_ok, b_ok = [bool(r["parse_ok"]) for r in cand], [bool(r["parse_ok"]) for r in base]
    t = tally(outcomes, c_ok, b_ok)
    wr = require_rated(t, f"evaluation (iteration {iteration})")
    # docs/length-controlled-win-rate.md: over the same rated prompts, where a raw rate is.
    cats, lc, lc_cats = _categories_and_lc(
        outcomes, cand, base, prompts, c_ok, b_ok, min_n, spec.generation.seed
    )
    rows = [
        {
            "prompt_id": p["prompt_id"],
            "category": p.get("category"),
            "candidate": c["text"],
            "candidate_thought_tokens": c["thought_tokens"],
            "candidate_forced": bool(c.get("forced")),
            "candidate_parse_ok": c["parse_ok"],
            "baseline": b["text"],
            "baseline_parse_ok": b["parse_ok"],
            "outcome": o,
            "both_failed": not c["parse_ok"] and not b["parse_ok"],
        }
        for p, c, b, o in zip(prompts, cand, base, outcomes, strict=True)
    ]
    if other is not None and versus is not None:
        for r, x, o in zip(rows, other, versus, strict=True):
            r.update(other=x["text"], other_outcome=o)
    A.write_jsonl(run.eval_outputs(iteration), rows)
    # tstamp 0: the same outputs give the same bytes (a resumed run's exports equal an
    # uninterrupted run's; tests/reliability/test_fault_phases); the readers ignore it
    exports.write(spec, run, iteration, prompts, cand, 0.0)  # docs/exports.md
    ok = [r for r in cand if r["parse_ok"]]
    result = {
        # The rate is over the n rated prompts (wins + ties + losses); both_failed prompts
        # (neither side parsed) and judge_errors (no verdict) are counted beside it, not in it.
        "win_rate": _rnd(wr.rate),
        "win_rate_low": _rnd(wr.low),
        "win_rate_high": _rnd(wr.high),
        **lc,
        "wins": wr.wins,
        "ties": wr.ties,
        "losses": wr.losses,
        "n": wr.n,
        "both_failed": t.both_failed,
        "judge_errors": t.judge_errors,
        "eval_prompts": t.prompts,
        # means over the candidate's parsed eval outputs only (len(ok) of them)
        "mean_thought_tokens": _rnd(mean([r["thought_tokens"] for r in ok]), 2),
        "mean_response_tokens": _rnd(mean([r["response_tokens"] for r in ok]), 2),
        "eval_parse_failure_rate": _rnd(t.candidate_parse_failure_rate),
        "baseline_parse_failure_rate": _rnd(t.baseline_parse_failure_rate),
        "eval_judge_mean_score": _rnd(cand_score),
        "baseline_judge_mean_score": _rnd(base_score),
        "categories": [{**c.dump(), **_lc_rate(lc_cats.get(c.category))} for c in cats],
    }
    _, separator = tp.resolved()
    for k, v in budget_summary(spec.generation.thought_budget if separator else None, cand).items():
        result[f"eval_{k}" if k != "thought_budget" else k] = v
    if spec.evaluation.compare_with and iteration > 0:
        result["compare"] = _versus_summary(
            spec.evaluation.compare_with,
            prompts,
            cand,
            other,
            versus,
            other_score,
            note,
            min_n,
            seed=spec.generation.seed,
        )
    fields, warned = ifeval_guard.evaluate_fields(spec, run, iteration, ifeval, ifeval_rows)
    result.update(fields, **probe[0])
    if warned or probe[1]:  # docs/guards.md: tpo.spec.GuardWarning records
        result["warnings"] = [*result.get("warnings", []), *warned, *probe[1]]
    A.write_json(run.eval_result(iteration), result)
    return result


def _lc_rate(fields: dict[str, Any] | None) -> dict[str, Any]:
    """An LC rate and interval only (not the weight or note), as a category or the compareWith
    record carries it: those lists must fit the pod's 4096-byte termination message."""
    keep = ("lc_win_rate", "lc_win_rate_low", "lc_win_rate_high")
    return {k: v for k, v in (fields or {}).items() if k in keep}


COMPARE_DIR_ENV = "TPO_COMPARE_RUN_DIR"  # the operator's Job names the other run's directory


def compare_run_dir(spec: TPORunSpec, run: RunDir) -> RunDir | None:
    """The run named by evaluation.compareWith: `$TPO_COMPARE_RUN_DIR` when the Job sets it
    (the other run's volume mounted elsewhere), else `<root>/<namespace>/<other>/` beside ours."""
    name = spec.evaluation.compare_with
    if not name:
        return None
    env = os.environ.get(COMPARE_DIR_ENV)
    return RunDir(Path(env)) if env else RunDir(run.path.parent / name)


def _other_arm(
    spec: TPORunSpec, run: RunDir, t: int, prompts: list[dict]
) -> tuple[list[dict] | None, str | None]:
    """The compareWith run's M(t) on OUR eval prompts, prompted as that run prompts it (its
    thought prompt and budget), sampled with our evaluation settings; or why there is none.

    Iteration 0 has no comparison (it already compares the seed with vs without thoughts).
    The other run not (yet) having M(t) is a note, not an error: the operator only starts this
    phase once it has it, unless that run ended without it.
    """
    other = compare_run_dir(spec, run)
    name = spec.evaluation.compare_with
    if other is None or t == 0:
        return None, None
    if other.path.resolve() == run.path.resolve():
        raise BadInput(f"spec.evaluation.compareWith: {name!r} names this run itself")
    if not other.spec.exists():
        return None, f"run {name} not found ({other.path})"
    try:
        ospec = parse_spec(A.read_json(other.spec))
    except SpecError as e:
        return None, f"run {name}: its spec.json is invalid ({e})"
    if t > ospec.iterations:
        return None, f"run {name} has only {ospec.iterations} iteration(s)"
    model = other.model(t)
    if not (model / "config.json").exists():
        return None, f"run {name} has no model for iteration {t} (not trained yet?)"
    arm = {"other": ospec.thought_prompt}
    return _eval_outputs(spec, str(model), prompts, arm, ospec.generation)["other"], None


def _categories_and_lc(
    outcomes: list[Any],
    cand: list[dict],
    base: list[dict],
    prompts: list[dict],
    c_ok: list[bool],
    b_ok: list[bool],
    min_n: int,
    seed: int,
) -> tuple[list[Any], dict[str, Any], dict[str, Any]]:
    """Per-category counts and the length-controlled rates, over exactly the prompts the raw
    rate is over: one rule for the baseline head-to-head and the compareWith one."""
    from tpo.evaluate import category_tallies
    from tpo.length_control import evaluate_fields as lc_fields

    categories = [p.get("category") for p in prompts]
    cats = category_tallies(outcomes, c_ok, b_ok, categories, min_n=min_n)
    rated = [c.category for c in cats if c.win_rate is not None]
    lc, lc_cats = lc_fields(outcomes, cand, base, categories, rated, seed=seed)
    return cats, lc, lc_cats


def _versus_summary(
    name: str,
    prompts: list[dict],
    cand: list[dict],
    other: list[dict] | None,
    outcomes: list[float | None] | None,
    other_score: float | None,
    note: str | None,
    min_n: int,
    seed: int = 0,
) -> dict[str, Any]:
    """The compareWith head-to-head, counted as the baseline's is (both-failed left out);
    nothing to rate is a note here, not a failure: the comparison is the secondary result.
    Its length-controlled rate is fitted as the baseline's (docs/length-controlled-win-rate.md)."""
    from tpo.evaluate import tally

    if other is None or outcomes is None:
        return {"run": name, "note": note or "the judge returned no usable verdict"}
    c_ok, o_ok = [bool(r["parse_ok"]) for r in cand], [bool(r["parse_ok"]) for r in other]
    t = tally(outcomes, c_ok, o_ok)
    if t.rate is None:
        return {"run": name, "note": f"no prompt left to rate ({t.counts()})"}
    wr = t.rate
    cats, lc, lc_cats = _categories_and_lc(outcomes, cand, other, prompts, c_ok, o_ok, min_n, seed)
    ok = [r for r in other if r["parse_ok"]]
    return {
        "run": name,
        "win_rate": _rnd(wr.rate),
        "win_rate_low": _rnd(wr.low),
        "win_rate_high": _rnd(wr.high),
        **_lc_rate(lc),
        "wins": wr.wins,
        "ties": wr.ties,
        "losses": wr.losses,
        "n": wr.n,
        "both_failed": t.both_failed,
        "judge_errors": t.judge_errors,
        "parse_failure_rate": _rnd(t.baseline_parse_failure_rate),
        "judge_mean_score": _rnd(other_score),
        "mean_thought_tokens": _rnd(mean([r["thought_tokens"] for r in ok]), 2),
        "mean_response_tokens": _rnd(mean([r["response_tokens"] for r in ok]), 2),
        "categories": [{**c.dump(), **_lc_rate(lc_cats.get(c.category))} for c in cats],
    }


def _baseline(spec: TPORunSpec, run: RunDir, prompts: list[dict]) -> list[dict]:
    ev = spec.evaluation
    tp = spec.thought_prompt
    if ev.baseline == "seed":
        return _cached_arm(spec, run, f"seed-{tp.type}", spec.model.location, prompts, tp)
    if ev.baseline == "direct":
        return _cached_arm(spec, run, "seed-none", spec.model.location, prompts, _DIRECT)
    assert ev.baseline_model is not None
    check_model(ev.baseline_model, "spec.evaluation.baselineModel")
    return _cached_arm(spec, run, "baseline-model", ev.baseline_model.location, prompts, tp)


def _compare(j, item, prompts, cand, base) -> list[float | None]:
    """Judge responses only. A side without a parsable response loses; where both failed
    there is no comparison (None: tpo.evaluate.tally counts it as both_failed, not a tie)."""
    from tpo.evaluate import outcome_of

    outcomes: list[float | None] = [None] * len(prompts)
    todo, idx = [], []
    for i, (p, c, b) in enumerate(zip(prompts, cand, base, strict=True)):
        if c["parse_ok"] and b["parse_ok"]:
            todo.append(
                (
                    item(p["instruction"], c["response"], p["record"]),
                    item(p["instruction"], b["response"], p["record"]),
                )
            )
            idx.append(i)
        else:
            outcomes[i] = outcome_of(bool(c["parse_ok"]), bool(b["parse_ok"]), None)
    for i, o in zip(idx, j.compare(todo) if todo else [], strict=True):
        outcomes[i] = o
    return outcomes


def _pointwise_mean(spec, j, item, prompts, rows) -> float | None:
    """Mean judge score of one arm (pointwise judges only; a failed parse scores as missing)."""
    if spec.judge.type not in POINTWISE_JUDGES and not (
        spec.judge.type == "endpoint" and spec.judge.endpoint.mode == "pointwise"
    ):
        return None
    groups = [
        [item(p["instruction"], r["response"] if r["parse_ok"] else None, p["record"])]
        for p, r in zip(prompts, rows, strict=True)
    ]
    scores = [g[0] for g in j.score_groups(groups)]
    vals = [0.0 if s is None else float(s) for s in scores]
    return mean(vals)


_PHASES: dict[str, Callable[..., dict[str, Any]]] = {
    "prepare": prepare,
    "generate": generate,
    "judge": judge,
    "train": train,
    "evaluate": evaluate,
}
