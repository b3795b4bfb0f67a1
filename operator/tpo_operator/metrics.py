"""Every Prometheus metric the operator exports (one module holds every name; docs/metrics.md).

A TPORun's status is the source of truth, so the per-run series are a pure function of it
(`run_series`): each reconcile recomputes them and the shell (`observe_run`) applies the
difference, which makes repeated or missed reconciles harmless and lets `forget_run` drop exactly
what a run created. Labels stay bounded: namespace, run, iteration (<= spec.iterations), step
phase, a closed set of reasons and outcomes, at most MAX_CATEGORIES categories per iteration,
and `other` (the one run named by evaluation.compareWith).
Prompt ids or free text never become labels.

Everything lives in the dedicated `REGISTRY` (not prometheus_client's global one), so importing
this module never clashes with other libraries' metrics and tests can read exactly our series.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    start_http_server,
)

from tpo.spec import PHASES, Guards, RunPhase, TPORunStatus

log = logging.getLogger("tpo_operator.metrics")

REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)

ADDR_ENV = "TPO_METRICS_ADDR"
MAX_CATEGORIES = 20
CATEGORY_MAX_CHARS = 48
OUTCOMES = ("retry", "failed", "succeeded", "preempted")
# Reasons the planner and the Kubernetes Job controller give; anything else is "Other".
REASONS = frozenset(
    {
        "Complete",
        "PodFailed",
        "Preempted",
        "Failed",
        "BackoffLimitExceeded",
        "DeadlineExceeded",
        "PodFailurePolicy",
        "FailedIndexes",
        "MaxFailedIndexesExceeded",
        "BadInput",
        "InvalidSpec",
        "SummaryMissing",
        "SummaryInvalid",
    }
)
RUN = ("namespace", "run")
ITER = ("namespace", "run", "iteration")

# --------------------------------------------------------------------------- per-run gauges


def _g(name: str, doc: str, labels: tuple[str, ...] = ITER) -> Gauge:
    return Gauge(name, doc, labels, registry=REGISTRY)


RUN_INFO = _g(
    "tpo_run_info",
    "1 per TPORun the operator knows, with its method choices as labels.",
    (*RUN, "thought_prompt", "judge", "baseline"),
)
RUN_PHASE = _g("tpo_run_phase", "1 for the run's current phase, 0 for the others.", (*RUN, "phase"))
RUN_ITERATION = _g("tpo_run_iteration", "The iteration in flight (0: prepare/seed eval).", RUN)
RUN_ITERATIONS = _g("tpo_run_iterations", "Iterations the run's accepted spec asks for.", RUN)

# The per-iteration gauges: (status history field, metric).
ITERATION_GAUGES: dict[str, Gauge] = {
    "win_rate": _g("tpo_iteration_win_rate", "Win rate vs the baseline (ties count half), 0-1."),
    "win_rate_low": _g("tpo_iteration_win_rate_low", "Lower end of the win rate's 95% interval."),
    "win_rate_high": _g("tpo_iteration_win_rate_high", "Upper end of the win rate's 95% interval."),
    "lc_win_rate": _g(
        "tpo_iteration_lc_win_rate",
        "Length-controlled win rate vs the baseline (0-1): the win rate predicted at equal "
        "response length (docs/length-controlled-win-rate.md), over the same rated prompts.",
    ),
    "lc_win_rate_low": _g(
        "tpo_iteration_lc_win_rate_low", "Lower end of the LC win rate's bootstrap 95% interval."
    ),
    "lc_win_rate_high": _g(
        "tpo_iteration_lc_win_rate_high", "Upper end of the LC win rate's bootstrap 95% interval."
    ),
    "mean_thought_tokens": _g(
        "tpo_iteration_thought_tokens", "Mean thought length in tokens (eval outputs)."
    ),
    "mean_response_tokens": _g(
        "tpo_iteration_response_tokens", "Mean response length in tokens (eval outputs)."
    ),
    "chosen_mean_tokens": _g("tpo_iteration_chosen_tokens", "Mean length of chosen outputs."),
    "rejected_mean_tokens": _g("tpo_iteration_rejected_tokens", "Mean length of rejected outputs."),
    "parse_failure_rate": _g(
        "tpo_iteration_parse_failure_ratio", "Share of training samples without the separator."
    ),
    "eval_parse_failure_rate": _g(
        "tpo_iteration_eval_parse_failure_ratio",
        "Share of the candidate's eval outputs without a usable response (over all eval prompts).",
    ),
    "baseline_parse_failure_rate": _g(
        "tpo_iteration_baseline_parse_failure_ratio",
        "Share of the baseline's eval outputs without a usable response (over all eval prompts).",
    ),
    "n": _g(
        "tpo_iteration_eval_rated_prompts",
        "Eval prompts the win rate is over: wins + ties + losses (both-failed left out).",
    ),
    "eval_prompts": _g("tpo_iteration_eval_prompts", "All eval prompts of the iteration."),
    "truncated_rate": _g(
        "tpo_iteration_truncated_ratio", "Share of training samples cut at generation.maxTokens."
    ),
    "judge_no_verdict_rate": _g(
        "tpo_iteration_judge_no_verdict_ratio", "Share of the judge's replies without a verdict."
    ),
    "pair_yield": _g(
        "tpo_iteration_pair_yield_ratio", "Share of the iteration's prompts that gave a pair."
    ),
    "ifeval_strict": _g(
        "tpo_iteration_ifeval_strict_accuracy",
        "IFEval prompt-level strict accuracy of the iteration's model, thought stripped (0-1).",
    ),
    "ifeval_loose": _g(
        "tpo_iteration_ifeval_loose_accuracy", "IFEval prompt-level loose accuracy (0-1)."
    ),
    "ifeval_strict_drop": _g(
        "tpo_iteration_ifeval_strict_drop",
        "The seed's IFEval strict accuracy minus the iteration's (guards.warnIfevalDrop).",
    ),
    "judge_probe_rate": _g(
        "tpo_iteration_judge_probe_preferred_ratio",
        "Iteration 0: share of master-key probes (':', 'Thought process:', ...) the judge "
        "preferred to real responses (guards.warnJudgeProbeRate).",
    ),
    "samples": _g("tpo_iteration_samples", "Samples generated (prompts x K)."),
    "pairs": _g("tpo_iteration_pairs", "DPO preference pairs built by the judge phase."),
    "skipped_prompts": _g(
        "tpo_iteration_skipped_prompts", "Prompts without a pair (all scores tied)."
    ),
    "rho": _g("tpo_iteration_length_rho", "Length-control weight rho used by the judge phase."),
    "judge_mean_score": _g(
        "tpo_iteration_judge_mean_score", "Mean judge score of the training samples."
    ),
    "judge_calls_per_prompt": _g(
        "tpo_iteration_judge_calls_per_prompt",
        "Pairwise judge calls per prompt (round-robin: K(K-1); tournament: about 3K/2 x 2).",
    ),
    "judge_no_verdict": _g(
        "tpo_iteration_judge_no_verdict", "Pairwise judge replies without a verdict."
    ),
    "train_loss": _g("tpo_iteration_train_loss", "Final DPO training loss."),
    "reward_margin": _g(
        "tpo_iteration_reward_margin", "Final DPO reward margin (chosen - rejected)."
    ),
    "reward_accuracy": _g(
        "tpo_iteration_reward_accuracy", "Final share of pairs with chosen reward > rejected."
    ),
}
EVAL_OUTCOMES = _g(
    "tpo_iteration_eval_outcomes",
    "Eval prompts of the iteration's model vs the baseline, by outcome: win, tie, loss (rated), "
    "both_failed (neither side parsed: not rated), judge_error (no verdict: not rated).",
    (*ITER, "outcome"),
)
GUARD_WARNINGS = _g(
    "tpo_iteration_guard_warnings",
    "Guard warn levels crossed in the iteration, by guard (its spec field; docs/guards.md).",
    (*ITER, "guard"),
)
# Guards whose warnings become label values (a closed set: the spec's warn fields).
GUARDS = frozenset(
    f.alias or name for name, f in Guards.model_fields.items() if name.startswith("warn_")
)
PHASE_SECONDS = _g(
    "tpo_iteration_phase_seconds",
    "Wall-clock seconds a phase took in an iteration (slowest shard).",
    (*ITER, "phase"),
)
CATEGORY_WIN_RATE = _g(
    "tpo_category_win_rate", "Win rate per instruction category, 0-1.", (*ITER, "category")
)
CATEGORY_PROMPTS = _g(
    "tpo_category_eval_prompts",
    "Rated eval prompts per instruction category (what its win rate is over).",
    (*ITER, "category"),
)
CATEGORY_OUTCOMES = _g(
    "tpo_category_eval_outcomes",
    "Eval prompts per instruction category by outcome: win, tie, loss, both_failed.",
    (*ITER, "category", "outcome"),
)
CATEGORY_WIN_RATE_LOW = _g(
    "tpo_category_win_rate_low",
    "Lower end of the category win rate's 95% interval.",
    (*ITER, "category"),
)
CATEGORY_WIN_RATE_HIGH = _g(
    "tpo_category_win_rate_high",
    "Upper end of the category win rate's 95% interval.",
    (*ITER, "category"),
)
CATEGORY_LC_WIN_RATE = _g(
    "tpo_category_lc_win_rate",
    "Length-controlled win rate per instruction category, 0-1 (where it has a raw rate).",
    (*ITER, "category"),
)
CATEGORY_LC_WIN_RATE_LOW = _g(
    "tpo_category_lc_win_rate_low",
    "Lower end of the category LC win rate's bootstrap 95% interval.",
    (*ITER, "category"),
)
CATEGORY_LC_WIN_RATE_HIGH = _g(
    "tpo_category_lc_win_rate_high",
    "Upper end of the category LC win rate's bootstrap 95% interval.",
    (*ITER, "category"),
)
# Two arms (evaluation.compareWith): label `other` is the other TPORun's name, one per run.
COMPARE = (*ITER, "other")
COMPARE_GAUGES: dict[str, Gauge] = {
    "win_rate": _g(
        "tpo_compare_win_rate",
        "Win rate of this run's M(t) vs the compareWith run's M(t) (ties count half), 0-1.",
        COMPARE,
    ),
    "win_rate_low": _g(
        "tpo_compare_win_rate_low", "Lower end of the two-arm win rate's 95% interval.", COMPARE
    ),
    "win_rate_high": _g(
        "tpo_compare_win_rate_high", "Upper end of the two-arm win rate's 95% interval.", COMPARE
    ),
    "lc_win_rate": _g(
        "tpo_compare_lc_win_rate",
        "Length-controlled two-arm win rate (docs/length-controlled-win-rate.md), 0-1.",
        COMPARE,
    ),
    "lc_win_rate_low": _g(
        "tpo_compare_lc_win_rate_low",
        "Lower end of the two-arm LC win rate's bootstrap 95% interval.",
        COMPARE,
    ),
    "lc_win_rate_high": _g(
        "tpo_compare_lc_win_rate_high",
        "Upper end of the two-arm LC win rate's bootstrap 95% interval.",
        COMPARE,
    ),
}
COMPARE_CATEGORY_WIN_RATE = _g(
    "tpo_compare_category_win_rate",
    "Two-arm win rate per instruction category, 0-1.",
    (*COMPARE, "category"),
)
COMPARE_CATEGORY_PROMPTS = _g(
    "tpo_compare_category_eval_prompts",
    "Eval prompts per category in the two-arm comparison.",
    (*COMPARE, "category"),
)

PER_RUN: tuple[Gauge, ...] = (
    RUN_INFO,
    RUN_PHASE,
    RUN_ITERATION,
    RUN_ITERATIONS,
    *ITERATION_GAUGES.values(),
    EVAL_OUTCOMES,
    GUARD_WARNINGS,
    PHASE_SECONDS,
    CATEGORY_WIN_RATE,
    CATEGORY_PROMPTS,
    CATEGORY_OUTCOMES,
    CATEGORY_WIN_RATE_LOW,
    CATEGORY_WIN_RATE_HIGH,
    CATEGORY_LC_WIN_RATE,
    CATEGORY_LC_WIN_RATE_LOW,
    CATEGORY_LC_WIN_RATE_HIGH,
    *COMPARE_GAUGES.values(),
    COMPARE_CATEGORY_WIN_RATE,
    COMPARE_CATEGORY_PROMPTS,
)

# --------------------------------------------------------------------------- events

PHASE_DURATION = Histogram(
    "tpo_phase_duration_seconds",
    "Phase durations, observed once per (run, iteration, phase) when the phase finishes.",
    ("namespace", "phase"),
    buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 28800, 86400),
    registry=REGISTRY,
)
JOB_OUTCOMES = Counter(
    "tpo_job_outcomes",
    "Job outcomes seen by the operator: retry (a pod failed), failed, succeeded, preempted.",
    (*RUN, "phase", "outcome", "reason"),
    registry=REGISTRY,
)
RECONCILE_DURATION = Histogram(
    "tpo_reconcile_duration_seconds",
    "Time one reconcile of a TPORun took (read, plan, apply, status patch).",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=REGISTRY,
)
RECONCILE_ERRORS = Counter(
    "tpo_reconcile_errors", "Reconciles that raised (kopf retries them).", registry=REGISTRY
)
SKIPPED_EVENTS = Counter(
    "tpo_job_events_skipped",
    "Job events that brought no change since the last reconcile of their run (not reconciled).",
    registry=REGISTRY,
)
OPERATOR_INFO = Gauge(
    "tpo_operator_info", "1; the operator's version as a label.", ("version",), registry=REGISTRY
)
OPERATOR_INFO.labels(version="0.1.0").set(1)

# --------------------------------------------------------------------------- pure core

Series = dict[tuple[Gauge, tuple[str, ...]], float]


def _category_label(name: str) -> str:
    text = "".join(c if c.isprintable() else " " for c in name).strip()
    return text[:CATEGORY_MAX_CHARS] or "unknown"


def _spec_labels(snapshot: dict[str, Any] | None) -> tuple[str, str, str]:
    snap = snapshot or {}
    thought = (snap.get("thoughtPrompt") or {}).get("type", "generic")
    judge = (snap.get("judge") or {}).get("type", "")
    baseline = (snap.get("evaluation") or {}).get("baseline", "seed")
    return str(thought), str(judge), str(baseline)


def run_series(namespace: str, name: str, status: TPORunStatus) -> Series:
    """Every per-run gauge value implied by a status; absent values give absent series."""
    run = (namespace, name)
    out: Series = {(RUN_INFO, (*run, *_spec_labels(status.spec_snapshot))): 1.0}
    current = str(status.phase)
    for phase in RunPhase:
        out[(RUN_PHASE, (*run, phase.value))] = 1.0 if phase.value == current else 0.0
    out[(RUN_ITERATION, run)] = float(status.iteration)
    if status.spec_snapshot and isinstance(status.spec_snapshot.get("iterations"), int):
        out[(RUN_ITERATIONS, run)] = float(status.spec_snapshot["iterations"])
    for h in status.history:
        it = (*run, str(h.iteration))
        for field, gauge in ITERATION_GAUGES.items():
            value = getattr(h, field)
            if value is not None:
                out[(gauge, it)] = float(value)
        for outcome, count in _outcomes(h):
            if count is not None:
                out[(EVAL_OUTCOMES, (*it, outcome))] = float(count)
        for w in h.warnings:
            key = (GUARD_WARNINGS, (*it, w.guard if w.guard in GUARDS else "other"))
            out[key] = out.get(key, 0.0) + 1.0
        for phase, seconds in h.phase_seconds.items():
            if phase in PHASES:
                out[(PHASE_SECONDS, (*it, phase))] = float(seconds)
        for cat in _ranked(h.categories):
            labels = (*it, _category_label(cat.category))
            out[(CATEGORY_PROMPTS, labels)] = float(cat.n)
            for outcome, count in _outcomes(cat)[:4]:
                if count is not None:
                    out[(CATEGORY_OUTCOMES, (*labels, outcome))] = float(count)
            for gauge, value in (
                (CATEGORY_WIN_RATE, cat.win_rate),
                (CATEGORY_WIN_RATE_LOW, cat.win_rate_low),
                (CATEGORY_WIN_RATE_HIGH, cat.win_rate_high),
                (CATEGORY_LC_WIN_RATE, cat.lc_win_rate),
                (CATEGORY_LC_WIN_RATE_LOW, cat.lc_win_rate_low),
                (CATEGORY_LC_WIN_RATE_HIGH, cat.lc_win_rate_high),
            ):
                if value is not None:
                    out[(gauge, labels)] = float(value)
        if h.compare is not None:
            arm = (*it, _category_label(h.compare.run))
            for field, gauge in COMPARE_GAUGES.items():
                value = getattr(h.compare, field)
                if value is not None:
                    out[(gauge, arm)] = float(value)
            for cat in _ranked(h.compare.categories):
                labels = (*arm, _category_label(cat.category))
                out[(COMPARE_CATEGORY_PROMPTS, labels)] = float(cat.n)
                if cat.win_rate is not None:
                    out[(COMPARE_CATEGORY_WIN_RATE, labels)] = float(cat.win_rate)
    return out


def _outcomes(record: Any) -> list[tuple[str, int | None]]:
    """(outcome label, count) of an iteration's or a category's head-to-head."""
    return [
        ("win", record.wins),
        ("tie", record.ties),
        ("loss", record.losses),
        ("both_failed", record.both_failed),
        ("judge_error", getattr(record, "judge_errors", None)),
    ]


def _ranked(categories: list[Any]) -> list[Any]:
    """The MAX_CATEGORIES largest categories (a bounded label set whatever the dataset)."""
    return sorted(categories, key=lambda c: (-c.n, c.category))[:MAX_CATEGORIES]


def finished_phases(status: TPORunStatus) -> list[tuple[int, str, float]]:
    """(iteration, phase, seconds) of every phase the history records as finished."""
    return [
        (h.iteration, phase, float(seconds))
        for h in status.history
        for phase, seconds in sorted(h.phase_seconds.items())
        if phase in PHASES
    ]


def job_labels(phase: str, outcome: str, reason: str) -> tuple[str, str, str]:
    """Bounded label values: unknown phases, outcomes and reasons collapse into 'other'."""
    return (
        phase if phase in PHASES else "other",
        outcome if outcome in OUTCOMES else "other",
        reason if reason in REASONS else "Other",
    )


# --------------------------------------------------------------------------- the shell

_LOCK = threading.Lock()
_SERIES: dict[tuple[str, str], set[tuple[Gauge, tuple[str, ...]]]] = {}
_DURATIONS_SEEN: set[tuple[str, str, int, str]] = set()
_PORTS: list[int] = []


def observe_run(namespace: str, name: str, status: TPORunStatus) -> None:
    """Set the run's series from its status; drop series the status no longer implies."""
    wanted = run_series(namespace, name, status)
    with _LOCK:
        for (gauge, labels), value in wanted.items():
            gauge.labels(*labels).set(value)
        old = _SERIES.get((namespace, name), set())
        for gauge, labels in old - wanted.keys():
            gauge.remove(*labels)
        _SERIES[(namespace, name)] = set(wanted)
        for iteration, phase, seconds in finished_phases(status):
            key = (namespace, name, iteration, phase)
            if key not in _DURATIONS_SEEN:
                _DURATIONS_SEEN.add(key)
                PHASE_DURATION.labels(namespace, phase).observe(seconds)


def forget_run(namespace: str, name: str) -> None:
    """Every series labelled with the deleted run disappears (the histogram has no run label)."""
    with _LOCK:
        _SERIES.pop((namespace, name), None)
        for gauge in PER_RUN:
            gauge.remove_by_labels({"namespace": namespace, "run": name})
        JOB_OUTCOMES.remove_by_labels({"namespace": namespace, "run": name})
        for key in [k for k in _DURATIONS_SEEN if k[:2] == (namespace, name)]:
            _DURATIONS_SEEN.discard(key)


def observe_job(namespace: str, run: str, phase: str, outcome: str, reason: str) -> None:
    """Count one Job outcome (the planner emits each once, when it first sees it)."""
    if outcome not in OUTCOMES:
        log.warning("unknown job outcome %r counted as 'other'", outcome)
    JOB_OUTCOMES.labels(namespace, run, *job_labels(phase, outcome, reason)).inc()


@contextmanager
def reconcile_timer() -> Iterator[None]:
    """Time a reconcile; an exception counts as an error and propagates (kopf retries)."""
    start = time.perf_counter()
    try:
        yield
    except Exception:
        RECONCILE_ERRORS.inc()
        raise
    finally:
        RECONCILE_DURATION.observe(time.perf_counter() - start)


def start_server(port: int, addr: str | None = None) -> int:
    """Serve /metrics from REGISTRY in a daemon thread; port 0 picks a free port.

    The address defaults to $TPO_METRICS_ADDR, else all interfaces (Prometheus scrapes the pod
    IP); tests set 127.0.0.1 so nothing listens beyond loopback.
    """
    addr = addr or os.environ.get(ADDR_ENV) or "0.0.0.0"
    server, _ = start_http_server(port, addr=addr, registry=REGISTRY)
    bound = int(server.server_port)
    _PORTS.append(bound)
    log.info("metrics on %s:%d/metrics", addr, bound)
    return bound


def bound_ports() -> list[int]:
    """Ports of the metrics servers started in this process (tests find port 0's choice)."""
    return list(_PORTS)
