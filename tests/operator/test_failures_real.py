"""Failures as a real Kubernetes 1.32 reports them, through the real kopf operator.

The Job controller (tests/kubeemu.py's JobSim, driven by harness.JobController) writes the
Failed condition's message itself, as kube-controller-manager does; the worker's own words are
only in its pod's termination message. After a FailJob rule it deletes the other pods of the
Job and counts them in `status.failed`. The run must still say what the worker said, and count
one crashed pod as one failure.
"""

from __future__ import annotations

import re

import pytest
from harness import Cluster, JobController, manifest, summary, wait_for

from tpo.errors import EXIT_BAD_INPUT

# a hung test is cut here; every wait inside reports its own state well before (harness.WAIT)
pytestmark = pytest.mark.timeout(300)

WORKER_SAYS = (
    "error: prepare (iteration 0): /data/instructions.jsonl line 3: field 'instruction' is missing"
)
FAILJOB = re.compile(
    r"^Container worker for pod default/(demo-prepare-0-\w{5}) failed with exit code 3 "
    r"matching FailJob rule at index 1$"
)


def _finish(cluster: Cluster, ctl: JobController, steps) -> None:
    for phase, t, shards in steps:
        job = cluster.wait_job(f"demo-{phase}-{t}")
        ctl.succeed(job, [summary(phase, t, i, shards) for i in range(shards)])


def test_bad_input_fails_the_run_with_the_workers_file_and_line(cluster, ctl):
    cluster.create_run(manifest(iterations=1))
    job = cluster.wait_job("demo-prepare-0")
    status = ctl.crash(job, WORKER_SAYS, exit_code=EXIT_BAD_INPUT)
    # what the Job says is the controller's own text, as on a real cluster
    failed_job = {c["type"]: c for c in status["conditions"]}["Failed"]
    assert failed_job["reason"] == "PodFailurePolicy"
    assert FAILJOB.match(failed_job["message"]), failed_job["message"]
    assert "line 3" not in failed_job["message"]

    st = cluster.wait_status("demo", lambda s: s.get("phase") == "Failed")
    cond = next(c for c in st["conditions"] if c["type"] == "Failed")
    assert cond["reason"] == "PodFailurePolicy"
    for text in (cond["message"], st["message"]):
        assert text.startswith("prepare of iteration 0 failed (PodFailurePolicy): ")
        assert "/data/instructions.jsonl line 3: field 'instruction' is missing" in text
        assert "matching FailJob rule at index 1" in text  # the Job's message, beside it
    events = wait_for(
        lambda: [e for e in cluster.events("demo") if e["reason"] == "PodFailurePolicy"],
        what="the failure's Event",
    )
    assert len(events) == 1 and events[0]["type"] == "Warning"
    assert "/data/instructions.jsonl line 3" in events[0]["message"]


def _two_nodes() -> dict:
    return manifest(
        iterations=1,
        training={"nodes": 2, "gpusPerNode": 1},
        pools={"train": {"gpus": 1, "backoffLimit": 1}},
    )


def test_one_crashed_rank_of_a_two_node_train_is_one_pod_failure(cluster, ctl):
    cluster.create_run(_two_nodes())
    _finish(cluster, ctl, [("prepare", 0, 1), ("evaluate", 0, 1), ("generate", 1, 1)])
    _finish(cluster, ctl, [("judge", 1, 1)])
    job = cluster.wait_job("demo-train-1")
    status = ctl.crash(job, "rank 1: RuntimeError: CUDA error: an illegal memory access", index=1)
    # the real controller's count: the crashed rank and the peer it deleted
    assert status["failed"] == 2
    [peer] = [p for p in ctl.pods(job) if p["metadata"].get("deletionTimestamp")]
    assert peer["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 143

    cluster.wait_job("demo-train-1-r1")  # the group restarts as a new Job
    st = cluster.wait_status("demo", lambda s: s.get("retries", {}).get("train:group-restarts"))
    assert st["retries"]["train"] == 1
    # later passes (the peer stopped, then gone) count nothing more
    ctl.gc(job)
    ctl.succeed("demo-train-1-r1", [summary("train", 1)])
    cluster.wait_job("demo-evaluate-1")
    st = cluster.wait_status("demo", lambda s: s.get("phase") == "Evaluating")
    assert st["retries"]["train"] == 1
    # train's PhaseSucceeded (the 5th) is the last pass's: events of a run come in order, so
    # every PodFailed event of the passes before it is here too
    events = cluster.wait_event("demo", "PhaseSucceeded", count=5)
    failed = [e["message"] for e in events if e["reason"] == "PodFailed"]
    assert failed == ["train: 1 pod failure(s), retrying"]
