"""The emulated Job controller (tests/kubeemu.py) against upstream Kubernetes, and the planner's
reading of what it leaves behind (`observe`), on the Job manifests tpo_operator.jobs builds.

Upstream (kubernetes/kubernetes pkg/controller/job, release 1.32): pod_failure_policy.go's
messages, job_controller.go's counting of the pods it deletes when a Job fails, the
FailureTarget condition before Failed, startTime on resume.
"""

from __future__ import annotations

from typing import Any

from harness import manifest
from kubeemu import BACKOFF_MESSAGE, JobSim, Write, match_policy, merge_patch, stamp
from tpo_operator import jobs as J
from tpo_operator.reconcile import observe

from tpo.errors import EXIT_BAD_INPUT, EXIT_UPSTREAM_DAMAGED
from tpo.spec import parse_manifest

# fmt.Sprintf("Container %s for pod %s/%s failed with exit code %v matching %v rule at index %d")
GO_FAILJOB = "Container {c} for pod {ns}/{pod} failed with exit code {code} matching FailJob rule at index {i}"  # noqa: E501


class Store:
    """A dict API: the Job controller's writes applied the way the API server would."""

    def __init__(self, job: dict[str, Any]):
        stamp(job["metadata"], "default")
        self.jobs = {job["metadata"]["name"]: job}
        self.pods: dict[str, dict[str, Any]] = {}

    def sim(self, name: str) -> JobSim:
        return JobSim(self.jobs[name], list(self.pods.values()))

    def apply(self, writes: list[Write]) -> list[Write]:
        for w in writes:
            objs = self.jobs if w.resource == "jobs" else self.pods
            if w.method == "POST":
                assert w.body is not None
                stamp(w.body["metadata"], "default")
                objs[w.name] = w.body
            elif w.method == "DELETE":
                objs[w.name]["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
            else:
                objs[w.name] = merge_patch(objs[w.name], w.body)
                meta = objs[w.name]["metadata"]
                if meta.get("deletionTimestamp") and not meta.get("finalizers"):
                    del objs[w.name]
        return writes


def _job(phase: str = "prepare", iteration: int = 0, **spec: Any) -> dict[str, Any]:
    meta, parsed = parse_manifest(manifest(iterations=1, **spec))
    return J.job(parsed, "default", meta["name"], phase, iteration)


def _two_node_train() -> dict[str, Any]:
    return _job(
        "train",
        1,
        training={"nodes": 2, "gpusPerNode": 1},
        pools={"train": {"gpus": 1, "backoffLimit": 1}},
    )


def _cond(sim: JobSim, type_: str) -> dict[str, Any]:
    return sim.conditions()[type_]


def test_failjob_messages_match_upstreams_format_and_the_rule_index_of_our_policy():
    for code, index, job in (
        (EXIT_BAD_INPUT, 1, _job()),
        (EXIT_UPSTREAM_DAMAGED, 1, _job()),
        (EXIT_BAD_INPUT, 1, _two_node_train()),
        (1, 2, _two_node_train()),  # the group's any-crash rule
        (137, 2, _two_node_train()),
    ):
        store = Store(job)
        sim = store.sim(job["metadata"]["name"])
        store.apply(sim.crash("boom", code))
        failed = _cond(sim, "Failed")
        culprit = next(p for p in sim.pods if not p["metadata"].get("deletionTimestamp"))
        assert failed["reason"] == "PodFailurePolicy"
        expect = GO_FAILJOB.format(
            c="worker", ns="default", pod=culprit["metadata"]["name"], code=code, i=index
        )
        assert failed["message"] == expect
        assert _cond(sim, "FailureTarget")["message"] == expect


def test_a_crash_is_counted_and_retried_until_the_backoff_limit():
    job = _job("generate", 1)  # backoffLimit 3 (the pool's default)
    store = Store(job)
    sim = store.sim(job["metadata"]["name"])
    ticks = iter(range(3600))  # a second per step: the controller's backoff between retries

    def clock() -> str:
        t = next(ticks)
        return f"2026-01-01T00:{t // 60:02d}:{t % 60:02d}Z"

    sim.clock = clock
    for n in range(1, 4):
        store.apply(sim.crash(f"CUDA error {n}"))
        assert sim.status["failed"] == n and not sim.finished
        assert sim.status["active"] == 1  # a replacement
    store.apply(sim.crash("CUDA error 4"))
    failed = _cond(sim, "Failed")
    assert (failed["reason"], failed["message"]) == ("BackoffLimitExceeded", BACKOFF_MESSAGE)
    [seen] = observe(list(store.jobs.values()), list(store.pods.values()), "demo")
    assert seen.failed == 4 and seen.failed_reason == "BackoffLimitExceeded"
    assert seen.pod_message == "CUDA error 4"  # the last pod to fail


def test_failjob_deletes_and_counts_the_peers_which_are_no_failures_of_their_own():
    job = _two_node_train()
    store = Store(job)
    sim = store.sim(job["metadata"]["name"])
    writes = store.apply(sim.crash("rank 1: RuntimeError: NCCL watchdog", 1, index=1))
    assert sim.status["failed"] == 2 and not sim.status.get("active")

    # FailureTarget is written before the peer stops; Failed only after it stopped (1.32)
    def conds(w: Write) -> list[str]:
        return [c["type"] for c in (w.body or {}).get("status", {}).get("conditions") or []]

    target = next(i for i, w in enumerate(writes) if "FailureTarget" in conds(w))
    stopped = next(i for i, w in enumerate(writes) if w.sub == "status" and i > target)
    assert "Failed" not in conds(writes[target])
    assert [i for i, w in enumerate(writes) if "Failed" in conds(w)] == [len(writes) - 1]
    assert writes[stopped].resource == "pods" and stopped < len(writes) - 1
    [peer] = [p for p in store.pods.values() if p["metadata"].get("deletionTimestamp")]
    term = peer["status"]["containerStatuses"][0]["state"]["terminated"]
    assert (term["exitCode"], term["reason"], "message" in term) == (143, "Error", False)
    assert not any(c["type"] == "DisruptionTarget" for c in peer["status"]["conditions"])
    [seen] = observe(list(store.jobs.values()), list(store.pods.values()), "demo")
    assert seen.failed == 1 and seen.preempted == 0
    assert seen.pod_message == "rank 1: RuntimeError: NCCL watchdog"
    # once the peer is gone, the same
    store.apply(store.sim(job["metadata"]["name"]).gc())
    assert len(store.pods) == 1
    [seen] = observe(list(store.jobs.values()), list(store.pods.values()), "demo")
    assert seen.failed == 1


def test_the_worker_message_is_the_culprits_the_job_condition_names():
    job = _job("judge", 1)
    store = Store(job)
    sim = store.sim(job["metadata"]["name"])
    store.apply(sim.crash("Traceback: MemoryError"))  # counted, retried
    store.apply(sim.crash("dataset line 7: not JSON", EXIT_BAD_INPUT))
    [seen] = observe(list(store.jobs.values()), list(store.pods.values()), "demo")
    assert seen.failed_reason == "PodFailurePolicy" and seen.bad_input
    assert seen.pod_message == "dataset line 7: not JSON" and seen.failed == 2


def test_a_preempted_pod_is_ignored_replaced_and_no_failure():
    job = _job("generate", 1)
    store = Store(job)
    sim = store.sim(job["metadata"]["name"])
    store.apply(sim.preempt())
    pod = next(p for p in store.pods.values() if p["status"]["phase"] == "Failed")
    assert match_policy(job, pod)[0] == "Ignore"  # rule 0 of our policy
    assert {"type": "DisruptionTarget", "reason": "PreemptionByScheduler"}.items() <= next(
        c for c in pod["status"]["conditions"] if c["type"] == "DisruptionTarget"
    ).items()
    assert not sim.status.get("failed") and sim.status["active"] == 1 and not sim.finished
    [seen] = observe(list(store.jobs.values()), list(store.pods.values()), "demo")
    assert (seen.preempted, seen.failed) == (1, 0)


def test_start_time_is_set_on_start_kept_while_suspended_and_reset_on_resume():
    job = _job("train", 1)
    store = Store(job)
    name = job["metadata"]["name"]
    sim = store.sim(name)
    store.apply(sim.start())
    started = store.jobs[name]["status"]["startTime"]
    store.jobs[name]["spec"]["suspend"] = True
    store.apply(store.sim(name).sync())
    st = store.jobs[name]["status"]
    assert st["startTime"] == started and not st.get("active") and not st.get("failed")
    assert st["conditions"][-1]["type"] == "Suspended" and st["conditions"][-1]["status"] == "True"
    store.jobs[name]["spec"]["suspend"] = False
    resumed = store.sim(name)
    resumed.clock = lambda: "2030-01-01T00:00:00Z"
    store.apply(resumed.sync())
    st = store.jobs[name]["status"]
    assert st["startTime"] == "2030-01-01T00:00:00Z" and st["active"] == 1
    suspended = next(c for c in st["conditions"] if c["type"] == "Suspended")
    assert (suspended["status"], suspended["reason"]) == ("False", "JobResumed")
