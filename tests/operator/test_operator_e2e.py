"""The real kopf operator against kmock's emulated API server; the tests play the Job controller."""

from __future__ import annotations

import pytest
from harness import Cluster, JobController, Operator, manifest, summary
from tpo_operator.rbac import ADMISSION_ONLY, RULES, allows

from tpo.spec import PLURAL

# a hung test is cut here; every wait inside reports its own state well before (harness.WAIT)
pytestmark = pytest.mark.timeout(300)

STEPS_2 = [("prepare", 0), ("evaluate", 0)] + [
    (p, t) for t in (1, 2) for p in ("generate", "judge", "train", "evaluate")
]


def finish(cluster: Cluster, ctl: JobController, steps, run: str = "demo") -> None:
    for phase, t in steps:
        job = cluster.wait_job(f"{run}-{phase}-{t}")
        ctl.succeed(job, [summary(phase, t)])


def test_two_iterations_run_in_order_and_fill_history(cluster: Cluster, ctl: JobController):
    run = cluster.create_run(manifest(iterations=2))
    seen = []
    for phase, t in STEPS_2:
        job = cluster.wait_job(f"demo-{phase}-{t}")
        # exactly one Job per step, created only after the previous step finished
        assert cluster.job_names() == sorted([*seen, f"demo-{phase}-{t}"])
        seen.append(f"demo-{phase}-{t}")
        assert job["metadata"]["ownerReferences"][0]["uid"] == run["metadata"]["uid"]
        ctl.succeed(job, [summary(phase, t)])
    st = cluster.wait_status("demo", lambda s: s.get("phase") == "Succeeded")
    assert [h["iteration"] for h in st["history"]] == [0, 1, 2]
    assert st["winRate"] == pytest.approx(0.7)  # iteration 2's evaluate summary
    assert st["thoughtTokens"] == pytest.approx(32.0)
    assert st["history"][1]["pairs"] == 3 and st["history"][2]["trainLoss"] == 0.6
    assert st["history"][0]["winRate"] == pytest.approx(0.5)  # the seed's thought-prompt row
    conds = {c["type"]: c for c in st["conditions"]}
    assert conds["Succeeded"]["status"] == "True" and conds["Ready"]["status"] == "True"
    pvc = cluster.get("persistentvolumeclaims", "demo-artifacts")
    assert pvc and pvc["metadata"]["ownerReferences"][0]["name"] == "demo"
    events = cluster.wait_event("demo", "Succeeded")  # the pass's last event, posted async
    reasons = [e["reason"] for e in events]
    assert reasons.count("PhaseSucceeded") == 10
    # one event per transition: each Job is announced once, in the event of what made it due
    for job in seen:
        announced = [e for e in events if f"created {job} " in e["message"]]
        assert len(announced) == 1, (job, [e["message"] for e in events])
    assert reasons.count("JobCreated") == 0  # every Job followed a start or a success
    assert len(events) == 12  # Started, 10 x PhaseSucceeded, Succeeded


def test_job_failure_after_retries_fails_the_run(cluster: Cluster, ctl: JobController):
    cluster.create_run(manifest(iterations=1))
    finish(cluster, ctl, [("prepare", 0), ("evaluate", 0)])
    job = cluster.wait_job("demo-generate-1")
    ctl.crash(job, "CUDA error: out of memory")
    cluster.wait_status("demo", lambda s: s.get("retries", {}).get("generate") == 1)
    ctl.fail(job, "BackoffLimitExceeded", "Job has reached the specified backoff limit")
    st = cluster.wait_status("demo", lambda s: s.get("phase") == "Failed")
    failed = next(c for c in st["conditions"] if c["type"] == "Failed")
    assert failed["status"] == "True" and failed["reason"] == "BackoffLimitExceeded"
    assert "generate of iteration 1" in failed["message"]
    assert "backoff limit" in failed["message"]
    assert cluster.job_names() == ["demo-evaluate-0", "demo-generate-1", "demo-prepare-0"]
    assert any(
        e["reason"] == "BackoffLimitExceeded" and e["type"] == "Warning"
        for e in cluster.wait_event("demo", "BackoffLimitExceeded")
    )


def test_damaged_samples_found_by_judge_redo_generate_then_judge(
    cluster: Cluster, ctl: JobController
):
    """judge(1)'s pod exits EXIT_UPSTREAM_DAMAGED naming generate(1) (the termination message
    tpo.errors.UpstreamDamaged.record writes): the operator runs generate again as a new Job,
    then judge, and the run goes on; an event says what happened."""
    import json

    from tpo.errors import EXIT_UPSTREAM_DAMAGED

    cluster.create_run(manifest(iterations=1))
    finish(cluster, ctl, [("prepare", 0), ("evaluate", 0), ("generate", 1)])
    job = cluster.wait_job("demo-judge-1")
    message = json.dumps({"upstream_damaged": {"phase": "generate", "iteration": 1},
                          "error": "samples/0.jsonl: changed or truncated"})  # fmt: skip
    ctl.fail(job, "PodFailurePolicy", message, exit_code=EXIT_UPSTREAM_DAMAGED)
    ctl.succeed(cluster.wait_job("demo-generate-1-r1"), [summary("generate", 1)])
    ctl.succeed(cluster.wait_job("demo-judge-1-r1"), [summary("judge", 1)])
    finish(cluster, ctl, [("train", 1), ("evaluate", 1)])
    st = cluster.wait_status("demo", lambda s: s.get("phase") == "Succeeded")
    assert st["retries"]["judge:1:upstream-redos"] == 1
    events = cluster.wait_event("demo", "UpstreamDamaged")
    warned = [e for e in events if e["reason"] == "UpstreamDamaged"]
    assert len(warned) == 1 and "redoing generate as demo-generate-1-r1" in warned[0]["message"]


def test_preempted_pod_is_not_a_failure(cluster: Cluster, ctl: JobController):
    cluster.create_run(manifest(iterations=1))
    finish(cluster, ctl, [("prepare", 0), ("evaluate", 0)])
    job = cluster.wait_job("demo-generate-1")
    ctl.preempt(job)
    st = cluster.wait_status("demo", lambda s: s.get("retries", {}).get("generate:preempted"))
    assert st["phase"] == "Generating" and "generate" not in st["retries"]
    finish(cluster, ctl, [("generate", 1), ("judge", 1), ("train", 1), ("evaluate", 1)])
    cluster.wait_status("demo", lambda s: s.get("phase") == "Succeeded")


def test_suspend_and_resume(cluster: Cluster, ctl: JobController):
    cluster.create_run(manifest(iterations=1))
    finish(cluster, ctl, [("prepare", 0)])
    cluster.wait_job("demo-evaluate-0")
    cluster.patch(PLURAL, "demo", {"spec": {"suspend": True}})
    st = cluster.wait_status("demo", lambda s: s.get("phase") == "Suspended")
    assert st["step"] == "evaluate"
    assert cluster.get("jobs", "demo-evaluate-0")["spec"]["suspend"] is True
    # finishing the suspended step does not start the next one while suspended
    ctl.succeed("demo-evaluate-0", [summary("evaluate", 0)])
    cluster.wait_status("demo", lambda s: s.get("step") == "generate")
    assert cluster.get("jobs", "demo-generate-1") is None
    cluster.patch(PLURAL, "demo", {"spec": {"suspend": False}})
    cluster.wait_job("demo-generate-1")
    st = cluster.wait_status("demo", lambda s: s.get("phase") == "Generating")
    assert next(c for c in st["conditions"] if c["type"] == "Suspended")["status"] == "False"
    finish(cluster, ctl, [("generate", 1), ("judge", 1)])
    cluster.wait_job("demo-train-1")
    cluster.patch(PLURAL, "demo", {"spec": {"suspend": True}})
    cluster.wait_status("demo", lambda s: s.get("phase") == "Suspended")
    assert cluster.get("jobs", "demo-train-1")["spec"]["suspend"] is True
    cluster.patch(PLURAL, "demo", {"spec": {"suspend": False}})
    cluster.wait_status("demo", lambda s: s.get("phase") == "Training")
    assert cluster.get("jobs", "demo-train-1")["spec"]["suspend"] is False
    finish(cluster, ctl, [("train", 1), ("evaluate", 1)])
    cluster.wait_status("demo", lambda s: s.get("phase") == "Succeeded")


def test_restart_at_every_phase_boundary_creates_no_duplicate(tmp_path):
    steps = [("prepare", 0), ("evaluate", 0)] + [
        (p, 1) for p in ("generate", "judge", "train", "evaluate")
    ]
    with Cluster(tmp_path) as cluster:
        ctl = JobController(cluster)
        with Operator(cluster):
            cluster.create_run(manifest(iterations=1))
            cluster.wait_job("demo-prepare-0")
        for phase, t in steps:
            # the step's Job finishes while no operator runs; a new one must pick up from there
            ctl.succeed(f"demo-{phase}-{t}", [summary(phase, t)])
            with Operator(cluster):
                if (phase, t) == steps[-1]:
                    cluster.wait_status("demo", lambda s: s.get("phase") == "Succeeded")
                else:
                    nxt = steps[steps.index((phase, t)) + 1]
                    cluster.wait_job(f"demo-{nxt[0]}-{nxt[1]}")
        creates = [
            r.data["metadata"]["name"]
            for r in list(cluster.emulator._requests)
            if r.action is not None
            and r.action.name == "CREATE"
            and r.resource is not None
            and r.resource.plural == "jobs"
        ]
        assert sorted(set(creates)) == sorted(f"demo-{p}-{t}" for p, t in steps)
        assert len(cluster.list("jobs")) == len(steps)
        st = cluster.run("demo")["status"]
        assert [h["iteration"] for h in st["history"]] == [0, 1]
        assert st["history"][1]["phaseSeconds"].keys() == {"generate", "judge", "train", "evaluate"}


def test_invalid_spec_fails_the_run_and_the_operator_stays_healthy(cluster, ctl):
    bad = manifest(name="broken")
    bad["spec"]["generation"] = {"samples": 1, "bogus": True}
    del bad["spec"]["judge"]
    cluster.create_run(bad)
    st = cluster.wait_status("broken", lambda s: s.get("phase") == "Failed")
    failed = next(c for c in st["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "InvalidSpec"
    for field in ("spec.generation.samples", "spec.generation.bogus", "spec.judge"):
        assert field in failed["message"]
    cluster.wait_event("broken", "InvalidSpec")  # or TimeoutError
    assert cluster.job_names() == []
    cluster.create_run(manifest(name="fine", iterations=1))
    cluster.wait_job("fine-prepare-0")
    assert cluster.operator.alive


def test_unsafe_spec_change_is_refused_and_run_continues(cluster, ctl):
    cluster.create_run(manifest(iterations=1))
    finish(cluster, ctl, [("prepare", 0)])
    cluster.wait_job("demo-evaluate-0")
    cluster.patch(
        PLURAL,
        "demo",
        {
            "spec": {
                "generation": {"samples": 4},
                "images": {"worker": "registry.local/worker:2"},
            }
        },
    )
    st = cluster.wait_status(
        "demo",
        lambda s: any(
            c["type"] == "SpecAccepted" and c["status"] == "False" for c in s.get("conditions", [])
        ),
    )
    cond = next(c for c in st["conditions"] if c["type"] == "SpecAccepted")
    assert "spec.generation.samples" in cond["message"] and "images" not in cond["message"]
    assert st["specSnapshot"]["generation"]["samples"] == 8
    finish(cluster, ctl, [("evaluate", 0)])
    job = cluster.wait_job("demo-generate-1")
    assert job["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.local/worker:2"
    assert st["phase"] != "Failed"


def test_rbac_rules_cover_exactly_what_the_operator_uses(tmp_path):
    """Every request the operator makes is allowed by RULES, and every rule is used, except the
    named ADMISSION_ONLY permissions (an admission plugin checks them; no request uses them)."""
    with Cluster(tmp_path) as cluster, Operator(cluster):
        ctl = JobController(cluster)
        queued = {"judge": {"queueName": "q"}}  # a Kueue Job: a user suspend deletes it
        cluster.create_run(manifest(iterations=1, training={"nodes": 2}, pools=queued))
        finish(cluster, ctl, [("prepare", 0), ("evaluate", 0)])
        cluster.wait_job("demo-generate-1")
        for queue in (False, True):  # suspend/resume of a plain Job, then of a Kueue Job
            cluster.patch(PLURAL, "demo", {"spec": {"suspend": True}})
            cluster.wait_status("demo", lambda s: s.get("phase") == "Suspended")
            cluster.patch(PLURAL, "demo", {"spec": {"suspend": False}})
            cluster.wait_status("demo", lambda s: s.get("phase") in ("Generating", "Judging"))
            if not queue:
                finish(cluster, ctl, [("generate", 1)])
                cluster.wait_job("demo-judge-1")
        finish(cluster, ctl, [("judge", 1), ("train", 1), ("evaluate", 1)])
        cluster.wait_status("demo", lambda s: s.get("phase") == "Succeeded")
        assert cluster.get("services", "demo-train-1") is not None
        used = set(cluster.requests())
    denied = sorted(u for u in used if not allows(u[1], u[2], u[0]))
    assert not denied, f"requests not covered by RULES: {denied}"
    unused = [
        (verb, group, res)
        for rule in RULES
        for group in rule["apiGroups"]
        for res in rule["resources"]
        for verb in rule["verbs"]
        if (verb, group, res) not in used and (verb, group, res) not in ADMISSION_ONLY
    ]
    assert not unused, f"RULES grant more than the operator uses: {unused}"
    assert not used & set(ADMISSION_ONLY), "an ADMISSION_ONLY permission is used by a request"


def test_python_m_tpo_operator_serves_liveness_and_reconciles(tmp_path):
    """The real entrypoint as a subprocess: kubeconfig login, /healthz, a run gets its Job."""
    import os
    import socket
    import subprocess
    import sys

    import requests

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with Cluster(tmp_path) as cluster:
        env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig)}
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tpo_operator",
                "--all-namespaces",
                "--liveness-port",
                str(port),
                "--metrics-port",
                "-1",
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:

            def healthy():
                try:
                    return requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1).ok
                except requests.ConnectionError:
                    return False

            from harness import WAIT, wait_for

            wait_for(healthy, what="liveness endpoint")
            cluster.create_run(manifest(iterations=1))
            cluster.wait_job("demo-prepare-0")
        finally:
            proc.terminate()
            out, _ = proc.communicate(timeout=WAIT)
        assert proc.returncode == 0, out[-2000:]
