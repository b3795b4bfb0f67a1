"""Automatic rho on length-biased judge scores (benchmarks/auto_rho.py, pinned seeds).

Every iteration (lengths growing ~15% each), `choose_rho` must land the relative gap
(mean chosen len - mean rejected len) / mean rejected len in [-5%, 0], where rho = 0 leaves
chosen responses clearly longer: the paper's length explosion, on recorded scores.
"""

from __future__ import annotations

import importlib.util
import itertools
import sys
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def bench():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "auto_rho.py"
    spec = importlib.util.spec_from_file_location("bench_auto_rho", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up while being built
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("seed", [0, 1])
def test_auto_rho_keeps_chosen_no_longer_than_rejected_every_iteration(bench, seed):
    rows = bench.run(4, seed=seed, prompts=300)
    lens = [r.mean_len for r in rows]
    for before, after in itertools.pairwise(lens):
        assert 1.10 < after / before < 1.20  # the simulated growth is the paper's ~15%
    for r in rows:
        assert r.fixed.rho == 0.0 and r.fixed.gap > 0.20, r  # uncontrolled: chosen longer
        assert not bench.in_band(r.fixed.gap)
        assert bench.in_band(r.auto.gap), r  # auto: -5% <= gap <= 0
        assert 0.0 < r.auto.rho <= 1.0


def test_auto_rho_is_zero_without_a_length_bias(bench):
    """No bias: chosen vs rejected lengths differ only by chance; where that chance already
    leaves chosen no longer, auto must not penalise length at all."""
    from tpo.scoring import choose_rho

    for t in range(1, 4):
        rec = bench.simulate_iteration(t, bias=0.0, prompts=300, seed=5)
        rho = choose_rho(rec.groups, band=bench.BAND)
        gap0 = bench.evaluate(rec, 0.0).gap
        if gap0 <= 0.0:
            assert rho == 0.0
        else:
            assert bench.in_band(bench.evaluate(rec, rho).gap)
            assert rho < 0.3  # a chance gap needs only a small penalty


def test_benchmark_script_prints_the_table_and_exits_zero(bench, capsys):
    assert bench.main(["--iterations", "2", "--prompts", "100"]) == 0
    out = capsys.readouterr().out
    assert "auto gap" in out and out.count("yes") == 2
