"""Metrics only a phase pod knows while it runs: generation speed and DPO training progress.

The operator learns a phase's results from its summary when the pod ends; these gauges show the
phase from the inside while it runs (tokens/s, loss, reward margin). A Job sets
`TPO_METRICS_PORT` and annotates its pods `prometheus.io/scrape: "true"` /
`prometheus.io/port`, and the phase calls `start_if_configured()` once; without the variable
nothing is served and the setters still work (cheap no-ops for the local runner).

Identity labels (namespace, run, phase, iteration, shard) are constant per process and come from
the environment (TPO_NAMESPACE, TPO_RUN, TPO_PHASE, TPO_ITERATION, JOB_COMPLETION_INDEX) or from
`start_if_configured(**labels)`, so a dashboard can select a run without relabelling rules.
Names are listed in docs/metrics.md beside the operator's.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, start_http_server

log = logging.getLogger("tpo.podmetrics")

PORT_ENV = "TPO_METRICS_PORT"
ADDR_ENV = "TPO_METRICS_ADDR"
LABELS = ("namespace", "run", "phase", "iteration", "shard")
_ENV = {
    "namespace": "TPO_NAMESPACE",
    "run": "TPO_RUN",
    "phase": "TPO_PHASE",
    "iteration": "TPO_ITERATION",
    "shard": "JOB_COMPLETION_INDEX",
}

REGISTRY = CollectorRegistry(auto_describe=True)


def _g(name: str, doc: str) -> Gauge:
    return Gauge(name, doc, LABELS, registry=REGISTRY)


GEN_TOKENS_PER_SECOND = _g(
    "tpo_generation_tokens_per_second", "Generated tokens per second of this pod (latest batch)."
)
GEN_SAMPLES = _g("tpo_generation_samples", "Samples this pod has generated so far.")
TRAIN_LOSS = _g("tpo_train_loss", "DPO training loss at the latest logging step.")
TRAIN_REWARD_MARGIN = _g(
    "tpo_train_reward_margin", "DPO reward margin (chosen - rejected) at the latest logging step."
)
TRAIN_REWARD_ACCURACY = _g(
    "tpo_train_reward_accuracy", "Share of pairs with chosen reward > rejected, latest step."
)
TRAIN_STEP = _g("tpo_train_step", "Optimizer steps completed.")
# Progress of the step this pod runs (tpo.progress): one series at a time, labelled by what is
# counted. The operator reads these into TPORun.status.progress (docs/metrics.md, "Progress").
PROGRESS_LABELS = (*LABELS, "stage", "unit")


def _p(name: str, doc: str) -> Gauge:
    return Gauge(name, doc, PROGRESS_LABELS, registry=REGISTRY)


PROGRESS_DONE = _p("tpo_progress_done", "Units of the current step done (samples, calls, steps).")
PROGRESS_TOTAL = _p("tpo_progress_total", "Units the current step will do (absent: not known).")
PROGRESS_RATE = _p("tpo_progress_rate", "Units per second since the first unit of the step.")
PROGRESS_ETA = _p("tpo_progress_eta_seconds", "Estimated seconds until the step is done.")
PROGRESS = (PROGRESS_DONE, PROGRESS_TOTAL, PROGRESS_RATE, PROGRESS_ETA)
POD_METRICS = (
    *PROGRESS,
    GEN_TOKENS_PER_SECOND,
    GEN_SAMPLES,
    TRAIN_LOSS,
    TRAIN_REWARD_MARGIN,
    TRAIN_REWARD_ACCURACY,
    TRAIN_STEP,
)

_labels: dict[str, str] = {}
_port: int | None = None
_progress_key: tuple[str, str] | None = None


def identity(overrides: dict[str, Any] | None = None) -> dict[str, str]:
    """The constant labels of this process: overrides, else the environment, else ''."""
    given = overrides or {}
    return {k: str(given.get(k, os.environ.get(_ENV[k], ""))) for k in LABELS}


def configure(**labels: Any) -> dict[str, str]:
    """Fix the identity labels (call before the setters when the env does not carry them)."""
    global _labels
    _labels = identity(labels)
    return dict(_labels)


def start_if_configured(**labels: Any) -> int | None:
    """Serve /metrics on $TPO_METRICS_PORT (0: any free port); None when unset. Idempotent."""
    global _port
    configure(**labels)
    raw = os.environ.get(PORT_ENV, "").strip()
    if not raw:
        return None
    if os.environ.get("LOCAL_RANK", "0") != "0":
        return None  # torchrun: one server per pod (local rank 0), not one per GPU process
    if _port is not None:
        return _port
    try:
        port = int(raw)
    except ValueError:
        log.warning("%s=%r is not a port number; pod metrics are off", PORT_ENV, raw)
        return None
    addr = os.environ.get(ADDR_ENV) or "0.0.0.0"  # tests: 127.0.0.1
    try:
        server, _ = start_http_server(port, addr=addr, registry=REGISTRY)
    except OSError as e:  # live gauges are a nicety: never the reason a phase fails
        log.warning("pod metrics off: cannot serve on %s:%d (%s)", addr, port, e)
        return None
    _port = int(server.server_port)
    log.info("pod metrics on :%d/metrics", _port)
    return _port


def _child(gauge: Gauge) -> Any:
    return gauge.labels(**(_labels or identity()))


def _set(gauge: Gauge, value: float | None) -> None:
    if value is not None and math.isfinite(float(value)):
        _child(gauge).set(float(value))


def set_generation(tokens_per_second: float | None, samples: int | None) -> None:
    _set(GEN_TOKENS_PER_SECOND, tokens_per_second)
    _set(GEN_SAMPLES, samples)


def set_training(
    loss: float | None,
    reward_margin: float | None,
    reward_accuracy: float | None,
    step: int | None,
) -> None:
    _set(TRAIN_LOSS, loss)
    _set(TRAIN_REWARD_MARGIN, reward_margin)
    _set(TRAIN_REWARD_ACCURACY, reward_accuracy)
    _set(TRAIN_STEP, step)


def set_progress(
    stage: str,
    unit: str,
    done: int,
    total: int | None,
    rate: float | None,
    eta: float | None,
) -> None:
    """The current step's progress; a new (stage, unit) replaces the previous series, so a
    scraper always sees exactly one. Unknown values (no total, no rate yet) are absent."""
    global _progress_key
    if _progress_key != (stage, unit):
        for g in PROGRESS:
            g.clear()
        _progress_key = (stage, unit)
    labels = {**(_labels or identity()), "stage": stage, "unit": unit}
    for gauge, value in (
        (PROGRESS_DONE, done),
        (PROGRESS_TOTAL, total),
        (PROGRESS_RATE, rate),
        (PROGRESS_ETA, eta),
    ):
        if value is not None and math.isfinite(float(value)):
            gauge.labels(**labels).set(float(value))
        else:
            with contextlib.suppress(KeyError):  # never set: nothing to remove
                gauge.remove(*(labels[k] for k in PROGRESS_LABELS))


def training_values(logs: dict[str, Any]) -> tuple[float | None, float | None, float | None]:
    """(loss, reward margin, reward accuracy) from one TRL DPOTrainer log record.

    Training logs carry `loss`, `rewards/margins`, `rewards/accuracies`; the final record
    carries `train_loss`; evaluation records (`eval_*`) are not training progress.
    """
    loss = logs.get("loss", logs.get("train_loss"))
    return loss, logs.get("rewards/margins"), logs.get("rewards/accuracies")


def _make_callback() -> type:
    from transformers import TrainerCallback

    class TrainingMetricsCallback(TrainerCallback):
        """Feeds DPOTrainer's `on_log` values into the pod gauges (main process only)."""

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **_: Any) -> None:
            if not logs or not getattr(state, "is_world_process_zero", True):
                return
            loss, margin, accuracy = training_values(logs)
            set_training(loss, margin, accuracy, getattr(state, "global_step", None))

    return TrainingMetricsCallback


def __getattr__(name: str) -> Any:
    """`TrainingMetricsCallback` is built on first use, so generation pods and the setters
    never pay for importing transformers' Trainer machinery."""
    if name == "TrainingMetricsCallback":
        cls = _make_callback()
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
