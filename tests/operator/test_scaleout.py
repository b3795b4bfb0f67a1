"""Scale-out against the emulated API server: sharded phases, multi-node train, Kueue.

The tests play the Job controller and Kueue (neither can run here): a multi-node train Job
fails as a whole when one pod fails (its podFailurePolicy says so; the harness sets the Failed
condition), and Kueue's admission is a patch of `spec.suspend` to false.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from harness import Cluster, JobController, manifest, summary
from tpo_operator import jobs as J
from tpo_operator.reconcile import CreateJob, ObservedJob, plan

from tpo.errors import EXIT_BAD_INPUT
from tpo.spec import PLURAL, TPORunStatus, parse_manifest

# a hung test is cut here; every wait inside reports its own state well before (harness.WAIT)
pytestmark = pytest.mark.timeout(300)

ROOT = Path(__file__).resolve().parents[2]
BEFORE_TRAIN = [("prepare", 0), ("evaluate", 0), ("generate", 1), ("judge", 1)]
OWNER = {
    "apiVersion": "tpo.dev/v1alpha1",
    "kind": "TPORun",
    "name": "x",
    "uid": "0b7c3c1e-7f1a-4f7e-9b1a-2f1d8c1e0a11",
    "controller": True,
}


def finish(cluster: Cluster, ctl: JobController, steps, run: str = "demo") -> None:
    for phase, t in steps:
        ctl.succeed(cluster.wait_job(f"{run}-{phase}-{t}"), [summary(phase, t)])


def env_of(job: dict) -> dict[str, str]:
    container = job["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value") for e in container["env"]}


def validate(obj: dict) -> None:
    obj = json.loads(json.dumps(obj))
    obj["metadata"].setdefault("ownerReferences", [OWNER])
    kubernetes_validate.validate(obj, desired_version="1.32", strict=True)


def scaled(name: str = "demo", **pools) -> dict:
    return manifest(
        name=name,
        iterations=1,
        generation={"shards": 3, "tensorParallel": 2},
        judge={
            "type": "programmatic",
            "programmatic": {"function": "tpo.toy:judge"},
            "shards": 2,
        },
        training={"nodes": 2, "gpusPerNode": 4, "deepspeed": {"zeroStage": 3}},
        pools={"train": {"gpus": 1, "backoffLimit": 1}, **pools},
    )


# --------------------------------------------------------------------------- manifests


def test_sharded_phases_are_indexed_jobs_with_tensor_parallel_gpus():
    meta, spec = parse_manifest(scaled(generate={"gpus": 1}))
    gen = J.job(spec, "ns", meta["name"], "generate", 1)
    judge = J.job(spec, "ns", meta["name"], "judge", 1)
    for job, shards in ((gen, 3), (judge, 2)):
        assert job["spec"]["completionMode"] == "Indexed"
        assert job["spec"]["completions"] == job["spec"]["parallelism"] == shards
        assert env_of(job)["TPO_SHARDS"] == str(shards)
        validate(job)
    # vLLM with tensor parallel 2 needs 2 GPUs in its pod, whatever the pool says
    limits = gen["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits[J.GPU] == "2"
    # an unsharded phase is a plain Job without TPO_SHARDS (the worker then runs shard 0/1)
    _, plain = parse_manifest(manifest())
    single = J.job(plain, "ns", "demo", "generate", 1)
    assert "completionMode" not in single["spec"] and "TPO_SHARDS" not in env_of(single)
    assert "suspend" not in single["spec"]  # no queue: nothing Kueue-specific
    assert J.KUEUE_QUEUE not in single["metadata"]["labels"]


def test_multinode_train_job_and_its_service_fit_together():
    meta, spec = parse_manifest(scaled())
    job = J.job(spec, "ns", meta["name"], "train", 1)
    svc = J.train_service(spec, "ns", meta["name"], 1)
    validate(job)
    validate(svc)
    name, pod = job["metadata"]["name"], job["spec"]["template"]["spec"]
    container = pod["containers"][0]
    env = env_of(job)
    assert job["spec"]["completionMode"] == "Indexed"
    assert job["spec"]["completions"] == job["spec"]["parallelism"] == 2
    assert job["spec"]["backoffLimit"] == 0  # any pod failure fails the group...
    rules = job["spec"]["podFailurePolicy"]["rules"]
    assert rules[0]["action"] == "Ignore"  # ...except a preemption
    assert rules[-1] == {
        "action": "FailJob",
        "onExitCodes": {"containerName": "worker", "operator": "NotIn", "values": [0]},
    }
    # `<job>-0.<service>` resolves: Indexed pods are named `<job>-<index>`, subdomain = Service
    assert svc["spec"]["clusterIP"] == "None" and pod["subdomain"] == svc["metadata"]["name"]
    assert svc["spec"]["publishNotReadyAddresses"] is True  # rendezvous before readiness
    assert env[J.RDZV_HOST_ENV] == f"{name}-0.{svc['metadata']['name']}"
    tpl_labels = job["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= tpl_labels.items()
    port = svc["spec"]["ports"][0]
    assert str(port["port"]) == env[J.RDZV_PORT_ENV] == str(port["targetPort"])
    assert {"name": "rendezvous", "containerPort": port["port"]} in container["ports"]
    script = container["command"][-1]
    assert container["command"][:2] == ["sh", "-c"] and script.startswith("exec torchrun ")
    for arg in (
        "--nnodes 2",
        "--nproc-per-node 4",
        '--node-rank "$JOB_COMPLETION_INDEX"',
        f'--master-addr "${J.RDZV_HOST_ENV}"',
        f'--master-port "${J.RDZV_PORT_ENV}"',
        "-m tpo.cli phase train --run-dir /artifacts/ns/demo --iteration 1",
    ):
        assert arg in script
    assert container["resources"]["limits"][J.GPU] == "4"  # gpusPerNode beats pool.gpus=1
    assert "TPO_SHARDS" not in env  # ranks are not data shards of the phase
    anti = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert anti[0]["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    # the next attempt is a new Job beside the failed one, same Service, its own host
    again = J.job(spec, "ns", meta["name"], "train", 1, attempt=1)
    assert again["metadata"]["name"] == f"{name}-r1"
    assert env_of(again)[J.RDZV_HOST_ENV] == f"{name}-r1-0.{svc['metadata']['name']}"
    assert (
        svc["spec"]["selector"].items() <= again["spec"]["template"]["metadata"]["labels"].items()
    )


def test_single_node_multi_gpu_train_uses_torchrun_standalone():
    m = manifest(training={"gpusPerNode": 8})
    _, spec = parse_manifest(m)
    job = J.job(spec, "ns", "demo", "train", 1)
    script = job["spec"]["template"]["spec"]["containers"][0]["command"][-1]
    assert "--standalone" in script and "--nproc-per-node 8" in script and "--nnodes 1" in script
    assert "subdomain" not in job["spec"]["template"]["spec"]
    validate(job)


def test_render_of_a_scaled_run_shows_indexed_jobs_and_the_headless_service(tmp_path):
    path = tmp_path / "scaled.yaml"
    path.write_text(yaml.safe_dump(scaled(generate={"queueName": "gpu"})))
    out = subprocess.run(
        [sys.executable, "-m", "tpo.cli", "render", str(path), "--iteration", "1"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr
    docs = {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(out.stdout)}
    for d in docs.values():
        validate(d)
    assert docs[("Job", "demo-generate-1")]["spec"]["completions"] == 3
    assert docs[("Job", "demo-generate-1")]["spec"]["suspend"] is True
    assert docs[("Job", "demo-judge-1")]["spec"]["completionMode"] == "Indexed"
    assert docs[("Service", "demo-train-1")]["spec"]["clusterIP"] == "None"
    assert docs[("Job", "demo-train-1")]["spec"]["template"]["spec"]["subdomain"] == "demo-train-1"


def test_render_of_the_example_shows_its_scale_out(tmp_path):
    """examples/tporun.yaml (paper scale): 8 generate and 8 judge shards, 2 training nodes."""
    out = subprocess.run(
        [sys.executable, "-m", "tpo.cli", "render", "examples/tporun.yaml", "--iteration", "1"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr
    docs = {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(out.stdout)}
    for d in docs.values():
        validate(d)
    run = "llama3-8b-tpo"
    for phase in ("generate", "judge"):
        job = docs[("Job", f"{run}-{phase}-1")]["spec"]
        assert job["completionMode"] == "Indexed" and job["completions"] == job["parallelism"] > 1
    svc = docs[("Service", f"{run}-train-1")]
    train = docs[("Job", f"{run}-train-1")]
    assert svc["spec"]["clusterIP"] == "None"
    assert train["spec"]["completionMode"] == "Indexed" and train["spec"]["completions"] == 2
    assert train["spec"]["template"]["spec"]["subdomain"] == svc["metadata"]["name"]
    assert "--nnodes 2" in train["spec"]["template"]["spec"]["containers"][0]["command"][-1]


# --------------------------------------------------------------------------- planner


def _at_train(spec) -> TPORunStatus:
    return TPORunStatus(step="train", iteration=1, phase="Training", spec_snapshot=spec.dump())


def _attempt(attempt: int, *, failed: bool = True, preempted: int = 0, bad: bool = False):
    return ObservedJob(
        name=J.job_name("demo", "train", 1, attempt),
        phase="train",
        iteration=1,
        failed=1,
        failed_reason="PodFailurePolicy" if failed else None,
        preempted=preempted,
        attempt=attempt,
        bad_input=bad,
    )


def test_planner_counts_group_restarts_from_the_jobs_that_exist():
    """Level-triggered: the same Jobs give the same plan, however often (or after a restart)."""
    _, spec = parse_manifest(scaled())  # pools.train.backoffLimit = 1
    status = _at_train(spec)

    def creates(jobs):
        result = plan(spec, status, jobs, "2026-01-01T00:00:00Z", "demo")
        return [(a.name, a.attempt) for a in result.actions if isinstance(a, CreateJob)], result

    first, _ = creates([_attempt(0)])
    assert first == [("demo-train-1-r1", 1)]
    assert creates([_attempt(0)])[0] == first  # planning twice changes nothing
    # r1 lost a preempted pod: a free restart; r2 failing then exceeds the budget of 1
    preempted = [_attempt(0), _attempt(1, preempted=1)]
    assert creates(preempted)[0] == [("demo-train-1-r2", 2)]
    made, result = creates([*preempted, _attempt(2)])
    assert made == [] and result.status.phase == "Failed"
    assert "after 2 group restart(s)" in result.status.message
    # bad input is never restarted; a live attempt is left alone
    made, result = creates([_attempt(0, bad=True)])
    assert made == [] and result.status.phase == "Failed"
    made, result = creates([_attempt(0), _attempt(1, failed=False)])
    assert made == [] and result.status.phase == "Training"


# --------------------------------------------------------------------------- operator


def test_operator_creates_the_service_and_train_job_with_matching_names(cluster, ctl):
    run = cluster.create_run(scaled())
    finish(cluster, ctl, [("prepare", 0), ("evaluate", 0)])
    ctl.succeed(
        cluster.wait_job("demo-generate-1"), [summary("generate", 1, i, 3) for i in range(3)]
    )
    ctl.succeed(cluster.wait_job("demo-judge-1"), [summary("judge", 1, i, 2) for i in range(2)])
    job = cluster.wait_job("demo-train-1")
    svc = cluster.get("services", "demo-train-1")
    assert svc is not None, "the Service must exist when the train pods start"
    assert svc["metadata"]["ownerReferences"][0]["uid"] == run["metadata"]["uid"]
    pod = job["spec"]["template"]["spec"]
    assert pod["subdomain"] == svc["metadata"]["name"]
    assert env_of(job)[J.RDZV_HOST_ENV] == "demo-train-1-0.demo-train-1"
    assert svc["spec"]["selector"].items() <= job["spec"]["template"]["metadata"]["labels"].items()
    # the sharded summaries were merged: 3 generate shards, 2 judge shards
    st = cluster.wait_status("demo", lambda s: s.get("phase") == "Training")
    assert st["history"][-1]["samples"] == 48 and st["history"][-1]["pairs"] == 6


def _fail_group(ctl: JobController, name: str, exit_code: int = 1) -> None:
    """One rank crashed: the FailJob rule fails the Job, the Job controller stops the rest."""
    status = ctl.crash(name, f"rank 1: RuntimeError (exit {exit_code})", exit_code, index=1)
    assert {c["type"]: c for c in status["conditions"]}["Failed"]["reason"] == "PodFailurePolicy"


def test_losing_one_pod_restarts_the_whole_group_within_the_budget(cluster, ctl):
    cluster.create_run(scaled())
    finish(cluster, ctl, BEFORE_TRAIN[:2])
    ctl.succeed(
        cluster.wait_job("demo-generate-1"), [summary("generate", 1, i, 3) for i in range(3)]
    )
    ctl.succeed(cluster.wait_job("demo-judge-1"), [summary("judge", 1, i, 2) for i in range(2)])
    cluster.wait_job("demo-train-1")
    # a crash: the group restarts as a new Job (the failed one stays for its logs)
    _fail_group(ctl, "demo-train-1")
    r1 = cluster.wait_job("demo-train-1-r1")
    assert env_of(r1)[J.RDZV_HOST_ENV] == "demo-train-1-r1-0.demo-train-1"
    assert r1["spec"]["completions"] == 2
    st = cluster.wait_status("demo", lambda s: s.get("retries", {}).get("train:group-restarts"))
    assert st["phase"] == "Training" and st["retries"]["train:group-restarts"] == 1
    # a preemption: its peers' crash fails the Job; the restart does not use the budget
    ctl.preempt(r1)
    _fail_group(ctl, "demo-train-1-r1", exit_code=137)
    cluster.wait_job("demo-train-1-r2")
    st = cluster.wait_status("demo", lambda s: s.get("retries", {}).get("train:group-preempted"))
    assert st["retries"]["train:group-restarts"] == 1 and st["phase"] == "Training"
    # the second failure exceeds backoffLimit 1: the run fails and says why
    _fail_group(ctl, "demo-train-1-r2")
    st = cluster.wait_status("demo", lambda s: s.get("phase") == "Failed")
    failed = next(c for c in st["conditions"] if c["type"] == "Failed")
    assert (
        "train of iteration 1 failed (PodFailurePolicy) after 2 group restart(s)"
        in (failed["message"])
    )
    assert cluster.get("jobs", "demo-train-1-r3") is None
    reasons = [e["reason"] for e in cluster.wait_event("demo", "GroupRestart", count=2)]
    assert reasons.count("GroupRestart") == 2


def test_a_restarted_group_that_succeeds_moves_the_run_on(cluster, ctl):
    cluster.create_run(scaled())
    finish(cluster, ctl, BEFORE_TRAIN[:2])
    ctl.succeed(
        cluster.wait_job("demo-generate-1"), [summary("generate", 1, i, 3) for i in range(3)]
    )
    ctl.succeed(cluster.wait_job("demo-judge-1"), [summary("judge", 1, i, 2) for i in range(2)])
    _fail_group(ctl, cluster.wait_job("demo-train-1")["metadata"]["name"])
    ctl.succeed(cluster.wait_job("demo-train-1-r1"), [summary("train", 1, train_loss=0.42)])
    cluster.wait_job("demo-evaluate-1")
    st = cluster.wait_status("demo", lambda s: s.get("phase") == "Evaluating")
    assert st["history"][-1]["trainLoss"] == 0.42


def test_bad_input_in_a_group_fails_the_run_without_a_restart(cluster, ctl):
    cluster.create_run(scaled())
    finish(cluster, ctl, BEFORE_TRAIN[:2])
    ctl.succeed(
        cluster.wait_job("demo-generate-1"), [summary("generate", 1, i, 3) for i in range(3)]
    )
    ctl.succeed(cluster.wait_job("demo-judge-1"), [summary("judge", 1, i, 2) for i in range(2)])
    _fail_group(ctl, cluster.wait_job("demo-train-1")["metadata"]["name"], EXIT_BAD_INPUT)
    cluster.wait_status("demo", lambda s: s.get("phase") == "Failed")
    assert cluster.get("jobs", "demo-train-1-r1") is None


def _operator_unsuspends(cluster: Cluster) -> list[str]:
    """Names of Jobs the operator itself patched to `suspend: false` (from the request log)."""
    out = []
    for r in list(cluster.emulator._requests):
        agent = r.headers.get("User-Agent", "")
        if agent.startswith("python-requests") or r.resource is None:
            continue
        spec = (r.data or {}).get("spec") or {} if isinstance(r.data, dict) else {}
        if (
            r.resource.plural == "jobs"
            and r.method.value == "PATCH"
            and spec.get("suspend") is False
        ):
            out.append(r.name)
    return out


def test_kueue_jobs_are_resumed_only_by_admission(cluster, ctl):
    queue = {"queueName": "team-gpus"}
    cluster.create_run(scaled(generate=queue, judge=queue))
    finish(cluster, ctl, [("prepare", 0), ("evaluate", 0)])
    job = cluster.wait_job("demo-generate-1")
    assert job["spec"]["suspend"] is True
    assert job["metadata"]["labels"][J.KUEUE_QUEUE] == "team-gpus"
    st = cluster.wait_status("demo", lambda s: "admission by Kueue" in s.get("message", ""))
    assert st["phase"] == "Generating"
    assert cluster.get("jobs", "demo-generate-1")["spec"]["suspend"] is True
    cluster.patch("jobs", "demo-generate-1", {"spec": {"suspend": False}})  # Kueue admits
    # a user suspend of an admitted Kueue Job deletes it (Kueue would undo a suspend)...
    cluster.patch(PLURAL, "demo", {"spec": {"suspend": True}})
    cluster.wait_status("demo", lambda s: s.get("phase") == "Suspended")
    from harness import wait_for

    wait_for(lambda: cluster.get("jobs", "demo-generate-1") is None, what="Kueue Job deleted")
    # ...and a resume queues it again, suspended, for Kueue to admit
    cluster.patch(PLURAL, "demo", {"spec": {"suspend": False}})
    again = cluster.wait_job("demo-generate-1")
    assert again["spec"]["suspend"] is True
    cluster.wait_status("demo", lambda s: "admission by Kueue" in s.get("message", ""))
    cluster.patch("jobs", "demo-generate-1", {"spec": {"suspend": False}})
    ctl.succeed("demo-generate-1", [summary("generate", 1, i, 3) for i in range(3)])
    judge = cluster.wait_job("demo-judge-1")
    assert judge["spec"]["suspend"] is True
    cluster.wait_status("demo", lambda s: "admission by Kueue" in s.get("message", ""))
    assert _operator_unsuspends(cluster) == []
    # a Job without a queue is created running: nothing changes without Kueue
    cluster.patch("jobs", "demo-judge-1", {"spec": {"suspend": False}})
    ctl.succeed("demo-judge-1", [summary("judge", 1, i, 2) for i in range(2)])
    train = cluster.wait_job("demo-train-1")
    assert "suspend" not in train["spec"] and J.KUEUE_QUEUE not in train["metadata"]["labels"]
    assert _operator_unsuspends(cluster) == []
