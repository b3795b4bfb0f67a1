"""Prompt wrapping and thought/response splitting (paper, Figure 2)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tpo.prompts import format_prompt, wrap
from tpo.spec import (
    GENERIC_SEPARATOR,
    GENERIC_THOUGHT_PROMPT,
    SPECIFIC_SEPARATOR,
    SPECIFIC_THOUGHT_PROMPT,
    ThoughtPrompt,
)
from tpo.thoughts import split_output


def test_format_prompt_keeps_other_braces():
    instr = 'Fix {x} in f"{a}" and {{b}} {instruction'
    out = format_prompt("Q: {instruction} A:", instr)
    assert out == f"Q: {instr} A:"


def test_format_prompt_replaces_every_placeholder():
    assert format_prompt("{instruction}|{instruction}", "hi") == "hi|hi"


@pytest.mark.parametrize(
    ("tp", "expected"),
    [
        (ThoughtPrompt(), GENERIC_THOUGHT_PROMPT.replace("{instruction}", "2+2?")),
        (ThoughtPrompt(type="specific"), SPECIFIC_THOUGHT_PROMPT.replace("{instruction}", "2+2?")),
        (ThoughtPrompt(type="none"), "2+2?"),
        (
            ThoughtPrompt(type="custom", template="T {instruction} ###", separator="###"),
            "T 2+2? ###",
        ),
    ],
)
def test_wrap_each_prompt_type(tp, expected):
    assert wrap(tp, "2+2?") == expected


def test_wrap_generic_is_the_paper_text():
    out = wrap(ThoughtPrompt(), "What is TPO?")
    assert out.startswith(
        "Respond to the following user query in a comprehensive and detailed way."
    )
    assert '"Here is my thought process:"' in out and '"Here is my response:"' in out
    assert out.endswith("User query: What is TPO?")


def test_split_generic_strips_header():
    text = "Here is my thought process:\n I should add.\nHere is my response:\n 4 \n"
    s = split_output(text, GENERIC_SEPARATOR)
    assert (s.thought, s.response, s.parse_ok, s.failure) == ("I should add.", "4", True, None)


def test_split_specific():
    s = split_output("Draft: 5. Evaluation: wrong.\n<R> 4", SPECIFIC_SEPARATOR)
    assert s.thought == "Draft: 5. Evaluation: wrong."
    assert s.response == "4"
    assert s.parse_ok


def test_split_on_first_separator_so_nothing_after_commitment_is_hidden():
    s = split_output("think <R> answer mentions <R> tag", SPECIFIC_SEPARATOR)
    assert s.thought == "think"
    assert s.response == "answer mentions <R> tag"


def test_split_no_separator_is_failure():
    s = split_output("Here is my thought process: I ran out of tokens", GENERIC_SEPARATOR)
    assert not s.parse_ok
    assert s.failure == "no_separator"
    assert s.response == ""
    assert s.thought == "I ran out of tokens"


@pytest.mark.parametrize("tail", ["", "   \n\t"])
def test_split_empty_response_is_failure(tail):
    s = split_output(f"thinking\n{GENERIC_SEPARATOR}{tail}", GENERIC_SEPARATOR)
    assert (s.parse_ok, s.failure, s.thought) == (False, "empty_response", "thinking")


def test_split_direct_whole_text_is_response():
    s = split_output("  Here is my response: 4 ", None)
    assert (s.thought, s.response, s.parse_ok) == ("", "Here is my response: 4", True)
    assert split_output("  \n", None).failure == "empty_response"


def test_split_separator_at_start_gives_empty_thought():
    s = split_output("<R>answer", SPECIFIC_SEPARATOR)
    assert (s.thought, s.response, s.parse_ok) == ("", "answer", True)


@given(st.text(), st.sampled_from([None, GENERIC_SEPARATOR, SPECIFIC_SEPARATOR, "###"]))
def test_split_never_raises_and_is_consistent(text, sep):
    s = split_output(text, sep)
    assert s.parse_ok == (s.failure is None)
    assert s.parse_ok == bool(s.response)
    assert s.response == s.response.strip()
    if sep is not None and s.parse_ok:
        assert sep.lower() in " ".join(text.lower().split()) and s.response in text


@given(st.text(max_size=50), st.text(min_size=1, max_size=50))
def test_split_roundtrip(thought, response):
    sep = "<R>"
    # A quote right before the tag makes it a quoted mention, not a split (no quote there).
    thought = thought.replace(sep, "").rstrip("\"'`“”‘’«»„*_")
    response = response.lstrip("\"'`“”‘’«»„*_")
    s = split_output(f"{thought}{sep}{response}", sep)
    if response.strip():
        assert s.parse_ok and s.response == response.strip()
        assert s.thought == thought.strip()
    else:
        assert s.failure == "empty_response"
