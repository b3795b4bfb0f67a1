"""The planner's conditions follow Kubernetes' convention after every transition of a run:
start, each step, suspend, resume, success, failure (tests/condition_rules.py states it)."""

from __future__ import annotations

from condition_rules import problems
from hypothesis import HealthCheck, given, settings
from test_reconcile import NOW, SPEC, done, worlds
from tpo_operator.reconcile import CreateJob, ObservedJob, plan

from tpo.spec import SpecError, TPORunStatus


def play(fail_at: str | None = None, suspend_at: str | None = None) -> list[TPORunStatus]:
    """Every status the planner writes over a whole run; Job `fail_at` fails for good, and the
    run is suspended for two passes when Job `suspend_at` has been created."""
    status, jobs, seen, suspended = TPORunStatus(), {}, [], 0
    for _ in range(80):
        spec = SPEC.model_copy(update={"suspend": 0 < suspended <= 2})
        p = plan(spec, status, list(jobs.values()), NOW, "demo")
        status = p.status
        seen.append(status)
        if suspended:
            suspended += 1
        for a in p.of(CreateJob):
            if a.name == fail_at:
                jobs[a.name] = ObservedJob(
                    a.name, a.phase, a.iteration, failed=3, failed_reason="BackoffLimitExceeded"
                )
            elif a.name == suspend_at and not suspended:
                jobs[a.name] = ObservedJob(a.name, a.phase, a.iteration, active=1)
                suspended = 1
            else:
                jobs[a.name] = done(a.name, a.phase, a.iteration)
        if suspended == 3 and suspend_at in jobs:  # resumed: the Job now runs to the end
            job = jobs[suspend_at]
            jobs[suspend_at] = done(job.name, job.phase, job.iteration)
        if status.phase in ("Succeeded", "Failed"):
            return seen
    raise AssertionError("run did not finish")


def test_every_status_of_a_successful_run_follows_the_convention():
    seen = play()
    assert seen[-1].phase == "Succeeded"
    for st in seen:
        assert problems(st) == [], st.phase
    final = {c.type: c for c in seen[-1].conditions}
    assert (final["Failed"].status, final["Failed"].reason) == ("False", "Succeeded")


def test_every_status_of_a_suspended_then_resumed_run_follows_the_convention():
    seen = play(suspend_at="demo-judge-1")
    assert "Suspended" in [s.phase for s in seen] and seen[-1].phase == "Succeeded"
    for st in seen:
        assert problems(st) == [], st.phase


def test_every_status_of_a_failed_run_follows_the_convention():
    seen = play(fail_at="demo-train-1")
    assert seen[-1].phase == "Failed"
    for st in seen:
        assert problems(st) == [], st.phase
    assert problems(plan(SpecError(["spec.x: bad"]), TPORunStatus(), [], NOW, "demo").status) == []


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(worlds())
def test_any_pass_from_a_convention_following_status_keeps_to_it(world):
    """From any observed world whose status carries the conditions of its phase (a first
    pass, suspended or not, gives them), one pass leaves conditions that follow the convention."""
    status, jobs, suspend, _ = world
    if status.phase in ("Succeeded", "Failed"):
        return  # terminal: the planner leaves the status as it is
    was_suspended = SPEC.model_copy(update={"suspend": status.phase == "Suspended"})
    first = plan(was_suspended, TPORunStatus(), [], NOW, "demo").status
    spec = SPEC.model_copy(update={"suspend": suspend})
    keep = ("phase", "step", "iteration")
    status = first.model_copy(update={k: getattr(status, k) for k in keep})
    status = plan(spec, status, jobs, NOW, "demo").status
    assert problems(status) == [], (status.phase, status.conditions)


def test_a_resumed_run_waiting_to_redo_damaged_input_says_it_runs():
    """Found by the property above: evaluate(2) found prepare's output damaged while a Job
    from before a suspend still runs; the pass that resumes and waits for it says Running,
    not the Suspended it came from."""
    suspended = plan(SPEC.model_copy(update={"suspend": True}), TPORunStatus(), [], NOW, "demo")
    status = suspended.status.model_copy(
        update={"phase": "Suspended", "step": "judge", "iteration": 2}
    )
    jobs = [
        ObservedJob("demo-generate-2", "generate", 2, active=1),
        done("demo-judge-2", "judge", 2),
        done("demo-train-2", "train", 2),
        ObservedJob(
            "demo-evaluate-2",
            "evaluate",
            2,
            failed=1,
            failed_reason="BackoffLimitExceeded",
            damaged=("prepare", 0),
        ),
    ]
    resumed = plan(SPEC, status, jobs, NOW, "demo").status
    assert resumed.phase != "Suspended" and "demo-generate-2" in resumed.message
    assert problems(resumed) == [], resumed.conditions
    again = plan(SPEC.model_copy(update={"suspend": True}), status, jobs, NOW, "demo").status
    assert again.phase == "Suspended" and problems(again) == [], again.conditions
