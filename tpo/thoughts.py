"""Splitting a model output into its hidden thought and the response the judge sees.

The rule (docs/thought-format.md states it for users; tests/test_thoughts_real.py checks it on
real SmolLM2 outputs): the response starts after the FIRST occurrence of the separator that is

1. the separator as written, with letters in any case, any run of whitespace where it has
   whitespace, optional whitespace before its closing punctuation (`Here is my response :`),
   and optional markdown emphasis (`*`, `_`, up to three) around it or before that
   punctuation (`**Here is my response:**`, `**Here is my response**:`);
2. not quoted: no quote mark or backtick right before it or right after it (a model that
   quotes the prompt's own wording, `after "Here is my response:"`, has not responded yet);
3. anchored, for a separator of several words (one with whitespace in it, a phrase such as
   "Here is my response:"): at the start of a line, after nothing but whitespace and markdown
   line markers (`#`, `>`, `-`, `*`, `_`). A phrase inside running text is the model talking
   about the format, not following it. A one-word separator (a tag such as `<R>`, `###`,
   `</think>`) delimits itself and is read anywhere, quotes excepted.

Anything else is no separator: near misses ("Here is your response:", "my response:",
"Here is my thought process and response:") stay parse failures, since guessing at them
would hand the judge thought text as if it were the response.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from functools import lru_cache

from tpo.spec import GENERIC_THOUGHT_HEADER


@dataclass(frozen=True)
class Split:
    thought: str
    response: str
    parse_ok: bool
    failure: str | None  # None | "no_separator" | "empty_response" | "truncated"


_QUOTES = "\"'`“”‘’«»„"
_EMPH = r"[*_]{0,3}"
_LINE_MARKERS = r"[ \t#>*_\-]*"


@lru_cache(maxsize=64)
def separator_pattern(separator: str) -> re.Pattern[str]:
    """The regex that finds `separator` under rules 1-3 (the match covers any emphasis)."""
    body = separator.strip()
    m = re.match(r"^(.*?)([:.!?\-—]*)$", body, re.S)
    assert m is not None
    words, punct = m.group(1) or body, m.group(2) if m.group(1) else ""
    parts = [re.escape(w) for w in words.split()]
    core = r"\s+".join(parts)
    if punct:
        core += _EMPH + r"[ \t]*" + re.escape(punct)
    anchored = len(body.split()) > 1
    lead = rf"(?:^|(?<=\n)){_LINE_MARKERS}" if anchored else ""
    return re.compile(
        rf"{lead}(?<![{_QUOTES}]){_EMPH}(?P<sep>{core}){_EMPH}(?![{_QUOTES}])",
        re.IGNORECASE,
    )


def find_separator(text: str, separator: str) -> re.Match[str] | None:
    """The first occurrence of the separator that the split accepts, or None."""
    for m in separator_pattern(separator).finditer(text):
        # Quotes outside the emphasis count too: `"**Here is my response:**"`.
        before = text[: m.start("sep")].rstrip("*_")
        after = text[m.end("sep") :].lstrip("*_")
        if (before and before[-1] in _QUOTES) or (after and after[0] in _QUOTES):
            continue
        return m
    return None


def _strip_header(thought: str) -> str:
    """Drop the generic prompt's "Here is my thought process:" header (in any of the forms
    rule 1 accepts, at the start of the thought): it is scaffolding."""
    t = thought.strip()
    m = separator_pattern(GENERIC_THOUGHT_HEADER).match(t)
    if m is not None:
        t = t[m.end() :].strip()
    return t


def split_output(text: str, separator: str | None) -> Split:
    """Split on the FIRST accepted occurrence of the separator (module docstring: the rule).

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
    m = find_separator(text, separator) if separator.strip() else None
    if m is None:
        return Split(_strip_header(text), "", False, "no_separator")
    thought, response = _strip_header(text[: m.start()]), text[m.end() :].strip()
    if not response:
        return Split(thought, "", False, "empty_response")
    return Split(thought, response, True, None)


def truncated(split: Split, finish_reason: str | None) -> Split:
    """An output cut at maxTokens (finish reason `length`) is a failure of its own kind,
    separator or not: its response stops mid-sentence, and as a chosen sample the chat
    template would close it with the end-of-turn token, teaching the model to stop there.
    Thought and response are kept for inspection; the judge never sees them."""
    if finish_reason != "length":
        return split
    return replace(split, parse_ok=False, failure="truncated")
