"""Splitting a model output into its hidden thought and the response the judge sees."""

from __future__ import annotations

from dataclasses import dataclass

from tpo.spec import GENERIC_THOUGHT_HEADER


@dataclass(frozen=True)
class Split:
    thought: str
    response: str
    parse_ok: bool
    failure: str | None  # None | "no_separator" | "empty_response"


def _strip_header(thought: str) -> str:
    """Drop the generic prompt's "Here is my thought process:" header: it is scaffolding."""
    t = thought.strip()
    if t.startswith(GENERIC_THOUGHT_HEADER):
        t = t[len(GENERIC_THOUGHT_HEADER) :].strip()
    return t


def split_output(text: str, separator: str | None) -> Split:
    """Split on the FIRST occurrence of the separator (a plain substring match, as in the paper).

    Why the first: once the model writes the separator it has committed to its response, and
    everything after it is what the judge must see. Splitting on a later occurrence would let
    text written after the commitment (e.g. a response that quotes the separator) be hidden
    from the judge as if it were thought.

    `separator` None is the direct baseline: no thoughts, the whole text is the response.
    An output without the separator, or with nothing after it, is a parse failure: the judge
    never scores it, and it may serve as a rejected sample. Never raises.
    """
    text = text if isinstance(text, str) else ""
    if separator is None:
        response = text.strip()
        if not response:
            return Split("", "", False, "empty_response")
        return Split("", response, True, None)
    head, found, tail = text.partition(separator)
    if not found:
        return Split(_strip_header(text), "", False, "no_separator")
    thought, response = _strip_header(head), tail.strip()
    if not response:
        return Split(thought, "", False, "empty_response")
    return Split(thought, response, True, None)
