"""A real Prometheus scrapes the real operator while a TPORun advances; every dashboard query works.

Parts: Prometheus 2.42 from Debian (scripts/get-prometheus.sh), started here with a temp config
(1 s scrapes), temp TSDB, loopback only; the kopf operator (`tpo_operator.handlers`) against
kmock's emulated API server (tests/operator/harness.py), which plays the Job controller because
no cluster can run here; the pod-metrics module serving what a train/generate pod would, fed
through the real `TrainingMetricsCallback` (TRL's log record shape; no trainer runs here).
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_dashboard import dashboard_queries, load, substitute

sys.path.insert(0, str(Path(__file__).parent / "operator"))

from harness import Cluster, JobController, Operator, manifest, summary, wait_for
from tpo_operator import metrics

from tpo import guards, podmetrics
from tpo.spec import PHASE_OF_STEP, PLURAL, Guards

# a hung test is cut here; every wait inside reports its own state well before (harness.WAIT)
pytestmark = pytest.mark.timeout(400)

ROOT = Path(__file__).resolve().parents[1]
RUN = "prom-e2e"  # its own name: counters of other tests' "demo" runs share this process
STEPS = [("prepare", 0), ("evaluate", 0)] + [
    (p, t) for t in (1, 2) for p in ("generate", "judge", "train", "evaluate")
]
CI = {"win_rate_low": 0.2, "win_rate_high": 0.9}
LC = {"lc_win_rate": 0.6, "lc_win_rate_low": 0.3, "lc_win_rate_high": 0.85}  # length-controlled
CATEGORIES = {
    0: [{"category": "math", "n": 3, "win_rate": 0.5, **CI, **LC}, {"category": "coding", "n": 1}],
    1: [
        {"category": "math", "n": 3, "win_rate": 0.66, **CI, **LC},
        {"category": "writing", "n": 2},
    ],
    2: [
        {"category": "math", "n": 3, "win_rate": 0.83, **CI, **LC},
        {"category": "writing", "n": 3},
    ],
}
# evaluation.compareWith (the direct twin): the two-arm result of iterations 1 and 2
COMPARE = {
    t: {
        "run": "prom-e2e-direct",
        "win_rate": 0.55 + 0.05 * t,
        "win_rate_low": 0.4,
        "win_rate_high": 0.8,
        "lc_win_rate": 0.5 + 0.05 * t,
        "lc_win_rate_low": 0.3,
        "lc_win_rate_high": 0.75,
        "wins": 3,
        "ties": 0,
        "losses": 1,
        "n": 4,
        "categories": [{"category": "math", "n": 3, "win_rate": 0.7}, {"category": "x", "n": 1}],
    }
    for t in (1, 2)
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def prometheus_binary() -> str:
    script = ROOT / "scripts" / "get-prometheus.sh"
    done = subprocess.run([str(script)], capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        pytest.fail(f"scripts/get-prometheus.sh failed:\n{done.stderr[-2000:]}")
    return done.stdout.strip().splitlines()[-1]


class Prometheus:
    """A Prometheus server process and its HTTP API."""

    def __init__(self, binary: str, folder: Path, targets: dict[str, int]):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [
                {"job_name": job, "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}
                for job, port in targets.items()
            ],
        }
        (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log = (folder / "prometheus.log").open("w")
        self.proc = subprocess.Popen(
            [
                binary,
                f"--config.file={folder / 'prometheus.yml'}",
                f"--storage.tsdb.path={folder / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--storage.tsdb.retention.time=1h",
                "--query.lookback-delta=30s",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.logfile = folder / "prometheus.log"

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/-/ready", timeout=2) as r:
                return r.status == 200
        except OSError:
            if self.proc.poll() is not None:
                log = self.logfile.read_text()[-2000:]
                raise RuntimeError(f"prometheus exited:\n{log}") from None
            return False

    def query(self, expr: str) -> list[dict[str, Any]]:
        url = self.url + "/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        with urllib.request.urlopen(url, timeout=10) as r:
            body = json.load(r)
        assert body["status"] == "success", body
        result = body["data"]["result"]
        return result if body["data"]["resultType"] == "vector" else [{"value": result}]

    def query_range(self, expr: str, seconds: int = 60) -> list[dict[str, Any]]:
        """What a Grafana time-series panel asks for: the last `seconds`, one point a second."""
        end = time.time()
        params = {"query": expr, "start": end - seconds, "end": end, "step": 1}
        url = self.url + "/api/v1/query_range?" + urllib.parse.urlencode(params)
        with urllib.request.urlopen(url, timeout=10) as r:
            body = json.load(r)
        assert body["status"] == "success", body
        return body["data"]["result"]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Emulator + operator (metrics on loopback) + pod-metrics server + Prometheus scraping both."""
    binary = prometheus_binary()
    folder = tmp_path_factory.mktemp("prometheus")
    old_env = {k: os.environ.get(k) for k in (metrics.ADDR_ENV, podmetrics.PORT_ENV)}
    os.environ[metrics.ADDR_ENV] = "127.0.0.1"
    os.environ[podmetrics.PORT_ENV] = "0"
    try:
        with Cluster(folder) as cluster:
            started = len(metrics.bound_ports())
            with Operator(cluster, metrics_port=0) as op:
                port = wait_for(lambda: metrics.bound_ports()[started:], what="metrics server")[0]
                pod_port = podmetrics.start_if_configured(namespace="default", run=RUN)
                assert pod_port
                prom = Prometheus(
                    binary, folder, {"tpo-operator": port, "tpo-phase-pods": pod_port}
                )
                try:
                    wait_for(prom.ready, what="prometheus ready")
                    wait_for(lambda: len(prom.query("up == 1")) == 2, what="both targets scraped")
                    yield {"cluster": cluster, "prom": prom, "operator": op}
                finally:
                    prom.stop()
                assert op.alive, f"operator died: {op.error!r}"
    finally:
        for k, v in old_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def pod_phase(phase: str, t: int) -> None:
    """What the running phase pod would export (the values a real pod would set mid-phase)."""
    from transformers import TrainerControl, TrainerState

    podmetrics.configure(namespace="default", run=RUN, phase=phase, iteration=t, shard=0)
    if phase in ("generate", "evaluate"):
        podmetrics.set_generation(tokens_per_second=900.0 + t, samples=16)
    if phase == "train":
        state = TrainerState()
        state.global_step = 3
        logs = {"loss": 0.7 - 0.1 * t, "rewards/margins": 0.2 * t, "rewards/accuracies": 0.75}
        podmetrics.TrainingMetricsCallback().on_log(None, state, TrainerControl(), logs=logs)


@pytest.fixture(scope="module")
def finished_run(stack: dict[str, Any]) -> dict[str, Any]:
    """Drive a 2-iteration TPORun through the operator (one pod crash in generate)."""
    cluster: Cluster = stack["cluster"]
    ctl = JobController(cluster)
    cluster.create_run(manifest(RUN, iterations=2))
    for phase, t in STEPS:
        job = cluster.wait_job(f"{RUN}-{phase}-{t}")
        pod_phase(phase, t)
        in_flight(stack["prom"], PHASE_OF_STEP[phase], time.time())
        if (phase, t) == ("generate", 1):
            ctl.crash(job, "CUDA error: out of memory")
            cluster.wait_status(RUN, lambda s: s.get("retries", {}).get("generate") == 1)
        extra = {"categories": CATEGORIES[t]} if phase == "evaluate" else {}
        if phase == "evaluate":  # the IFEval guard every iteration; the judge probe at 0
            strict = 0.4 - 0.05 * t
            extra.update(ifeval_strict=strict, ifeval_loose=strict + 0.1, ifeval_prompts=10)
            extra.update(ifeval_strict_drop=0.4 - strict, ifeval_loose_drop=0.4 - strict)
            if t == 0:
                extra.update(judge_probe_rate=0.1, judge_probe_n=10, judge_probe_preferred=1)
        if (phase, t) == ("judge", 2):  # a guard warned: the "Guard warnings" panel
            measures = guards.judge_measures(replies=20, unread=0, pairs=2, prompts=10)
            extra["warnings"] = [w.model_dump() for w in guards.warn(Guards(), measures)]
        if phase == "evaluate" and t in COMPARE:
            extra["compare"] = COMPARE[t]
        ctl.succeed(job, [summary(phase, t, **extra)])
    status = cluster.wait_status(RUN, lambda s: s.get("phase") == "Succeeded")
    prom: Prometheus = stack["prom"]
    wait_for(
        lambda: prom.query(f'tpo_run_phase{{run="{RUN}", phase="Succeeded"}} == 1'),
        what="Prometheus saw the run succeed",
    )
    return status


def in_flight(prom: Prometheus, phase: str, since: float) -> None:
    """Waits until Prometheus holds the step in flight: the operator's run phase, and a scrape of
    both targets begun after `since` (the pod's metrics were set; Prometheus stamps a sample
    with its scrape's start). A fixed sleep of one scrape interval missed phases under load."""

    def seen() -> bool:
        now = prom.query(f'tpo_run_phase{{run="{RUN}", phase="{phase}"}} == 1')
        return bool(now) and len(prom.query(f"timestamp(up == 1) > {since}")) == 2

    wait_for(seen, what=f"Prometheus scraped the run {phase}")


def variables(values: dict[str, str]) -> dict[str, str]:
    """The dashboard's own default for $job (a regex matching the operator's scrape job)."""
    job = next(v for v in load()["templating"]["list"] if v["name"] == "job")
    return {"job": job["query"], **values}


def test_win_rate_in_prometheus_equals_status_history(stack, finished_run):
    prom: Prometheus = stack["prom"]
    history = finished_run["history"]
    assert [h["iteration"] for h in history] == [0, 1, 2]
    got = {
        int(r["metric"]["iteration"]): float(r["value"][1])
        for r in prom.query(f'tpo_iteration_win_rate{{namespace="default", run="{RUN}"}}')
    }
    assert got == {h["iteration"]: pytest.approx(h["winRate"]) for h in history}
    thought = {
        int(r["metric"]["iteration"]): float(r["value"][1])
        for r in prom.query(f'tpo_iteration_thought_tokens{{run="{RUN}"}}')
    }
    assert thought == {h["iteration"]: pytest.approx(h["meanThoughtTokens"]) for h in history}
    pairs = prom.query(f'tpo_iteration_pairs{{run="{RUN}"}}')
    assert {r["metric"]["iteration"]: float(r["value"][1]) for r in pairs} == {
        str(h["iteration"]): h["pairs"] for h in history if "pairs" in h
    }


def test_every_dashboard_query_returns_data(stack, finished_run):
    prom: Prometheus = stack["prom"]
    values = variables({"namespace": "default", "run": RUN})
    empty, nan_only = [], []
    for where, expr in dashboard_queries():
        result = prom.query(substitute(expr, values))
        if not result:
            empty.append(f"{where}: {expr}")
        elif not any(math.isfinite(float(r["value"][1])) for r in result):
            nan_only.append(f"{where}: {expr}")
        if not prom.query_range(substitute(expr, values)):
            empty.append(f"{where} (range): {expr}")
    assert not empty, "queries without data:\n" + "\n".join(empty)
    assert not nan_only, "queries with only NaN:\n" + "\n".join(nan_only)


def test_failures_phases_and_categories_match_what_happened(stack, finished_run):
    prom: Prometheus = stack["prom"]
    retries = prom.query(
        f'sum by (phase, reason) (tpo_job_outcomes_total{{run="{RUN}", outcome="retry"}})'
    )
    assert [(r["metric"], float(r["value"][1])) for r in retries] == [
        ({"phase": "generate", "reason": "PodFailed"}, 1.0)
    ]
    succeeded = prom.query(f'sum(tpo_job_outcomes_total{{run="{RUN}", outcome="succeeded"}})')
    assert float(succeeded[0]["value"][1]) == len(STEPS)
    # the timeline saw the run pass through its phases (each step waited to be scraped)
    seen = prom.query(f'max_over_time(tpo_run_phase{{run="{RUN}"}}[5m]) == 1')
    assert {r["metric"]["phase"] for r in seen} >= {
        "Preparing",
        "Generating",
        "Judging",
        "Training",
        "Evaluating",
        "Succeeded",
    }
    cats = prom.query(f'tpo_category_win_rate{{run="{RUN}", iteration="2"}}')
    assert {r["metric"]["category"]: float(r["value"][1]) for r in cats} == {"math": 0.83}
    arms = prom.query(f'tpo_compare_win_rate{{run="{RUN}"}}')
    assert {
        (r["metric"]["iteration"], r["metric"]["other"]): float(r["value"][1]) for r in arms
    } == {
        ("1", "prom-e2e-direct"): pytest.approx(0.6),
        ("2", "prom-e2e-direct"): pytest.approx(0.65),
    }
    loss = prom.query(f'tpo_train_loss{{run="{RUN}", iteration="2"}}')
    assert float(loss[0]["value"][1]) == pytest.approx(0.5)


def test_deleted_run_disappears(stack, finished_run):
    cluster: Cluster = stack["cluster"]
    prom: Prometheus = stack["prom"]
    assert prom.query(f'tpo_run_info{{run="{RUN}"}}')
    cluster.api("DELETE", cluster.path(PLURAL, RUN))
    wait_for(lambda: not prom.query(f'tpo_run_info{{run="{RUN}"}}'), what="run series gone")
    assert not prom.query(f'tpo_iteration_win_rate{{run="{RUN}"}}')
    assert prom.query('up{job="tpo-operator"} == 1')  # the operator itself is still there
