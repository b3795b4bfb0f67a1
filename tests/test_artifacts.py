"""Artifact writes are atomic, readers name file:line, DONE markers round-trip."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tpo.artifacts import (
    ArtifactError,
    RunDir,
    atomic_dir,
    atomic_path,
    iter_jsonl_numbered,
    read_done,
    read_json,
    read_jsonl,
    write_done,
    write_json,
    write_jsonl,
)


class Boom(RuntimeError):
    pass


def listing(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir())


def test_atomic_path_failure_leaves_no_partial_file(tmp_path):
    target = tmp_path / "out" / "x.json"
    with pytest.raises(Boom), atomic_path(target) as tmp:
        tmp.write_text('{"half": ')
        raise Boom
    assert not target.exists()
    assert listing(target.parent) == []  # the temp file is gone too


def test_atomic_path_failure_keeps_previous_version(tmp_path):
    target = tmp_path / "x.jsonl"
    write_jsonl(target, [{"a": 1}])
    with pytest.raises(Boom), atomic_path(target) as tmp:
        tmp.write_text('{"a": 2}\n{"a":')
        raise Boom
    assert read_jsonl(target) == [{"a": 1}]
    assert listing(tmp_path) == ["x.jsonl"]


def test_write_jsonl_generator_failure_is_atomic(tmp_path):
    target = tmp_path / "rows.jsonl"

    def rows():
        yield {"i": 0}
        raise Boom

    with pytest.raises(Boom):
        write_jsonl(target, rows())
    assert listing(tmp_path) == []


def test_atomic_dir_replaces_only_on_success(tmp_path):
    target = tmp_path / "model"
    with atomic_dir(target) as d:
        (d / "weights").write_text("v1")
    with pytest.raises(Boom), atomic_dir(target) as d:
        (d / "weights").write_text("v2-partial")
        raise Boom
    assert (target / "weights").read_text() == "v1"
    assert listing(tmp_path) == ["model"]
    with atomic_dir(target) as d:
        (d / "weights").write_text("v2")
    assert (target / "weights").read_text() == "v2"


def test_jsonl_round_trip_unicode(tmp_path):
    rows = [{"text": "Gedanke → Antwort ✓", "n": i} for i in range(3)]
    assert write_jsonl(tmp_path / "r.jsonl", rows) == 3
    assert read_jsonl(tmp_path / "r.jsonl") == rows


def test_malformed_line_names_file_and_line(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"a": 1}\n\n{"a": 2,}\n{"a": 3}\n')
    with pytest.raises(ArtifactError) as e:
        read_jsonl(p)
    assert f"{p}:3: invalid JSON" in str(e.value)


def test_non_object_and_missing_fields_name_line(tmp_path):
    p = tmp_path / "rows.jsonl"
    p.write_text('{"a": 1}\n[1, 2]\n')
    with pytest.raises(ArtifactError, match=r"rows\.jsonl:2: expected a JSON object, got list"):
        read_jsonl(p)
    p.write_text('{"a": 1, "b": 2}\n{"a": 1}\n')
    with pytest.raises(ArtifactError, match=r"rows\.jsonl:2: missing field\(s\) b"):
        read_jsonl(p, required=["a", "b"])


def test_truncated_last_line_detected(tmp_path):
    p = tmp_path / "samples.jsonl"
    write_jsonl(p, [{"i": 0}, {"i": 1}])
    full = p.read_bytes()
    p.write_bytes(full + b'{"i": 2}')  # a complete object, but the write never finished
    with pytest.raises(ArtifactError, match=r"samples\.jsonl:3: truncated line"):
        read_jsonl(p)
    p.write_bytes(full[:-5])  # cut mid-object
    with pytest.raises(ArtifactError, match=r"samples\.jsonl:2: truncated line"):
        read_jsonl(p)


def test_user_dataset_may_omit_final_newline(tmp_path):
    p = tmp_path / "user.jsonl"
    p.write_text('{"instruction": "a"}\n{"instruction": "b"}')
    assert [n for n, _ in iter_jsonl_numbered(p, final_newline=False)] == [1, 2]


def test_missing_and_non_utf8(tmp_path):
    with pytest.raises(ArtifactError, match="missing"):
        read_jsonl(tmp_path / "nope.jsonl")
    with pytest.raises(ArtifactError, match="is a directory"):
        read_jsonl(tmp_path)
    p = tmp_path / "latin1.jsonl"
    p.write_bytes(b'{"a": 1}\n{"a": "\xe9"}\n')
    with pytest.raises(ArtifactError, match=r"latin1\.jsonl:\d+: not UTF-8"):
        read_jsonl(p)


def test_non_utf8_names_the_right_line(tmp_path):
    p = tmp_path / "latin1.jsonl"
    p.write_bytes(b'{"a": 1}\n{"a": "\xe9"}\n')
    with pytest.raises(ArtifactError, match=r"latin1\.jsonl:2: not UTF-8"):
        read_jsonl(p)


def test_read_json_errors(tmp_path):
    p = tmp_path / "s.json"
    p.write_text('{\n  "a": 1,\n  oops\n}\n')
    with pytest.raises(ArtifactError, match=r"s\.json: line 3: invalid JSON"):
        read_json(p)
    write_json(p, {"b": [1, 2]})
    assert read_json(p) == {"b": [1, 2]}


def test_done_marker_round_trip(tmp_path):
    run = RunDir.of(tmp_path, "ns", "demo")
    marker = run.done("judge", 2, shard=1)
    assert read_done(marker) is None
    write_done(marker, {"pairs": 17, "rho": 0.25})
    assert read_done(marker) == {"pairs": 17, "rho": 0.25}
    assert json.loads(marker.read_text())["pairs"] == 17


def test_corrupt_done_marker_is_an_error(tmp_path):
    marker = RunDir.of(tmp_path, "ns", "demo").done("train", 1)
    marker.parent.mkdir(parents=True)
    marker.write_text("[1]")
    with pytest.raises(ArtifactError, match="expected a JSON object"):
        read_done(marker)
    marker.write_text('{"half":')
    with pytest.raises(ArtifactError, match="invalid JSON"):
        read_done(marker)


def test_run_dir_layout_is_distinct_per_phase_shard_and_iteration(tmp_path):
    run = RunDir.of(tmp_path, "ns", "demo")
    assert run.path == tmp_path / "ns" / "demo"
    paths = [
        run.spec,
        run.status,
        run.prompts(1),
        run.prompts(2),
        run.eval_prompts,
        run.samples(1, 0),
        run.samples(1, 1),
        run.scores(1, 0),
        run.pairs(1, 0),
        run.model(1),
        run.model(2),
        run.checkpoints(1),
        run.eval_result(1),
        run.eval_outputs(1),
        run.done("prepare", 0),
        run.done("generate", 1, 0),
        run.done("generate", 1, 1),
        run.done("judge", 1, 0),
        run.done("train", 1),
        run.report,
    ]
    assert len(set(paths)) == len(paths)
    assert all(p.is_relative_to(run.path) for p in paths)
    assert run.done("prepare", 0).parent == run.path  # run-level marker
