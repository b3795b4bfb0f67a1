"""benchmarks/thought_budget.py and two_arms.py without their runs (minutes each): the manifests
they generate are valid TPORuns that `tpo run` orders as the comparisons need, the two scripts
share the unbudgeted run, and the report states a missed within-budget target."""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from unittest import mock

import pytest

from tpo.local import load_manifest, order_runs

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def tb(tmp_path, monkeypatch):
    # The scripts set cache variables at import (setdefault): keep them out of this process.
    with mock.patch.dict(os.environ):
        monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
        sys.modules.pop("thought_budget", None)
        mod = importlib.import_module("thought_budget")
    monkeypatch.setattr(mod, "WORK", tmp_path / "work")
    return mod


def test_manifests_share_the_unbudgeted_run_and_order_by_comparison(tb, tmp_path):
    runs = tb.manifests(tmp_path / "seed", 1, [16, 64])
    assert [(n, b) for n, _, b in runs] == [
        (tb.TWIN, None),
        (tb.TPO, None),
        ("tb-16", 16),
        ("tb-64", 64),
    ]
    loaded = {n: load_manifest(p) for n, p, _ in runs}
    specs = {n: s for n, (_, s) in loaded.items()}
    assert specs[tb.TWIN].thought_prompt.type == "none"
    assert specs[tb.TPO].evaluation.compare_with == tb.TWIN
    assert specs[tb.TPO].generation.thought_budget is None
    for b in (16, 64):
        assert specs[f"tb-{b}"].generation.thought_budget == b
        assert specs[f"tb-{b}"].evaluation.compare_with == tb.TPO
    assert all(s.iterations == 1 for s in specs.values())
    # given in any order, the twin runs first, then the TPO run the budgets compare with
    given = [(p, *loaded[n]) for n, p, _ in reversed(runs)]
    assert [m["name"] for _, m, _ in order_runs(given)][:2] == [tb.TWIN, tb.TPO]
    # one root per seed and iteration count: a 3-iteration run never meets a 1-iteration one
    assert tb.run_root("abc", 1) != tb.run_root("abc", 3)
    assert tb.results_path(ROOT / "x.md", 1).name == "x.md"
    assert tb.results_path(ROOT / "x.md", 3).name == "x-it3.md"


def test_targets_and_cost_interval(tb):
    rows = [
        {"budget": None},
        {"budget": 16, "within": 0.94, "eval_within": 1.0},
        {"budget": 32, "within": 1.0, "eval_within": None},
    ]
    lines = tb.targets(rows)
    assert lines[0].startswith("TARGET B=16 within_budget = 0.940") and lines[0].endswith("MISSED")
    assert lines[1].startswith("TARGET B=32 within_budget = 1.000") and lines[1].endswith("MET")
    assert tb.cost_cell((0.4, 0.35, 0.45, 1, 2, 3)) == "+0.100 [+0.050, +0.150]"
    assert tb.cost_cell(None) == "-"
