"""The report's figure (tpo.report.figure): every iteration with iteration 0, the baseline
named for what it is, both y axes from 0. Checked on matplotlib's figure object."""

from __future__ import annotations

from pathlib import Path

import pytest

from tpo.local import load_manifest
from tpo.report import figure
from tpo.spec import TPORunSpec, TPORunStatus

ROOT = Path(__file__).parent.parent


def status() -> TPORunStatus:
    rows = [(0, 0.52, 0.47, 0.57, 30.9, 8.0), (1, 0.58, 0.53, 0.63, 35.0, 8.1),
            (2, 0.60, 0.55, 0.65, 38.0, 8.0)]  # fmt: skip
    keys = ("iteration", "win_rate", "win_rate_low", "win_rate_high", "mean_thought_tokens",
            "mean_response_tokens")  # fmt: skip
    return TPORunStatus(phase="Succeeded", history=[dict(zip(keys, r, strict=True)) for r in rows])


def spec(**evaluation) -> TPORunSpec:
    _, s = load_manifest(ROOT / "examples" / "tiny-cpu.yaml")
    return s.model_copy(update={"evaluation": s.evaluation.model_copy(update=evaluation)})


def xs_of(ax) -> set[float]:
    return {float(x) for line in ax.get_lines() for x in line.get_xdata()}


@pytest.mark.parametrize(
    ("evaluation", "named"),
    [
        ({"baseline": "seed"}, "vs the seed M0 (generic thought prompt)"),
        ({"baseline": "direct"}, "vs the seed M0 answering directly"),
    ],
)
def test_every_iteration_the_named_baseline_and_axes_from_zero(evaluation, named):
    import matplotlib.pyplot as plt

    fig = figure(status(), spec(**evaluation))
    try:
        win, length = fig.axes
        assert {0.0, 1.0, 2.0} <= xs_of(win)  # iteration 0 is on the win-rate panel
        assert {0.0, 1.0, 2.0} <= xs_of(length)  # and on the length panel
        legend = [t.get_text() for t in win.get_legend().get_texts()]
        assert any(named in t for t in legend), legend
        assert any("iter 0: seed thinking vs seed answering directly" in t for t in legend)
        assert named in win.get_title()
        assert all(ax.get_ylim()[0] == 0 for ax in (win, length))
        assert length.get_ylim()[1] > 38.0  # the longest thought fits
        assert [t.get_text() for t in win.get_xticklabels()] == ["0", "1", "2"]
    finally:
        plt.close(fig)
