"""Operator and pod metrics: values read back from the real exposition format.

Every test uses its own run name (the registries are process-wide), and counters and histograms
are checked as deltas.
"""

from __future__ import annotations

import itertools
import socket
import urllib.request
from typing import Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from tpo_operator import metrics

from tpo import podmetrics
from tpo.spec import RunPhase, TPORunStatus
from tpo.status import apply_summary

NS = "team-a"
_names = itertools.count()


def run_name() -> str:
    return f"m{next(_names)}"


def samples(registry: Any = metrics.REGISTRY) -> dict[tuple[str, frozenset], float]:
    """Every sample of the exposition text, keyed by (name, labels)."""
    text = generate_latest(registry).decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


def value(name: str, registry: Any = metrics.REGISTRY, **labels: str) -> float | None:
    return samples(registry).get((name, frozenset(labels.items())))


def series_of_run(run: str) -> list[tuple[str, frozenset]]:
    return [(name, labels) for name, labels in samples() if ("run", run) in labels]


def summary(phase: str, t: int, **extra: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "generate": {
            "samples": 32,
            "parse_failure_rate": 0.25 - 0.1 * t,
            "mean_thought_tokens": 40.0 + t,
            "mean_response_tokens": 10.0,
        },
        "judge": {
            "pairs": 3 + t,
            "skipped_prompts": 1,
            "judge_mean_score": 0.4 + 0.1 * t,
            "judge_calls_per_prompt": 13.0 + t,
            "judge_no_verdict": t,
            "rho": 0.25,
            "chosen_mean_tokens": 20.0 + t,
            "rejected_mean_tokens": 30.0,
            "parse_failure_rate": 0.25 - 0.1 * t,
        },
        "train": {"train_loss": 0.69 - 0.1 * t, "reward_margin": 0.1 * t, "reward_accuracy": 0.6},
        "evaluate": {
            "win_rate": 0.5 + 0.1 * t,
            "win_rate_low": 0.4 + 0.1 * t,
            "win_rate_high": 0.6 + 0.1 * t,
            "wins": 5 + t,
            "ties": 2,
            "losses": 3 - t,
            "mean_thought_tokens": 50.0 + 10 * t,
            "mean_response_tokens": 12.0 + t,
            "eval_parse_failure_rate": 0.05,
            "categories": [
                {"category": "math", "n": 6, "win_rate": 0.5 + 0.05 * t},
                {"category": "writing", "n": 4, "win_rate": 0.4},
            ],
        },
    }[phase]
    return {"phase": phase, "iteration": t, "seconds": 10.0 * (t + 1), **base, **extra}


def two_iterations() -> TPORunStatus:
    """The status after the seed's evaluation and two full iterations (the real fold)."""
    st = TPORunStatus(phase=RunPhase.succeeded, iteration=2, spec_snapshot={"iterations": 2})
    st = apply_summary(st, summary("evaluate", 0))
    for t in (1, 2):
        for phase in ("generate", "judge", "train", "evaluate"):
            st = apply_summary(st, summary(phase, t))
    return st


def test_observe_run_exposes_the_status():
    run = run_name()
    metrics.observe_run(NS, run, two_iterations())
    r = {"namespace": NS, "run": run}
    for t in (0, 1, 2):
        it = {**r, "iteration": str(t)}
        assert value("tpo_iteration_win_rate", **it) == pytest.approx(0.5 + 0.1 * t)
        assert value("tpo_iteration_win_rate_low", **it) == pytest.approx(0.4 + 0.1 * t)
        assert value("tpo_iteration_win_rate_high", **it) == pytest.approx(0.6 + 0.1 * t)
        assert value("tpo_iteration_thought_tokens", **it) == pytest.approx(50.0 + 10 * t)
        assert value("tpo_iteration_response_tokens", **it) == pytest.approx(12.0 + t)
        assert value("tpo_iteration_eval_outcomes", **it, outcome="win") == 5 + t
        assert value("tpo_category_win_rate", **it, category="math") == pytest.approx(
            0.5 + 0.05 * t
        )
        assert value("tpo_category_eval_prompts", **it, category="writing") == 4
        assert value("tpo_iteration_phase_seconds", **it, phase="evaluate") == 10.0 * (t + 1)
    for t in (1, 2):
        it = {**r, "iteration": str(t)}
        assert value("tpo_iteration_pairs", **it) == 3 + t
        assert value("tpo_iteration_skipped_prompts", **it) == 1
        assert value("tpo_iteration_samples", **it) == 32
        assert value("tpo_iteration_parse_failure_ratio", **it) == pytest.approx(0.25 - 0.1 * t)
        assert value("tpo_iteration_eval_parse_failure_ratio", **it) == pytest.approx(0.05)
        assert value("tpo_iteration_length_rho", **it) == 0.25
        assert value("tpo_iteration_judge_mean_score", **it) == pytest.approx(0.4 + 0.1 * t)
        assert value("tpo_iteration_judge_calls_per_prompt", **it) == 13.0 + t
        assert value("tpo_iteration_judge_no_verdict", **it) == t
        assert value("tpo_iteration_chosen_tokens", **it) == 20.0 + t
        assert value("tpo_iteration_rejected_tokens", **it) == 30.0
        assert value("tpo_iteration_train_loss", **it) == pytest.approx(0.69 - 0.1 * t)
        assert value("tpo_iteration_reward_margin", **it) == pytest.approx(0.1 * t)
        assert value("tpo_iteration_reward_accuracy", **it) == pytest.approx(0.6)
        for phase in ("generate", "judge", "train"):
            assert value("tpo_iteration_phase_seconds", **it, phase=phase) == 10.0 * (t + 1)
    # iteration 0 has no training: absent series, not zeros
    assert value("tpo_iteration_pairs", **r, iteration="0") is None
    assert value("tpo_iteration_train_loss", **r, iteration="0") is None
    assert value("tpo_run_iteration", **r) == 2
    assert value("tpo_run_iterations", **r) == 2
    phases = {p.value: value("tpo_run_phase", **r, phase=p.value) for p in RunPhase}
    assert phases["Succeeded"] == 1 and sum(phases.values()) == 1


def test_status_changes_move_the_series():
    run = run_name()
    r = {"namespace": NS, "run": run}
    st = TPORunStatus(phase=RunPhase.generating, iteration=1)
    st = apply_summary(st, summary("evaluate", 0))
    metrics.observe_run(NS, run, st)
    assert value("tpo_run_phase", **r, phase="Generating") == 1
    assert value("tpo_iteration_pairs", **r, iteration="1") is None
    st = apply_summary(st.model_copy(update={"phase": RunPhase.training}), summary("judge", 1))
    metrics.observe_run(NS, run, st)
    assert value("tpo_run_phase", **r, phase="Generating") == 0
    assert value("tpo_run_phase", **r, phase="Training") == 1
    assert value("tpo_iteration_pairs", **r, iteration="1") == 4
    # a history entry that disappears (a status rewritten by hand) takes its series with it
    metrics.observe_run(NS, run, TPORunStatus(phase=RunPhase.pending))
    assert value("tpo_iteration_pairs", **r, iteration="1") is None
    assert value("tpo_iteration_win_rate", **r, iteration="0") is None
    assert value("tpo_run_phase", **r, phase="Pending") == 1


def test_phase_durations_are_observed_once_per_run_iteration_phase():
    run = run_name()
    count = ("tpo_phase_duration_seconds_count", frozenset({("namespace", NS), ("phase", "train")}))
    total = ("tpo_phase_duration_seconds_sum", count[1])
    before = samples()
    st = two_iterations()
    for _ in range(3):  # every reconcile calls observe_run with the same history
        metrics.observe_run(NS, run, st)
    after = samples()
    assert after[count] - before.get(count, 0) == 2  # train of iterations 1 and 2
    assert after[total] - before.get(total, 0) == pytest.approx(20.0 + 30.0)

    def bucket(le: str) -> float:
        key = (
            "tpo_phase_duration_seconds_bucket",
            frozenset({("namespace", NS), ("phase", "train"), ("le", le)}),
        )
        return after[key] - before.get(key, 0)

    assert (bucket("15.0"), bucket("30.0"), bucket("+Inf")) == (0, 2, 2)  # 20 s and 30 s
    # a phase that finishes later is observed then, once
    st = apply_summary(st, summary("generate", 3))
    metrics.observe_run(NS, run, st)
    metrics.observe_run(NS, run, st)
    gen = (
        "tpo_phase_duration_seconds_count",
        frozenset({("namespace", NS), ("phase", "generate")}),
    )
    assert samples()[gen] - after[gen] == 1


def test_forget_run_removes_every_series_of_the_run():
    run, other = run_name(), run_name()
    metrics.observe_run(NS, run, two_iterations())
    metrics.observe_run(NS, other, two_iterations())
    metrics.observe_job(NS, run, "generate", "retry", "PodFailed")
    assert series_of_run(run) and series_of_run(other)
    metrics.forget_run(NS, run)
    assert series_of_run(run) == []
    assert len(series_of_run(other)) > 40
    # a later reconcile of a re-created run with the same name brings it back
    metrics.observe_run(NS, run, TPORunStatus())
    assert value("tpo_run_phase", namespace=NS, run=run, phase="Pending") == 1


def test_job_outcome_counters_and_bounded_reasons():
    run = run_name()
    key = {"namespace": NS, "run": run, "phase": "generate", "outcome": "retry"}
    metrics.observe_job(NS, run, "generate", "retry", "PodFailed")
    metrics.observe_job(NS, run, "generate", "retry", "PodFailed")
    metrics.observe_job(NS, run, "generate", "retry", "some free text from a pod: OOM at 0x7f")
    metrics.observe_job(NS, run, "train", "failed", "BackoffLimitExceeded")
    metrics.observe_job(NS, run, "bogus-phase", "exploded", "Complete")
    assert value("tpo_job_outcomes_total", **key, reason="PodFailed") == 2
    assert value("tpo_job_outcomes_total", **key, reason="Other") == 1
    assert (
        value(
            "tpo_job_outcomes_total",
            namespace=NS,
            run=run,
            phase="train",
            outcome="failed",
            reason="BackoffLimitExceeded",
        )
        == 1
    )
    assert (
        value(
            "tpo_job_outcomes_total",
            namespace=NS,
            run=run,
            phase="other",
            outcome="other",
            reason="Complete",
        )
        == 1
    )


def test_reconcile_timer_counts_duration_and_errors():
    before = samples()
    with metrics.reconcile_timer():
        pass
    with pytest.raises(RuntimeError, match="api down"), metrics.reconcile_timer():
        raise RuntimeError("api down")
    after = samples()
    count = ("tpo_reconcile_duration_seconds_count", frozenset())
    errors = ("tpo_reconcile_errors_total", frozenset())
    assert after[count] - before[count] == 2
    assert after[errors] - before[errors] == 1


def test_label_cardinality_is_bounded():
    run = run_name()
    st = TPORunStatus()
    cats = [{"category": f"cat-{i:03d}", "n": i, "win_rate": 0.5} for i in range(100)]
    cats.append({"category": "x" * 500 + "\n", "n": 1000, "win_rate": 0.9})
    st = apply_summary(st, summary("evaluate", 1, categories=cats))
    metrics.observe_run(NS, run, st)
    cat_series = [
        dict(labels)["category"]
        for (name, labels) in samples()
        if name == "tpo_category_win_rate" and ("run", run) in labels
    ]
    assert len(cat_series) == metrics.MAX_CATEGORIES
    assert "x" * metrics.CATEGORY_MAX_CHARS in cat_series  # the largest, cut short
    assert "cat-099" in cat_series and "cat-000" not in cat_series  # the largest kept
    allowed = {
        "namespace",
        "run",
        "iteration",
        "phase",
        "outcome",
        "reason",
        "category",
        "thought_prompt",
        "judge",
        "baseline",
        "version",
        "le",
        # python_info's labels (prometheus_client's platform collector)
        "implementation",
        "major",
        "minor",
        "patchlevel",
    }
    used = {k for (_, labels) in samples() for k, _ in labels}
    assert used <= allowed, used - allowed


def test_metrics_server_serves_the_registry():
    run = run_name()
    metrics.observe_run(NS, run, two_iterations())
    port = metrics.start_server(0, addr="127.0.0.1")
    assert port > 0 and port in metrics.bound_ports()
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert f'tpo_iteration_win_rate{{iteration="2",namespace="{NS}",run="{run}"}} 0.7' in body


# --------------------------------------------------------------------------- pod metrics


def test_pod_metrics_identity_from_env_and_setters(monkeypatch):
    monkeypatch.setenv("TPO_NAMESPACE", NS)
    monkeypatch.setenv("TPO_RUN", "podrun")
    monkeypatch.setenv("TPO_PHASE", "generate")
    monkeypatch.setenv("TPO_ITERATION", "2")
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "1")
    monkeypatch.delenv("TPO_METRICS_PORT", raising=False)
    assert podmetrics.start_if_configured() is None  # no port: nothing served
    podmetrics.set_generation(1234.5, 64)
    podmetrics.set_generation(float("nan"), None)  # ignored, never a NaN gauge
    ident = {"namespace": NS, "run": "podrun", "phase": "generate", "iteration": "2", "shard": "1"}
    reg = podmetrics.REGISTRY
    assert value("tpo_generation_tokens_per_second", reg, **ident) == 1234.5
    assert value("tpo_generation_samples", reg, **ident) == 64


def test_pod_metrics_one_server_per_pod_and_never_fatal(monkeypatch):
    """torchrun starts one process per GPU in the same pod: only local rank 0 serves. A port
    that is taken turns the live gauges off with a warning; the phase goes on."""
    monkeypatch.setattr(podmetrics, "_port", None)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        monkeypatch.setenv("TPO_METRICS_ADDR", "127.0.0.1")
        monkeypatch.setenv("TPO_METRICS_PORT", str(busy))
        monkeypatch.setenv("LOCAL_RANK", "3")
        assert podmetrics.start_if_configured(run="r", phase="train") is None
        monkeypatch.setenv("LOCAL_RANK", "0")
        assert podmetrics.start_if_configured(run="r", phase="train") is None  # busy: off
    assert podmetrics._port is None


def test_pod_metrics_server_and_training_callback(monkeypatch):
    from transformers import TrainerControl, TrainerState, TrainingArguments

    monkeypatch.setenv("TPO_METRICS_PORT", "0")
    port = podmetrics.start_if_configured(namespace=NS, run="trainrun", phase="train", iteration=1)
    assert port and podmetrics.start_if_configured(run="trainrun", phase="train") == port
    podmetrics.configure(namespace=NS, run="trainrun", phase="train", iteration=1, shard=0)
    callback = podmetrics.TrainingMetricsCallback()
    state = TrainerState()
    state.global_step = 7
    args = TrainingArguments(output_dir="/tmp/unused-tpo-test", use_cpu=True, report_to=[])
    logs = {"loss": 0.61, "rewards/margins": 0.35, "rewards/accuracies": 0.75, "epoch": 1.0}
    callback.on_log(args, state, TrainerControl(), logs=logs)
    callback.on_log(args, state, TrainerControl(), logs={"eval_loss": 9.0})  # not training
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    ident = 'iteration="1",namespace="team-a",phase="train",run="trainrun",shard="0"'
    assert f"tpo_train_loss{{{ident}}} 0.61" in body
    assert f"tpo_train_reward_margin{{{ident}}} 0.35" in body
    assert f"tpo_train_reward_accuracy{{{ident}}} 0.75" in body
    assert f"tpo_train_step{{{ident}}} 7.0" in body


@pytest.mark.slow
def test_training_callback_reads_real_trl_dpo_logs(tiny_lm, tmp_path):
    """The log keys the callback reads are the ones TRL's DPOTrainer really emits (2 CPU steps)."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    podmetrics.configure(namespace=NS, run="dporun", phase="train", iteration=1, shard=0)
    pairs = [
        {"prompt": f"What is {i} + 1?", "chosen": f" {i + 1}.", "rejected": f" {i}."}
        for i in range(8)
    ]
    config = DPOConfig(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        max_steps=2,
        logging_steps=1,
        report_to=[],
        use_cpu=True,
        bf16=False,
        save_strategy="no",
        max_length=32,
    )
    trainer = DPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(tiny_lm),
        args=config,
        train_dataset=Dataset.from_list(pairs),
        processing_class=AutoTokenizer.from_pretrained(tiny_lm),
        callbacks=[podmetrics.TrainingMetricsCallback()],
    )
    trainer.train()
    logged = [h for h in trainer.state.log_history if "rewards/margins" in h]
    assert len(logged) == 2
    ident = {"namespace": NS, "run": "dporun", "phase": "train", "iteration": "1", "shard": "0"}
    reg = podmetrics.REGISTRY
    assert value("tpo_train_step", reg, **ident) == 2
    assert value("tpo_train_reward_margin", reg, **ident) == pytest.approx(
        logged[-1]["rewards/margins"]
    )
    assert value("tpo_train_reward_accuracy", reg, **ident) == pytest.approx(
        logged[-1]["rewards/accuracies"]
    )
    final = trainer.state.log_history[-1]["train_loss"]  # the last record: the run's mean loss
    assert value("tpo_train_loss", reg, **ident) == pytest.approx(final)
