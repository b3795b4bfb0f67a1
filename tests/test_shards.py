"""Sharded generate and judge as Indexed Jobs run them: each pod finds its shard in
JOB_COMPLETION_INDEX + TPO_SHARDS, works on a deterministic slice, and the next phase merges
all shards or refuses: a missing or duplicated shard is an error, never a silent partial merge.

Real phases in-process (transformers backend, the tiny LM, a programmatic judge).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from tinyrun import tiny_spec, write_dataset

from tpo import artifacts as A
from tpo import phases as P
from tpo.artifacts import RunDir
from tpo.errors import BadInput
from tpo.spec import parse_spec
from tpo.status import merge_shards

K, PROMPTS = 3, 7  # 7 prompts over 2 shards: an uneven split (3 + 4)


def make_run(root: Path, model: Path, dataset: Path, gen_shards: int, judge_shards: int) -> RunDir:
    spec = tiny_spec(
        model,
        dataset,
        iterations=1,
        generation={"samples": K, "maxTokens": 12, "shards": gen_shards},
        judge={"shards": judge_shards},
    )
    spec["dataset"].update(promptsPerIteration=PROMPTS, evalPrompts=2)
    run = RunDir(root)
    P.run_phase("prepare", run, 0, spec_json=json.dumps(spec))
    return run


def as_pod(monkeypatch, name: str, run: RunDir, index: int, shards: int) -> dict:
    """Run a phase the way pod `index` of an Indexed Job with `shards` completions does."""
    monkeypatch.setenv("JOB_COMPLETION_INDEX", str(index))
    monkeypatch.setenv("TPO_SHARDS", str(shards))
    return P.run_phase(name, run, 1, P.shard_from_env())


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_lm):
    """The same prompts and seed generated as 1 shard and as 2 shards."""
    mp = pytest.MonkeyPatch()
    tmp = tmp_path_factory.mktemp("shards")
    dataset = write_dataset(tmp / "ds.jsonl", n=12)
    one = make_run(tmp / "one", tiny_lm, dataset, 1, 1)
    two = make_run(tmp / "two", tiny_lm, dataset, 2, 2)
    P.run_phase("generate", one, 1)
    summaries = [as_pod(mp, "generate", two, i, 2) for i in (0, 1)]
    mp.undo()
    return one, two, summaries


def reseal(done: Path, *files: Path) -> None:
    """The pod that wrote the (wrong) data wrote its DONE too: the digests match the data."""
    A.write_done(done, {k: v for k, v in A.read_json(done).items() if k != A.OUTPUTS}, files)


def spec_of(run: RunDir):
    return parse_spec(A.read_json(run.spec))


def test_merged_shards_cover_every_prompt_once_with_k_samples(runs):
    one, two, summaries = runs
    prompts = [p["prompt_id"] for p in A.read_jsonl(two.prompts(1))]
    assert prompts == [p["prompt_id"] for p in A.read_jsonl(one.prompts(1))]  # same seed
    assert len(prompts) == PROMPTS
    # each shard is a deterministic slice; the slices partition the prompts, in order
    slices = [[r["prompt_id"] for r in A.read_jsonl(two.samples(1, i))][::K] for i in (0, 1)]
    assert slices == [prompts[:3], prompts[3:]]
    merged = P.read_samples(spec_of(two), two, 1)
    single = P.read_samples(spec_of(one), one, 1)
    assert list(merged) == list(single) == prompts
    for rows in merged.values():
        assert [r["sample"] for r in rows] == list(range(K))
    # the operator's merge of the shards' summaries counts what one shard would count
    assert [s["shard"] for s in summaries] == [0, 1] and summaries[0]["shards"] == 2
    assert merge_shards(summaries)["samples"] == PROMPTS * K
    assert sum(s["prompts"] for s in summaries) == PROMPTS


def test_a_rerun_pod_of_a_finished_shard_does_not_redo_it(runs, monkeypatch):
    _, two, summaries = runs
    before = two.samples(1, 1).read_bytes()
    again = as_pod(monkeypatch, "generate", two, 1, 2)
    assert again == summaries[1] and two.samples(1, 1).read_bytes() == before


def test_the_shard_count_must_match_the_spec(runs, monkeypatch):
    _, two, _ = runs
    with pytest.raises(BadInput, match="the spec says 2 shard"):
        as_pod(monkeypatch, "generate", two, 0, 3)


def test_duplicated_shard_data_is_rejected(runs, tmp_path):
    _, two, _ = runs
    copy = RunDir(tmp_path / "dup")
    shutil.copytree(two.path, copy.path)
    # both pods wrote shard 0's slice (e.g. an index read wrong): every prompt twice
    shutil.copy(copy.samples(1, 0), copy.samples(1, 1))
    reseal(copy.done("generate", 1, 1), copy.samples(1, 1))
    with pytest.raises(BadInput, match="also appears in shard 0"):
        P.read_samples(spec_of(copy), copy, 1)
    # one stray row of another shard is enough
    rows = A.read_jsonl(two.samples(1, 1))
    A.write_jsonl(copy.samples(1, 1), [*rows, A.read_jsonl(two.samples(1, 0))[0]])
    reseal(copy.done("generate", 1, 1), copy.samples(1, 1))
    with pytest.raises(BadInput, match="also appears in shard 0"):
        P.run_phase("judge", copy, 1, (0, 2))
    assert not copy.done("judge", 1, 0).exists()


def test_judge_shards_merge_into_one_pair_set_for_train(runs, tmp_path, monkeypatch):
    _, two, _ = runs
    run = RunDir(tmp_path / "judged")
    shutil.copytree(two.path, run.path)
    spec = spec_of(run)
    as_pod(monkeypatch, "judge", run, 0, 2)
    with pytest.raises(BadInput, match=r"judge shard\(s\) \[1\] of 2 not done"):
        P.read_pairs(spec, run, 1)  # train waits for every judge shard
    as_pod(monkeypatch, "judge", run, 1, 2)
    pairs = P.read_pairs(spec, run, 1)
    ids = [p["prompt_id"] for p in pairs]
    assert len(ids) == len(set(ids)) and set(ids) <= set(P.read_samples(spec, run, 1))
    scored = A.read_jsonl(run.scores(1, 0)) + A.read_jsonl(run.scores(1, 1))
    assert len(scored) == PROMPTS * K  # every sample scored exactly once across the shards
    # a pair duplicated into the other shard's file is refused, not merged twice
    A.write_jsonl(run.pairs(1, 1), [*A.read_jsonl(run.pairs(1, 1)), pairs[0]])
    reseal(run.done("judge", 1, 1), run.scores(1, 1), run.pairs(1, 1))
    with pytest.raises(BadInput, match="duplicated in shard"):
        P.read_pairs(spec, run, 1)


def test_pairwise_judge_calls_add_up_and_per_prompt_is_over_all_shards():
    """Two judge shards of 3 and 4 prompts: calls and no-verdict counts add, the per-prompt cost
    is over all 7 prompts (not a mean of the shards' own per-prompt figures)."""
    shards = [
        {"phase": "judge", "iteration": 1, "shard": 0, "pairs": 3, "skipped_prompts": 0,
         "judge_calls": 60, "judge_calls_per_prompt": 20.0, "judge_no_verdict": 1},
        {"phase": "judge", "iteration": 1, "shard": 1, "pairs": 1, "skipped_prompts": 3,
         "judge_calls": 52, "judge_calls_per_prompt": 13.0, "judge_no_verdict": 0},
    ]  # fmt: skip
    merged = merge_shards(shards)
    assert (merged["judge_calls"], merged["judge_no_verdict"]) == (112, 1)
    assert merged["judge_calls_per_prompt"] == 16.0  # 112 / 7; a pairs-weighted mean gives 18.25
