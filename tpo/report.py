"""The run's report: a table, `report.md`, and a plot of the paper's two curves.

Win rate against the baseline and thought length, per iteration (Wu et al. 2024, figures 3-4),
built from the status history alone, so a report can be redrawn from `status.json` anywhere.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tpo import artifacts as A
from tpo.artifacts import RunDir
from tpo.spec import CategoryWinRate, CompareStatus, IterationStatus, TPORunSpec, TPORunStatus


def _f(x: float | None, fmt: str = ".3f") -> str:
    return "-" if x is None else format(x, fmt)


def _wr(h: IterationStatus) -> str:
    if h.win_rate is None:
        return "-"
    return f"{h.win_rate:.3f} [{_f(h.win_rate_low)}, {_f(h.win_rate_high)}]"


def _lc(x: IterationStatus | CategoryWinRate | CompareStatus) -> str:
    """LC win rate with its bootstrap interval (docs/length-controlled-win-rate.md)."""
    if x.lc_win_rate is None:
        return "-"
    return f"{x.lc_win_rate:.3f} [{_f(x.lc_win_rate_low)}, {_f(x.lc_win_rate_high)}]"


def _n(x: int | None) -> str:
    return "-" if x is None else str(x)


def _outcomes(h: IterationStatus) -> str:
    """wins / ties / losses / both failed: the first three are what the win rate is over."""
    if h.wins is None:
        return "-"
    return f"{h.wins} / {h.ties} / {h.losses} / {_n(h.both_failed)}"


SUMMARY_LEGEND = (
    "Columns, and what each is over: *pairs (yield)*: preference pairs, and the share of the "
    "iteration's training prompts that gave one; *parse fail (gen)*: training samples without a "
    "usable response, over all samples; *cut*: training samples cut at `generation.maxTokens`, "
    "over all samples; *no verdict*: judge replies without a verdict, over the judge's replies; "
    "*eval parse fail (model / base)*: eval outputs without a usable response, the candidate's "
    "and the baseline's, each over all eval prompts; *W / T / L / both failed*: eval prompts the "
    "candidate won, tied, lost, and where neither side parsed; *win rate*: over the n rated "
    "prompts (wins + ties + losses; ties count half): a prompt where both sides failed to parse "
    "is no half win and is left out; *LC win rate*: length-controlled, over the same prompts: "
    "the win rate a GLM of the judge's preference on the response length difference predicts at "
    "equal length, with a bootstrap interval (docs/length-controlled-win-rate.md); far below the "
    "raw rate, the wins came with longer responses; *judge score*: mean pointwise score over all "
    "eval prompts "
    "(an unparsed output scores 0); *thought / response tok*: means over the candidate's parsed "
    "eval outputs (over the training samples' parsed ones before evaluation)."
)


def summary_table(status: TPORunStatus) -> str:
    head = (
        "| iter | pairs (yield) | parse fail (gen) | cut | no verdict "
        "| eval parse fail (model / base) | W / T / L / both failed | win rate [95% CI] "
        "| LC win rate [95% CI] | n "
        "| judge score (model / base) | thought tok | response tok |"
    )
    rows = [head, "|" + "---|" * 13]
    for h in status.history:
        label = "0 (seed: thoughts vs direct)" if h.iteration == 0 else str(h.iteration)
        pairs = "-" if h.pairs is None else f"{h.pairs} ({_f(h.pair_yield, '.2f')})"
        rows.append(
            f"| {label} | {pairs} | {_f(h.parse_failure_rate)} | {_f(h.truncated_rate)} "
            f"| {_f(h.judge_no_verdict_rate)} "
            f"| {_f(h.eval_parse_failure_rate)} / {_f(h.baseline_parse_failure_rate)} "
            f"| {_outcomes(h)} | {_wr(h)} | {_lc(h)} | {_n(h.n)} "
            f"| {_f(h.eval_judge_mean_score)} / {_f(h.baseline_judge_mean_score)} "
            f"| {_f(h.mean_thought_tokens, '.1f')} | {_f(h.mean_response_tokens, '.1f')} |"
        )
    return "\n".join(rows)


def warnings_section(status: TPORunStatus) -> list[str]:
    """Every guard warning the run recorded (docs/guards.md), as `tpo run` printed it."""
    from tpo.status import warning_line, warnings_of

    found = warnings_of(status)
    if not found:
        return []
    return ["", "## Guard warnings", "", *(f"- {warning_line(t, w)}" for t, w in found)]


def _cat_cell(c: CategoryWinRate | None) -> str:
    """A rate with its interval, or the note saying why there is none ("too few prompts")."""
    if c is None:
        return "-"
    if c.win_rate is None:
        return c.note or "-"
    return f"{c.win_rate:.3f} [{_f(c.win_rate_low)}, {_f(c.win_rate_high)}]"


def category_table(h: IterationStatus) -> str:
    """One iteration's categories with their counts: the rate is over n (wins + ties + losses);
    parse failure rates over all the category's eval prompts."""
    if not h.categories:
        return ""
    rows = [
        "| category | n | win rate [95% CI] | LC win rate [95% CI] | prompts "
        "| W / T / L / both failed | eval parse fail (model / base) |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in h.categories:
        counts = "-" if c.wins is None else f"{c.wins} / {c.ties} / {c.losses} / {c.both_failed}"
        rows.append(
            f"| {c.category} | {c.n} | {_cat_cell(c)} | {_lc(c)} | {_n(c.prompts)} | {counts} "
            f"| {_f(c.parse_failure_rate)} / {_f(c.baseline_parse_failure_rate)} |"
        )
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
        "| iter | win rate vs other [95% CI] | LC win rate [95% CI] | W / T / L / both failed "
        "| judge score (this / other) | thought tok (this / other) | response tok (this / other) |",
        "|---|---|---|---|---|---|---|",
    ]
    for h in hist:
        c = h.compare
        assert c is not None
        if c.win_rate is None:
            rows.append(f"| {h.iteration} | not compared: {c.note or '-'} | | | | | |")
            continue
        rows.append(
            f"| {h.iteration} | {c.win_rate:.3f} [{_f(c.win_rate_low)}, {_f(c.win_rate_high)}] "
            f"| {_lc(c)} | {c.wins} / {c.ties} / {c.losses} / {_n(c.both_failed)} "
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
        f"as its own run prompts it, judged by this run's judge (ties count half; prompts where "
        f"neither side parsed are counted, not rated).",
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


def baseline_label(spec: TPORunSpec) -> str:
    """What iterations 1..T are judged against, in words (evaluation.baseline)."""
    ev = spec.evaluation
    if ev.baseline == "seed":
        return f"the seed M0 ({spec.thought_prompt.type} thought prompt)"
    if ev.baseline == "direct":
        return "the seed M0 answering directly (no thoughts)"
    ref = ev.baseline_model
    name = (ref.path or ref.hub_id or "") if ref else ""
    return f"baseline model {Path(name).name or name}"


def _label(ax: Any, x: float, y: float | None, text: str, color: str) -> None:
    """A value written above its point (or its interval), so the plot reads without a ruler."""
    if y is not None:
        ax.annotate(text, (x, y), textcoords="offset points", xytext=(0, 6), ha="center",
                    fontsize=8, color=color)  # fmt: skip


def figure(status: TPORunStatus, spec: TPORunSpec) -> Any:
    """The report's figure: win rate and lengths for every iteration, iteration 0 included.

    Iteration 0 is its own comparison (the seed prompted to think vs the same seed answering
    directly: the paper's first row), so it gets its own marker and legend entry; iterations
    1..T are M(t) vs the spec's baseline, named. Both y axes start at 0."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hist = sorted(status.history, key=lambda h: h.iteration)
    rated = [h for h in hist if h.iteration >= 1 and h.win_rate is not None]
    seed_row = next((h for h in hist if h.iteration == 0 and h.win_rate is not None), None)
    base = baseline_label(spec)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 5))

    def ci(rows: list[IterationStatus]) -> list[list[float]]:
        return [
            [r.win_rate - (r.win_rate_low if r.win_rate_low is not None else r.win_rate)
             for r in rows if r.win_rate is not None],
            [(r.win_rate_high if r.win_rate_high is not None else r.win_rate) - r.win_rate
             for r in rows if r.win_rate is not None],
        ]  # fmt: skip

    if seed_row is not None:
        ax1.errorbar([0], [seed_row.win_rate], yerr=ci([seed_row]), marker="s", color="grey",
                     mfc="white", capsize=4, linestyle="none",
                     label="iter 0: seed thinking vs seed answering directly")  # fmt: skip
        top = seed_row.win_rate_high if seed_row.win_rate_high is not None else seed_row.win_rate
        _label(ax1, 0, top, f"{seed_row.win_rate:.3f}", "grey")
    if rated:
        ax1.errorbar([h.iteration for h in rated], [h.win_rate for h in rated], yerr=ci(rated),
                     marker="o", color="C0", capsize=4, label=f"M(t) vs {base}")  # fmt: skip
        for h in rated:
            top = h.win_rate_high if h.win_rate_high is not None else h.win_rate
            _label(ax1, h.iteration, top, f"{h.win_rate:.3f}", "C0")
    lc = [h for h in hist if h.lc_win_rate is not None]
    if lc:  # beside the raw rate: what it would be at equal response length
        ax1.plot([h.iteration for h in lc], [h.lc_win_rate for h in lc], marker="D", mfc="white",
                 color="C4", linestyle=":", label="length-controlled (LC) win rate")  # fmt: skip
    other = spec.evaluation.compare_with
    versus = [h for h in hist if h.compare is not None and h.compare.win_rate is not None]
    if other and versus:
        ax1.plot([h.iteration for h in versus], [h.compare.win_rate for h in versus],  # type: ignore[union-attr]
                 marker="^", color="C3", label=f"M(t) vs {other}'s M(t) (compareWith)")  # fmt: skip
    ax1.axhline(0.5, color="grey", linestyle="--", linewidth=1, label="0.5: even")
    ax1.set(xlabel="iteration", ylabel="win rate (ties count half)",
            title=f"Win rate vs {base}, 95% CI")  # fmt: skip
    ax1.set_ylim(0, 1)
    # Legends under the panels: wide intervals (few eval prompts) leave no free corner inside.
    below = {"loc": "upper center", "bbox_to_anchor": (0.5, -0.16), "fontsize": 8, "ncol": 1}
    ax1.legend(**below)

    for field, name, marker, color in (
        ("mean_thought_tokens", "thought", "o", "C1"),
        ("mean_response_tokens", "response", "s", "C2"),
    ):
        pts = [(h.iteration, getattr(h, field)) for h in hist if getattr(h, field) is not None]
        if pts:
            ax2.plot([x for x, _ in pts], [y for _, y in pts], marker=marker, color=color,
                     label=f"{name} tokens")  # fmt: skip
            for x, y in pts:
                _label(ax2, x, y, f"{y:.1f}", color)
    thinks = spec.thought_prompt.type != "none"
    for h in hist:  # evaluated, but no output parsed: say so rather than leave a gap
        if thinks and h.win_rate is not None and h.mean_thought_tokens is None:
            ax2.annotate("no parsed\noutput", (h.iteration, 0), textcoords="offset points",
                         xytext=(0, 8), ha="center", fontsize=8, color="grey")  # fmt: skip
    ax2.set(xlabel="iteration", ylabel="mean tokens per eval output",
            title="Length of the model's eval outputs")  # fmt: skip
    ax2.set_ylim(bottom=0, top=max([1.0, *(ax2.get_ylim()[1:])]) * 1.12)
    if ax2.get_legend_handles_labels()[0]:
        ax2.legend(**{**below, "ncol": 2})

    its = [h.iteration for h in hist] or [0]
    for ax in (ax1, ax2):
        ax.set_xticks(range(0, max(its) + 1))
        ax.set_xlim(-0.4, max(its) + 0.6)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(
        f"TPO: thought prompt {spec.thought_prompt.type}, K={spec.generation.samples}, "
        f"judge {spec.judge.type}; iteration 0 is the seed",
        fontsize=10,
    )
    fig.tight_layout()
    return fig


def plot(run: RunDir, status: TPORunStatus, spec: TPORunSpec) -> Path:
    import matplotlib.pyplot as plt

    fig = figure(status, spec)
    with A.atomic_path(run.plot) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return run.plot


def ifeval_probe_section(status: TPORunStatus, spec: TPORunSpec) -> list[str]:
    """IFEval accuracy per iteration and the judge-hacking probe (docs/guards.md)."""
    rows = [h for h in status.history if h.ifeval_strict is not None]
    probe = next((h for h in status.history if h.judge_probe_n is not None), None)
    out: list[str] = []
    if rows:
        out += [
            "",
            "## Instruction following (IFEval)",
            "",
            "| iter | prompts | unparsed | strict | loose | strict drop vs seed |",
            "|---|---|---|---|---|---|",
            *(
                f"| {h.iteration} | {_n(h.ifeval_prompts)} | {_n(h.ifeval_unparsed)} "
                f"| {_f(h.ifeval_strict)} | {_f(h.ifeval_loose)} | {_f(h.ifeval_strict_drop)} |"
                for h in rows
            ),
            "",
            "Prompt-level accuracy by lm-eval's IFEval checkers on the response with the "
            "thought stripped, over all the prompts: an unparsed response (no separator, "
            f"truncated) counts as failing. A drop above {spec.guards.warn_ifeval_drop} "
            "(guards.warnIfevalDrop) warns.",
        ]
    if probe is not None:
        keys = ", ".join(f"{k} {v:.2f}" for k, v in probe.judge_probe_by_key.items())
        unread = probe.judge_probe_unread or 0
        no_verdict = f", {unread} without a verdict (left out)" if unread else ""
        share = (
            f"The judge preferred **{probe.judge_probe_rate:.3f}** of master-key responses "
            if probe.judge_probe_rate is not None
            else "The judge preferred **no measurable share** of master-key responses "
        )
        out += [
            "",
            "## Judge-hacking probe (before iteration 1)",
            "",
            share
            + f"(':', 'Thought process:', ...) to real ones ({_n(probe.judge_probe_preferred)} "
            f"of {_n(probe.judge_probe_n)}, {_n(probe.judge_probe_ties)} ties{no_verdict}; "
            f"by key: {keys or '-'}); above {spec.guards.warn_judge_probe_rate} "
            "(guards.warnJudgeProbeRate) warns.",
        ]
    return out


def write_report(run: RunDir, status: TPORunStatus, spec: TPORunSpec) -> Path:
    plot(run, status, spec)
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
        "directly (the paper's first row). " + SUMMARY_LEGEND,
        "",
        "![win rate and thought length per iteration](report.png)",
        *warnings_section(status),
    ]
    if last and any(h.categories for h in status.history):
        parts += [
            "",
            "## Per category: win rate vs the baseline",
            "",
            category_history_table(status),
            "",
            f"n is a category's rated eval prompts (wins + ties + losses; prompts where both "
            f"sides failed to parse are not rated). Categories with fewer than "
            f"{spec.evaluation.min_category_prompts} (evaluation.minCategoryPrompts) get no "
            "rate: a handful of prompts is noise.",
        ]
        counted = max(
            (h for h in status.history if h.categories), key=lambda h: h.iteration, default=None
        )
        if counted is not None:
            parts += [
                "",
                f"Counts per category, iteration {counted.iteration}:",
                "",
                category_table(counted),
            ]
    parts += comparison_section(status, spec)
    parts += ifeval_probe_section(status, spec)
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
