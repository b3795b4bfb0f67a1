"""The IFEval guard (tpo/ifeval_guard.py): lm-eval's own IFEval checkers, offline.

The no-download tests run in a fresh interpreter with an empty NLTK data path and a fresh
cache, nltk.download and every socket connect patched to raise: the guard must build punkt_tab
from its package and check responses without reaching for the network. The control shows that
the same set-up does catch lm-eval's download when the data is not arranged.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tpo import ifeval_guard as G
from tpo.thoughts import split_output

ROOT = Path(__file__).resolve().parents[1]

_NO_NETWORK = """
import json, socket, sys
import nltk
def refuse(*a, **k):
    raise SystemExit("DOWNLOAD ATTEMPTED: %r" % (a,))
nltk.download = refuse
def no_net(*a, **k):
    raise SystemExit("NETWORK ATTEMPTED: %r" % (a,))
socket.socket.connect = no_net
socket.create_connection = no_net
"""

_GUARD = """
from tpo import ifeval_guard as G
recs = G.attach([{"prompt_id": str(i), "instruction": "Say hi."} for i in range(5)], 5, 0)
acc = G.accuracy(recs, [
    "hi there",                      # no_comma: followed
    "hi, " * 50,                     # number_words < N: not followed (and has commas)
    '"hi"',                          # quotation: followed
    "no title",                      # title: not followed
    "One. Two. Three. Four. Five.",  # number_sentences (punkt): depends on the relation
])
print(json.dumps({"rows": acc.rows, "strict": acc.strict, "data": str(G.nltk_data_dir())}))
"""

_BARE_LM_EVAL = """
import os, types, lm_eval
pkg = types.ModuleType("lm_eval.tasks")
pkg.__path__ = [os.path.join(os.path.dirname(lm_eval.__file__), "tasks")]
sys.modules["lm_eval.tasks"] = pkg
from lm_eval.tasks.ifeval import instructions_registry
print("imported without data")
"""


def _fresh(tmp_path: Path, code: str) -> subprocess.CompletedProcess:
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path / "home"),
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
        "NLTK_DATA": str(tmp_path / "empty-nltk-data"),
        "PYTHONPATH": str(ROOT),
    }
    return subprocess.run(
        [sys.executable, "-c", _NO_NETWORK + code],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_checkers_work_offline_without_a_download(tmp_path):
    out = _fresh(tmp_path, _GUARD)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "ATTEMPTED" not in out.stdout + out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    # The tables were built under the fresh cache, from the package.
    built = Path(got["data"]) / "tokenizers" / "punkt_tab" / "english"
    assert str(tmp_path / "cache") in got["data"]
    assert {p.name for p in built.iterdir()} == {
        "collocations.tab",
        "sent_starters.txt",
        "abbrev_types.txt",
        "ortho_context.tab",
    }
    strict = [r["strict"] for r in got["rows"]]
    assert strict[:4] == [True, False, True, False]
    # Prompt 4 asks for "at least 1" sentences (seed 0's draw, see the prompt test): 5 counted.
    assert strict[4] is True


def test_control_lm_eval_alone_would_download(tmp_path):
    """Without the guard's data, lm-eval's IFEval import calls nltk.download: the patched
    download above is what the first test relies on to prove none happened."""
    out = _fresh(tmp_path, _BARE_LM_EVAL)
    assert out.returncode != 0
    assert "DOWNLOAD ATTEMPTED: ('punkt_tab',)" in out.stderr


def test_prompts_carry_the_checkers_own_descriptions():
    _, registry = G.checkers()
    prompts = [{"prompt_id": f"p{i}", "instruction": f"Task {i}."} for i in range(30)]
    recs = G.attach(prompts, 25, seed=7)
    assert len(recs) == 25 and [r["prompt_id"] for r in recs] == [f"p{i}" for i in range(25)]
    assert {r["ifeval"]["instruction_id_list"][0] for r in recs} == set(G.CHECKS)
    for r, p in zip(recs, prompts, strict=False):
        (check,), (kwargs,) = r["ifeval"]["instruction_id_list"], r["ifeval"]["kwargs"]
        description = registry.INSTRUCTION_DICT[check](check).build_description(**kwargs)
        assert r["instruction"] == f"{p['instruction']}\n\n{description}"
    # Deterministic: every iteration answers the same constraints.
    assert G.attach(prompts, 25, seed=7) == recs
    assert G.attach(prompts, 25, seed=8) != recs


def _one(check: str, kwargs: dict) -> dict:
    return {
        "prompt_id": "x",
        "instruction": "Say hi.",
        "ifeval": {"instruction_id_list": [check], "kwargs": [kwargs]},
    }


@pytest.mark.parametrize(
    ("check", "kwargs", "follows", "breaks"),
    [
        ("punctuation:no_comma", {}, "hi there", "hi, there"),
        ("startend:quotation", {}, '"hi"', "hi"),
        ("detectable_format:title", {}, "<<Hi>> hello", "hello"),
        ("keywords:existence", {"keywords": ["answer"]}, "the answer", "nothing"),
        ("keywords:forbidden_words", {"forbidden_words": ["very"]}, "good", "very good"),
        ("detectable_content:postscript", {"postscript_marker": "P.S."}, "hi\nP.S. bye", "hi"),
        (
            "startend:end_checker",
            {"end_phrase": "Any other questions?"},
            "hi. Any other questions?",
            "Any other questions? hi",
        ),
        ("detectable_format:number_bullet_lists", {"num_bullets": 2}, "* a\n* b", "* a"),
        (
            "length_constraints:number_sentences",
            {"relation": "less than", "num_sentences": 2},
            "Dr. Smith went home at 5 p.m. today.",  # punkt: one sentence, abbreviations kept
            "He went home. She stayed.",
        ),
        (
            "length_constraints:number_words",
            {"relation": "less than", "num_words": 5},
            "one two three",
            "one two three four five six",
        ),
    ],
)
def test_each_check_reads_as_lm_eval_does(check, kwargs, follows, breaks):
    acc = G.accuracy([_one(check, kwargs), _one(check, kwargs)], [follows, breaks])
    assert [r["strict"] for r in acc.rows] == [True, False]
    assert acc.strict == 0.5


def test_loose_forgives_markdown_and_a_preamble_line_strict_does_not():
    rec = _one("startend:quotation", {})
    acc = G.accuracy([rec, rec], ['Sure:\n"hi"', '*"hi"*'])
    assert [r["strict"] for r in acc.rows] == [False, False]
    assert [r["loose"] for r in acc.rows] == [True, True]
    assert (acc.strict, acc.loose) == (0.0, 1.0)


def test_the_thought_is_stripped_and_a_parse_failure_follows_nothing():
    """The check reads the response after the separator: a comma in the thought does not
    count against no_comma; an output without the separator has no response."""
    sep = "Here is my response:"
    ok = split_output("I think, therefore.\nHere is my response: hello there", sep)
    failed = split_output("hello there", sep)
    rec = _one("punctuation:no_comma", {})
    acc = G.accuracy([rec, rec], [ok.response, failed.response if failed.parse_ok else None])
    assert [r["strict"] for r in acc.rows] == [True, False]
    # counted as failing, and counted: the figure says how much of it is format, not following
    assert [r["parsed"] for r in acc.rows] == [True, False] and acc.unparsed == 1
    assert G.summary(acc, None)["ifeval_unparsed"] == 1


def test_drop_against_the_seed_warns_past_the_threshold():
    seed = G.summary(G.Accuracy(strict=0.6, loose=0.7, n=50, rows=[]), None)
    assert "ifeval_strict_drop" not in seed
    now = G.summary(G.Accuracy(strict=0.4, loose=0.66, n=50, rows=[]), seed)
    assert now["ifeval_strict_drop"] == 0.2 and now["ifeval_loose_drop"] == 0.04
    w = G.drop_warning(now, 0.1)
    assert w is not None and w["guard"] == "warnIfevalDrop" and w["count"] == 20
    assert "60.0% -> 40.0% over 50 prompts" in w["message"]
    assert "did not parse" not in w["message"]
    fmt = G.drop_warning({**now, "ifeval_unparsed": 7}, 0.1)
    assert fmt is not None and "7 of the 50 responses did not parse" in fmt["message"]
    assert G.drop_warning(now, 0.2) is None  # a drop equal to the threshold is not past it
    assert G.drop_warning(now, 1.0) is None
    better = G.summary(G.Accuracy(strict=0.9, loose=0.9, n=50, rows=[]), seed)
    assert G.drop_warning(better, 0.0) is None


# --------------------------------------------------------------------------- in the phases


def test_evaluate_reports_ifeval_and_the_probe_and_warns_on_a_drop(tmp_path, tiny_lm):
    """prepare, evaluate(0), a stand-in M(1) (the seed's weights, marked trained), evaluate(1):
    the summaries and the status history carry the IFEval accuracies and the probe (the run's
    judge here prefers a colon to any answer); the per-prompt results are written; a seed that
    did better gives a drop warning, which the QualityWarning condition reads."""
    import shutil

    from test_phases import phase
    from tinyrun import tiny_spec, write_dataset

    from tpo import artifacts as A
    from tpo.artifacts import RunDir
    from tpo.spec import TPORunStatus
    from tpo.status import apply_summary, set_quality

    ds = write_dataset(tmp_path / "ds.jsonl")
    run = RunDir(tmp_path / "runs" / "default" / "t")
    judge = {"type": "programmatic", "programmatic": {"function": "judge_fixtures:prefers_colon"}}
    guards = {"ifevalPrompts": 4, "judgeProbePrompts": 4}
    # Sampled: the untrained model's greedy output is empty (both arms unparsed, no rate).
    spec = tiny_spec(tiny_lm, ds, judge=judge, guards=guards, evaluation={"temperature": 0.8})
    phase(run.path, "prepare", 0, "--spec", json.dumps(spec))
    e0 = json.loads(phase(run.path, "evaluate", 0).stdout.strip().splitlines()[-1])
    assert e0["ifeval_prompts"] == 4 and 0.0 <= e0["ifeval_strict"] <= e0["ifeval_loose"] <= 1
    assert "ifeval_strict_drop" not in e0
    rows = A.read_jsonl(G.outputs_path(run, 0))
    assert len(rows) == 4 and e0["ifeval_strict"] == sum(r["strict"] for r in rows) / 4
    assert e0["ifeval_unparsed"] == sum(not r["parsed"] for r in rows)
    assert [r["checks"] for r in rows] == [[c] for c in G.CHECKS[:4]]
    # ":", "Thought process:" and the step-by-step opener beat every real response.
    assert (e0["judge_probe_prompts"], e0["judge_probe_n"]) == (4, 20)
    assert e0["judge_probe_rate"] == 0.6 and e0["judge_probe_by_key"]["colon"] == 1.0
    (probe_warning,) = [w for w in e0["warnings"] if w["guard"] == "warnJudgeProbeRate"]
    assert "12 of 20" in probe_warning["message"]

    # M(1) := the seed; the seed's recorded strict accuracy raised to 1 so M(1) falls short
    # (random text cannot meet the quotation and title checks of prompts 3 and 4).
    shutil.copytree(tiny_lm, run.model(1))
    A.write_done(run.done("train", 1), {"phase": "train", "iteration": 1}, [run.model(1)])
    seed_done = A.read_done(run.done("evaluate", 0))
    outs = [run.eval_result(0), run.eval_outputs(0), run.exports_dir(0), G.outputs_path(run, 0)]
    A.write_done(run.done("evaluate", 0), {**seed_done, "ifeval_strict": 1.0}, outs)
    e1 = json.loads(phase(run.path, "evaluate", 1).stdout.strip().splitlines()[-1])
    assert e1["ifeval_strict"] <= 0.5
    assert e1["ifeval_strict_drop"] == round(1.0 - e1["ifeval_strict"], 4)
    assert "judge_probe_rate" not in e1  # the probe runs once, before iteration 1
    (drop,) = [w for w in e1["warnings"] if w["guard"] == "warnIfevalDrop"]
    assert "below the seed's (100.0% ->" in drop["message"]
    status = TPORunStatus()
    for s in (e0, e1):
        status = apply_summary(status, s)
    h0, h1 = status.history
    assert h0.ifeval_strict == e0["ifeval_strict"] and h0.judge_probe_rate == 0.6
    assert h0.ifeval_unparsed == e0["ifeval_unparsed"]
    assert h1.ifeval_strict_drop == e1["ifeval_strict_drop"]
    cond = next(c for c in set_quality(status, "now").conditions if c.type == "QualityWarning")
    assert cond.status == "True"
    assert cond.reason == "JudgeProbeRate,IfevalDrop"


def test_report_shows_ifeval_per_iteration_and_the_probe():
    from tinyrun import tiny_spec

    from tpo.report import ifeval_probe_section
    from tpo.spec import IterationStatus, TPORunStatus, parse_spec

    spec = parse_spec(tiny_spec(Path("m"), Path("d.jsonl")))
    status = TPORunStatus(
        history=[
            IterationStatus(
                iteration=0,
                ifeval_strict=0.5,
                ifeval_loose=0.6,
                ifeval_prompts=100,
                ifeval_unparsed=0,
                judge_probe_rate=0.6,
                judge_probe_n=20,
                judge_probe_preferred=12,
                judge_probe_ties=0,
                judge_probe_by_key={"colon": 1.0, "echo": 0.0},
            ),
            IterationStatus(
                iteration=1,
                ifeval_strict=0.3,
                ifeval_loose=0.4,
                ifeval_prompts=100,
                ifeval_unparsed=12,
                ifeval_strict_drop=0.2,
            ),
        ]
    )
    text = "\n".join(ifeval_probe_section(status, spec))
    assert "| 0 | 100 | 0 | 0.500 | 0.600 | - |" in text
    assert "| 1 | 100 | 12 | 0.300 | 0.400 | 0.200 |" in text
    assert "preferred **0.600**" in text and "(12 of 20, 0 ties; by key: colon 1.00" in text
    assert ifeval_probe_section(TPORunStatus(), spec) == []
    # a judge that read only some of the probe's comparisons, and one that read none
    some = IterationStatus(iteration=0, judge_probe_rate=0.0, judge_probe_n=1)
    some.judge_probe_preferred, some.judge_probe_ties, some.judge_probe_unread = 0, 0, 39
    text = "\n".join(ifeval_probe_section(TPORunStatus(history=[some]), spec))
    assert "(0 of 1, 0 ties, 39 without a verdict (left out); by key: -)" in text
    none = IterationStatus(iteration=0, judge_probe_n=0, judge_probe_unread=40)
    text = "\n".join(ifeval_probe_section(TPORunStatus(history=[none]), spec))
    assert "no measurable share" in text and "40 without a verdict" in text


def test_a_worker_without_lm_eval_is_told_which_field_turns_the_guard_off(monkeypatch):
    from tinyrun import tiny_spec

    from tpo.errors import BadInput
    from tpo.spec import parse_spec

    def missing():
        raise ModuleNotFoundError("No module named 'lm_eval'")

    monkeypatch.setattr(G, "checkers", missing)
    prompts = [{"prompt_id": "a", "instruction": "x"}]
    spec = parse_spec(tiny_spec(Path("m"), Path("d.jsonl")))
    with pytest.raises(BadInput, match=r"guards.ifevalPrompts 100: .*No module named 'lm_eval'"):
        G.records(spec, prompts)
    off = parse_spec(tiny_spec(Path("m"), Path("d.jsonl"), guards={"ifevalPrompts": 0}))
    assert G.records(off, prompts) == []


def test_an_unwritable_cache_falls_back_to_a_private_temp_dir(tmp_path):
    """A cache path that cannot be made (here its parent is a file: even root cannot) gives a
    private temp dir instead of a failed evaluate."""
    import nltk

    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    root = G.ensure_punkt_tab(blocker / "nltk")
    assert root != blocker / "nltk" and str(root) in nltk.data.path
    assert (root / "tokenizers" / "punkt_tab" / "english" / "ortho_context.tab").is_file()
