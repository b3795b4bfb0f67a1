"""Disk full and a read-only artifact root: a clear error, nothing earlier lost, resumable.

A real `prepare` runs first; a finished generate (samples and its DONE marker, written through
the artifact API) stands in for the model phase. Then the real `tpo phase judge` subprocess runs
(programmatic judge, no model) with:

- a full disk: RLIMIT_FSIZE (set in the child before exec) makes every write past 256 bytes fail
  with EFBIG, as ENOSPC would (a tmpfs that fills up needs privileges CI may not have);
- a read-only root: the run directory bind-mounted read-only in a private mount namespace
  (`unshare -rm`, as root here) or, for a non-root user, its permissions removed.

Each time: exit 1 (a crash, so a Job retries once space is back), a one-line error naming the
cause and the run directory, every earlier artifact byte-identical, no judge output or DONE
marker visible; the same command without the fault then succeeds.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from tinyrun import tiny_spec, write_dataset

from tpo import artifacts as A
from tpo.artifacts import RunDir
from tpo.errors import EXIT_CRASH

TESTS = Path(__file__).resolve().parents[1]


def phase(run: RunDir, name: str, t: int, *extra: str, wrap=(), preexec=None):
    cmd = [*wrap, sys.executable, "-m", "tpo.cli", "phase", name, "--run-dir", str(run.path)]
    cmd += ["--iteration", str(t), *extra]
    env = {**os.environ, "PYTHONPATH": str(TESTS)}
    return subprocess.run(
        cmd, capture_output=True, text=True, env=env, timeout=120, preexec_fn=preexec
    )


@pytest.fixture
def generated(tmp_path) -> RunDir:
    ds = write_dataset(tmp_path / "ds.jsonl", 12)
    spec = tiny_spec(tmp_path / "no-model", ds, iterations=1)
    spec["dataset"].update(promptsPerIteration=4, evalPrompts=3)
    run = RunDir(tmp_path / "root" / "default" / "r")
    p = phase(run, "prepare", 0, "--spec", json.dumps(spec))
    assert p.returncode == 0, p.stderr
    rows = []
    for prompt in A.read_jsonl(run.prompts(1)):
        for k in range(4):
            response = "x" * (3 + 2 * k + len(prompt["prompt_id"]))
            rows.append(
                {
                    **{key: prompt[key] for key in ("prompt_id", "instruction", "record")},
                    "category": prompt.get("category"),
                    "prompt": f"Q: {prompt['instruction']}\n",
                    "sample": k,
                    "text": f"think a {response}",
                    "thought": "think",
                    "response": response,
                    "parse_ok": True,
                    "failure": None,
                    "tokens": 4 + k,
                    "thought_tokens": 1,
                    "response_tokens": 3 + k,
                }
            )
    A.write_jsonl(run.samples(1, 0), rows)
    A.write_done(
        run.done("generate", 1, 0),
        {"phase": "generate", "iteration": 1, "shard": 0, "shards": 1, "samples": len(rows)},
        [run.samples(1, 0)],
    )
    return run


def snapshot(run: RunDir) -> dict[str, bytes]:
    return {
        str(f.relative_to(run.path)): f.read_bytes()
        for f in sorted(run.path.rglob("*"))
        if f.is_file() and "logs" not in f.parts
    }


def judge_outputs(run: RunDir) -> list[Path]:
    return [p for p in (run.scores(1, 0), run.pairs(1, 0), run.done("judge", 1, 0)) if p.exists()]


def small_files() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (256, 256))


def test_disk_full_is_a_clear_retryable_error_and_loses_nothing(generated):
    run = generated
    before = snapshot(run)
    p = phase(run, "judge", 1, preexec=small_files)
    assert p.returncode == EXIT_CRASH, p.stderr
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith("error: judge (iteration 1): cannot write artifacts under"), p.stderr
    assert "File too large (EFBIG)" in last and str(run.path) in last
    assert "Traceback" not in p.stderr
    assert snapshot(run) == before  # nothing earlier lost, nothing partial left visible
    assert judge_outputs(run) == []
    again = phase(run, "judge", 1)  # space is back: the retry finishes the phase
    assert again.returncode == 0, again.stderr
    assert len(judge_outputs(run)) == 3 and A.read_done(run.done("judge", 1, 0))["pairs"] == 4


def _read_only_wrapper(path: Path) -> tuple[str, ...]:
    if os.geteuid() != 0:
        return ()  # permissions apply to a normal user: the caller removes them
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.fail("running as root without `unshare` (util-linux): cannot make a read-only root")
    script = f'mount --bind "{path}" "{path}" && mount -o remount,bind,ro "{path}" && exec "$@"'
    return (unshare, "-rm", "sh", "-c", script, "sh")


def test_read_only_root_is_a_clear_error_and_loses_nothing(generated):
    run = generated
    root = run.path.parents[1]
    before = snapshot(run)
    wrap = _read_only_wrapper(root)
    if not wrap:
        for d in [root, *root.rglob("*")]:
            if d.is_dir():
                d.chmod(0o555)
    try:
        p = phase(run, "judge", 1, wrap=wrap)
    finally:
        for d in [root, *root.rglob("*")]:
            if d.is_dir():
                d.chmod(0o755)
    assert p.returncode == EXIT_CRASH, p.stderr
    last = p.stderr.strip().splitlines()[-1]
    assert "cannot write artifacts under" in last and str(run.path) in last, p.stderr
    assert "(EROFS)" in last or "(EACCES)" in last, last
    assert snapshot(run) == before
    assert judge_outputs(run) == []
    again = phase(run, "judge", 1)
    assert again.returncode == 0, again.stderr
    assert len(judge_outputs(run)) == 3
