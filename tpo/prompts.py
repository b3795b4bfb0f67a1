"""Wrapping an instruction in a thought prompt (paper, Figure 2)."""

from __future__ import annotations

from tpo.spec import ThoughtPrompt

PLACEHOLDER = "{instruction}"


def format_prompt(template: str, instruction: str) -> str:
    """Substitute the instruction into the template.

    Plain `str.replace`, not `str.format`: instructions (code, JSON, LaTeX) and custom templates
    may contain other braces, which `format` would choke on or silently rewrite.
    """
    return template.replace(PLACEHOLDER, instruction)


BUDGET_NOTE = "\n\nThink for at most {budget} tokens before you respond."


def wrap(thought_prompt: ThoughtPrompt, instruction: str, stated_budget: int | None = None) -> str:
    """The user turn the policy sees for this instruction under the run's thought prompt.

    `stated_budget` (generation.thoughtBudgetInPrompt) appends the thought budget to it, as L1
    (arXiv 2503.04697) states its length target in the prompt; a direct prompt has no thought.
    """
    template, separator = thought_prompt.resolved()
    text = format_prompt(template, instruction)
    if stated_budget is not None and separator is not None:
        text += BUDGET_NOTE.format(budget=stated_budget)
    return text
