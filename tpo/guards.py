"""Guards against degenerate runs: a rate that means the run is learning nothing stops the
phase that measures it, instead of a `Succeeded` run whose win rate means nothing.

A weak model that never writes the separator, a judge that never states a verdict, prompts
that give no pair: each fails its phase with the bad-input exit code (a retry would measure the
same) and a message naming the measured rate, the threshold and the likely cause; a softer
level only warns (the phase summary's `warnings`). Pure: the phases pass the counts in.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from tpo.errors import BadInput
from tpo.spec import Guards, GuardWarning


class GuardTripped(BadInput):
    """A guard's fail level was crossed: bad input (the spec or the model), not a crash."""


@dataclass(frozen=True)
class Measure:
    """One measured rate, `count` of `total`, against its spec fields."""

    phase: str
    what: str  # "of samples failed to parse", completing "<phase>: 97.5% <what>"
    count: int
    total: int
    fail_field: str | None  # Guards attribute names (snake_case); None: a warning only
    warn_field: str
    cause: str
    detail: str = ""  # e.g. the breakdown by failure kind
    low_is_bad: bool = False  # a yield (min) rather than a failure rate (max)


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(w.title() for w in rest)


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%".replace(".0%", "%")


def message(m: Measure, threshold: float, field: str) -> str:
    rate = m.count / m.total
    detail = f": {m.detail}" if m.detail else ""
    return (
        f"{m.phase}: {_pct(rate)} {m.what} ({m.count} of {m.total}{detail}; "
        f"guards.{_camel(field)} {_pct(threshold)}): {m.cause}"
    )


def check(guards: Guards, measures: list[Measure]) -> list[str]:
    """Raise GuardTripped on the first fail level crossed; return the warnings' lines (also
    printed to stderr, where the pod log shows them)."""
    return [w.message for w in warn(guards, measures)]


def warn(guards: Guards, measures: list[Measure]) -> list[GuardWarning]:
    """`check` with the warnings as records: the guard (its spec field), rate, threshold and
    the line. A phase summary's `warnings` holds these; the operator's QualityWarning
    condition, its Events and the guard-warning metric read them."""
    warnings = []
    for m in measures:
        if m.total <= 0:
            continue
        rate = m.count / m.total
        level = getattr(guards, m.warn_field)
        if m.fail_field is not None:
            fail = getattr(guards, m.fail_field)
            if rate < fail if m.low_is_bad else rate > fail:
                raise GuardTripped(message(m, fail, m.fail_field))
        crossed_warn = rate < level if m.low_is_bad else rate > level
        if crossed_warn:
            warnings.append(
                GuardWarning(
                    guard=_camel(m.warn_field),
                    phase=m.phase,
                    rate=round(rate, 4),
                    threshold=level,
                    count=m.count,
                    total=m.total,
                    message="warning: " + message(m, level, m.warn_field),
                )
            )
    for w in warnings:
        print(w.message, file=sys.stderr)
    return warnings


def generate_measures(rows: list[dict], prefilled: bool, budgeted: bool) -> list[Measure]:
    """Parse failures (by kind) and truncations of one generate shard's samples."""
    n = len(rows)
    kinds = {k: sum(r.get("failure") == k for r in rows) for k in ("no_separator", "truncated")}
    kinds["empty_response"] = sum(r.get("failure") == "empty_response" for r in rows)
    failed = sum(not r["parse_ok"] for r in rows)
    detail = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in kinds.items() if v)
    causes, tries = [], []
    if kinds["no_separator"] or kinds["empty_response"] or not kinds["truncated"]:
        causes.append("the model does not follow the thought format (docs/thought-format.md)")
        tries += [] if prefilled else ["thoughtPrompt.prefill"]
    if kinds["truncated"]:
        causes.append("outputs run past generation.maxTokens")
        tries.append("a larger generation.maxTokens")
    tries += [] if budgeted else ["a thought budget (generation.thoughtBudget)"]
    cause = " and ".join(causes) + "; try " + " or ".join(tries)
    trunc_cause = "outputs run past generation.maxTokens; raise it or set generation.thoughtBudget"
    return [
        Measure(
            "generate",
            "of samples failed to parse",
            failed,
            n,
            "max_parse_failure_rate",
            "warn_parse_failure_rate",
            cause,
            detail,
        ),
        Measure(
            "generate",
            "of samples were cut at maxTokens",
            kinds["truncated"],
            n,
            "max_truncated_rate",
            "warn_truncated_rate",
            trunc_cause,
        ),
    ]


def judge_measures(replies: int, unread: int, pairs: int, prompts: int) -> list[Measure]:
    """Judge replies without a verdict, and the share of prompts that gave a pair."""
    return [
        Measure(
            "judge",
            "of judge replies had no verdict",
            unread,
            replies,
            "max_judge_no_verdict_rate",
            "warn_judge_no_verdict_rate",
            "the judge does not answer in its verdict format (docs/pairwise-judging.md); use "
            "a stronger judge model or a template it follows",
        ),
        Measure(
            "judge",
            "of prompts gave a preference pair",
            pairs,
            prompts,
            "min_pair_yield",
            "warn_pair_yield",
            "most prompts have no parsed sample, or the judge scored their samples alike",
            low_is_bad=True,
        ),
    ]


def check_pairs(guards: Guards, pairs: int, shards: int) -> None:
    """train: the pairs of all judge shards against guards.minPairs."""
    if pairs < guards.min_pairs:
        raise GuardTripped(
            f"train: {pairs} preference pair(s) over {shards} judge shard(s) "
            f"(guards.minPairs {guards.min_pairs}): nothing to learn from; see the judge "
            "phase's pair yield and generate's parse failures"
        )
