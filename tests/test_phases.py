"""`tpo phase`: each phase for real on a tiny untrained model, as Jobs run it (subprocesses).

The untrained model writes random text, so the thought prompt is a custom one whose separator
is a common letter ("a"): most samples then parse, some do not, which exercises both paths.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tinyrun import tiny_spec, write_dataset

from tpo import artifacts as A
from tpo.artifacts import RunDir
from tpo.errors import EXIT_BAD_INPUT, EXIT_CRASH, EXIT_UPSTREAM_DAMAGED

TESTS = Path(__file__).parent


def phase(
    run: Path, name: str, t: int = 0, *extra: str, env: dict | None = None, check: bool = True
) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "tpo.cli",
        "phase",
        name,
        "--run-dir",
        str(run),
        "--iteration",
        str(t),
        *extra,
    ]
    e = {**os.environ, "PYTHONPATH": str(TESTS), **(env or {})}
    p = subprocess.run(cmd, capture_output=True, text=True, env=e, timeout=600)
    if check and p.returncode != 0:
        raise AssertionError(f"{cmd} exited {p.returncode}\n{p.stdout[-2000:]}\n{p.stderr[-4000:]}")
    return p


@pytest.fixture
def prepared(tmp_path, tiny_lm):
    ds = write_dataset(tmp_path / "ds.jsonl")
    run = tmp_path / "runs" / "default" / "t"
    spec = tiny_spec(tiny_lm, ds)
    phase(run, "prepare", 0, "--spec", json.dumps(spec))
    return RunDir(run), spec


def test_prepare_splits_are_disjoint_complete_and_keep_fields(prepared):
    run, _ = prepared
    ev = A.read_jsonl(run.eval_prompts)
    p1, p2 = A.read_jsonl(run.prompts(1)), A.read_jsonl(run.prompts(2))
    assert (len(ev), len(p1), len(p2)) == (4, 6, 6)
    ids = [r["prompt_id"] for r in ev + p1 + p2]
    assert len(set(ids)) == len(ids)
    assert all(r["category"] in {"add", "sub", "rev", "sort"} for r in ev + p1)
    assert all("answer" in r["record"] for r in p1)
    assert json.loads(run.spec.read_text())["dataset"]["promptsPerIteration"] == 6


def test_prepare_names_the_malformed_line(tmp_path, tiny_lm):
    ds = write_dataset(tmp_path / "ds.jsonl")
    lines = ds.read_text().splitlines()
    lines[6] = '{"instruction": "broken'
    ds.write_text("\n".join(lines) + "\n")
    p = phase(
        tmp_path / "run", "prepare", 0, "--spec", json.dumps(tiny_spec(tiny_lm, ds)), check=False
    )
    assert p.returncode == EXIT_BAD_INPUT
    assert f"{ds}:7: invalid JSON" in p.stderr
    assert not (tmp_path / "run" / "data").exists()


def test_prepare_names_the_line_without_a_reference(tmp_path, tiny_lm):
    ds = write_dataset(tmp_path / "ds.jsonl")
    lines = ds.read_text().splitlines()
    row = json.loads(lines[3])
    del row["answer"]
    lines[3] = json.dumps(row)
    ds.write_text("\n".join(lines) + "\n")
    spec = tiny_spec(tiny_lm, ds)
    spec["dataset"]["referenceField"] = "answer"
    p = phase(tmp_path / "run", "prepare", 0, "--spec", json.dumps(spec), check=False)
    assert p.returncode == EXIT_BAD_INPUT
    assert f"{ds}:4: field 'answer' (dataset.referenceField) must be a non-empty" in p.stderr
    assert not (tmp_path / "run" / "data").exists()


def test_prepare_says_how_many_instructions_are_needed(tmp_path, tiny_lm):
    ds = write_dataset(tmp_path / "ds.jsonl", n=10)
    p = phase(
        tmp_path / "run", "prepare", 0, "--spec", json.dumps(tiny_spec(tiny_lm, ds)), check=False
    )
    assert p.returncode == EXIT_BAD_INPUT
    assert "10 distinct instructions, need 16" in p.stderr


def test_invalid_spec_is_bad_input_naming_the_field(tmp_path, tiny_lm):
    spec = tiny_spec(tiny_lm, tmp_path / "x.jsonl", generation={"samples": -1})
    p = phase(tmp_path / "run", "prepare", 0, "--spec", json.dumps(spec), check=False)
    assert p.returncode == EXIT_BAD_INPUT
    assert "spec.generation.samples" in p.stderr


def test_a_phase_that_finds_an_earlier_phases_output_damaged_names_it_for_the_operator(
    prepared, tmp_path
):
    """generate(1) finished, then its samples were cut: judge(1) exits EXIT_UPSTREAM_DAMAGED
    (not bad input, which would fail the run) and its termination message names the step to
    redo, which the operator reads off the failed pod (tpo_operator.reconcile.observe)."""
    from tpo_operator.reconcile import observe

    run, _ = prepared
    phase(run.path, "generate", 1)
    samples = run.samples(1, 0)
    samples.write_bytes(samples.read_bytes()[: samples.stat().st_size // 2])
    term = tmp_path / "termination-log"
    p = phase(run.path, "judge", 1, env={"TPO_TERMINATION_LOG": str(term)}, check=False)
    assert p.returncode == EXIT_UPSTREAM_DAMAGED, p.stderr[-2000:]
    assert f"{samples}: changed or truncated" in p.stderr
    assert "generate of iteration 1 must be redone first" in p.stderr
    assert not run.done("judge", 1, 0).exists() and not run.scores(1, 0).exists()
    message = term.read_text()
    assert json.loads(message)["upstream_damaged"] == {"phase": "generate", "iteration": 1}
    labels = {"tpo.dev/run": "t", "tpo.dev/phase": "judge", "tpo.dev/iteration": "1"}
    job = {"metadata": {"name": "t-judge-1", "labels": labels}, "spec": {}, "status": {
        "failed": 1, "conditions": [{"type": "Failed", "status": "True"}]}}  # fmt: skip
    pod = {"metadata": {"name": "t-judge-1-x", "labels": labels}, "status": {
        "phase": "Failed", "containerStatuses": [{"state": {"terminated": {
            "exitCode": p.returncode, "message": message}}}]}}  # fmt: skip
    (seen,) = observe([job], [pod], "t")
    assert seen.damaged == ("generate", 1) and not seen.bad_input
    # redoing generate repairs it: the phase refuses its own damaged marker and runs again
    phase(run.path, "generate", 1)
    assert phase(run.path, "judge", 1).returncode == 0


def test_one_iteration_of_phases_and_done_skip(prepared):
    run, _ = prepared
    g = phase(run.path, "generate", 1)
    summary = json.loads(g.stdout.strip().splitlines()[-1])
    assert summary["phase"] == "generate" and summary["samples"] == 6 * 4
    assert len(g.stdout.strip().splitlines()[-1].encode()) <= 4096
    rows = A.read_jsonl(run.samples(1, 0))
    assert len(rows) == 24 and {r["sample"] for r in rows} == {0, 1, 2, 3}
    for r in rows:
        if r["parse_ok"]:
            assert r["thought"] in r["text"] and "a" in r["text"]
    before = run.samples(1, 0).stat().st_mtime_ns
    again = phase(run.path, "generate", 1)
    assert json.loads(again.stdout.strip().splitlines()[-1]) == summary
    assert run.samples(1, 0).stat().st_mtime_ns == before  # DONE: nothing redone

    j = json.loads(phase(run.path, "judge", 1).stdout.strip().splitlines()[-1])
    pairs = A.read_jsonl(run.pairs(1, 0))
    assert j["pairs"] == len(pairs) > 0
    samples = {(r["prompt_id"], r["sample"]): r for r in rows}
    for p in pairs:
        chosen = samples[(p["prompt_id"], p["chosen_sample"])]
        assert chosen["parse_ok"], "a parse failure is never chosen"
        assert p["chosen"] == chosen["text"]  # full output: thought + response
        rejected = samples[(p["prompt_id"], p["rejected_sample"])]
        # a parse failure is rejected with no score; else the chosen scored higher
        assert not rejected["parse_ok"] or p["chosen_score"] > p["rejected_score"]

    t = json.loads(phase(run.path, "train", 1).stdout.strip().splitlines()[-1])
    assert t["steps"] >= 1 and (run.model(1) / "config.json").exists()

    e = json.loads(phase(run.path, "evaluate", 1).stdout.strip().splitlines()[-1])
    assert e["n"] == 4 and 0.0 <= e["win_rate_low"] <= e["win_rate"] <= e["win_rate_high"] <= 1
    assert e["wins"] + e["ties"] + e["losses"] == e["n"]
    assert run.baseline_outputs("seed-none").exists()  # evaluation.baseline: direct


def test_judge_refuses_missing_generate_shard(tmp_path, tiny_lm):
    ds = write_dataset(tmp_path / "ds.jsonl")
    run = tmp_path / "run"
    spec = tiny_spec(tiny_lm, ds, generation={"shards": 2})
    phase(run, "prepare", 0, "--spec", json.dumps(spec))
    phase(run, "generate", 1, "--shard", "0/2")
    p = phase(run, "judge", 1, check=False)
    assert p.returncode == EXIT_BAD_INPUT
    assert "generate shard(s) [1] of 2 not done" in p.stderr
    phase(run, "generate", 1, "--shard", "1/2")
    phase(run, "judge", 1)
    merged = A.read_jsonl(RunDir(run).samples(1, 0)) + A.read_jsonl(RunDir(run).samples(1, 1))
    assert sorted({r["prompt_id"] for r in merged}) == sorted(
        r["prompt_id"] for r in A.read_jsonl(RunDir(run).prompts(1))
    )


def test_crash_exits_1_bad_input_exits_3(prepared):
    run, _ = prepared
    phase(run.path, "generate", 1)
    spec_path = run.spec
    data = json.loads(spec_path.read_text())
    data["judge"]["programmatic"]["function"] = "judge_fixtures:crashes"
    spec_path.write_text(json.dumps(data))
    p = phase(run.path, "judge", 1, env={"TPO_TEST_JUDGE_CRASH": "1"}, check=False)
    assert p.returncode == EXIT_CRASH, p.stderr
    assert not run.pairs(1, 0).exists() and not run.done("judge", 1, 0).exists()
    data["judge"]["programmatic"]["function"] = "judge_fixtures:no_such_function"
    spec_path.write_text(json.dumps(data))
    p = phase(run.path, "judge", 1, check=False)
    assert p.returncode == EXIT_BAD_INPUT, p.stderr
    assert "no_such_function" in p.stderr


def test_killed_phase_leaves_no_partial_artifact_and_resumes(prepared):
    run, _ = prepared
    cmd = [
        sys.executable,
        "-m",
        "tpo.cli",
        "phase",
        "train",
        "--run-dir",
        str(run.path),
        "--iteration",
        "1",
    ]
    phase(run.path, "generate", 1)
    phase(run.path, "judge", 1)
    env = {**os.environ, "PYTHONPATH": str(TESTS)}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # Kill it mid-way: once its work dir exists (pairs staged, the trainer starting), not after
    # a fixed sleep, which a fast machine outran (the phase had finished).
    deadline = time.monotonic() + 120
    while not run.checkpoints(1).exists() and proc.poll() is None:
        assert time.monotonic() < deadline, "train never started"
        time.sleep(0.02)
    assert proc.poll() is None, "train finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not run.done("train", 1).exists()
    assert not run.model(1).exists() or (run.model(1) / "config.json").exists()
    gen_done = run.done("generate", 1, 0).read_text()
    phase(run.path, "train", 1)
    assert (run.model(1) / "config.json").exists()
    assert run.done("generate", 1, 0).read_text() == gen_done
