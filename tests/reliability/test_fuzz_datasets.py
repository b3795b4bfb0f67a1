"""Dataset files with random corruption give errors naming the file and the first bad line.

Hypothesis (300 cases, derandomized) corrupts one line of a valid instruction dataset (cut it
short, insert bytes, flip a bit, replace it with JSON that is not an object, blank or retype the
instruction) and runs the real `prepare` phase on it. An independent line-by-line oracle says
which line is the first bad one; the error must name `<path>:<line>:`. A corruption that leaves
every line valid must be accepted. One case runs as `tpo phase prepare` to check the exit code
(3: bad input, the Job fails fast instead of retrying).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tpo import phases
from tpo.artifacts import ArtifactError, RunDir
from tpo.errors import EXIT_BAD_INPUT, BadInput
from tpo.spec import parse_spec

N = 12
FIELD = "instruction"


def dataset_lines() -> list[bytes]:
    return [
        json.dumps({FIELD: f"What is {i} + {2 * i}? ünï", "id": i}, ensure_ascii=False).encode()
        + b"\n"
        for i in range(N)
    ]


def spec_for(path: Path) -> dict:
    return {
        "model": {"path": "/models/seed"},
        "dataset": {"path": str(path), "promptsPerIteration": 2, "evalPrompts": 2},
        "iterations": 1,
        "judge": {"type": "programmatic", "programmatic": {"function": "m:f"}},
    }


def first_bad_line(data: bytes) -> int | None:
    """The oracle: the first line that is not a JSON object with a non-empty instruction."""
    for i, raw in enumerate(data.split(b"\n"), 1):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            return i
        if not text.strip():
            continue
        try:
            obj = json.loads(text)
        except ValueError:
            return i
        if not isinstance(obj, dict):
            return i
        value = obj.get(FIELD)
        if not isinstance(value, str) or not value.strip():
            return i
    return None


@st.composite
def corrupted(draw) -> tuple[bytes, int]:
    lines = dataset_lines()
    k = draw(st.integers(0, N - 1))
    line = lines[k]
    op = draw(st.sampled_from(["cut", "insert", "flip", "not-object", "instruction"]))
    if op == "cut":
        line = line[: draw(st.integers(0, len(line) - 1))] + b"\n"
    elif op == "insert":
        at = draw(st.integers(0, len(line) - 1))
        junk = draw(st.sampled_from([b"\xff", b"\xc3", b'"', b"{", b"]", b"\x00", b",", b"\\"]))
        line = line[:at] + junk + line[at:]
    elif op == "flip":
        at = draw(st.integers(0, len(line) - 2))
        line = line[:at] + bytes([line[at] ^ (1 << draw(st.integers(0, 7)))]) + line[at + 1 :]
    elif op == "not-object":
        line = draw(st.sampled_from([b"[1, 2]", b"42", b'"text"', b"null", b"true"])) + b"\n"
    else:
        value = draw(st.sampled_from(['""', '"   "', "null", "7", "[]", "{}"]))
        line = f'{{"{FIELD}": {value}, "id": {k}}}\n'.encode()
    lines[k] = line
    return b"".join(lines), k + 1


@settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(case=corrupted())
def test_corrupted_dataset_names_file_and_line(case):
    data, _ = case
    expected = first_bad_line(data)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "data.jsonl"
        path.write_bytes(data)
        spec = parse_spec(spec_for(path))
        run = RunDir(Path(d) / "run")
        try:
            phases.prepare(spec, run, 0, 0, 1)
        except (BadInput, ArtifactError) as e:
            msg = str(e)
            if expected is None:
                assert "distinct instructions" in msg, msg  # a duplicate, not a bad line
            else:
                assert msg.startswith(f"{path}:{expected}:"), (expected, msg)
            assert not run.prompts(1).exists()  # nothing half-prepared
            return
        assert expected is None, f"line {expected} is bad but prepare accepted the file"
        assert len(phases.A.read_jsonl(run.prompts(1))) == 2


def test_bad_dataset_line_exits_3_from_the_phase_entrypoint(tmp_path):
    lines = dataset_lines()
    lines[6] = lines[6][:20] + b"\n"
    ds = tmp_path / "data.jsonl"
    ds.write_bytes(b"".join(lines))
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "tpo.cli", "phase", "prepare", "--run-dir", str(run)]
    cmd += ["--iteration", "0", "--spec", json.dumps(spec_for(ds))]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env={**os.environ})
    assert p.returncode == EXIT_BAD_INPUT, p.stderr
    assert f"{ds}:7: invalid JSON" in p.stderr
    assert not RunDir(run).done("prepare", 0).exists()


@pytest.mark.parametrize("final_newline", [True, False])
def test_last_line_without_newline_is_fine_in_a_user_dataset(tmp_path, final_newline):
    data = b"".join(dataset_lines())
    ds = tmp_path / "data.jsonl"
    ds.write_bytes(data if final_newline else data.rstrip(b"\n"))
    run = RunDir(tmp_path / "run")
    phases.prepare(parse_spec(spec_for(ds)), run, 0, 0, 1)
    assert len(phases.A.read_jsonl(run.eval_prompts)) == 2
