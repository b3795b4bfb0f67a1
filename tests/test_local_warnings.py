"""`tpo run` and guard warnings: a phase that succeeds past a guard's warn level writes the
warnings into its summary (its own stderr goes to its log file); the runner prints each one to
its stderr and puts the QualityWarning condition the operator sets into status.json. The
phases here are small Python processes that write what a real phase writes (the DONE marker
with its summary, guard records from tpo.guards.warn), without the ML stack."""

from __future__ import annotations

import json
import sys

import yaml
from condition_rules import problems
from tinyrun import tiny_spec

from tpo import artifacts as A
from tpo.artifacts import RunDir

PHASE = """
import json, sys
from tpo import artifacts as A, guards
from tpo.artifacts import RunDir
from tpo.spec import Guards
run, phase, t = RunDir(__import__("pathlib").Path(sys.argv[1])), sys.argv[2], int(sys.argv[3])
summary = {"phase": phase, "iteration": t, "seconds": 0.1}
if (phase, t) == ("generate", 1):
    rows = [{"parse_ok": i >= 6, "failure": None if i >= 6 else "no_separator"} for i in range(10)]
    warned = guards.warn(Guards(), guards.generate_measures(rows, False, False))
    summary.update(samples=10, parse_failure_rate=0.6, warnings=[w.model_dump() for w in warned])
if phase == "evaluate":
    summary.update(win_rate=0.6, wins=3, ties=0, losses=2, n=5, both_failed=1, eval_prompts=6)
shard = 0 if phase in ("generate", "judge") else None
A.write_done(run.done(phase, t, shard), summary)
print(json.dumps(summary))
"""


def test_tpo_run_prints_each_warning_and_sets_the_condition(tmp_path, monkeypatch, capsys):
    from tpo import local as L

    doc = {"apiVersion": "tpo.dev/v1alpha1", "kind": "TPORun", "metadata": {"name": "warn"}}
    manifest = tmp_path / "run.yaml"
    spec_doc = tiny_spec(tmp_path / "model", tmp_path / "ds.jsonl", iterations=1)
    manifest.write_text(yaml.safe_dump({**doc, "spec": spec_doc}))
    _, spec = L.load_manifest(manifest)
    run = RunDir.of(tmp_path / "out", "default", "warn")

    def command(self, phase, t, shard, shards):
        return [sys.executable, "-c", PHASE, str(self.run.path), phase, str(t)]

    monkeypatch.setattr(L.Runner, "command", command)
    assert L.Runner(run, spec).execute() == 0
    out, err = capsys.readouterr()
    (line,) = [x for x in out.splitlines() if "evaluate iter 1" in x]
    assert "win_rate=0.6 n=5 both_failed=1" in line  # what the rate is over, beside it
    printed = [line for line in err.splitlines() if "guards.warn" in line]
    assert printed == [
        "iteration 1: warning: generate: 60% of samples failed to parse (6 of 10: 6 no "
        "separator; guards.warnParseFailureRate 50%): the model does not follow the thought "
        "format (docs/thought-format.md); try thoughtPrompt.prefill or a thought budget "
        "(generation.thoughtBudget)"
    ]
    status = json.loads(run.status.read_text())
    assert status["phase"] == "Succeeded" and problems(status) == []
    cond = {c["type"]: c for c in status["conditions"]}["QualityWarning"]
    assert (cond["status"], cond["reason"]) == ("True", "ParseFailureRate")
    assert printed[0] in cond["message"]
    h1 = next(h for h in status["history"] if h["iteration"] == 1)
    assert [w["guard"] for w in h1["warnings"]] == ["warnParseFailureRate"]
    assert (h1["n"], h1["bothFailed"], h1["evalPrompts"]) == (5, 1, 6)
    assert A.read_done(run.done("generate", 1, 0))["warnings"][0]["rate"] == 0.6
    # and report.md lists them, as printed
    from tpo.report import write_report
    from tpo.spec import TPORunStatus

    report = write_report(run, TPORunStatus.model_validate(status), spec).read_text()
    assert f"## Guard warnings\n\n- {printed[0]}\n" in report
    assert "| 3 / 0 / 2 / 1 |" in report  # wins / ties / losses / both failed
