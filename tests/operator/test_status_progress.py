"""status.progress: the pure rules (tpo_operator.progress), and end to end on the emulator from a
real metrics endpoint (prometheus_client serving tpo.podmetrics, fed by tpo.progress) through the
operator's scrape to the TPORun, shown by kubectl's own JSONPath as the PROGRESS column."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
from harness import Cluster, JobController, manifest, summary
from tpo_operator import progress as P

from tpo import podmetrics
from tpo.crd import crd
from tpo.progress import Progress
from tpo.spec import RunPhase, RunProgress, TPORunStatus

# a hung test is cut here; every wait inside reports its own state well before (harness.WAIT)
pytestmark = pytest.mark.timeout(300)
NOW = "2026-12-01T10:00:00Z"


def pod(name: str, phase: str, step: str = "generate", it: int = 1, **extra) -> dict:
    body = {
        "metadata": {
            "name": name,
            "labels": {"tpo.dev/run": "demo", "tpo.dev/phase": step, "tpo.dev/iteration": str(it)},
            "annotations": {"prometheus.io/scrape": "true", "prometheus.io/port": "9400"},
        },
        "status": {"phase": phase, "podIP": "10.0.0.7"},
    }
    body["metadata"]["annotations"].update(extra)
    return body


def running(step: str = "generate", shards: int = 1, **over) -> TPORunStatus:
    return TPORunStatus(
        phase=RunPhase.generating if step == "generate" else RunPhase.training,
        iteration=1,
        step=step,
        spec_snapshot={"generation": {"shards": shards}, "judge": {"shards": 1}},
        **over,
    )


def test_targets_are_the_running_annotated_pods_of_the_live_step():
    pods = [
        pod("a", "Running"),
        pod("b", "Succeeded"),
        pod("c", "Running", step="judge"),
        {**pod("d", "Running"), "status": {"phase": "Running"}},  # no IP yet
        pod("e", "Running", **{"prometheus.io/scrape": "false"}),
    ]
    assert P.targets(running(), pods, "demo") == [P.Target("a", "http://10.0.0.7:9400/metrics")]
    assert P.targets(running(), pods, "other") == []
    assert P.targets(TPORunStatus(phase=RunPhase.succeeded, step="generate"), pods, "demo") == []


def test_one_pod_reading_gives_percent_eta_and_the_column():
    r = P.readings(
        [
            ("tpo_progress_done", {"shard": "0", "stage": "generate", "unit": "samples"}, 1200),
            ("tpo_progress_total", {"shard": "0", "stage": "generate", "unit": "samples"}, 3200),
            ("tpo_progress_rate", {"shard": "0", "stage": "generate", "unit": "samples"}, 41.2),
            ("tpo_progress_eta_seconds", {"stage": "generate", "unit": "samples"}, 48.4),
            ("tpo_train_loss", {}, 0.5),
        ]
    )
    st = P.with_progress(running(), [pod("a", "Running")], {"a": r}, "demo", NOW)
    p = st.progress
    assert p is not None
    assert (p.phase, p.iteration, p.done, p.total, p.unit) == ("generate", 1, 1200, 3200, "samples")
    assert (p.percent, p.eta_seconds, p.rate, p.pods, p.updated_at) == (37.5, 48, 41.2, 1, NOW)
    assert p.summary == "38% ETA 0:00:48"


def test_shards_add_up_and_finished_shards_count_as_done():
    pods = [
        pod("s0", "Succeeded", **{P.INDEX_ANNOTATION: "0"}),
        pod("s1", "Running", **{P.INDEX_ANNOTATION: "1"}),
        pod("s2", "Running", **{P.INDEX_ANNOTATION: "2"}),
    ]
    read = {
        "s1": [P.Reading(1, "generate", "samples", done=50, total=100, rate=2, eta=25)],
        "s2": [P.Reading(2, "generate", "samples", done=25, total=100, rate=1, eta=75)],
    }
    p = P.with_progress(running(shards=4), pods, read, "demo", NOW).progress
    assert p is not None
    # (1 finished + 0.5 + 0.25) of 4 shards; the 4th shard neither finished nor reports: no ETA
    assert (p.percent, p.done, p.total, p.rate, p.eta_seconds) == (43.8, 75, 200, 3.0, None)
    assert p.summary == "44% ETA ?"
    p3 = P.with_progress(running(shards=3), pods, read, "demo", NOW).progress
    assert p3 is not None and p3.eta_seconds == 75  # every open shard reports: the slowest


def test_what_stays_what_goes():
    prev = RunProgress(phase="generate", iteration=1, percent=40.0, summary="40% ETA ?")
    # a pass without a reading (scrape missed): the same step's last progress stays
    assert P.with_progress(running(progress=prev), [], {}, "demo", NOW).progress == prev
    # a new step: no numbers yet
    nxt = P.with_progress(running("train", progress=prev), [], {}, "demo", NOW).progress
    assert nxt is not None and nxt.phase == "train" and nxt.percent is None
    assert nxt.summary == "starting"
    suspended = TPORunStatus(phase=RunPhase.suspended, step="generate", progress=prev)
    assert P.with_progress(suspended, [], {}, "demo", NOW).progress == prev
    done = P.with_progress(
        TPORunStatus(phase=RunPhase.succeeded, progress=prev), [], {}, "demo", NOW
    ).progress
    assert done is not None and done.percent == 100.0 and done.summary == "100%"
    failed = TPORunStatus(phase=RunPhase.failed, step="generate", progress=prev)
    assert P.with_progress(failed, [], {}, "demo", NOW).progress is None


def printer_column(name: str) -> str:
    cols = crd()["spec"]["versions"][0]["additionalPrinterColumns"]
    return next(c["jsonPath"] for c in cols if c["name"] == name)


def kubectl_column(body: dict, json_path: str, tmp_path) -> str:
    """The column as the API server computes it: client-go's JSONPath over `{<jsonPath>}`
    (apiextensions-apiserver's table convertor), here through kubectl's, offline."""
    f = tmp_path / "run.json"
    f.write_text(json.dumps(body))
    out = subprocess.run(
        ["kubectl", "annotate", "--local", "-f", str(f), "x=y", "-o", f"jsonpath={{{json_path}}}"],
        capture_output=True,
        text=True,
        timeout=30,
        env={"KUBECONFIG": "/dev/null", "PATH": "/usr/local/bin:/usr/bin:/bin"},
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_progress_flows_from_a_pod_metrics_endpoint_to_the_printer_column(
    cluster: Cluster, ctl: JobController, tmp_path
):
    from prometheus_client import start_http_server

    assert shutil.which("kubectl"), "kubectl is not on PATH (the printer column is read by it)"
    server, thread = start_http_server(0, addr="127.0.0.1", registry=podmetrics.REGISTRY)
    try:
        cluster.create_run(manifest(iterations=1))
        for phase, t in (("prepare", 0), ("evaluate", 0)):
            ctl.succeed(cluster.wait_job(f"demo-{phase}-{t}"), [summary(phase, t)])
        job = cluster.wait_job("demo-generate-1")
        # The phase pod's side, as in a real pod: tpo.progress feeding tpo.podmetrics.
        podmetrics.configure(namespace="default", run="demo", phase="generate", iteration=1)
        clock = [0.0]
        work = Progress("generate it=1", 3200, "samples", stage="generate", mode="off",
                        clock=lambda: clock[0])  # fmt: skip
        work.update_to(0)
        clock[0] = 30.0
        work.update_to(1200)  # 40 samples/s: 2000 left, 50 s
        tpl = job["spec"]["template"]
        cluster.create(
            "pods",
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": "demo-generate-1-0-live",
                    "labels": {**tpl["metadata"]["labels"], "job-name": "demo-generate-1"},
                    "annotations": {
                        **tpl["metadata"].get("annotations", {}),
                        "prometheus.io/port": str(server.server_port),  # the test's server
                    },
                },
                "spec": tpl["spec"],
                "status": {"phase": "Running", "podIP": "127.0.0.1"},
            },
        )
        assert tpl["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
        # The Job controller marks the pod active: a Job event, a reconcile, a scrape.
        cluster.patch("jobs", "demo-generate-1", {"status": {"active": 1}}, sub="status")
        st = cluster.wait_status("demo", lambda s: (s.get("progress") or {}).get("done") == 1200)
        p = st["progress"]
        assert (p["phase"], p["iteration"], p["total"], p["unit"]) == (
            "generate",
            1,
            3200,
            "samples",
        )
        assert (p["percent"], p["etaSeconds"], p["rate"]) == (37.5, 50, 40.0)
        column = printer_column("Progress")
        assert column == ".status.progress.summary"
        assert kubectl_column(cluster.run("demo"), column, tmp_path) == "38% ETA 0:00:50"

        clock[0] = 60.0
        work.update_to(2400)
        cluster.patch(
            "jobs", "demo-generate-1", {"status": {"active": 1, "ready": 1}}, sub="status"
        )
        cluster.wait_status("demo", lambda s: (s.get("progress") or {}).get("done") == 2400)
        assert kubectl_column(cluster.run("demo"), column, tmp_path) == "75% ETA 0:00:20"

        # The phase ends: the next step's progress replaces it, with no numbers yet.
        ctl.succeed(job, [summary("generate", 1)])
        cluster.wait_job("demo-judge-1")
        st = cluster.wait_status(
            "demo", lambda s: (s.get("progress") or {}).get("phase") == "judge"
        )
        assert st["progress"]["summary"] == "starting"
        assert st["progress"].get("percent") is None
        assert kubectl_column(cluster.run("demo"), column, tmp_path) == "starting"
    finally:
        podmetrics.configure()
        server.shutdown()
        thread.join(5)


def test_a_pod_that_does_not_answer_is_left_out():
    from tpo_operator.handlers import fetch_progress

    assert fetch_progress([P.Target("gone", "http://127.0.0.1:9/metrics")]) == {}
