"""The run's status as a pure fold over phase summaries.

The local runner (reading DONE markers) and the operator (reading pods' termination messages)
see the same summaries and must produce the same `TPORunStatus`, so both call `apply_summary`.
It is idempotent: applying a summary twice leaves the status unchanged.
"""

from __future__ import annotations

from typing import Any

from tpo.spec import Condition, GuardWarning, IterationStatus, TPORunStatus

# Fields copied from a phase summary into the iteration's history entry, by phase.
_FIELDS: dict[str, tuple[str, ...]] = {
    "generate": (
        "samples",
        "parse_failure_rate",
        "mean_thought_tokens",
        "mean_response_tokens",
        "thought_budget",
        "forced_thought_rate",
        "within_budget_rate",
        "truncated_rate",
    ),
    "judge": (
        "pairs",
        "skipped_prompts",
        "judge_mean_score",
        "judge_calls_per_prompt",
        "judge_no_verdict",
        "rho",
        "chosen_mean_tokens",
        "rejected_mean_tokens",
        "parse_failure_rate",
        "pair_yield",
        "judge_no_verdict_rate",
    ),
    "train": ("train_loss", "reward_margin", "reward_accuracy", "model_path"),
    "evaluate": (
        "win_rate",
        "win_rate_low",
        "win_rate_high",
        "lc_win_rate",
        "lc_win_rate_low",
        "lc_win_rate_high",
        "lc_length_weight",
        "lc_note",
        "wins",
        "ties",
        "losses",
        "n",
        "both_failed",
        "eval_prompts",
        "eval_parse_failure_rate",
        "baseline_parse_failure_rate",
        "eval_judge_mean_score",
        "baseline_judge_mean_score",
        "judge_errors",
        "mean_thought_tokens",
        "mean_response_tokens",
        "categories",
        "compare",
        "ifeval_strict",
        "ifeval_loose",
        "ifeval_prompts",
        "ifeval_unparsed",
        "ifeval_strict_drop",
        "ifeval_loose_drop",
        "judge_probe_rate",
        "judge_probe_n",
        "judge_probe_unread",
        "judge_probe_preferred",
        "judge_probe_ties",
        "judge_probe_by_key",
    ),
}
# Generation's token means describe training samples; evaluation's describe the model's
# eval outputs (the paper's reported lengths). Evaluation wins when both exist.
_EVAL_OWNS = {"mean_thought_tokens", "mean_response_tokens"}
# Taken from the first shard (identical in every shard, or not a number to average).
_NOT_MERGED = {"phase", "iteration", "shards", "shard", "categories", "model_path", "compare"}
_NOT_MERGED |= {"thought_budget", "warnings"}
# Summed (not averaged) across the shards of a phase.
_ADDITIVE = {
    "prompts",
    "samples",
    "pairs",
    "skipped_prompts",
    "wins",
    "ties",
    "losses",
    "judge_calls",
    "judge_no_verdict",
}


def merge_shards(summaries: list[dict[str, Any]]) -> dict[str, Any]:
    """One summary for a sharded phase: counts add, means are weighted by sample counts."""
    if len(summaries) == 1:
        return dict(summaries[0])
    weight_key = "samples" if any("samples" in s for s in summaries) else "pairs"
    weights = [float(s.get(weight_key) or 0) for s in summaries]
    if not sum(weights):
        weights = [1.0] * len(summaries)
    out: dict[str, Any] = {k: v for k, v in summaries[0].items() if k not in ("shard",)}
    for key in {k for s in summaries for k in s}:
        vals = [s.get(key) for s in summaries]
        if key in _NOT_MERGED:
            continue
        if key == "seconds":
            out[key] = max(float(v or 0) for v in vals)
        elif key in _ADDITIVE:
            out[key] = sum(int(v or 0) for v in vals)
        elif all(isinstance(v, int | float) for v in vals if v is not None) and any(
            v is not None for v in vals
        ):
            pairs = [(float(v), w) for v, w in zip(vals, weights, strict=True) if v is not None]
            wsum = sum(w for _, w in pairs) or 1.0
            out[key] = sum(v * w for v, w in pairs) / wsum
    if out.get("judge_calls") is not None:  # every judged prompt gave a pair or was skipped
        judged = int(out.get("pairs") or 0) + int(out.get("skipped_prompts") or 0)
        out["judge_calls_per_prompt"] = round(out["judge_calls"] / max(judged, 1), 2)
    warnings = [w for s in summaries for w in s.get("warnings") or []]  # each shard's own
    if warnings:
        out["warnings"] = warnings
    out["shards"] = len(summaries)
    out.pop("shard", None)
    return out


def _entry(status: TPORunStatus, iteration: int) -> IterationStatus:
    for h in status.history:
        if h.iteration == iteration:
            return h
    h = IterationStatus(iteration=iteration)
    status.history.append(h)
    status.history.sort(key=lambda e: e.iteration)
    return h


def apply_summary(status: TPORunStatus, summary: dict[str, Any]) -> TPORunStatus:
    """Record one (merged) phase summary in a copy of `status`; never mutates the input."""
    new = status.model_copy(deep=True)
    phase = summary.get("phase")
    iteration = int(summary.get("iteration", 0))
    if phase not in _FIELDS and phase != "prepare":
        raise ValueError(f"summary has unknown phase {phase!r}")
    if phase == "prepare":
        return new
    h = _entry(new, iteration)
    data = h.model_dump()
    for key in _FIELDS[phase]:
        if key not in summary or summary[key] is None:
            continue
        if phase == "generate" and key in _EVAL_OWNS and h.win_rate is not None:
            continue
        data[key] = summary[key]
    # This phase's warnings replace what an earlier apply of it recorded (idempotent).
    kept = [w for w in data["warnings"] if w["phase"] != phase]
    data["warnings"] = kept + [
        {**w, "phase": w.get("phase") or phase} for w in summary.get("warnings") or []
    ]
    if "seconds" in summary:
        data["phase_seconds"] = {**h.phase_seconds, phase: round(float(summary["seconds"]), 3)}
    updated = IterationStatus.model_validate(data)
    new.history = [updated if e.iteration == iteration else e for e in new.history]
    if phase == "evaluate":
        rated = [e for e in new.history if e.win_rate is not None]
        if rated:
            latest = max(rated, key=lambda e: e.iteration)
            new.win_rate = latest.win_rate
            new.thought_tokens = latest.mean_thought_tokens
    return new


def set_condition(
    status: TPORunStatus,
    type_: str,
    value: bool | str,
    reason: str,
    message: str,
    now: str,
    generation: int | None = None,
) -> TPORunStatus:
    """Upsert a condition; lastTransitionTime changes only when the status value changes."""
    new = status.model_copy(deep=True)
    val = value if isinstance(value, str) else ("True" if value else "False")
    for i, c in enumerate(new.conditions):
        if c.type == type_:
            changed = c.status != val
            new.conditions[i] = Condition(
                type=type_,
                status=val,
                reason=reason,
                message=message,
                last_transition_time=now if changed else c.last_transition_time,
                observed_generation=generation,
            )
            return new
    new.conditions.append(
        Condition(
            type=type_,
            status=val,
            reason=reason,
            message=message,
            last_transition_time=now,
            observed_generation=generation,
        )
    )
    return new


def condition(status: TPORunStatus, type_: str) -> Condition | None:
    return next((c for c in status.conditions if c.type == type_), None)


# The run's lifecycle conditions, by the state the run is in: (type, status, reason), reason None
# meaning the caller's (the failure's reason, the phase running). Kubernetes' convention: every
# condition carries a CamelCase reason for its CURRENT status, so none is left behind by an
# earlier state (a Failed=False "Running" on a run that succeeded). The first conditions of a
# state are always written; the rest only updated where the run already has them.
_LIFECYCLE: dict[str, tuple[tuple[str, bool, str | None], ...]] = {
    "Running": (
        ("Progressing", True, None),
        ("Ready", False, "Running"),
        ("Failed", False, "Running"),
        ("Succeeded", False, "Running"),
        ("Suspended", False, "Running"),
    ),
    "Succeeded": (
        ("Succeeded", True, "AllIterationsDone"),
        ("Progressing", False, "Finished"),
        ("Ready", True, "Finished"),
        ("Failed", False, "Succeeded"),
        ("Suspended", False, "Finished"),
    ),
    "Failed": (
        ("Failed", True, None),
        ("Progressing", False, None),
        ("Ready", False, None),
        ("Succeeded", False, None),
        ("Suspended", False, None),
    ),
    "Suspended": (
        ("Suspended", True, "SpecSuspend"),
        ("Progressing", False, "Suspended"),
        ("Ready", False, "Suspended"),
        ("Failed", False, "Suspended"),
        ("Succeeded", False, "Suspended"),
    ),
    "Interrupted": (
        ("Progressing", False, "Interrupted"),
        ("Ready", False, "Interrupted"),
        ("Failed", False, "Interrupted"),
        ("Succeeded", False, "Interrupted"),
        ("Suspended", False, "Interrupted"),
    ),
}
# How many of each state's conditions are always written (the rest: only if present).
_ALWAYS = {"Running": 3, "Succeeded": 4, "Failed": 3, "Suspended": 2, "Interrupted": 3}


def set_lifecycle(
    status: TPORunStatus,
    state: str,
    reason: str,
    message: str,
    now: str,
    generation: int | None = None,
) -> TPORunStatus:
    """The lifecycle conditions (Progressing, Ready, Succeeded, Failed, Suspended) for a run
    entering `state` (Running, Succeeded, Failed, Suspended, Interrupted), in a copy.

    `reason` is the reason of what happened (the phase running, the failure); conditions with a
    fixed reason for the state take that. The local runner and the operator both call this, so
    one table decides what a run's conditions say in each state."""
    present = {c.type for c in status.conditions}
    new = status
    for i, (type_, value, fixed) in enumerate(_LIFECYCLE[state]):
        if i >= _ALWAYS[state] and type_ not in present:
            continue
        new = set_condition(new, type_, value, fixed or reason, message, now, generation)
    return new


# --------------------------------------------------------------------------- quality warnings

QUALITY_WARNING = "QualityWarning"  # condition type: a guard's warn level was crossed
QUALITY_MESSAGE_MAX = 2000


def warnings_of(status: TPORunStatus) -> list[tuple[int, GuardWarning]]:
    """Every guard warning the run's history records, (iteration, warning), in run order."""
    history = sorted(status.history, key=lambda e: e.iteration)
    return [(h.iteration, w) for h in history for w in h.warnings]


def warning_line(iteration: int, w: GuardWarning) -> str:
    """One warning as `tpo run` prints it and the Event says it."""
    return f"iteration {iteration}: {w.message}"


def guard_reason(guard: str) -> str:
    """A condition reason naming the guard: warnParseFailureRate -> ParseFailureRate."""
    name = guard.removeprefix("warn")
    return (name[:1].upper() + name[1:]) or "Guard"


def set_quality(status: TPORunStatus, now: str, generation: int | None = None) -> TPORunStatus:
    """The QualityWarning condition from the history's guard warnings, in a copy: True while
    the run has any (a Succeeded run that warned keeps saying so), reason the guards crossed
    (CamelCase, comma-separated: metav1 reasons allow commas), message the warnings, latest
    first; False with reason NoWarnings otherwise. The local runner and the operator both call
    it, so both say the same."""
    found = warnings_of(status)
    if not found:
        return set_condition(status, QUALITY_WARNING, False, "NoWarnings", "", now, generation)
    guards = list(dict.fromkeys(guard_reason(w.guard) for _, w in found))
    lines = [warning_line(t, w) for t, w in reversed(found)]
    message = f"{len(found)} guard warning(s): " + "; ".join(lines)
    if len(message) > QUALITY_MESSAGE_MAX:
        message = message[: QUALITY_MESSAGE_MAX - 3] + "..."
    return set_condition(status, QUALITY_WARNING, True, ",".join(guards), message, now, generation)
