"""spec.dataset through the `datasets` library (issue 16): local JSON / Parquet / CSV files, a
local directory laid out like a hub dataset repository, a hub id (offline here: a clear error,
no hang), dotted field paths, chat-format messages, and bad rows named by their index. The
files are written with pyarrow and the stdlib in tmp_path and read by the real library;
JSONL keeps its own line-numbered reader (tests/test_phases.py, tests/reliability)."""

from __future__ import annotations

import csv
import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tpo_operator import jobs as J

from tpo import artifacts as A
from tpo import phases
from tpo.artifacts import RunDir
from tpo.datasets_io import DATASET_TOKEN_ENV, get_path, prompt_records
from tpo.errors import EXIT_BAD_INPUT, BadInput
from tpo.judges import JudgeItem, reference_of
from tpo.spec import Dataset, SpecError, parse_spec

N = 12


def rows(n: int = N) -> list[dict]:
    """Chat-style rows, as hub datasets hold them (UltraFeedback-like)."""
    return [
        {
            "conversation": [{"role": "user", "content": f"What is {i} + {2 * i}?"}],
            "meta": {"uid": f"q{i}", "topic": ["math", "code"][i % 2]},
            "answer": str(3 * i),
        }
        for i in range(n)
    ]


def dataset(**fields) -> Dataset:
    return Dataset.model_validate(fields)


def spec_dict(ds: dict) -> dict:
    return {
        "model": {"path": "/models/seed"},
        "dataset": {"promptsPerIteration": 4, "evalPrompts": 4, **ds},
        "iterations": 2,
        "judge": {"type": "programmatic", "programmatic": {"function": "m:f"}},
    }


PATHS = {
    "instructionField": "conversation.0.content",
    "idField": "meta.uid",
    "categoryField": "meta.topic",
}


# --------------------------------------------------------------------------- local files


def test_parquet_file_with_dotted_field_paths(tmp_path):
    path = tmp_path / "questions.parquet"
    pq.write_table(pa.Table.from_pylist(rows()), path)
    recs = prompt_records(dataset(path=str(path), **PATHS))
    assert [r["instruction"] for r in recs[:2]] == ["What is 0 + 0?", "What is 1 + 2?"]
    assert [r["prompt_id"] for r in recs] == [f"q{i}" for i in range(N)]
    assert [r["category"] for r in recs[:2]] == ["math", "code"]
    assert recs[3]["record"]["answer"] == "9"  # the whole row, for judges and audits


def test_parquet_row_with_a_null_instruction_is_named_by_index(tmp_path):
    data = rows()
    data[3]["conversation"] = None
    path = tmp_path / "q.parquet"
    pq.write_table(pa.Table.from_pylist(data), path)
    with pytest.raises(BadInput) as e:
        prompt_records(dataset(path=str(path), **PATHS))
    assert str(e.value) == (
        f"{path} row 3: field 'conversation.0.content' (dataset.instructionField) missing"
    )


def test_json_file_row_that_is_not_a_string_is_named_by_index(tmp_path):
    data = [{"prompt": f"say {i}", "n": i} for i in range(N)]
    data[5]["prompt"] = "   "
    path = tmp_path / "q.json"
    path.write_text(json.dumps(data))  # one JSON array, not JSON lines
    with pytest.raises(BadInput) as e:
        prompt_records(dataset(path=str(path), instructionField="prompt"))
    msg = str(e.value)
    assert msg.startswith(f"{path} row 5: field 'prompt' (dataset.instructionField) must be a ")
    assert "non-empty string, got str" in msg


def test_csv_by_extension_and_by_explicit_format(tmp_path):
    for name, fmt in (("q.csv", None), ("q.tsv.txt", "csv")):
        path = tmp_path / name
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["id", "question", "topic"])
            w.writerows([[100 + i, f"Name {i} colours", "art"] for i in range(N)])
        extra = {"format": fmt} if fmt else {}
        recs = prompt_records(
            dataset(path=str(path), instructionField="question", idField="id", **extra)
        )
        assert [r["prompt_id"] for r in recs[:2]] == ["100", "101"]
        assert recs[0]["instruction"] == "Name 0 colours"


def test_unknown_extension_asks_for_a_format(tmp_path):
    path = tmp_path / "q.data"
    path.write_text("x")
    with pytest.raises(BadInput, match=r"set spec\.dataset\.format \(one of jsonl"):
        prompt_records(dataset(path=str(path)))


def test_a_file_the_library_cannot_parse_is_bad_input_naming_it(tmp_path):
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"PAR1 not really parquet")
    with pytest.raises(BadInput, match=rf"spec\.dataset\.path: {path}: cannot read as parquet"):
        prompt_records(dataset(path=str(path)))


def test_jsonl_takes_dotted_paths_and_keeps_line_numbers(tmp_path):
    path = tmp_path / "q.jsonl"
    data = rows()
    data[7]["conversation"] = [{"role": "user", "content": 42}]
    path.write_text("".join(json.dumps(r) + "\n" for r in data))
    with pytest.raises(BadInput) as e:
        prompt_records(dataset(path=str(path), **PATHS))
    assert str(e.value).startswith(
        f"{path}:8: field 'conversation.0.content' (dataset.instructionField) must be a "
        "non-empty string, got int 42"
    )
    path.write_text("".join(json.dumps(r) + "\n" for r in rows()))
    assert prompt_records(dataset(path=str(path), **PATHS))[2]["prompt_id"] == "q2"


def test_a_row_without_its_id_keeps_its_row_number(tmp_path):
    data = [{"q": f"x{i}", "id": f"id{i}"} for i in range(4)]
    del data[2]["id"]
    path = tmp_path / "q.parquet"
    pq.write_table(pa.Table.from_pylist(data), path)
    recs = prompt_records(dataset(path=str(path), instructionField="q", idField="id"))
    assert [r["prompt_id"] for r in recs] == ["id0", "id1", "R2", "id3"]


# --------------------------------------------------------------------------- messages


def test_messages_field_takes_the_first_user_turn(tmp_path):
    data = [
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": f"first question {i}"},
                {"role": "assistant", "content": "an answer"},
                {"role": "user", "content": "a follow-up"},
            ]
        }
        for i in range(N)
    ]
    path = tmp_path / "chat.parquet"
    pq.write_table(pa.Table.from_pylist(data), path)
    recs = prompt_records(dataset(path=str(path), messagesField="messages"))
    assert [r["instruction"] for r in recs[:2]] == ["first question 0", "first question 1"]


def test_messages_with_text_parts_and_without_a_user_turn(tmp_path):
    data = [
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "hello"}]}]},
        {"messages": [{"role": "user", "content": "second"}]},
        {"messages": [{"role": "assistant", "content": "only me"}]},
    ]
    path = tmp_path / "chat.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in data))
    ds = dataset(path=str(path), messagesField="messages")
    with pytest.raises(BadInput) as e:
        prompt_records(ds)
    assert str(e.value) == (
        f"{path}:3: field 'messages' (dataset.messagesField) has no message with role 'user'"
    )
    path.write_text("".join(json.dumps(r) + "\n" for r in data[:2]))
    assert [r["instruction"] for r in prompt_records(ds)] == ["hello", "second"]


# --------------------------------------------------------------------------- hub layout


def test_a_local_directory_laid_out_like_a_hub_repo_reads_its_train_split(tmp_path):
    repo = tmp_path / "repo"
    (repo / "data").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows()), repo / "data" / "train-00000-of-00001.parquet")
    test_rows = [{**r, "meta": {**r["meta"], "uid": "t" + r["meta"]["uid"]}} for r in rows(3)]
    pq.write_table(pa.Table.from_pylist(test_rows), repo / "data" / "test-00000-of-00001.parquet")
    recs = prompt_records(dataset(path=str(repo), **PATHS))
    assert [r["prompt_id"] for r in recs] == [f"q{i}" for i in range(N)]  # train only


def test_a_local_directory_with_a_readme_config(tmp_path):
    repo = tmp_path / "repo"
    (repo / "questions").mkdir(parents=True)
    (repo / "README.md").write_text(
        "---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n"
        '    path: "questions/*.jsonl"\n---\n# Questions\n'
    )
    lines = [json.dumps({"text": f"q {i}", "when": f"2024-01-{i + 1:02d}"}) for i in range(N)]
    (repo / "questions" / "part.jsonl").write_text("\n".join(lines) + "\n")
    recs = prompt_records(dataset(path=str(repo), instructionField="text"))
    assert [r["instruction"] for r in recs[:2]] == ["q 0", "q 1"]
    assert [r["prompt_id"] for r in recs[:2]] == ["R0", "R1"]


# --------------------------------------------------------------------------- the hub


def run_prepare(tmp_path: Path, ds: dict, env: dict[str, str]) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "tpo.cli", "phase", "prepare", "--run-dir", str(tmp_path / "r")]
    cmd += ["--iteration", "0", "--spec", json.dumps(spec_dict(ds))]
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=120, env={**os.environ, **env}
    )


def test_hub_id_in_offline_mode_fails_fast_with_a_clear_error_and_no_token(tmp_path):
    """HF_HUB_OFFLINE=1, nothing cached: bad input (exit 3), said at once (timeout: no hang),
    and the token passed by secret never appears in what the phase prints."""
    token = "hf_doNotPrintThisToken123"
    hub = {"id": "example-org/no-such-dataset", "tokenSecret": {"name": "hf", "key": "t"}}
    p = run_prepare(
        tmp_path,
        {"hub": hub},
        {"HF_HUB_OFFLINE": "1", DATASET_TOKEN_ENV: token, "HF_HOME": str(tmp_path / "hf")},
    )
    assert p.returncode == EXIT_BAD_INPUT, p.stderr
    assert "spec.dataset.hub: 'example-org/no-such-dataset': offline mode" in p.stderr
    assert token not in p.stdout + p.stderr
    assert not (tmp_path / "r" / "data").exists()


def test_hub_token_secret_without_its_env_is_bad_input():
    hub = {"id": "org/name", "tokenSecret": {"name": "hf", "key": "t"}}
    with pytest.raises(BadInput, match=rf"tokenSecret is set but {DATASET_TOKEN_ENV} is empty"):
        prompt_records(dataset(hub=hub), env={})


# --------------------------------------------------------------------------- prepare phase


def test_prepare_phase_reads_parquet_and_writes_json_rows(tmp_path):
    data = rows()
    for i, r in enumerate(data):
        r["asked"] = dt.datetime(2024, 1, 1 + i)  # an Arrow timestamp: JSON-safe on the way out
    path = tmp_path / "q.parquet"
    pq.write_table(pa.Table.from_pylist(data), path)
    spec = parse_spec(spec_dict({"path": str(path), **PATHS}))
    run = RunDir(tmp_path / "run")
    summary = phases.prepare(spec, run, 0, 0, 1)
    assert summary["dataset_size"] == N
    got = (
        A.read_jsonl(run.eval_prompts) + A.read_jsonl(run.prompts(1)) + A.read_jsonl(run.prompts(2))
    )
    assert sorted(r["prompt_id"] for r in got) == sorted(f"q{i}" for i in range(N))
    assert all(r["record"]["asked"].startswith("2024-01-") for r in got)


def test_prepare_counts_distinct_rows_against_the_need(tmp_path):
    path = tmp_path / "q.parquet"
    pq.write_table(pa.Table.from_pylist(rows(5)), path)
    spec = parse_spec(spec_dict({"path": str(path), **PATHS}))
    with pytest.raises(BadInput, match=rf"{path}: 5 distinct instructions, need 12"):
        phases.prepare(spec, RunDir(tmp_path / "run"), 0, 0, 1)


def test_reference_field_is_a_dotted_path_for_prepare_and_the_judge(tmp_path):
    data = [{"q": f"x{i}", "gold": {"answer": str(i)}} for i in range(4)]
    path = tmp_path / "q.parquet"
    pq.write_table(pa.Table.from_pylist(data), path)
    recs = prompt_records(
        dataset(path=str(path), instructionField="q", referenceField="gold.answer")
    )
    item = JudgeItem(recs[2]["instruction"], "r", recs[2]["record"])
    assert reference_of(item, "gold.answer") == "2"
    data[1]["gold"] = {"answer": None}
    pq.write_table(pa.Table.from_pylist(data), path)
    with pytest.raises(BadInput, match=rf"{path} row 1: field 'gold.answer' \(dataset.reference"):
        prompt_records(dataset(path=str(path), instructionField="q", referenceField="gold.answer"))


def test_get_path():
    row = {"a": [{"b": 1}], "x.y": 2, "c": {"d": None}}
    assert get_path(row, "a.0.b") == 1 and get_path(row, "x.y") == 2
    assert get_path(row, "c.d") is None
    assert repr(get_path(row, "a.1.b")) == repr(get_path(row, "a.b")) == "<missing>"


# --------------------------------------------------------------------------- spec and Job


@pytest.mark.parametrize(
    ("ds", "field", "words"),
    [
        ({}, "spec.dataset", "set exactly one of 'path' or 'hub'"),
        ({"path": "/d.jsonl", "hub": {"id": "o/n"}}, "spec.dataset", "exactly one"),
        ({"hub": {"id": "o/n"}, "format": "csv"}, "spec.dataset", "'format' is for a local"),
        ({"path": "/d.x", "format": "xml"}, "spec.dataset.format", "'jsonl'"),
        ({"hub": {"id": "not a/valid/id"}}, "spec.dataset.hub.id", "not a hub dataset id"),
        ({"hub": {"id": "o/n", "split": ""}}, "spec.dataset.hub.split", "at least 1"),
        (
            {"hub": {"id": "o/n", "tokenSecret": {"name": "Bad_Name", "key": "k"}}},
            "spec.dataset.hub.tokenSecret.name",
            "not a valid Kubernetes name",
        ),
        (
            {"path": "/d.jsonl", "messagesField": "messages", "instructionField": "prompt"},
            "spec.dataset",
            "set one of 'instructionField' or 'messagesField'",
        ),
    ],
)
def test_bad_dataset_specs_name_the_field(ds, field, words):
    data = spec_dict(ds)
    with pytest.raises(SpecError) as e:
        parse_spec(data)
    assert len(e.value.problems) == 1, e.value.problems
    where, _, message = e.value.problems[0].partition(": ")
    assert where == field and words in message, e.value.problems


def test_hub_dataset_spec_round_trips_through_the_wire_form():
    hub = {"id": "o/n", "revision": "v1", "config": "c", "split": "test"}
    hub["tokenSecret"] = {"name": "hf", "key": "t"}
    spec = parse_spec(spec_dict({"hub": hub, "messagesField": "messages"}))
    assert spec.dump()["dataset"]["hub"] == hub
    assert parse_spec(spec.dump()) == spec


def test_the_prepare_job_gets_the_dataset_token_by_reference_and_may_reach_the_hub():
    hub = {"id": "o/n", "tokenSecret": {"name": "hf-data", "key": "token"}}
    spec = parse_spec(spec_dict({"hub": hub}))

    def env_of(phase: str, iteration: int) -> dict[str, dict]:
        job = J.job(spec, "ns", "run", phase, iteration)
        return {e["name"]: e for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}

    prep = env_of("prepare", 0)
    assert prep[DATASET_TOKEN_ENV] == {
        "name": DATASET_TOKEN_ENV,
        "valueFrom": {"secretKeyRef": {"name": "hf-data", "key": "token"}},
    }
    assert "HF_HUB_OFFLINE" not in prep  # a local seed model, but prepare downloads the data
    gen = env_of("generate", 1)
    assert DATASET_TOKEN_ENV not in gen and gen["HF_HUB_OFFLINE"]["value"] == "1"
    local = parse_spec(spec_dict({"path": "/artifacts/q.parquet"}))
    job = J.job(local, "ns", "run", "prepare", 0)
    names = {e["name"] for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert "HF_HUB_OFFLINE" in names and DATASET_TOKEN_ENV not in names


def test_exports_name_a_hub_dataset_by_its_repository_name():
    from tpo.exports import dataset_name

    spec = parse_spec(spec_dict({"hub": {"id": "tatsu-lab/alpaca_eval"}}))
    assert dataset_name(spec, {"record": {}}) == "alpaca_eval"


def test_exports_read_a_dotted_id_field_as_the_questions_own_id():
    from tpo.exports import question_id

    prompt = {"prompt_id": "R0", "record": {"meta": {"qid": 81}}}
    assert question_id(prompt, "meta.qid") == 81
