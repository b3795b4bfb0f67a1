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


def wrap(thought_prompt: ThoughtPrompt, instruction: str) -> str:
    """The user turn the policy sees for this instruction under the run's thought prompt."""
    template, _ = thought_prompt.resolved()
    return format_prompt(template, instruction)
