"""`tpo run FILE.yaml`: a whole TPORun on this machine, no cluster.

It takes the same manifest a user would `kubectl apply`, and runs the same `tpo phase` entrypoint
as the operator's Jobs, as subprocesses, in the same order. The run's status lives in
`<run dir>/status.json` (the operator's status model), updated after every phase. Re-running
continues where an interrupted run stopped: finished phases are skipped by their DONE markers.

Ctrl-C (SIGINT) or SIGTERM stops the phase in flight cleanly: each phase runs in its own process
group (so a terminal's Ctrl-C reaches only the runner), the runner sends SIGTERM to that whole
group (the phase and its vLLM engine process), waits, sends SIGKILL after a grace period, records
the run as Interrupted and exits 128 + the signal's number (130, 143), without a traceback.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from tpo import artifacts as A
from tpo.artifacts import RunDir
from tpo.errors import EXIT_BAD_INPUT, EXIT_UPSTREAM_DAMAGED, MAX_UPSTREAM_REDOS, BadInput
from tpo.progress import Snapshot, finished_progress, parse_line, run_progress
from tpo.spec import (
    PHASE_OF_STEP,
    GuardWarning,
    RunPhase,
    SpecError,
    TPORunSpec,
    TPORunStatus,
    parse_manifest,
)
from tpo.status import apply_summary, merge_shards, set_lifecycle, set_quality, warning_line

# Seconds a phase's process group has to exit after SIGTERM before it is sent SIGKILL. vLLM's
# engine shuts down in well under this on SIGTERM; a trainer mid-save may need a few seconds.
GRACE_SECONDS = 15.0
RESUME_HINT = "run the same command again: finished phases are kept"

Step = tuple[str, int, int]  # (phase, iteration, shards)


def steps(spec: TPORunSpec) -> list[Step]:
    """The run's phases in order; iteration 0 evaluates the seed with vs without thoughts."""
    out: list[Step] = [("prepare", 0, 1), ("evaluate", 0, 1)]
    for t in range(1, spec.iterations + 1):
        out += [
            ("generate", t, spec.generation.shards),
            ("judge", t, spec.judge.shards),
            ("train", t, 1),
            ("evaluate", t, 1),
        ]
    return out


def read_yaml(path: Path) -> Any:
    """A manifest file's document; a missing file or bad YAML is bad input naming file:line."""
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BadInput(f"{path}: no such file") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        raise BadInput(f"{path}{where}: invalid YAML ({getattr(e, 'problem', e)})") from None


def load_manifest(path: Path) -> tuple[dict[str, Any], TPORunSpec]:
    meta, spec = parse_manifest(read_yaml(path))
    return meta, resolve_paths(spec, path.resolve().parent)


def resolve_paths(spec: TPORunSpec, base: Path) -> TPORunSpec:
    """Relative paths in a local manifest are relative to the manifest's directory."""
    data = spec.model_dump(by_alias=True)

    def fix(obj: dict[str, Any] | None, key: str) -> None:
        if obj and obj.get(key) and not os.path.isabs(obj[key]):
            obj[key] = str((base / obj[key]).resolve())

    fix(data["model"], "path")
    fix(data["dataset"], "path")
    judge = data["judge"]
    for block in ("rewardModel", "pairwise"):
        fix(judge.get(block), "path")
    fix(data["evaluation"].get("baselineModel"), "path")
    return TPORunSpec.model_validate(data)


def now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Interrupted(BaseException):
    """SIGINT or SIGTERM reached the runner. A BaseException (as KeyboardInterrupt is), so no
    `except Exception` on the way swallows it."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        """The shell's convention for a process ended by a signal: 128 + its number."""
        return 128 + self.signum


def _raise_interrupted(signum: int, _frame: Any) -> None:
    raise Interrupted(signum)


def _group_alive(pgid: int) -> bool:
    """Whether any process of the group is left (a zombie awaiting its reaper counts as gone:
    it holds no resources and runs nothing)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    proc = Path("/proc")
    if not proc.is_dir():
        return True
    for stat in proc.glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # the process ended while we looked
        if int(fields[2]) == pgid and fields[0] != "Z":  # fields: state, ppid, pgrp, ...
            return True
    return False


def stop_group(proc: subprocess.Popen, grace: float = GRACE_SECONDS) -> None:
    """End a phase subprocess and every process of its group (it leads the group): SIGTERM,
    wait up to `grace` seconds for all of them, then SIGKILL, and reap the leader. Signals that
    reach the runner meanwhile are ignored: the cleanup is already under way."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    pgid = proc.pid
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            proc.poll()  # reap the leader as soon as it exits
            if not _group_alive(pgid):
                break
            time.sleep(0.1)
        if not _group_alive(pgid):
            break
    proc.wait()


class Runner:
    def __init__(self, run: RunDir, spec: TPORunSpec, quiet: bool = False):
        self.run, self.spec, self.quiet = run, spec, quiet
        self.ran: set[tuple[str, int]] = set()  # steps this invocation ran (not skipped)
        self.status = (
            TPORunStatus.model_validate(A.read_json(run.status))
            if run.status.exists()
            else TPORunStatus()
        )

    def say(self, msg: str) -> None:
        if not self.quiet:
            print(msg, flush=True)

    def save(self) -> None:
        A.write_json(self.run.status, self.status.dump())

    def command(self, phase: str, t: int, shard: int, shards: int) -> list[str]:
        cmd = [sys.executable, "-m", "tpo.cli", "phase", phase]
        cmd += ["--run-dir", str(self.run.path), "--iteration", str(t)]
        if shards > 1:
            cmd += ["--shard", f"{shard}/{shards}"]
        tr = self.spec.training
        if phase == "train" and tr.nodes == 1 and tr.gpus_per_node > 1:
            cmd = [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--standalone",
                f"--nproc-per-node={tr.gpus_per_node}",
                "-m",
                "tpo.cli",
                *cmd[3:],
            ]
        return cmd

    def run_step(self, step: Step, index: int, total: int) -> int:
        phase, t, shards = step
        self.status.phase = PHASE_OF_STEP[phase]
        self.status.step, self.status.iteration = phase, t
        self.status.message = f"{phase} of iteration {t}"
        self.status.progress = run_progress(None, phase, t, now())
        self.status = set_lifecycle(
            self.status, "Running", self.status.phase.value, self.status.message, now()
        )
        self.save()
        summaries = []
        started = time.time()
        ran = 0
        for shard in range(shards):
            try:
                existing = A.read_done(
                    self.run.done(phase, t, shard if phase in ("generate", "judge") else None)
                )
            except A.ArtifactError as e:
                print(f"warning: {e}; running {phase} (iteration {t}) again", file=sys.stderr)
                existing = None  # the phase itself finds the damage, says so and redoes it
            if existing is not None:
                summaries.append(existing)
                continue
            rc = self._subprocess(phase, t, shard, shards)
            if rc != 0:
                return rc
            ran += 1
            done = self.run.done(phase, t, shard if phase in ("generate", "judge") else None)
            summaries.append(A.read_json(done))
        merged = merge_shards(summaries)
        self.status = set_quality(apply_summary(self.status, merged), now())
        for w in merged.get("warnings") or []:  # the phase's stderr went to its log file
            print(warning_line(t, GuardWarning.model_validate(w)), file=sys.stderr, flush=True)
        self.save()
        head = f"[{index:>2}/{total}] {phase:<8} iter {t}  "
        if ran:
            self.ran.add((phase, t))
            done_before = f"  ({shards - ran} of {shards} shards done in a previous run)"
            took = f"{time.time() - started:6.1f}s  {describe(merged)}"
            self.say(head + took + (done_before if ran < shards else ""))
        elif (phase, t) in self.ran:  # walked again after upstream damage: checked, still done
            self.say(head + "checked: still done")
        else:
            self.say(head + f"skipped (done in a previous run)  {describe(merged)}")
        return 0

    def _subprocess(self, phase: str, t: int, shard: int, shards: int) -> int:
        name = f"{phase}-{t}" + (f"-{shard}" if shards > 1 else "") + ".log"
        log = self.run.logs / name
        log.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")}
        env.pop("TPO_TERMINATION_LOG", None)
        with open(log, "w") as f:
            # Its own session, so its own process group: a terminal's Ctrl-C reaches the runner
            # only, which then stops the whole group (the phase, its vLLM engine) and waits.
            proc = None
            try:
                proc = subprocess.Popen(
                    self.command(phase, t, shard, shards),
                    stdout=f,
                    stderr=subprocess.STDOUT,
                    env=env,
                    start_new_session=True,
                )
                follow_progress(
                    proc, log, lambda snap: self.progressed(snap, phase, t, shard, shards)
                )
            except Interrupted:
                if proc is not None:
                    stop_group(proc)
                raise
        assert proc is not None
        if proc.returncode == EXIT_UPSTREAM_DAMAGED:
            lines = log.read_text(errors="replace").splitlines()
            last = next((x for x in reversed(lines) if x.strip()), "")
            print(f"warning: {last}; checking every finished phase again", file=sys.stderr)
            return proc.returncode
        if proc.returncode != 0:
            tail = log.read_text(errors="replace").splitlines()[-25:]
            reason = "BadInput" if proc.returncode == EXIT_BAD_INPUT else "PhaseCrashed"
            last = next((x for x in reversed(tail) if x.strip()), "")
            self.fail(reason, f"{phase} iteration {t} exited {proc.returncode}: {last}")
            # Bad input: the phase's last line names the field, file or rate; the engine's
            # shutdown chatter above it only buries that. A crash gets the tail to debug from.
            print(last if reason == "BadInput" else "\n".join(tail), file=sys.stderr)
            print(f"phase {phase} (iteration {t}) failed; full log: {log}", file=sys.stderr)
        return proc.returncode

    def progressed(self, snap: Snapshot, phase: str, t: int, shard: int, shards: int) -> None:
        """status.json follows the phase's progress lines, as the TPORun's status.progress
        follows its pods: a script watching the file sees done/total/ETA between phases."""
        self.status.progress = run_progress(snap, phase, t, now(), shard, shards)
        self.save()

    def fail(self, reason: str, message: str) -> None:
        self.status.phase = RunPhase.failed
        self.status.progress = None
        self.status.message = message
        self.status = set_lifecycle(self.status, "Failed", reason, message, now())
        self.status.finished_at = now()
        self.save()

    def interrupted(self, signum: int) -> None:
        """Record where the run was cut and how to go on; the phase's group is already gone."""
        step = self.status.step or "prepare"
        message = (
            f"{signal.Signals(signum).name} during {step} of iteration {self.status.iteration}; "
            f"{RESUME_HINT}"
        )
        self.status.phase = RunPhase.interrupted
        self.status.message = message
        self.status = set_lifecycle(self.status, "Interrupted", "Interrupted", message, now())
        self.save()

    def execute(self) -> int:
        """Run every step not yet done; 128 + signal number when SIGINT / SIGTERM stopped it."""
        previous = (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM))
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, _raise_interrupted)
        try:
            return self._execute()
        except Interrupted as e:
            for sig in (signal.SIGINT, signal.SIGTERM):  # a second Ctrl-C: recording already
                signal.signal(sig, signal.SIG_IGN)
            self.interrupted(e.signum)
            print(f"\ninterrupted: {self.status.message}", file=sys.stderr)
            return e.exit_code
        finally:
            signal.signal(signal.SIGINT, previous[0])
            signal.signal(signal.SIGTERM, previous[1])

    def _execute(self) -> int:
        plan = steps(self.spec)
        self.status.started_at = self.status.started_at or now()
        self.status.finished_at = None  # a run resumed after an interruption or a failure
        redos = 0
        i = 0
        while i < len(plan):
            rc = self.run_step(plan[i], i + 1, len(plan))
            if rc == EXIT_UPSTREAM_DAMAGED and redos < MAX_UPSTREAM_REDOS:
                # An earlier phase's output was damaged after it finished: walk the plan again;
                # run_step verifies every DONE marker and redoes the damaged phase.
                redos += 1
                i = 0
                continue
            if rc != 0:
                if rc == EXIT_UPSTREAM_DAMAGED:
                    self.fail(
                        "UpstreamDamaged",
                        f"{plan[i][0]} iteration {plan[i][1]}: an "
                        f"earlier phase's output is still damaged after {redos} redo(s)",
                    )
                return rc
            i += 1
        self.status.phase = RunPhase.succeeded
        self.status.step = None
        self.status.progress = finished_progress(plan[-1][0], plan[-1][1], now())
        self.status.message = f"{self.spec.iterations} iteration(s) done"
        self.status.finished_at = now()
        self.status = set_lifecycle(
            self.status, "Succeeded", "AllIterationsDone", self.status.message, now()
        )
        self.save()
        return 0


def follow_progress(
    proc: subprocess.Popen[bytes],
    log: Path,
    on_line: Callable[[Snapshot], None] | None = None,
    poll: float = 1.0,
) -> None:
    """Wait for the phase, echoing its progress lines (tpo.progress) from its log to stderr:
    the phase's output goes to a file, and a person watching `tpo run` would otherwise see
    nothing between a phase's start and its end."""
    with open(log, errors="replace") as r:
        pending = ""
        while True:
            try:
                proc.wait(timeout=poll)
                done = True
            except subprocess.TimeoutExpired:
                done = False
            pending += r.read()
            *lines, pending = pending.split("\n")
            for line in lines:
                snap = parse_line(line)
                if snap is not None:
                    print(f"        {line.strip()}", file=sys.stderr, flush=True)
                    if on_line is not None:
                        on_line(snap)
            if done:
                return


def describe(summary: dict[str, Any]) -> str:
    """The few numbers of a phase summary worth a glance in the progress line."""
    keys = {
        "prepare": ("prompts_per_iteration", "eval_prompts"),
        "generate": (
            "samples",
            "parse_failure_rate",
            "truncated_rate",
            "mean_thought_tokens",
            "tokens_per_second",
        ),
        "judge": (
            "pairs",
            "pair_yield",
            "judge_no_verdict_rate",
            "skipped_prompts",
            "judge_mean_score",
            "rho",
        ),
        "train": ("steps", "train_loss", "reward_margin", "reward_accuracy"),
        "evaluate": (
            "win_rate",
            "win_rate_low",
            "win_rate_high",
            "n",  # what the rate is over: wins + ties + losses
            "both_failed",  # neither side parsed: counted, not rated
            "lc_win_rate",  # length-controlled (docs/length-controlled-win-rate.md)
            "lc_win_rate_low",
            "lc_win_rate_high",
            "mean_thought_tokens",
        ),
    }[summary["phase"]]
    parts = []
    for k in keys:
        v = summary.get(k)
        if v is not None:
            parts.append(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}")
    return " ".join(parts)


def order_runs(
    runs: list[tuple[Path, dict[str, Any], TPORunSpec]],
) -> list[tuple[Path, dict[str, Any], TPORunSpec]]:
    """Runs named by another's evaluation.compareWith first: a run's evaluation of iteration t
    needs the other run's model of iteration t (the operator waits for it; here the other run
    simply finishes first). A cycle, or a name given twice, is bad input."""
    key = {(m.get("namespace") or "default", m["name"]): (p, m, s) for p, m, s in runs}
    if len(key) != len(runs):
        raise BadInput("tpo run: two manifests name the same namespace/name")
    out: list[tuple[Path, dict[str, Any], TPORunSpec]] = []
    state: dict[tuple[str, str], str] = {}

    def visit(k: tuple[str, str], chain: list[str]) -> None:
        if state.get(k) == "done":
            return
        if state.get(k) == "visiting":
            raise BadInput(
                f"evaluation.compareWith forms a cycle: {' -> '.join([*chain, k[1]])}; "
                "a run cannot wait for a run that waits for it"
            )
        state[k] = "visiting"
        other = key[k][2].evaluation.compare_with
        if other and (k[0], other) in key:
            visit((k[0], other), [*chain, k[1]])
        state[k] = "done"
        out.append(key[k])

    for k in key:
        visit(k, [])
    return out


def main(args: Any) -> int:
    paths = [args.manifest] if isinstance(args.manifest, str) else list(args.manifest)
    runs = []
    for item in paths:
        path = Path(item)
        try:
            meta, spec = load_manifest(path)
        except SpecError as e:
            print(f"error: {path}: invalid TPORun:", file=sys.stderr)
            for p in e.problems:
                print(f"  {p}", file=sys.stderr)
            return EXIT_BAD_INPUT
        runs.append((path, meta, spec))
    for _, meta, spec in order_runs(runs):
        rc = run_one(args, meta, spec)
        if rc != 0:
            return rc
    return 0


def run_one(args: Any, meta: dict[str, Any], spec: TPORunSpec) -> int:
    run = RunDir.of(args.out, meta.get("namespace") or "default", meta["name"])
    if spec.evaluation.compare_with == meta["name"]:
        raise BadInput(f"spec.evaluation.compareWith: {meta['name']!r} names this run itself")
    if run.spec.exists():
        from tpo.phases import spec_diff
        from tpo.spec import parse_spec

        diff = spec_diff(parse_spec(A.read_json(run.spec)), spec)
        if diff:
            raise BadInput(
                f"{run.path} was started with a different spec ({', '.join(diff)}); "
                f"use another --out or metadata.name, or delete the run directory"
            )
    else:
        A.write_json(run.spec, spec.dump())
    runner = Runner(run, spec, quiet=args.quiet)
    runner.say(f"TPORun {meta['name']}: {spec.iterations} iteration(s) -> {run.path}")
    other = spec.evaluation.compare_with
    if other and not (run.path.parent / other / "spec.json").exists():
        runner.say(
            f"note: evaluation.compareWith {other!r}: no run at {run.path.parent / other}; "
            f"iterations are evaluated without the comparison unless it exists by then "
            f"(pass both manifests to `tpo run`, or run {other!r} first with the same --out)"
        )
    rc = runner.execute()
    if rc == 0:
        from tpo.report import summary_table, write_report

        report = write_report(run, runner.status, spec)
        runner.say("\n" + summary_table(runner.status))
        runner.say(f"\nreport: {report}  plot: {run.plot}  status: {run.status}")
    return rc
