"""The run's report: a table, `report.md`, and a plot of the paper's two curves.

Win rate against the baseline and thought length, per iteration (Wu et al. 2024, figures 3-4),
built from the status history alone, so a report can be redrawn from `status.json` anywhere.
"""

from __future__ import annotations

from pathlib import Path

from tpo import artifacts as A
from tpo.artifacts import RunDir
from tpo.spec import IterationStatus, TPORunSpec, TPORunStatus


def _f(x: float | None, fmt: str = ".3f") -> str:
    return "-" if x is None else format(x, fmt)


def _wr(h: IterationStatus) -> str:
    if h.win_rate is None:
        return "-"
    return f"{h.win_rate:.3f} [{_f(h.win_rate_low)}, {_f(h.win_rate_high)}]"


def summary_table(status: TPORunStatus) -> str:
    head = (
        "| iter | pairs | parse fail | win rate [95% CI] | judge score (model / base) "
        "| thought tok | response tok |"
    )
    rows = [head, "|" + "---|" * 7]
    for h in status.history:
        label = "0 (seed: thoughts vs direct)" if h.iteration == 0 else str(h.iteration)
        rows.append(
            f"| {label} | {h.pairs if h.pairs is not None else '-'} "
            f"| {_f(h.eval_parse_failure_rate)} | {_wr(h)} "
            f"| {_f(h.eval_judge_mean_score)} / {_f(h.baseline_judge_mean_score)} "
            f"| {_f(h.mean_thought_tokens, '.1f')} | {_f(h.mean_response_tokens, '.1f')} |"
        )
    return "\n".join(rows)


def category_table(h: IterationStatus) -> str:
    if not h.categories:
        return ""
    rows = ["| category | n | win rate [95% CI] |", "|---|---|---|"]
    for c in h.categories:
        if c.win_rate is None:
            cell = c.note or "-"
        else:
            cell = f"{c.win_rate:.3f} [{_f(c.win_rate_low)}, {_f(c.win_rate_high)}]"
        rows.append(f"| {c.category} | {c.n} | {cell} |")
    return "\n".join(rows)


def plot(run: RunDir, status: TPORunStatus) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hist = [h for h in status.history if h.iteration >= 1 and h.win_rate is not None]
    xs = [h.iteration for h in hist]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.6))
    if hist:
        lo = [h.win_rate - (h.win_rate_low or h.win_rate) for h in hist]
        hi = [(h.win_rate_high or h.win_rate) - h.win_rate for h in hist]
        ax1.errorbar(xs, [h.win_rate for h in hist], yerr=[lo, hi], marker="o", capsize=4)
    ax1.axhline(0.5, color="grey", linestyle="--", linewidth=1)
    ax1.set(xlabel="iteration", ylabel="win rate vs baseline", title="Win rate (95% CI)")
    ax1.set_ylim(0, 1)
    ax2.plot(xs, [h.mean_thought_tokens for h in hist], marker="o", label="thought")
    ax2.plot(xs, [h.mean_response_tokens for h in hist], marker="s", label="response")
    ax2.set(xlabel="iteration", ylabel="mean tokens", title="Length per iteration")
    ax2.legend()
    for ax in (ax1, ax2):
        ax.set_xticks(xs or [1])
    fig.tight_layout()
    with A.atomic_path(run.plot) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return run.plot


def write_report(run: RunDir, status: TPORunStatus, spec: TPORunSpec) -> Path:
    plot(run, status)
    last = max(status.history, key=lambda h: h.iteration) if status.history else None
    parts = [
        f"# TPO run report: {run.path.name}",
        "",
        f"Phase **{status.phase}** after {spec.iterations} iteration(s); thought prompt "
        f"`{spec.thought_prompt.type}`, K={spec.generation.samples}, judge `{spec.judge.type}`, "
        f"baseline `{spec.evaluation.baseline}`, loss {spec.training.loss_type}.",
        "",
        summary_table(status),
        "",
        "Iteration 0 compares the seed prompted to think against the same seed answering "
        "directly (the paper's first row). Ties count half.",
        "",
        "![win rate and thought length per iteration](report.png)",
    ]
    if last and last.categories:
        parts += ["", f"## Per category, iteration {last.iteration}", "", category_table(last)]
    timing = [
        f"| {h.iteration} | "
        + ", ".join(f"{k} {v:.1f}s" for k, v in h.phase_seconds.items())
        + " |"
        for h in status.history
    ]
    parts += ["", "## Phase durations", "", "| iter | phases |", "|---|---|", *timing, ""]
    A.write_text(run.report, "\n".join(parts))
    return run.report
