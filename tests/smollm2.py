"""The committed real SmolLM2-135M-Instruct outputs (tests/data/smollm2/, made once by
scripts/smollm2_fixture.py; meta.json says model, package versions and settings)."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

DATA = Path(__file__).parent / "data" / "smollm2"


@cache
def rows(name: str) -> tuple[dict, ...]:
    """generations | judge_pairwise | judge_pointwise, one dict per line."""
    with (DATA / f"{name}.jsonl").open() as f:
        return tuple(json.loads(line) for line in f)


def generation(arm: str, qid: str, sample: int) -> dict:
    """One real output: arm generic | specific | generic-prefill, id like 'mtbench-91'."""
    (row,) = [
        r for r in rows("generations") if (r["arm"], r["id"], r["sample"]) == (arm, qid, sample)
    ]
    return row


def arm(name: str) -> list[dict]:
    return [r for r in rows("generations") if r["arm"] == name]
