"""The pure planner: a whole run without any cluster, spec changes, and properties over random
observed states (hypothesis): at most one live Job, never a step backwards, idempotent."""

from __future__ import annotations

import dataclasses

from harness import manifest, summary
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tpo_operator import jobs as J
from tpo_operator.reconcile import (
    CreateJob,
    CreatePVC,
    Event,
    ObservedJob,
    SuspendJob,
    observe,
    plan,
    step_index,
    steps,
)

from tpo.spec import PHASE_OF_STEP, RunPhase, SpecError, TPORunStatus, parse_manifest

NOW = "2026-01-01T00:00:00Z"
_, SPEC = parse_manifest(manifest(iterations=2))


def done(name: str, phase: str, t: int, **kw) -> ObservedJob:
    return ObservedJob(
        name, phase, t, succeeded=1, complete=True, summaries=(summary(phase, t),), **kw
    )


def drive(spec=SPEC, iterations: int = 2):
    """Play the whole run: every created Job completes before the next plan."""
    status, jobs, created = TPORunStatus(), {}, []
    for _ in range(50):
        p = plan(spec, status, list(jobs.values()), NOW, "demo")
        status = p.status
        for a in p.of(CreateJob):
            created.append(a.name)
            jobs[a.name] = done(a.name, a.phase, a.iteration)
        if status.phase in ("Succeeded", "Failed"):
            return status, created
    raise AssertionError("run did not finish")


def test_a_whole_run_creates_each_step_once_in_order():
    status, created = drive()
    assert created == [f"demo-{p}-{t}" for p, t in steps(2)]
    assert status.phase == "Succeeded" and status.step is None
    assert [h.iteration for h in status.history] == [0, 1, 2]
    assert status.win_rate == summary("evaluate", 2)["win_rate"]


def test_first_plan_creates_pvc_and_prepare():
    p = plan(SPEC, TPORunStatus(), [], NOW, "demo")
    assert p.of(CreatePVC) == [CreatePVC()]
    assert p.of(CreateJob) == [CreateJob("demo-prepare-0", "prepare", 0)]
    assert p.status.phase == "Preparing" and p.status.spec_snapshot == SPEC.dump()


def test_invalid_spec_fails_only_before_the_run_started():
    err = SpecError(["spec.judge: required field is missing"])
    p = plan(err, TPORunStatus(), [], NOW, "demo")
    assert p.status.phase == "Failed" and not p.of(CreateJob)
    failed = next(c for c in p.status.conditions if c.type == "Failed")
    assert failed.reason == "InvalidSpec" and "spec.judge" in failed.message
    started = plan(SPEC, TPORunStatus(), [], NOW, "demo").status
    p = plan(err, started, [], NOW, "demo")
    assert p.status.phase == "Preparing"
    cond = next(c for c in p.status.conditions if c.type == "SpecAccepted")
    assert cond.status == "False" and "spec.judge" in cond.message


def test_unsafe_changes_are_refused_safe_ones_applied():
    started = plan(SPEC, TPORunStatus(), [], NOW, "demo").status
    m = manifest(iterations=3)
    m["spec"]["thoughtPrompt"] = {"type": "specific"}
    m["spec"]["pools"] = {"train": {"gpus": 4}}
    _, changed = parse_manifest(m)
    p = plan(changed, started, [], NOW, "demo")
    cond = next(c for c in p.status.conditions if c.type == "SpecAccepted")
    assert "spec.iterations" in cond.message and "spec.thoughtPrompt.type" in cond.message
    assert "pools" not in cond.message
    assert p.status.spec_snapshot["iterations"] == 2
    assert p.status.spec_snapshot["pools"]["train"]["gpus"] == 4
    refused = [a for a in p.actions if isinstance(a, Event) and a.reason == "SpecChangeRefused"]
    assert len(refused) == 1
    again = plan(changed, p.status, apply(changed, [], p.actions), NOW, "demo")
    assert not any(isinstance(a, Event) for a in again.actions)  # no event storm


def test_observe_reads_shards_preemptions_and_failures():
    job = {
        "metadata": {
            "name": "demo-generate-1",
            "labels": {
                "tpo.dev/run": "demo",
                "tpo.dev/phase": "generate",
                "tpo.dev/iteration": "1",
            },
        },
        "spec": {"suspend": False},
        "status": {
            "succeeded": 2,
            "failed": 1,
            "conditions": [{"type": "Complete", "status": "True"}],
        },
    }
    labels = job["metadata"]["labels"]

    def pod(phase, message, conditions=()):
        import json

        return {
            "metadata": {"name": f"p{len(message)}{phase}", "labels": labels},
            "status": {
                "phase": phase,
                "conditions": list(conditions),
                "containerStatuses": [
                    {
                        "state": {
                            "terminated": {
                                "exitCode": 0 if phase == "Succeeded" else 137,
                                "message": message
                                if isinstance(message, str)
                                else "log line\n" + json.dumps(message),
                            }
                        }
                    }
                ],
            },
        }

    pods = [
        pod("Succeeded", summary("generate", 1, 1, 2)),
        pod("Succeeded", summary("generate", 1, 0, 2)),
        pod("Failed", "Killed", [{"type": "DisruptionTarget", "status": "True"}]),
        pod("Failed", "OOM"),
    ]
    other = {**job, "metadata": {**job["metadata"], "labels": {**labels, "tpo.dev/run": "x"}}}
    [seen] = observe([job, other], pods, "demo")
    assert seen.complete and seen.failed == 1 and seen.preempted == 1
    assert [s["shard"] for s in seen.summaries] == [0, 1]
    p = plan(
        SPEC,
        TPORunStatus(step="generate", iteration=1, phase="Generating", spec_snapshot=SPEC.dump()),
        [seen],
        NOW,
        "demo",
    )
    assert p.status.history[0].samples == 32  # both shards' samples added
    assert p.status.retries == {"generate": 1, "generate:preempted": 1}
    assert p.of(CreateJob) == [CreateJob("demo-judge-1", "judge", 1)]


def _play(damage: dict[str, tuple[str, int]], always: bool = False, lose: set[str] = frozenset()):
    """Play a run where the Jobs named in `damage` fail as a pod exiting EXIT_UPSTREAM_DAMAGED
    does (every attempt of that step with `always`); creates named in `lose` never land."""
    status, jobs, created, events = TPORunStatus(), {}, [], []
    lost = set(lose)
    for _ in range(80):
        p = plan(SPEC, status, list(jobs.values()), NOW, "demo")
        status = p.status
        events += [(e.reason, e.message) for e in p.of(Event)]
        for a in p.of(CreateJob):
            created.append(a.name)
            if a.name in lost:
                lost.discard(a.name)
                continue
            base = a.name.split("-r")[0] if always else a.name
            up = damage.get(base) if always else damage.pop(a.name, None)
            if up:
                jobs[a.name] = ObservedJob(
                    a.name, a.phase, a.iteration, failed=1, attempt=a.attempt,
                    failed_reason="PodFailurePolicy", damaged=up,
                )  # fmt: skip
            else:
                jobs[a.name] = dataclasses.replace(
                    done(a.name, a.phase, a.iteration), attempt=a.attempt
                )
        if status.phase in ("Succeeded", "Failed"):
            return status, created, events
    raise AssertionError(f"run did not finish: {created}")


def test_a_damaged_upstream_output_is_redone_then_the_step_that_found_it():
    """judge(1) finds generate(1)'s samples damaged, evaluate(2) finds train(2)'s weights
    damaged: each earlier step runs again as a new attempt, then the step that found it."""
    status, created, events = _play(
        {"demo-judge-1": ("generate", 1), "demo-evaluate-2": ("train", 2)}
    )
    assert status.phase == "Succeeded"
    at = created.index("demo-judge-1")
    assert created[at : at + 4] == ["demo-judge-1", "demo-generate-1-r1", "demo-judge-1-r1",
                                    "demo-train-1"]  # fmt: skip
    at = created.index("demo-evaluate-2")
    assert created[at:] == ["demo-evaluate-2", "demo-train-2-r1", "demo-evaluate-2-r1"]
    warned = [m for r, m in events if r == "UpstreamDamaged"]
    assert len(warned) == 2 and "redoing generate as demo-generate-1-r1, then judge" in warned[0]
    assert status.retries["judge:1:upstream-redos"] == 1
    assert status.retries["evaluate:2:upstream-redos"] == 1


def test_a_lost_redo_create_is_made_again_not_skipped():
    status, created, _ = _play({"demo-judge-1": ("generate", 1)}, lose={"demo-generate-1-r1"})
    assert status.phase == "Succeeded"
    at = created.index("demo-judge-1")
    assert created[at : at + 4] == ["demo-judge-1", "demo-generate-1-r1", "demo-generate-1-r1",
                                    "demo-judge-1-r1"]  # fmt: skip


def test_upstream_damage_that_redoing_does_not_fix_fails_the_run_after_the_budget():
    status, created, _ = _play({"demo-judge-1": ("generate", 1)}, always=True)
    assert status.phase == "Failed"
    assert [c for c in created if c.startswith(("demo-generate-1", "demo-judge-1"))] == [
        "demo-generate-1", "demo-judge-1", "demo-generate-1-r1", "demo-judge-1-r1",
        "demo-generate-1-r2", "demo-judge-1-r2",
    ]  # fmt: skip
    failed = next(c for c in status.conditions if c.type == "Failed")
    assert failed.reason == "UpstreamDamaged" and "still damaged after 2 redos" in failed.message


# --------------------------------------------------------------------------- properties

ORDER = steps(2)
STATES = ["absent", "live", "complete", "failed", "suspended"]


@st.composite
def worlds(draw):
    idx = draw(st.integers(-1, len(ORDER)))
    status = TPORunStatus()
    if idx == len(ORDER):
        status.phase = RunPhase.succeeded
        status.spec_snapshot = SPEC.dump()
    elif idx >= 0:
        status.step, status.iteration = ORDER[idx]
        status.phase = RunPhase.suspended if draw(st.booleans()) else PHASE_OF_STEP[ORDER[idx][0]]
        status.spec_snapshot = SPEC.dump()
    jobs = []
    for phase, t in ORDER:
        state = draw(st.sampled_from(STATES))
        if state == "absent":
            continue
        name = f"demo-{phase}-{t}"
        failed = draw(st.integers(0, 2))
        preempted = draw(st.integers(0, 1))
        if state == "complete":
            jobs.append(done(name, phase, t, failed=failed, preempted=preempted))
        elif state == "failed":
            damaged = draw(st.none() | st.sampled_from(ORDER))  # EXIT_UPSTREAM_DAMAGED naming it
            jobs.append(
                ObservedJob(
                    name, phase, t, failed=failed + 1, failed_reason="BackoffLimitExceeded",
                    damaged=damaged,
                )
            )  # fmt: skip
        else:
            jobs.append(
                ObservedJob(
                    name,
                    phase,
                    t,
                    active=1,
                    failed=failed,
                    preempted=preempted,
                    suspend=state == "suspended",
                    user_suspended=state == "suspended",
                )
            )
    suspend = draw(st.booleans())
    queued = draw(st.sampled_from([(), ("generate",), ("generate", "judge", "train")]))
    return status, jobs, suspend, queued


def apply(spec, jobs: list[ObservedJob], actions) -> list[ObservedJob]:
    """What the API server would hold after the shell applied the actions: a created Job as
    its manifest reads before any controller touched it (the shell skips that echo's event,
    so planning on it must change nothing)."""
    out = {j.name: j for j in jobs}
    for a in actions:
        if isinstance(a, CreateJob) and a.name not in out:
            manifest = J.job(spec, "default", "demo", a.phase, a.iteration, a.attempt)
            (out[a.name],) = observe([manifest], [], "demo")
        elif isinstance(a, SuspendJob):
            out[a.name] = dataclasses.replace(
                out[a.name], suspend=a.suspend, user_suspended=a.suspend
            )
    return list(out.values())


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(worlds())
def test_planner_properties(world):
    status, jobs, suspend, queued = world
    pools = SPEC.pools.model_copy(
        update={p: getattr(SPEC.pools, p).model_copy(update={"queue_name": "q"}) for p in queued}
    )
    spec = SPEC.model_copy(update={"suspend": suspend, "pools": pools})
    p = plan(spec, status, jobs, NOW, "demo")
    creates = p.of(CreateJob)
    # never two live Jobs: a Job is created only when none of the run's Jobs is live
    assert len(creates) <= 1
    if creates:
        assert not [j for j in jobs if not j.finished]
        assert not suspend
        assert creates[0].name not in {j.name for j in jobs}
    # never a step backwards, but to redo the earlier step a failed Job found damaged
    if status.phase not in ("Succeeded", "Failed"):
        back = step_index(p.status, 2) < step_index(status, 2) and p.status.phase != "Succeeded"
        if back:
            failed = [j for j in jobs if j.failed_reason and j.damaged == (p.status.step,
                      p.status.iteration)]  # fmt: skip
            assert failed and [(c.phase, c.iteration) for c in creates] in (
                [(p.status.step, p.status.iteration)],
                [],  # suspended, or waiting for a live Job
            )
    else:
        assert p.status == status and not p.actions
    # idempotent: planning again on the world the plan produced changes nothing
    again = plan(spec, p.status, apply(spec, jobs, p.actions), NOW, "demo")
    assert again.status == p.status
    assert again.actions == []
    # deterministic
    assert plan(spec, status, jobs, NOW, "demo") == p


def test_the_echo_of_each_created_job_changes_nothing():
    """The shell skips the watch event of a Job it just created (handlers.on_job): through a
    whole run, with and without Kueue queues, planning on the fresh Job must be a no-op."""
    for queued in ((), ("generate", "judge", "train", "evaluate")):
        pools = SPEC.pools.model_copy(
            update={
                p: getattr(SPEC.pools, p).model_copy(update={"queue_name": "q"}) for p in queued
            }
        )
        spec = SPEC.model_copy(update={"pools": pools})
        status, jobs, created = TPORunStatus(), [], 0
        while status.phase != "Succeeded":
            p = plan(spec, status, jobs, NOW, "demo")
            fresh = apply(spec, jobs, p.actions)
            again = plan(spec, p.status, fresh, NOW, "demo")
            assert (again.status, again.actions) == (p.status, []), (queued, p.status.step)
            created += len(p.of(CreateJob))
            status, jobs = p.status, [done(j.name, j.phase, j.iteration) for j in fresh]
        assert created == len(ORDER)
