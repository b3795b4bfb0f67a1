"""The operator's brain: a pure, level-triggered planner.

`plan(spec, status, observed_jobs, now)` looks at what IS (the run's status and its Jobs as the
API server reports them) and says what to DO: create the next Job, suspend or resume one, record
a finished phase's summary, move the run to its next phase, fail it. No I/O, so the same inputs
give the same plan; a plan applied twice never makes a second Job (deterministic names,
create-if-absent), and a plan made after a crash picks up where the last applied one stopped.

A run is a fixed sequence of steps: prepare-0, evaluate-0 (seed with vs without thoughts),
then generate/judge/train/evaluate for t = 1..T. `status.step` + `status.iteration` name the
step in flight; every step before it is done. At most one Job of a run is live at a time.

Scale-out (docs/scale-out.md): a multi-node train runs all-or-nothing, so a failed group is
restarted whole as the step's next attempt (a new Job `<job>-r<a>`); the attempts are counted
from the Jobs that exist, so the budget survives operator restarts. Kueue-managed Jobs (queue
label) are unsuspended only by Kueue's admission; a user suspend deletes such a Job (Kueue
would undo a suspend of an admitted Job) and a resume creates it again, queued.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from tpo.errors import EXIT_BAD_INPUT, EXIT_UPSTREAM_DAMAGED, MAX_UPSTREAM_REDOS
from tpo.spec import (
    PHASE_OF_STEP,
    RunPhase,
    SpecError,
    TPORunSpec,
    TPORunStatus,
    parse_spec,
)
from tpo.status import (
    QUALITY_WARNING,
    apply_summary,
    merge_shards,
    set_condition,
    set_lifecycle,
    set_quality,
    warning_line,
    warnings_of,
)

Step = tuple[str, int]

# Top-level spec fields that may change while a run is in flight: they steer scheduling of
# future Jobs, never what a phase computes. Everything else is refused once the run started.
MUTABLE_FIELDS = ("suspend", "pools", "images", "env")
TERMINAL = (RunPhase.succeeded.value, RunPhase.failed.value)
USER_SUSPENDED = "tpo.dev/user-suspended"
# Events that also announce the Job created in the same pass (see _Ctx.job_created).
FOLDS_JOB_CREATED = ("Started", "PhaseSucceeded")
# Job failure reasons a group restart would not fix: the time limit is spent.
NOT_RESTARTED = ("DeadlineExceeded",)
CONTROLLER_MESSAGE_MAX = 160  # the Job controller's message, beside the worker's
# The pod a podFailurePolicy FailJob message names (pkg/controller/job/pod_failure_policy.go)
FAILJOB_POD = re.compile(r"\bpod (?P<ns>[^/\s]+)/(?P<name>[^\s]+) (?:failed|has condition)", re.I)


@dataclass(frozen=True)
class ObservedJob:
    """What the shell saw of one child Job (and its pods)."""

    name: str
    phase: str
    iteration: int
    active: int = 0
    succeeded: int = 0
    # Pods that failed by themselves (`_own_failure`), counted from the pods: not the Job's
    # status.failed, which also counts the peers it deleted after a FailJob rule.
    failed: int = 0
    complete: bool = False
    failed_reason: str | None = None  # the Job's Failed condition reason, when failed
    failed_message: str = ""  # the Job controller's own text (e.g. which podFailurePolicy rule)
    suspend: bool = False
    user_suspended: bool = False
    preempted: int = 0  # pods that failed with a DisruptionTarget condition
    summaries: tuple[dict[str, Any], ...] = ()  # termination messages of succeeded pods
    pod_message: str = ""  # the worker's termination message (or log tail) of the failed pod
    attempt: int = 0  # > 0: a whole-group restart of a multi-node train
    queue: str | None = None  # Kueue LocalQueue (label): Kueue alone unsuspends the Job
    bad_input: bool = False  # a pod exited with EXIT_BAD_INPUT: retrying cannot help
    # A pod exited with EXIT_UPSTREAM_DAMAGED: this earlier step's output is damaged.
    damaged: tuple[str, int] | None = None

    @property
    def finished(self) -> bool:
        return self.complete or self.failed_reason is not None


@dataclass(frozen=True)
class Peer:
    """What the shell saw of the run named by `evaluation.compareWith` (same namespace)."""

    name: str
    exists: bool = False
    terminal: bool = False  # Succeeded or Failed: it will train no more models
    models: frozenset[int] = frozenset()  # iterations whose M(t) is on its volume
    iterations: int | None = None
    claim: str | None = None  # the PVC holding its artifacts


def peer_of(name: str, body: dict[str, Any] | None) -> Peer:
    """A Peer from the other TPORun's API object (None: it does not exist)."""
    if body is None:
        return Peer(name)
    raw = {k: v for k, v in (body.get("status") or {}).items() if k != "kopf"}
    try:
        status = TPORunStatus.model_validate(raw)
    except ValueError:
        status = TPORunStatus()
    snap = status.spec_snapshot or body.get("spec") or {}
    iterations = snap.get("iterations") if isinstance(snap.get("iterations"), int) else None
    claim = (snap.get("storage") or {}).get("claimName") or f"{name}-artifacts"
    models = frozenset(
        h.iteration for h in status.history if h.model_path or "train" in h.phase_seconds
    )
    return Peer(name, True, status.phase in TERMINAL, models, iterations, claim)


@dataclass(frozen=True)
class CreatePVC:
    pass


@dataclass(frozen=True)
class CreateService:
    name: str
    iteration: int


@dataclass(frozen=True)
class CreateJob:
    name: str
    phase: str
    iteration: int
    attempt: int = 0


@dataclass(frozen=True)
class DeleteJob:
    """Only for a user suspend of a Kueue-managed Job (background propagation)."""

    name: str


@dataclass(frozen=True)
class SuspendJob:
    name: str
    suspend: bool


@dataclass(frozen=True)
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass(frozen=True)
class JobOutcome:
    """For metrics: outcome is retry | failed | succeeded | preempted."""

    phase: str
    outcome: str
    reason: str


Action = CreatePVC | CreateService | CreateJob | DeleteJob | SuspendJob | Event | JobOutcome


@dataclass
class Plan:
    status: TPORunStatus
    actions: list[Action] = field(default_factory=list)

    def of(self, kind: type) -> list[Any]:
        return [a for a in self.actions if isinstance(a, kind)]


# --------------------------------------------------------------------------- steps


def steps(iterations: int) -> list[Step]:
    out: list[Step] = [("prepare", 0), ("evaluate", 0)]
    for t in range(1, iterations + 1):
        out += [("generate", t), ("judge", t), ("train", t), ("evaluate", t)]
    return out


def step_index(status: TPORunStatus, iterations: int) -> int:
    """Position of the step in flight; -1 before the run starts, len(steps) when done."""
    if status.phase == RunPhase.succeeded.value:
        return len(steps(iterations))
    if status.step is None:
        return -1
    try:
        return steps(iterations).index((status.step, status.iteration))
    except ValueError:
        return -1


def job_name(run: str, step: Step, attempt: int = 0) -> str:
    from tpo_operator.jobs import job_name as name

    return name(run, step[0], step[1], attempt)


def attempts_of(jobs: dict[str, ObservedJob], step: Step) -> list[ObservedJob]:
    """The step's Jobs, oldest attempt first; the last one is the step's current Job."""
    mine = [j for j in jobs.values() if (j.phase, j.iteration) == step]
    return sorted(mine, key=lambda j: j.attempt)


# --------------------------------------------------------------------------- spec changes


def spec_diff(old: Any, new: Any, path: str = "spec") -> list[str]:
    """Dotted paths of the leaves that differ."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for k in sorted(set(old) | set(new)):
            out += spec_diff(old.get(k), new.get(k), f"{path}.{k}")
        return out
    return [] if old == new else [path]


def accept_spec(snapshot: dict[str, Any], live: TPORunSpec) -> tuple[dict[str, Any], list[str]]:
    """The snapshot with the live spec's mutable fields, and the refused fields' paths."""
    wire = live.dump()
    merged = {**snapshot, **{k: wire[k] for k in MUTABLE_FIELDS if k in wire}}
    for k in MUTABLE_FIELDS:
        if k not in wire:
            merged.pop(k, None)
    refused = [p for p in spec_diff(snapshot, wire) if p.split(".")[1] not in MUTABLE_FIELDS]
    return merged, refused


# --------------------------------------------------------------------------- the planner


class _Ctx:
    """Mutable scratch state of one planning pass (status copy + actions)."""

    def __init__(self, status: TPORunStatus, now: str, generation: int | None):
        self.status = status.model_copy(deep=True)
        self.actions: list[Action] = []
        self.now = now
        self.generation = generation
        self.peer: Peer | None = None

    def cond(self, type_: str, value: bool, reason: str, message: str = "") -> None:
        self.status = set_condition(
            self.status, type_, value, reason, message, self.now, self.generation
        )

    def lifecycle(self, state: str, reason: str, message: str = "") -> None:
        """Every lifecycle condition for the run entering `state` (tpo.status.set_lifecycle)."""
        self.status = set_lifecycle(self.status, state, reason, message, self.now, self.generation)

    def event(self, type_: str, reason: str, message: str) -> None:
        self.actions.append(Event(type_, reason, message))

    def job_created(self, name: str, step: Step) -> None:
        """Name the new Job in the event of what made it due (the run started, a step
        succeeded) when this pass posted one: one Event per phase transition, not two.
        Events are API writes (benchmarks/control_plane.py); the timeline reads the same."""
        created = f"created {name} ({step[0]} of iteration {step[1]})"
        last = next((a for a in reversed(self.actions) if isinstance(a, Event)), None)
        if last is not None and last.type == "Normal" and last.reason in FOLDS_JOB_CREATED:
            i = len(self.actions) - 1 - self.actions[::-1].index(last)
            self.actions[i] = Event(last.type, last.reason, f"{last.message}; {created}")
        else:
            self.event("Normal", "JobCreated", created)

    def fail(self, reason: str, message: str, phase: str | None = None) -> None:
        st = self.status
        st.phase = RunPhase.failed
        st.message = message
        st.finished_at = st.finished_at or self.now
        self.lifecycle("Failed", reason, message)
        self.event("Warning", reason, message)
        if phase:
            self.actions.append(JobOutcome(phase, "failed", reason))


def plan(
    spec: TPORunSpec | SpecError,
    status: TPORunStatus,
    jobs: list[ObservedJob],
    now: str,
    run: str,
    generation: int | None = None,
    peer: Peer | None = None,
) -> Plan:
    """What to do next for run `run`, given its (possibly invalid) live spec and what exists.

    `peer` is the run named by `evaluation.compareWith`, as last seen: evaluating iteration t
    waits until that run has its M(t) (or has ended, or has fewer iterations, so never will).
    """
    ctx = _Ctx(status, now, generation)
    ctx.peer = peer
    if ctx.status.phase in TERMINAL:
        return Plan(ctx.status, [])
    effective = _effective_spec(ctx, spec)
    if effective is None:
        return Plan(ctx.status, ctx.actions)
    ctx.status.observed_generation = generation
    _count_retries(ctx, jobs)
    if ctx.status.step is None:
        _start(ctx, effective)
    _advance(ctx, effective, {j.name: j for j in jobs}, run)
    return Plan(ctx.status, ctx.actions)


def _effective_spec(ctx: _Ctx, spec: TPORunSpec | SpecError) -> TPORunSpec | None:
    """The spec the run executes: the first accepted one plus later mutable-field changes."""
    snap = ctx.status.spec_snapshot
    if isinstance(spec, SpecError):
        message = "invalid spec: " + "; ".join(spec.problems)
        if snap is None:
            ctx.fail("InvalidSpec", message)
            return None
        _event_once(ctx, "InvalidSpec", message)
        ctx.cond("SpecAccepted", False, "InvalidSpec", message + " (running on the accepted spec)")
        return parse_spec(snap)
    if snap is None:
        ctx.status.spec_snapshot = spec.dump()
        ctx.cond("SpecAccepted", True, "Accepted", "")
        return spec
    merged, refused = accept_spec(snap, spec)
    ctx.status.spec_snapshot = merged
    if refused:
        message = (
            f"change(s) to {', '.join(refused)} refused: they would corrupt the run in flight; "
            "it continues on the accepted spec (create a new TPORun to change them)"
        )
        _event_once(ctx, "SpecChangeRefused", message)
        ctx.cond("SpecAccepted", False, "SpecChangeRefused", message)
    else:
        ctx.cond("SpecAccepted", True, "Accepted", "")
    return parse_spec(merged)


def _event_once(ctx: _Ctx, reason: str, message: str) -> None:
    """An event only when the SpecAccepted condition's message changes (not every reconcile)."""
    old = next((c for c in ctx.status.conditions if c.type == "SpecAccepted"), None)
    if old is None or old.reason != reason or not old.message.startswith(message[:60]):
        ctx.event("Warning", reason, message)


def _count_retries(ctx: _Ctx, jobs: list[ObservedJob]) -> None:
    """Pod failures (retries) and preemptions per phase; monotone, an event per increase.

    A failure is a pod that failed by itself (`ObservedJob.failed`, from the pods): one crashed
    rank of a multi-node train is one failure, though the Job controller counts the peers it
    stopped too. Monotone, so pods garbage-collected later take nothing back.
    """
    for phase in {j.phase for j in jobs}:
        of_phase = [j for j in jobs if j.phase == phase]
        for key, count, outcome in (
            (phase, sum(j.failed for j in of_phase), "retry"),
            (f"{phase}:preempted", sum(j.preempted for j in of_phase), "preempted"),
        ):
            old = ctx.status.retries.get(key, 0)
            if count > old:
                ctx.status.retries[key] = count
                what = "pod failure(s), retrying" if outcome == "retry" else "pod(s) preempted"
                reason = "PodFailed" if outcome == "retry" else "Preempted"
                ctx.event(
                    "Warning" if outcome == "retry" else "Normal",
                    reason,
                    f"{phase}: {count - old} {what}",
                )
                ctx.actions.append(JobOutcome(phase, outcome, reason))


def _start(ctx: _Ctx, spec: TPORunSpec) -> None:
    st = ctx.status
    st.started_at = st.started_at or ctx.now
    st.step, st.iteration = "prepare", 0
    st.phase = RunPhase.preparing
    st.message = "prepare of iteration 0"
    ctx.lifecycle("Running", st.phase.value, st.message)
    if spec.storage.claim_name is None:
        ctx.actions.append(CreatePVC())
    ctx.event("Normal", "Started", f"{spec.iterations} iteration(s)")


def _advance(ctx: _Ctx, spec: TPORunSpec, jobs: dict[str, ObservedJob], run: str) -> None:
    """Walk forward over finished steps, then make sure the step in flight has its Job."""
    order = steps(spec.iterations)
    idx = step_index(ctx.status, spec.iterations)
    while 0 <= idx < len(order):
        step = order[idx]
        attempts = attempts_of(jobs, step)
        job = attempts[-1] if attempts else None
        if job is None:
            _create(ctx, spec, jobs, run, step)
            return
        if job.failed_reason is not None:
            if job.damaged is not None and _redo_upstream(ctx, spec, jobs, run, step, job):
                return
            if not _restart_group(ctx, spec, jobs, attempts, run, step):
                _fail_step(ctx, spec, job, attempts, step)
            return
        if not job.complete:
            _live(ctx, spec, job, step)
            return
        pending = ctx.status.retries.get(f"{step[0]}:{step[1]}:redo-pending", 0) - 1
        if pending > job.attempt:  # a later step found this output damaged: redo it first
            _create(ctx, spec, jobs, run, step, pending)
            return
        _record(ctx, job, step)
        idx += 1
        if idx == len(order):
            _succeed(ctx, spec)
            return
        ctx.status.step, ctx.status.iteration = order[idx]
        ctx.status.phase = PHASE_OF_STEP[order[idx][0]]


def _redo_upstream(
    ctx: _Ctx,
    spec: TPORunSpec,
    jobs: dict[str, ObservedJob],
    run: str,
    step: Step,
    job: ObservedJob,
) -> bool:
    """The step's Job found an earlier step's output damaged after that step had succeeded (a
    truncated samples file, a flipped byte in the weights): redo the earlier step as a new
    attempt, then this one. False (the step fails) once MAX_UPSTREAM_REDOS are spent.

    The failed attempt stays (its logs say what was damaged). Steps between the two are not
    redone (evaluate(t), between train(t) and generate(t+1), keeps what it measured on the
    M(t) it read). Status `retries` keeps the count (`<phase>:<t>:upstream-redos`) and which
    attempt was answered, so the pass that sees the earlier step done again creates this
    step's next attempt instead of redoing.
    """
    up = job.damaged
    order = steps(spec.iterations)
    if up not in order or order.index(up) >= order.index(step):
        return False
    busy = sorted(j.name for j in jobs.values() if not j.finished)
    if busy:  # a Job of the run still runs (a restarted operator's leftovers): wait for it
        if spec.suspend:
            _set_suspended(ctx, step, f"suspended before redoing {up[0]} of iteration {up[1]}")
        else:
            _set_running(ctx, step)
            ctx.status.message = f"waiting for {', '.join(busy)} to finish"
        return True
    key = f"{step[0]}:{step[1]}:upstream-redos"
    answered = f"{step[0]}:{step[1]}:upstream-answered"  # this step's attempt + 1 (0: unset)
    redo = f"{step[0]}:{step[1]}:upstream-redo-attempt"  # the earlier step's redo attempt + 1
    earlier = attempts_of(jobs, up)
    if ctx.status.retries.get(answered) == job.attempt + 1:
        want = ctx.status.retries.get(redo, 1) - 1
        if earlier and earlier[-1].attempt >= want:  # redone: now this step, anew
            _create(ctx, spec, jobs, run, step, job.attempt + 1)
        else:  # the redo's Job never landed (a lost write): create it again
            _back_to(ctx, up)
            _create(ctx, spec, jobs, run, up, want)
        return True
    count = ctx.status.retries.get(key, 0)
    if count >= MAX_UPSTREAM_REDOS:
        return False
    nxt = earlier[-1].attempt + 1 if earlier else 0
    ctx.status.retries[key] = count + 1
    ctx.status.retries[answered] = job.attempt + 1
    ctx.status.retries[redo] = nxt + 1
    # the earlier step's own record of the redo, so a pass that starts there (e.g. while the
    # run is suspended and the redo's Job is not made yet) redoes it, not walks over it again
    ctx.status.retries[f"{up[0]}:{up[1]}:redo-pending"] = nxt + 1
    ctx.event(
        "Warning",
        "UpstreamDamaged",
        f"{job.name}: the output of {up[0]} (iteration {up[1]}) is damaged; redoing {up[0]} as "
        f"{job_name(run, up, nxt)}, then {step[0]} ({count + 1} of {MAX_UPSTREAM_REDOS} redos)",
    )
    _back_to(ctx, up)
    _create(ctx, spec, jobs, run, up, nxt)
    return True


def _back_to(ctx: _Ctx, step: Step) -> None:
    ctx.status.step, ctx.status.iteration = step
    ctx.status.phase = PHASE_OF_STEP[step[0]]


def _group_failures(attempts: list[ObservedJob]) -> int:
    """Failed attempts that count against the budget (a preempted pod's group is free)."""
    return sum(1 for j in attempts if j.failed_reason is not None and not j.preempted)


def _restart_group(
    ctx: _Ctx,
    spec: TPORunSpec,
    jobs: dict[str, ObservedJob],
    attempts: list[ObservedJob],
    run: str,
    step: Step,
) -> bool:
    """All-or-nothing multi-node train: a failed group becomes a new attempt, if any is left.

    Budget: `pools.train.backoffLimit` group restarts caused by failures; restarts caused by a
    preemption (DisruptionTarget) are not counted, as for single-pod Jobs. Metrics already
    counted the failed or preempted pod (`_count_retries`); the restart is an event.
    """
    from tpo_operator.jobs import multinode

    job = attempts[-1]
    if not multinode(spec, step[0]) or job.bad_input or job.failed_reason in NOT_RESTARTED:
        return False
    failures = _group_failures(attempts)
    if failures > spec.pools.train.backoff_limit:
        return False
    nxt = job.attempt + 1
    if job.preempted:
        key = "train:group-preempted"
        count = sum(1 for j in attempts if j.failed_reason is not None and j.preempted)
    else:
        key, count = "train:group-restarts", failures
    if ctx.status.retries.get(key, 0) < count:
        ctx.status.retries[key] = count
        cause = "lost a preempted pod" if job.preempted else f"failed ({job.failed_reason})"
        ctx.event(
            "Warning",
            "GroupRestart",
            f"{job.name} {cause}: restarting all {spec.training.nodes} nodes as "
            f"{job_name(run, step, nxt)} ({failures} of {spec.pools.train.backoff_limit} "
            "restarts after failures used)",
        )
    _create(ctx, spec, jobs, run, step, nxt)
    return True


def _fail_step(
    ctx: _Ctx, spec: TPORunSpec, job: ObservedJob, attempts: list[ObservedJob], step: Step
) -> None:
    msg = f"{step[0]} of iteration {step[1]} failed ({job.failed_reason})"
    reason = job.failed_reason or "Failed"
    if job.damaged is not None:
        reason = "UpstreamDamaged"
        msg = (
            f"{step[0]} of iteration {step[1]}: the output of {job.damaged[0]} (iteration "
            f"{job.damaged[1]}) is still damaged after {MAX_UPSTREAM_REDOS} redos"
        )
    elif len(attempts) > 1:
        msg += f" after {len(attempts) - 1} group restart(s)"
    ctx.fail(reason, _failure_detail(msg, job), step[0])


def _failure_detail(msg: str, job: ObservedJob) -> str:
    """`msg` with the worker's own words (its termination message: which file, line or field
    was wrong), the Job controller's message shortened beside them.

    The real Job controller always writes its own message into the Failed condition
    (`Container worker for pod ... failed with exit code 3 matching FailJob rule at index 1`,
    `Job has reached the specified backoff limit`): alone, it hides what the worker said.
    """
    worker = job.pod_message.strip()[-500:]
    controller = job.failed_message.strip()
    if len(controller) > CONTROLLER_MESSAGE_MAX:
        controller = controller[: CONTROLLER_MESSAGE_MAX - 3] + "..."
    if worker and controller:
        return f"{msg}: {worker} (Job: {controller})"
    detail = worker or controller
    return f"{msg}: {detail}" if detail else msg


def _record(ctx: _Ctx, job: ObservedJob, step: Step) -> None:
    summaries = [s for s in job.summaries if s.get("phase") == step[0]]
    ctx.actions.append(JobOutcome(step[0], "succeeded", "Complete"))
    if not summaries:
        ctx.event(
            "Warning",
            "SummaryMissing",
            f"{job.name} completed without a phase summary in its termination message",
        )
        return
    before = {(t, w.message) for t, w in warnings_of(ctx.status)}
    try:
        ctx.status = apply_summary(ctx.status, merge_shards(summaries))
    except (ValueError, TypeError) as e:
        ctx.event("Warning", "SummaryInvalid", f"{job.name}: {e}")
        return
    _quality(ctx, before)
    ctx.event("Normal", "PhaseSucceeded", f"{step[0]} of iteration {step[1]} done")


def _quality(ctx: _Ctx, before: set[tuple[int, str]]) -> None:
    """A Warning Event for each guard warning the status did not hold before this record
    (a step redone after upstream damage that warns the same says nothing new), and the
    QualityWarning condition (tpo.status.set_quality). Posted before PhaseSucceeded, which
    stays the pass's last Event so the next Job's creation folds into it."""
    for t, w in warnings_of(ctx.status):
        if (t, w.message) not in before:
            ctx.event("Warning", QUALITY_WARNING, warning_line(t, w))
            before.add((t, w.message))
    ctx.status = set_quality(ctx.status, ctx.now, ctx.generation)


def _succeed(ctx: _Ctx, spec: TPORunSpec) -> None:
    st = ctx.status
    st.phase = RunPhase.succeeded
    st.step = None
    st.finished_at = st.finished_at or ctx.now
    st.message = f"{spec.iterations} iteration(s) done"
    if st.win_rate is not None:
        st.message += f", win rate {st.win_rate:.3f}"
        last = max((h for h in st.history if h.win_rate is not None), key=lambda h: h.iteration)
        if last.n is not None:  # what the rate is over, and what it left out
            st.message += f" over {last.n} rated prompt(s)"
            st.message += (
                f" ({last.both_failed} with neither side parsed)" if last.both_failed else ""
            )
    ctx.lifecycle("Succeeded", "AllIterationsDone", st.message)
    ctx.event("Normal", "Succeeded", st.message)


def _create(
    ctx: _Ctx,
    spec: TPORunSpec,
    jobs: dict[str, ObservedJob],
    run: str,
    step: Step,
    attempt: int = 0,
) -> None:
    """Create the step's Job, unless suspended or another Job of the run is still live."""
    from tpo_operator.jobs import multinode

    if spec.suspend:
        _set_suspended(ctx, step, f"suspended before {step[0]} of iteration {step[1]}")
        return
    _set_running(ctx, step)
    busy = sorted(j.name for j in jobs.values() if not j.finished)
    if busy:
        ctx.status.message = f"waiting for {', '.join(busy)} to finish"
        return
    wait = _compare_wait(ctx, spec, step)
    if wait:
        ctx.status.message = wait
        return
    name = job_name(run, step, attempt)
    if multinode(spec, step[0]):
        ctx.actions.append(CreateService(job_name(run, step), step[1]))
    ctx.actions.append(CreateJob(name, step[0], step[1], attempt))
    ctx.job_created(name, step)
    queue = getattr(spec.pools, step[0]).queue_name
    if queue:  # created suspended: the status _live gives it once observed (its echo is skipped)
        ctx.status.message = _kueue_wait(name, queue)


def _compare_wait(ctx: _Ctx, spec: TPORunSpec, step: Step) -> str | None:
    """Why evaluate(t) must wait for the compareWith run, or None to go ahead.

    It goes ahead once that run has M(t); also when it never will (it ended, or has fewer
    iterations): the phase then records a note instead of the comparison.
    """
    other = spec.evaluation.compare_with
    phase, t = step
    if phase != "evaluate" or t == 0 or not other:
        return None
    peer = ctx.peer
    if peer is None or peer.name != other or not peer.exists:
        return f"evaluate of iteration {t} waits for TPORun {other} (evaluation.compareWith)"
    if t in peer.models:
        return None
    if peer.terminal or (peer.iterations is not None and t > peer.iterations):
        ctx.event(
            "Warning",
            "CompareSkipped",
            f"TPORun {other} has no model of iteration {t} and will train none: "
            "evaluating without the comparison",
        )
        return None
    return f"evaluate of iteration {t} waits for TPORun {other} to train iteration {t}"


def _live(ctx: _Ctx, spec: TPORunSpec, job: ObservedJob, step: Step) -> None:
    if spec.suspend:
        if job.queue:
            # Kueue unsuspends an admitted Job that someone else suspends; deleting it releases
            # its quota for real. Finished shards and checkpoints stay on the volume.
            ctx.actions.append(DeleteJob(job.name))
        elif not job.suspend:
            ctx.actions.append(SuspendJob(job.name, True))
        _set_suspended(ctx, step, f"{job.name} suspended")
        return
    if job.suspend and job.user_suspended and not job.queue:
        ctx.actions.append(SuspendJob(job.name, False))
    _set_running(ctx, step)
    if job.suspend and job.queue:
        ctx.status.message = _kueue_wait(job.name, job.queue)


def _kueue_wait(job: str, queue: str) -> str:
    return f"{job} waits for admission by Kueue (queue {queue})"


def _set_suspended(ctx: _Ctx, step: Step, message: str) -> None:
    st = ctx.status
    if st.phase != RunPhase.suspended.value:
        ctx.event("Normal", "Suspended", message)
    st.phase = RunPhase.suspended
    st.message = message
    ctx.lifecycle("Suspended", "SpecSuspend", message)


def _set_running(ctx: _Ctx, step: Step) -> None:
    st = ctx.status
    phase = PHASE_OF_STEP[step[0]]
    if st.phase == RunPhase.suspended.value:
        ctx.event("Normal", "Resumed", f"{step[0]} of iteration {step[1]}")
    st.phase = phase
    st.message = f"{step[0]} of iteration {step[1]}"
    ctx.lifecycle("Running", phase.value, st.message)


# --------------------------------------------------------------------------- refused writes

PERMISSION_DENIED = "PermissionDenied"  # condition type: the last pass had a write refused (403)
_RBAC_DENIAL = re.compile(r'cannot (\S+) resource "([^"]+)" in API group "([^"]*)"')
_OWNER_REF_DENIAL = "cannot set blockOwnerDeletion"


@dataclass(frozen=True)
class Denied:
    """A write of the plan that the API server refused with 403 Forbidden (RBAC, or an admission
    plugin such as OwnerReferencesPermissionEnforcement), as the shell met it."""

    verb: str  # create | patch | delete
    resource: str  # plural, group-qualified outside the core group: "jobs.batch"
    namespace: str
    message: str  # the API server's Status message, verbatim


def missing_permission(denial: Denied) -> str:
    """The permission the refusal names, in Role terms (`<verb> <resource>` (group)).

    The RBAC authorizer names it (`cannot create resource "x" in API group "g"`). The
    ownerReference admission plugin does not: it refuses an owner reference with
    blockOwnerDeletion when the creator may not `update` the owner's `finalizers`; the owner of
    every object this operator creates is its TPORun. Otherwise the refused request itself.
    """
    from tpo.spec import API_GROUP, PLURAL

    rbac = _RBAC_DENIAL.search(denial.message)
    if rbac:
        verb, resource, group = rbac.groups()
        return f"{verb} {resource} (apiGroup {group or 'core'})"
    if _OWNER_REF_DENIAL in denial.message:
        return f"update {PLURAL}/finalizers (apiGroup {API_GROUP})"
    return f"{denial.verb} {denial.resource}"


def denied(status: TPORunStatus, denial: Denied, now: str, generation: int | None = None) -> Plan:
    """The run after a pass whose write was refused: the status it had (the pass is redone in
    full, on the next trigger or timer tick, as after any failed write, so nothing planned on
    top of the refused write is recorded) plus a PermissionDenied condition naming the verb,
    the resource and the missing permission, and a Forbidden Event only when that message is
    new: a refusal repeated every retry is one Event, a different one (RBAC partly fixed) is
    another.
    """
    message = (
        f"cannot {denial.verb} {denial.resource} in namespace {denial.namespace}: missing "
        f"permission {missing_permission(denial)}; the API server said: {denial.message}"
    )
    ctx = _Ctx(status, now, generation)
    old = next((c for c in ctx.status.conditions if c.type == PERMISSION_DENIED), None)
    if old is None or old.status != "True" or old.message != message:
        ctx.event("Warning", "Forbidden", message)
    st = ctx.status
    st.phase = st.phase or RunPhase.pending
    st.message = message
    ctx.cond(PERMISSION_DENIED, True, "Forbidden", message)
    ctx.cond("Progressing", False, "Forbidden", message)
    return Plan(ctx.status, ctx.actions)


def permitted(status: TPORunStatus, now: str, generation: int | None = None) -> TPORunStatus:
    """The status after a pass whose writes all went through: a PermissionDenied condition, if
    any, turns False (the admin granted the permission; the run proceeds)."""
    old = next((c for c in status.conditions if c.type == PERMISSION_DENIED), None)
    if old is None or old.status != "True":
        return status
    return set_condition(status, PERMISSION_DENIED, False, "Permitted", "", now, generation)


# --------------------------------------------------------------------------- observation


def _labels(obj: dict[str, Any]) -> dict[str, str]:
    return (obj.get("metadata") or {}).get("labels") or {}


def _step_of(obj: dict[str, Any], run: str) -> Step | None:
    from tpo_operator.jobs import LABEL_ITERATION, LABEL_PHASE, LABEL_RUN

    lab = _labels(obj)
    if lab.get(LABEL_RUN) != run or lab.get(LABEL_PHASE) not in PHASE_OF_STEP:
        return None
    try:
        return lab[LABEL_PHASE], int(lab.get(LABEL_ITERATION, ""))
    except ValueError:
        return None


def _terminated(pod: dict[str, Any]) -> list[dict[str, Any]]:
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    return [s["state"]["terminated"] for s in statuses if (s.get("state") or {}).get("terminated")]


def _last_object(message: str, key: str) -> dict[str, Any] | None:
    """The last line of a termination message that is a JSON object holding `key`."""
    for line in reversed((message or "").strip().splitlines()):
        try:
            data = json.loads(line)
        except ValueError:
            continue
        if isinstance(data, dict) and key in data:
            return data
    return None


def parse_summary(message: str) -> dict[str, Any] | None:
    """A phase summary from a termination message."""
    return _last_object(message, "phase")


def _damaged_step(message: str) -> tuple[str, int] | None:
    """The earlier step a pod found damaged (`tpo.errors.UpstreamDamaged.record`), if any."""
    up = (_last_object(message, "upstream_damaged") or {}).get("upstream_damaged")
    if not isinstance(up, dict) or not isinstance(up.get("phase"), str):
        return None
    try:
        return up["phase"], int(up.get("iteration", -1))
    except (TypeError, ValueError):
        return None


def _disrupted(pod: dict[str, Any]) -> bool:
    conds = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "DisruptionTarget" and c.get("status") == "True" for c in conds)


def _own_failure(pod: dict[str, Any]) -> dict[str, Any] | None:
    """The terminated state of the container that failed this pod by itself, else None.

    Not a failure of its own: a disrupted pod (DisruptionTarget: preemption, eviction, taint,
    node shutdown), or a pod someone deleted (`deletionTimestamp`), which is how the Job
    controller stops the peers of a pod that matched a FailJob rule (they end exit 143 and are
    counted in the Job's status.failed, though nothing went wrong in them).
    """
    if (pod.get("status") or {}).get("phase") != "Failed" or _disrupted(pod):
        return None
    if (pod.get("metadata") or {}).get("deletionTimestamp"):
        return None
    failed = [t for t in _terminated(pod) if t.get("exitCode")]
    return failed[-1] if failed else None


def _pod_facts(
    pods: list[dict[str, Any]], culprit: str | None = None
) -> tuple[tuple[dict[str, Any], ...], int, int, str, bool, tuple[str, int] | None]:
    """(summaries of succeeded pods, one per shard; preempted pods; pods failed by themselves;
    the worker's message of the failure (the pod `culprit`, which the Job's condition names,
    else the last to fail); whether one exited EXIT_BAD_INPUT; the earlier step one found
    damaged)."""
    by_shard: dict[int, dict[str, Any]] = {}
    preempted, bad = 0, False
    damaged: tuple[str, int] | None = None
    failures: list[tuple[bool, str, str, str, dict[str, Any]]] = []
    for pod in sorted(pods, key=lambda p: (p.get("metadata") or {}).get("name", "")):
        st = pod.get("status") or {}
        name = (pod.get("metadata") or {}).get("name", "")
        if st.get("phase") == "Succeeded":
            for term in _terminated(pod):
                summary = parse_summary(term.get("message", ""))
                if summary is not None:
                    by_shard[int(summary.get("shard", 0) or 0)] = summary
            continue
        if st.get("phase") == "Failed" and _disrupted(pod):
            preempted += 1
        term = _own_failure(pod)
        if term is None:
            continue
        created = str((pod.get("metadata") or {}).get("creationTimestamp") or "")
        failures.append((name == culprit, str(term.get("finishedAt") or ""), created, name, term))
        bad = bad or term.get("exitCode") == EXIT_BAD_INPUT
        if term.get("exitCode") == EXIT_UPSTREAM_DAMAGED:
            damaged = _damaged_step(term.get("message", "")) or damaged
    message = ""
    if failures:
        term = max(failures, key=lambda f: f[:4])[4]  # the culprit, else the last to fail
        message = term.get("message") or term.get("reason") or ""
    shards = tuple(by_shard[k] for k in sorted(by_shard))
    return shards, preempted, len(failures), message, bad, damaged


def _attempt_of(obj: dict[str, Any]) -> int:
    from tpo_operator.jobs import LABEL_ATTEMPT

    try:
        return int(_labels(obj).get(LABEL_ATTEMPT, "0"))
    except ValueError:
        return -1


def job_state(body: dict[str, Any]) -> tuple[Any, ...]:
    """What the planner can learn from a Job body, as a comparable value: its uid, labels,
    suspend flags, deletion mark and whole status.

    The shell skips a Job event whose state it already reconciled (the echo of its own create,
    a reconnecting watch's replays): each would otherwise cost a full reconcile. Pods raise no
    events of their own; what they add (termination messages, preemptions, failures) reaches
    the Job's status, which changes this value.
    """
    meta = body.get("metadata") or {}
    return (
        meta.get("uid"),  # a Job re-created under the same name is another Job
        json.dumps(_labels(body), sort_keys=True),
        bool(meta.get("deletionTimestamp")),
        (meta.get("annotations") or {}).get(USER_SUSPENDED),
        bool((body.get("spec") or {}).get("suspend")),
        json.dumps(body.get("status") or {}, sort_keys=True),
    )


def observe(
    job_bodies: list[dict[str, Any]], pod_bodies: list[dict[str, Any]], run: str
) -> list[ObservedJob]:
    """The planner's view of a run's Jobs, from raw API objects (filters by label itself)."""
    from tpo_operator.jobs import KUEUE_QUEUE
    from tpo_operator.jobs import job_name as name_of

    pods: dict[tuple[Step, int], list[dict[str, Any]]] = {}
    for pod in pod_bodies:
        step = _step_of(pod, run)
        if step is not None:
            pods.setdefault((step, _attempt_of(pod)), []).append(pod)
    out = []
    for job in job_bodies:
        step = _step_of(job, run)
        meta = job.get("metadata") or {}
        attempt = _attempt_of(job)
        if step is None or attempt < 0 or meta.get("name") != name_of(run, *step, attempt):
            continue
        if meta.get("deletionTimestamp"):
            continue  # going away (a Kueue Job the user suspended): as if already gone
        st = job.get("status") or {}
        conds = {c.get("type"): c for c in st.get("conditions") or [] if c.get("status") == "True"}
        failed = conds.get("Failed")
        named = FAILJOB_POD.search((failed or {}).get("message") or "")
        facts = _pod_facts(pods.get((step, attempt), []), named["name"] if named else None)
        summaries, preempted, failures, message, bad, damaged = facts
        out.append(
            ObservedJob(
                name=meta["name"],
                phase=step[0],
                iteration=step[1],
                active=int(st.get("active") or 0),
                succeeded=int(st.get("succeeded") or 0),
                failed=failures,
                complete="Complete" in conds,
                failed_reason=(failed.get("reason") or "Failed") if failed else None,
                failed_message=(failed or {}).get("message") or "",
                suspend=bool((job.get("spec") or {}).get("suspend")),
                user_suspended=(meta.get("annotations") or {}).get(USER_SUSPENDED) == "true",
                preempted=preempted,
                summaries=summaries,
                pod_message=message,
                attempt=attempt,
                queue=_labels(job).get(KUEUE_QUEUE) or None,
                bad_input=bad,
                damaged=damaged,
            )
        )
    return sorted(out, key=lambda j: j.name)
