"""`status.progress` from the live step's pods: which pods to read, and what their readings say.

Pure: the shell (`handlers.fetch_progress`) reads each pod's metrics endpoint (the
`tpo_progress_*` gauges of `tpo.podmetrics`, served on the port its Job annotates) and hands the
samples here. Why the metrics endpoint and not the pod's log: docs/metrics.md, "Progress".

The rules, level-triggered like the planner (the same inputs give the same status):
- a step in flight: the readings of its running pods, summed (done, total, rate) over shards;
  percent credits shards that already succeeded; ETA is the slowest shard's, and unknown while
  a shard neither finished nor reports. No reading this pass (a pod starting, a missed scrape):
  the last progress of the same step stays; a new step starts with no numbers.
- Suspended: the last progress stays (where the step had got to).
- Succeeded: 100%. Failed, Pending: none.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from tpo.progress import finished_progress, summary_of
from tpo.spec import RunPhase, RunProgress, TPORunStatus

SCRAPE_ANNOTATION = "prometheus.io/scrape"
PORT_ANNOTATION = "prometheus.io/port"
INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"
_SHARDED = {"generate": "generation", "judge": "judge"}  # the spec block holding `shards`
_RUNNING = {
    RunPhase.preparing,
    RunPhase.generating,
    RunPhase.judging,
    RunPhase.training,
    RunPhase.evaluating,
}


@dataclass(frozen=True)
class Reading:
    """One pod's `tpo_progress_*` gauges (one series each: podmetrics keeps one at a time)."""

    shard: int
    stage: str
    unit: str
    done: float | None = None
    total: float | None = None
    rate: float | None = None
    eta: float | None = None


@dataclass(frozen=True)
class Target:
    """A pod to read: its name, and the URL of its metrics endpoint."""

    pod: str
    url: str


def _meta(obj: dict[str, Any], key: str) -> dict[str, str]:
    return (obj.get("metadata") or {}).get(key) or {}


def _of_step(pod: dict[str, Any], run: str, phase: str, iteration: int) -> bool:
    from tpo_operator.jobs import LABEL_ITERATION, LABEL_PHASE, LABEL_RUN

    lab = _meta(pod, "labels")
    return (
        lab.get(LABEL_RUN) == run
        and lab.get(LABEL_PHASE) == phase
        and lab.get(LABEL_ITERATION) == str(iteration)
    )


def _live(status: TPORunStatus) -> tuple[str, int] | None:
    if status.phase not in _RUNNING or not status.step:
        return None
    return status.step, status.iteration


def targets(status: TPORunStatus, pods: Iterable[dict[str, Any]], run: str) -> list[Target]:
    """The running pods of the step in flight that serve metrics (annotated, with an IP)."""
    live = _live(status)
    if live is None:
        return []
    out = []
    for pod in pods:
        ann = _meta(pod, "annotations")
        st = pod.get("status") or {}
        ip, port = st.get("podIP"), ann.get(PORT_ANNOTATION, "")
        if (
            _of_step(pod, run, *live)
            and st.get("phase") == "Running"
            and ann.get(SCRAPE_ANNOTATION) == "true"
            and ip
            and port.isdigit()
        ):
            host = f"[{ip}]" if ":" in ip else ip  # IPv6 pod IPs
            out.append(Target(pod["metadata"]["name"], f"http://{host}:{port}/metrics"))
    return out


def readings(samples: Iterable[tuple[str, dict[str, str], float]]) -> list[Reading]:
    """(name, labels, value) samples of one pod's /metrics into its Reading(s)."""
    fields = {
        "tpo_progress_done": "done",
        "tpo_progress_total": "total",
        "tpo_progress_rate": "rate",
        "tpo_progress_eta_seconds": "eta",
    }
    found: dict[tuple[int, str, str], dict[str, float]] = {}
    for name, labels, value in samples:
        if name not in fields:
            continue
        try:
            shard = int(labels.get("shard") or 0)
        except ValueError:
            shard = 0
        key = (shard, labels.get("stage", ""), labels.get("unit", ""))
        found.setdefault(key, {})[fields[name]] = float(value)
    return [
        Reading(shard, stage, unit, **vals)
        for (shard, stage, unit), vals in sorted(found.items())
        if "done" in vals
    ]


def _shards(status: TPORunStatus, phase: str) -> int:
    block = (status.spec_snapshot or {}).get(_SHARDED.get(phase, ""), None) or {}
    try:
        return max(1, int(block.get("shards") or 1))
    except (TypeError, ValueError):
        return 1


def _succeeded_shards(pods: Iterable[dict[str, Any]], run: str, phase: str, it: int) -> set[int]:
    done = set()
    for pod in pods:
        if _of_step(pod, run, phase, it) and (pod.get("status") or {}).get("phase") == "Succeeded":
            raw = _meta(pod, "annotations").get(INDEX_ANNOTATION, "0")
            done.add(int(raw) if raw.isdigit() else 0)
    return done


def _finish(p: RunProgress) -> RunProgress:
    return p.model_copy(update={"summary": summary_of(p)})


def with_progress(
    status: TPORunStatus,
    pods: list[dict[str, Any]],
    read: dict[str, list[Reading]],
    run: str,
    now: str,
) -> TPORunStatus:
    """`status` with its `progress` set from this pass's readings (pod name -> readings)."""
    prev = status.progress
    if status.phase == RunPhase.succeeded:
        # the run's last step, whatever progress the operator happened to see before it (a
        # restarted operator may have missed the final step's readings): one status per outcome
        last = "evaluate"
        updated = prev.updated_at if prev else now  # unchanged by a restart: one status
        new: RunProgress | None = finished_progress(last, status.iteration, updated)
        if prev is not None and prev.percent == 100.0 and prev.phase == last:
            new = prev
    elif status.phase == RunPhase.suspended:
        new = prev
    elif (live := _live(status)) is None:
        new = None
    else:
        new = _step_progress(status, pods, read, run, live, now)
    if new == prev:
        return status
    return status.model_copy(update={"progress": new})


def _step_progress(
    status: TPORunStatus,
    pods: list[dict[str, Any]],
    read: dict[str, list[Reading]],
    run: str,
    live: tuple[str, int],
    now: str,
) -> RunProgress:
    phase, it = live
    prev = status.progress
    same = prev is not None and (prev.phase, prev.iteration) == live
    by_shard: dict[int, Reading] = {}
    for name in sorted(read):
        for r in read[name]:
            by_shard.setdefault(r.shard, r)
    if not by_shard:
        if same and prev is not None:
            return prev
        return _finish(RunProgress(phase=phase, iteration=it))
    shards = _shards(status, phase)
    finished = _succeeded_shards(pods, run, phase, it) - set(by_shard)
    rs = list(by_shard.values())
    done = sum(int(r.done or 0) for r in rs)
    totals = [r.total for r in rs if r.total]
    total = int(sum(totals)) if len(totals) == len(rs) else None
    fractions = [min(1.0, (r.done or 0) / r.total) if r.total else 0.0 for r in rs]
    known = len(totals) == len(rs)
    percent = None
    if known:
        percent = round(100.0 * (len(finished) + sum(fractions)) / max(shards, len(rs)), 1)
    rates = [r.rate for r in rs if r.rate is not None]
    etas = [r.eta for r in rs if r.eta is not None]
    every_open_shard_reports = len(rs) + len(finished) >= shards and len(etas) == len(rs)
    eta = round(max(etas)) if etas and every_open_shard_reports else None
    return _finish(
        RunProgress(
            phase=phase,
            iteration=it,
            stage=rs[0].stage or None,
            done=done,
            total=total,
            unit=rs[0].unit or None,
            percent=min(100.0, percent) if percent is not None else None,
            rate=round(sum(rates), 3) if rates else None,
            eta_seconds=eta,
            pods=len(rs),
            updated_at=now,
        )
    )
