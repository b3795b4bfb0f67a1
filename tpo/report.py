"""The run's report: a table, `report.md`, and a plot of the paper's two curves.

Win rate against the baseline and thought length, per iteration (Wu et al. 2024, figures 3-4),
built from the status history alone, so a report can be redrawn from `status.json` anywhere.
"""

from __future__ import annotations

from pathlib import Path

from tpo import artifacts as A
from tpo.artifacts import RunDir
from tpo.spec import CategoryWinRate, IterationStatus, TPORunSpec, TPORunStatus


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


def _cat_cell(c: CategoryWinRate | None) -> str:
    """A rate with its interval, or the note saying why there is none ("too few prompts")."""
    if c is None:
        return "-"
    if c.win_rate is None:
        return c.note or "-"
    return f"{c.win_rate:.3f} [{_f(c.win_rate_low)}, {_f(c.win_rate_high)}]"


def category_table(h: IterationStatus) -> str:
    if not h.categories:
        return ""
    rows = ["| category | n | win rate [95% CI] |", "|---|---|---|"]
    for c in h.categories:
        rows.append(f"| {c.category} | {c.n} | {_cat_cell(c)} |")
    return "\n".join(rows)


def _by_category(columns: list[tuple[str, list[CategoryWinRate]]]) -> str:
    """Categories as rows, one column per (label, categories): n is the eval prompts."""
    names = sorted({c.category for _, cats in columns for c in cats})
    if not names:
        return ""
    head = "| category | n | " + " | ".join(f"{label} [95% CI]" for label, _ in columns) + " |"
    rows = [head, "|---|---|" + "---|" * len(columns)]
    for name in names:
        cells = [next((c for c in cats if c.category == name), None) for _, cats in columns]
        n = max((c.n for c in cells if c is not None), default=0)
        rows.append(f"| {name} | {n} | " + " | ".join(_cat_cell(c) for c in cells) + " |")
    return "\n".join(rows)


def category_history_table(status: TPORunStatus) -> str:
    """Win rate vs the baseline per category (rows) and iteration (columns)."""
    cols = [
        ("iter 0 (seed)" if h.iteration == 0 else f"iter {h.iteration}", h.categories)
        for h in status.history
        if h.categories
    ]
    return _by_category(cols)


def comparison_table(status: TPORunStatus) -> str:
    """This run's M(t) against the compareWith run's M(t), per iteration."""
    hist = [h for h in status.history if h.compare is not None]
    if not hist:
        return ""
    rows = [
        "| iter | win rate vs other [95% CI] | wins / ties / losses | judge score (this / other) "
        "| thought tok (this / other) | response tok (this / other) |",
        "|---|---|---|---|---|---|",
    ]
    for h in hist:
        c = h.compare
        assert c is not None
        if c.win_rate is None:
            rows.append(f"| {h.iteration} | not compared: {c.note or '-'} | | | | |")
            continue
        rows.append(
            f"| {h.iteration} | {c.win_rate:.3f} [{_f(c.win_rate_low)}, {_f(c.win_rate_high)}] "
            f"| {c.wins} / {c.ties} / {c.losses} "
            f"| {_f(h.eval_judge_mean_score)} / {_f(c.judge_mean_score)} "
            f"| {_f(h.mean_thought_tokens, '.1f')} / {_f(c.mean_thought_tokens, '.1f')} "
            f"| {_f(h.mean_response_tokens, '.1f')} / {_f(c.mean_response_tokens, '.1f')} |"
        )
    return "\n".join(rows)


def comparison_section(status: TPORunStatus, spec: TPORunSpec) -> list[str]:
    other = spec.evaluation.compare_with
    table = comparison_table(status)
    if not other or not table:
        return []
    parts = [
        "",
        f"## Two arms: this run vs `{other}`",
        "",
        f"M(t) of this run against M(t) of `{other}` on the same eval prompts, each prompted "
        f"as its own run prompts it, judged by this run's judge (ties count half).",
        "",
        table,
    ]
    last = max(
        (h for h in status.history if h.compare and h.compare.categories),
        key=lambda h: h.iteration,
        default=None,
    )
    if last is not None and last.compare is not None:
        cols = [
            (f"vs baseline, iter {last.iteration}", last.categories),
            (f"vs {other}, iter {last.iteration}", last.compare.categories),
        ]
        parts += ["", f"Per category, iteration {last.iteration}:", "", _by_category(cols)]
    return parts


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
    if last and any(h.categories for h in status.history):
        parts += [
            "",
            "## Per category: win rate vs the baseline",
            "",
            category_history_table(status),
            "",
            f"Categories with fewer than {spec.evaluation.min_category_prompts} eval prompts "
            "(evaluation.minCategoryPrompts) get no rate: a handful of prompts is noise.",
        ]
    parts += comparison_section(status, spec)
    budget = spec.generation.thought_budget
    if budget is not None:
        rows = [h for h in status.history if h.within_budget_rate is not None]
        parts += [
            "",
            f"## Thought budget: {budget} tokens",
            "",
            "| iter | thoughts within budget | separator forced |",
            "|---|---|---|",
            *(
                f"| {h.iteration} | {_f(h.within_budget_rate)} | {_f(h.forced_thought_rate)} |"
                for h in rows
            ),
        ]
    timing = [
        f"| {h.iteration} | "
        + ", ".join(f"{k} {v:.1f}s" for k, v in h.phase_seconds.items())
        + " |"
        for h in status.history
    ]
    parts += ["", "## Phase durations", "", "| iter | phases |", "|---|---|", *timing, ""]
    A.write_text(run.report, "\n".join(parts))
    return run.report
