"""Exports of M(t)'s evaluation outputs (tpo/exports.py), read back by the field's own code.

- AlpacaEval: `alpaca_eval.evaluate` (0.6.6, installed) loads our model-outputs JSON and a
  reference JSON, merges them on `instruction`, builds its real judge prompt, parses the judge's
  reply with its own parser and computes its win rate. Only the judge's API call is replaced by a
  deterministic function that prefers answers carrying a marker, so the rate it prints is known.
- MT-Bench: FastChat's llm_judge code shipped in nvidia-mtbench-evaluator (load_questions,
  load_model_answers, check_data, play_a_match_single with its single-v1 judge prompt), the
  judge model replaced by a client that rates an answer by a marker in the prompt it is shown.
- Arena-Hard-Auto is not on PyPI (a repository only). Its readers were read at
  lmarena/arena-hard-auto: v2.0 `utils/completion.py` load_model_answers keys answers by
  `uid` from files named `<model>.jsonl`; `gen_judgment.py` reads the question's `prompt` and
  `category` (a JUDGE_SETTINGS key) and the answer's `messages[-1]["content"]["answer"]`;
  `show_result.py` reads `metadata` by `uid` and turns it into the feature row
  [token_len, sum(header_count), sum(list_count), sum(bold_count)] (ints kept, dicts summed, in
  that order). v0.1 `utils.py` keys by `question_id` and reads
  `choices[0]["turns"][0]["content"]`. `_arena_*` below do exactly those reads.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from tinyrun import tiny_spec

from tpo import artifacts as A
from tpo import exports as X
from tpo.artifacts import RunDir
from tpo.errors import BadInput
from tpo.spec import parse_spec

TESTS = Path(__file__).parent
GOOD = "GOOD-ANSWER"  # the marker the stand-in judges prefer


# --------------------------------------------------------------------------- fixtures


def _spec(tmp_path: Path, **over):
    ds = tmp_path / "mtbench-like.jsonl"
    if not ds.exists():
        rows = [
            {"question_id": 81 + i, "instruction": f"Question {i}?", "category": "writing"}
            for i in range(8)
        ]
        ds.write_text("".join(json.dumps(r) + "\n" for r in rows))
    raw = {
        "model": {"path": "unused"},
        "dataset": {
            "path": str(ds),
            "idField": "question_id",
            "categoryField": "category",
            "promptsPerIteration": 1,
            "evalPrompts": 4,
        },
        "thoughtPrompt": {"type": "generic"},
        "iterations": 1,
        "judge": {"type": "programmatic", "programmatic": {"function": "judge_fixtures:by_length"}},
    }
    for k, v in over.items():
        raw[k] = {**raw[k], **v}
    return parse_spec(raw)


def _prompts(n: int = 4) -> list[dict]:
    return [
        {
            "prompt_id": str(81 + i),
            "instruction": f"Question {i}?",
            "category": "writing",
            "record": {"question_id": 81 + i, "instruction": f"Question {i}?"},
        }
        for i in range(n)
    ]


def _outputs(prompts: list[dict], good: set[int], failed: set[int] = frozenset()) -> list[dict]:
    """The evaluate phase's candidate rows: thought, separator, response."""
    rows = []
    for i, p in enumerate(prompts):
        response = f"{GOOD} answer {i}" if i in good else f"plain answer {i}"
        thought = f"I think about {i}; {GOOD} is what I would write."  # the marker, hidden
        ok = i not in failed
        text = f"{thought}\nHere is my response:\n{response}" if ok else thought
        rows.append(
            {
                "prompt_id": p["prompt_id"],
                "text": text,
                "thought": thought,
                "response": response if ok else "",
                "parse_ok": ok,
                "thought_tokens": 9,
                "response_tokens": 3 if ok else 0,
            }
        )
    return rows


def _written_run(tmp_path: Path, name: str, iteration: int, good: set[int], **kw) -> RunDir:
    run = RunDir(tmp_path / "runs" / "default" / name)
    spec = _spec(tmp_path)
    prompts = _prompts()
    paths = X.write(spec, run, iteration, prompts, _outputs(prompts, good, **kw), 1.7e9)
    A.write_json(run.spec, spec.model_dump(by_alias=True, exclude_none=True))
    A.write_done(
        run.done("evaluate", iteration), {"phase": "evaluate"}, [run.exports_dir(iteration)]
    )
    assert all(p.is_file() for p in paths)
    return run


# --------------------------------------------------------------------------- the field's readers


@pytest.fixture(scope="module")
def fastchat():
    """FastChat's llm_judge.common as nvidia-mtbench-evaluator ships it (its package root is
    mtbench_evaluator/fastchat, which FastChat's own imports expect on sys.path)."""
    import mtbench_evaluator

    root = str(Path(mtbench_evaluator.__file__).parent / "fastchat")
    sys.path.insert(0, root)
    try:
        from fastchat.llm_judge import common
    finally:
        sys.path.remove(root)
    return common


def test_mt_bench_answers_are_judged_by_fastchats_own_code(tmp_path, fastchat):
    run = _written_run(tmp_path, "r", 1, good={0, 2})
    model = X.model_name("r", 1)
    bench = run.export_answers(1, X.MT_BENCH, model).parent.parent
    questions = fastchat.load_questions(str(run.export_questions(1, X.MT_BENCH)), None, None)
    answers = fastchat.load_model_answers(str(bench / "model_answer"))
    assert set(answers) == {model, X.model_name("r", 1, True)}  # names from the file names
    assert sorted(answers[model]) == [81, 82, 83, 84]  # the dataset's int ids, as MT-Bench's

    prompts = fastchat.load_judge_prompts(
        str(Path(fastchat.__file__).parent / "data" / "judge_prompts.jsonl")
    )
    judge = fastchat.Judge("stand-in", prompts["single-v1"])
    fastchat.check_data(questions, answers, {}, [model], {"default": judge})

    class Client:  # rates what FastChat's own prompt shows it: 9 with the marker, else 2
        def generate(self, messages):
            shown = messages[-1]["content"]
            return "Rating: [[9]]" if GOOD in shown else "Rating: [[2]]"

    scores = {}
    for with_thought in (False, True):
        m = X.model_name("r", 1, with_thought)
        for q in questions:
            match = fastchat.MatchSingle(q, m, answers[m][q["question_id"]], judge)
            scores[(with_thought, q["question_id"])] = fastchat.play_a_match_single(
                match, output_file=None, client=Client()
            )["score"]
    assert [scores[(False, q)] for q in (81, 82, 83, 84)] == [9, 2, 9, 2]
    # with the thought, the judge sees the hidden marker in every answer
    assert [scores[(True, q)] for q in (81, 82, 83, 84)] == [9, 9, 9, 9]


def test_mt_bench_reference_answers_reach_fastchats_reference_guided_judge(tmp_path, fastchat):
    """A math prompt with dataset.referenceField: FastChat's check_data finds its reference
    under the judge's name, and its single-math-v1 prompt shows it to the judge."""
    spec = _spec(tmp_path, dataset={"referenceField": "reference"})
    prompts = _prompts()
    prompts[2]["category"] = "math"
    prompts[2]["record"]["reference"] = "The answer is 42."
    run = RunDir(tmp_path / "r")
    X.write(spec, run, 1, prompts, _outputs(prompts, good={2}), 1.7e9)
    model = X.model_name("r", 1)
    questions = fastchat.load_questions(str(run.export_questions(1, X.MT_BENCH)), None, None)
    answers = fastchat.load_model_answers(str(run.export_answers(1, X.MT_BENCH, model).parent))
    refs = fastchat.load_model_answers(str(run.export_references(1).parent))
    assert list(refs) == ["gpt-4"] and list(refs["gpt-4"]) == [83]
    prompts_file = Path(fastchat.__file__).parent / "data" / "judge_prompts.jsonl"
    judge_prompts = fastchat.load_judge_prompts(str(prompts_file))
    judges = {
        "default": fastchat.Judge("gpt-4", judge_prompts["single-v1"]),
        "math": fastchat.Judge("gpt-4", judge_prompts["single-math-v1"], ref_based=True),
    }
    fastchat.check_data(questions, answers, refs, [model], judges)

    shown = []

    class Client:
        def generate(self, messages):
            shown.append(messages[-1]["content"])
            return "Rating: [[7]]"

    (q,) = [q for q in questions if q["category"] == "math"]
    match = fastchat.MatchSingle(
        q, model, answers[model][83], judges["math"], ref_answer=refs["gpt-4"][83]
    )
    assert fastchat.play_a_match_single(match, output_file=None, client=Client())["score"] == 7
    assert "The answer is 42." in shown[0] and f"{GOOD} answer 2" in shown[0]


def test_real_smollm2_outputs_reach_fastchats_judge_thought_stripped(tmp_path, fastchat):
    """The committed real SmolLM2-135M outputs on MT-Bench's first turns (tests/smollm2.py),
    split as the evaluate phase splits them: FastChat's judge prompt shows each parsed
    response whole and none of its thought; a parse failure reaches it as an empty answer."""
    from smollm2 import arm

    from tpo.spec import GENERIC_SEPARATOR
    from tpo.thoughts import split_output

    real = [r for r in arm("generic") if r["sample"] == 0]
    prompts, outputs = [], []
    for r in real:
        qid = int(r["id"].removeprefix("mtbench-"))
        record = {"question_id": qid, "instruction": r["instruction"], "category": r["category"]}
        prompts.append(
            {
                "prompt_id": str(qid),
                "instruction": r["instruction"],
                "category": r["category"],
                "record": record,
            }
        )
        sp = split_output(r["text"], GENERIC_SEPARATOR)
        outputs.append(
            {
                "prompt_id": str(qid),
                "text": r["text"],
                "thought": sp.thought,
                "response": sp.response,
                "parse_ok": sp.parse_ok,
                "thought_tokens": len(sp.thought.split()),
                "response_tokens": len(sp.response.split()),
            }
        )
    assert any(o["parse_ok"] for o in outputs) and not all(o["parse_ok"] for o in outputs)
    run = RunDir(tmp_path / "smollm2")
    X.write(_spec(tmp_path), run, 1, prompts, outputs, 1.7e9)
    model = X.model_name("smollm2", 1)
    questions = fastchat.load_questions(str(run.export_questions(1, X.MT_BENCH)), None, None)
    answers = fastchat.load_model_answers(str(run.export_answers(1, X.MT_BENCH, model).parent))
    assert sorted(answers[model]) == sorted(int(r["id"].removeprefix("mtbench-")) for r in real)
    judge_prompts = fastchat.load_judge_prompts(
        str(Path(fastchat.__file__).parent / "data" / "judge_prompts.jsonl")
    )
    judge = fastchat.Judge("stand-in", judge_prompts["single-v1"])
    shown = []

    class Client:
        def generate(self, messages):
            shown.append(messages[-1]["content"])
            return "Rating: [[5]]"

    by_id = {int(o["prompt_id"]): o for o in outputs}
    for q in questions:
        match = fastchat.MatchSingle(q, model, answers[model][q["question_id"]], judge)
        fastchat.play_a_match_single(match, output_file=None, client=Client())
        o, prompt = by_id[q["question_id"]], shown[-1]
        answer = prompt.split("[The Start of Assistant's Answer]")[1].split(
            "[The End of Assistant's Answer]"
        )[0]
        assert answer.strip() == (o["response"] if o["parse_ok"] else "")
        if o["parse_ok"] and o["thought"].strip():
            assert o["thought"] not in prompt


def _alpaca_judge(prompts, **_):
    """Stands in for the judge API alpaca_eval would call: ranks first the output that carries
    the marker (AlpacaEval shuffles which side it calls model_1; identical outputs it ties
    itself, without asking)."""
    out = []
    for p in prompts:
        a1, a2 = re.findall(r'"answer": """(.*?)"""', p, re.S)
        r1 = 2 if GOOD in a2 and GOOD not in a1 else 1
        out.append(
            f"[{{'model': 'model_1', 'rank': {r1}}}, {{'model': 'model_2', 'rank': {3 - r1}}}]"
        )
    n = len(out)
    return {"completions": out, "price_per_example": [0.0] * n, "time_per_example": [0.0] * n}


def test_alpaca_eval_outputs_are_judged_by_alpaca_evals_own_pipeline(tmp_path, monkeypatch):
    import alpaca_eval  # the dev extra
    from alpaca_eval.annotators import base

    real = base.get_fn_completions
    monkeypatch.setattr(
        base,
        "get_fn_completions",
        lambda n: _alpaca_judge if n == "openai_completions" else real(n),
    )
    seed = _written_run(tmp_path, "r", 0, good=set())  # M(0): the reference
    _written_run(tmp_path, "r", 1, good={0, 2})
    config = Path(alpaca_eval.__file__).parent / "evaluators_configs" / "alpaca_eval_gpt4"
    rates = {}
    for with_thought in (False, True):
        model = X.model_name("r", 1, with_thought)
        board, _ = alpaca_eval.evaluate(
            model_outputs=str(seed.export_answers(1, X.ALPACA_EVAL, model)),
            reference_outputs=str(seed.export_answers(0, X.ALPACA_EVAL, X.model_name("r", 0))),
            annotators_config=str(config / "configs.yaml"),
            output_path=str(tmp_path / "ae" / str(with_thought)),
            precomputed_leaderboard=None,
            is_return_instead_of_print=True,
            fn_metric="get_winrate",
            sort_by="win_rate",
            caching_path=None,
        )
        assert list(board.index) == [model]  # the generator field names the model
        assert board.loc[model, "n_total"] == 4
        rates[with_thought] = board.loc[model, "win_rate"]
    # stripped: 2 marked wins, and the 2 plain answers equal M(0)'s, which alpaca_eval ties
    # only when it paired them on the right instruction
    assert rates[False] == pytest.approx(75.0)
    assert rates[True] == pytest.approx(100.0)  # the thought shows the marker every time


def _arena_v2_answers(answer_dir: Path) -> dict[str, dict]:
    """Arena-Hard-Auto v2.0 utils/completion.py load_model_answers: {file stem: {uid: row}}."""
    out = {}
    for f in sorted(answer_dir.glob("*.jsonl")):
        out[f.name[: -len(".jsonl")]] = {
            json.loads(line)["uid"]: json.loads(line) for line in f.read_text().splitlines()
        }
    return out


def _arena_style_row(metadata: dict) -> list[int]:
    """show_result.py's style features: ints as they are, dicts summed, in the file's order."""
    return [v if isinstance(v, int) else sum(v.values()) for v in metadata.values()]


def test_arena_hard_v2_answers_read_as_its_reader_reads_them(tmp_path):
    prompts = _prompts()
    outputs = _outputs(prompts, good={1})
    outputs[1]["response"] = (
        "# Title\n\n1. one\n2. two\n- x\n**bold** text\n```\n# not a header\n```"
    )
    outputs[1]["text"] = "thought\nHere is my response:\n" + outputs[1]["response"]
    run = RunDir(tmp_path / "r")
    X.write(_spec(tmp_path), run, 2, prompts, outputs, 1.7e9)
    model = X.model_name("r", 2)
    answers = _arena_v2_answers(run.export_answers(2, X.ARENA_HARD, model).parent)
    questions = A.read_jsonl(run.export_questions(2, X.ARENA_HARD))
    for q in questions:
        a = answers[model][q["uid"]]
        assert a["model"] == model
        assert q["category"] == "hard_prompt" and q["subcategory"] == "writing"
        assert a["messages"][0] == {"role": "user", "content": q["prompt"]}
        assert a["messages"][-1]["role"] == "assistant"
    assert answers[model][82]["messages"][-1]["content"]["answer"] == outputs[1]["response"]
    # token_len, headers, list items, bold: the fenced block's "#" line is not a header
    assert _arena_style_row(answers[model][82]["metadata"]) == [3, 1, 3, 1]
    thought = answers[X.model_name("r", 2, True)][82]
    assert thought["messages"][-1]["content"]["answer"] == outputs[1]["text"]
    assert _arena_style_row(thought["metadata"])[0] == 3 + 9


def test_arena_hard_v01_answers_read_as_its_reader_reads_them(tmp_path):
    prompts = _prompts()
    run = RunDir(tmp_path / "r")
    X.write(_spec(tmp_path), run, 1, prompts, _outputs(prompts, good={0}), 1.7e9)
    model = X.model_name("r", 1)
    f = run.export_answers(1, X.ARENA_HARD_V01, model)
    assert f.name == f"{model}.jsonl"
    answers = {
        json.loads(line)["question_id"]: json.loads(line) for line in f.read_text().splitlines()
    }
    for q in A.read_jsonl(run.export_questions(1, X.ARENA_HARD_V01)):
        turn = answers[q["question_id"]]["choices"][0]["turns"][0]
        assert q["turns"][0]["content"].startswith("Question")
        assert turn["token_len"] == 3 and "Here is my response" not in turn["content"]
    assert answers[81]["choices"][0]["turns"][0]["content"] == f"{GOOD} answer 0"
    assert answers[81]["model_id"] == model and answers[81]["tstamp"] == 1.7e9


# --------------------------------------------------------------------------- our side


def test_ids_fall_back_to_ours_and_a_failed_parse_exports_an_empty_answer(tmp_path):
    spec = _spec(tmp_path, dataset={"idField": None})
    prompts = _prompts()
    items = X.answers(spec, prompts, _outputs(prompts, good=set(), failed={3}))
    assert [a.question_id for a in items] == ["81", "82", "83", "84"]  # prompt ids, strings
    assert items[3].output(False) == "" and items[3].output(True).startswith("I think")
    assert {a.dataset for a in items} == {"mtbench-like"}  # the dataset file's name
    prompts[0]["record"]["dataset"] = "helpful_base"  # AlpacaEval's own set carries one
    assert X.answers(spec, prompts, _outputs(prompts, set()))[0].dataset == "helpful_base"


def test_mismatched_outputs_are_refused(tmp_path):
    prompts = _prompts()
    outputs = _outputs(prompts, set())
    outputs[0], outputs[1] = outputs[1], outputs[0]
    with pytest.raises(ValueError, match="paired with"):
        X.answers(_spec(tmp_path), prompts, outputs)


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(TESTS)}
    cmd = [sys.executable, "-m", "tpo.cli", "export", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)


def test_tpo_export_prints_the_files_and_names_what_is_missing(tmp_path):
    run = _written_run(tmp_path, "r", 0, good={1})
    _written_run(tmp_path, "r", 1, good={0})
    root = tmp_path / "runs"
    for fmt in X.FORMATS:
        for thought in (False, True):
            p = _cli(str(root), "--format", fmt, *(["--with-thought"] if thought else []))
            assert p.returncode == 0, p.stderr
            want = run.export_answers(1, fmt, X.model_name("r", 1, thought)).read_text()
            assert p.stdout == want  # the last evaluated iteration by default
    p = _cli(str(run.path), "--format", "mt_bench", "--iteration", "0", "--questions")
    assert p.returncode == 0 and [json.loads(x)["question_id"] for x in p.stdout.splitlines()] == [
        81,
        82,
        83,
        84,
    ]
    p = _cli(str(run.path), "--format", "mt_bench", "--iteration", "5")
    assert (
        p.returncode == 3 and "iteration 5 has no mt_bench export (not evaluated yet)" in p.stderr
    )
    p = _cli(str(run.path), "--format", "alpaca_eval", "--questions")
    assert p.returncode == 3 and "alpaca_eval has no question file" in p.stderr
    p = _cli(str(tmp_path), "--format", "alpaca_eval")
    assert p.returncode == 3 and "no run here" in p.stderr

    f = run.export_answers(1, X.MT_BENCH, X.model_name("r", 1))
    f.write_text(f.read_text().replace("answer 0", "answer 9"))  # damaged after evaluate
    p = _cli(str(run.path), "--format", "mt_bench")
    assert p.returncode == 3 and "changed or truncated" in p.stderr and not p.stdout


def test_two_runs_under_one_root_must_be_named(tmp_path):
    _written_run(tmp_path, "a", 0, good=set())
    _written_run(tmp_path, "b", 0, good=set())
    with pytest.raises(BadInput, match=r"holds 2 runs \(default/a, default/b\)"):
        X.resolve_run(tmp_path / "runs")


def test_the_evaluate_phase_writes_the_exports_of_its_candidate(tmp_path, monkeypatch):
    """prepare and evaluate M(0) in process, the real phases with only the engine replaced
    (generation has its own tests): the exports hold exactly the candidate arm's outputs,
    thought stripped and whole, and evaluate's DONE marker vouches for them."""
    from tpo import phases
    from tpo.thoughts import split_output

    def engine(spec, loc, prompts, arms, generation=None, arm_prompts=None):
        out = {}
        for arm, tp in arms.items():
            _, sep = tp.resolved()
            rows = []
            for k, p in enumerate((arm_prompts or {}).get(arm, prompts)):
                text = f"thinking {k}\n{sep}\n{arm} says {k}" if sep else f"{arm} says {k}"
                if sep and k == 1:
                    text = f"thinking {k}, never done"  # a parse failure
                sp = split_output(text, sep)
                rows.append(
                    {
                        "prompt_id": p["prompt_id"],
                        "text": text,
                        "thought": sp.thought,
                        "response": sp.response,
                        "parse_ok": sp.parse_ok,
                        "forced": False,
                        "thought_tokens": len(sp.thought.split()),
                        "response_tokens": len(sp.response.split()),
                    }
                )
            out[arm] = rows
        return out

    monkeypatch.setattr(phases, "_eval_outputs", engine)
    monkeypatch.setattr(phases, "check_model", lambda ref, what: None)
    ds = tmp_path / "ds.jsonl"
    rows = [{"qid": 100 + i, "instruction": f"Task {i}", "category": "c"} for i in range(12)]
    ds.write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = tiny_spec(tmp_path / "seed", ds)
    spec["dataset"].update(idField="qid", evalPrompts=4, promptsPerIteration=4)
    spec["thoughtPrompt"] = {"type": "generic"}
    run = RunDir(tmp_path / "runs" / "default" / "tiny")
    phases.run_phase("prepare", run, 0, spec_json=json.dumps(spec))
    phases.run_phase("evaluate", run, 0)

    cand = {r["prompt_id"]: r for r in A.read_jsonl(run.baseline_outputs("seed-generic"))}
    assert sorted(cand) == [str(q) for q in sorted(int(k) for k in cand)] and len(cand) == 4
    done = A.read_json(run.done("evaluate", 0))["_outputs"]
    for fmt in X.FORMATS:
        for thought in (False, True):
            f = run.export_answers(0, fmt, X.model_name("tiny", 0, thought))
            assert str(f.relative_to(run.iter_dir(0))) in done
    rows = A.read_jsonl(run.export_answers(0, X.MT_BENCH, X.model_name("tiny", 0)))
    whole = A.read_jsonl(run.export_answers(0, X.MT_BENCH, X.model_name("tiny", 0, True)))
    assert sorted(r["question_id"] for r in rows) == sorted(int(k) for k in cand)
    for r, w in zip(rows, whole, strict=True):
        c = cand[str(r["question_id"])]
        assert r["choices"][0]["turns"] == [c["response"] if c["parse_ok"] else ""]
        assert w["choices"][0]["turns"] == [c["text"]]
    assert any(r["choices"][0]["turns"] == [""] for r in rows)  # the failed parse
    assert all(
        "seed-generic says" in r["choices"][0]["turns"][0]
        for r in rows
        if r["choices"][0]["turns"][0]
    )
