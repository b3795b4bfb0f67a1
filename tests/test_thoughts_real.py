"""The thought split on REAL model text (docs/thought-format.md): SmolLM2-135M-Instruct's own
outputs under the paper's prompts, committed in tests/data/smollm2/, and near misses made from
them by changing only the separator line."""

from __future__ import annotations

import pytest
from smollm2 import arm, generation

from tpo.spec import GENERIC_SEPARATOR, GENERIC_THOUGHT_HEADER, SPECIFIC_SEPARATOR
from tpo.thoughts import split_output

# The real output with a genuine separator on its own line, and the one that only quotes it.
GENUINE = ("generic", "mtbench-91", 0)
QUOTING = ("generic", "mtbench-111", 0)


def test_a_separator_quoted_from_the_prompt_is_no_split():
    """The model writes `after "Here is my response:"` while explaining itself: the plain
    substring split read the rest of that sentence as its response."""
    text = generation(*QUOTING)["text"]
    assert f'after "{GENERIC_SEPARATOR}"' in text  # the real text quotes the prompt
    s = split_output(text, GENERIC_SEPARATOR)
    assert (s.parse_ok, s.failure, s.response) == (False, "no_separator", "")


def test_the_genuine_separator_still_splits():
    text = generation(*GENUINE)["text"]
    s = split_output(text, GENERIC_SEPARATOR)
    assert s.parse_ok
    assert s.response.startswith("Thank you for the inspiring message.")
    head, _, tail = text.partition(f"\n{GENERIC_SEPARATOR}")
    assert s.thought == head.strip() and s.response == tail.strip()


@pytest.mark.parametrize(
    "line",
    [
        "**Here is my response:**",
        "**Here is my response**:",
        "Here is my response :",
        "here is my response:",
        "HERE IS MY RESPONSE:",
        "## Here is my response:",
        "> *Here is my response:*",
        "__Here  is my\tresponse:__",
    ],
)
def test_case_and_markdown_around_the_separator_are_tolerated(line):
    text = generation(*GENUINE)["text"].replace(GENERIC_SEPARATOR, line, 1)
    s = split_output(text, GENERIC_SEPARATOR)
    assert s.parse_ok, line
    assert s.response.startswith("Thank you for the inspiring message."), s.response[:40]
    assert "*" not in s.response[:3] and not s.thought.endswith(("#", ">", "*"))


@pytest.mark.parametrize(
    "line",
    [
        "Here is your response:",
        "my response:",
        "So, my response:",
        "Here is my thought process and response:",
        "Here's my response:",
        "Here is my response",  # no colon: the separator's punctuation is part of it
        '"Here is my response:"',
        "“Here is my response:”",
        "I will write it after Here is my response: as asked.",  # inside running text
    ],
)
def test_near_misses_stay_failures(line):
    text = generation(*GENUINE)["text"].replace(GENERIC_SEPARATOR, line, 1)
    s = split_output(text, GENERIC_SEPARATOR)
    assert (s.parse_ok, s.failure) == (False, "no_separator"), line


def test_the_real_outputs_parse_as_the_rule_says():
    """Of 48 real generic outputs, two hold the separator on a line of its own; the third
    mention is the quote. The specific prompt's 48 never write `<R>`."""
    generic = [split_output(r["text"], GENERIC_SEPARATOR) for r in arm("generic")]
    parsed = [(r["id"], r["sample"]) for r, s in zip(arm("generic"), generic, strict=True)]
    parsed = [p for p, s in zip(parsed, generic, strict=True) if s.parse_ok]
    assert parsed == [("mtbench-91", 0), ("mtbench-93", 1)]
    specific = [split_output(r["text"], SPECIFIC_SEPARATOR) for r in arm("specific")]
    assert len(specific) == 48 and not any(s.parse_ok for s in specific)


def test_specific_tag_is_read_mid_line_but_not_quoted():
    text = generation("specific", "mtbench-92", 0)["text"]
    mid = text.replace("Here's my response:", "Done drafting. <R>", 1)
    assert split_output(mid, SPECIFIC_SEPARATOR).response.startswith("In our conversation")
    quoted = text.replace("Here's my response:", 'I write it after "<R>".', 1)
    assert not split_output(quoted, SPECIFIC_SEPARATOR).parse_ok


def test_prefilled_outputs_start_with_the_header_and_the_thought_drops_it():
    """generic-prefill: the assistant turn was started with the thought header; the output
    text includes it (the generator prepends it) and the split strips it like a written one."""
    rows = arm("generic-prefill")
    assert len(rows) == 48 and all(r["text"].startswith(GENERIC_THOUGHT_HEADER) for r in rows)
    s = split_output(generation("generic-prefill", "mtbench-131", 0)["text"], GENERIC_SEPARATOR)
    assert s.parse_ok and s.thought.startswith("1. Evaluation: 1")
    assert s.response.startswith("In this movie review")
    emph = "**Here is my thought process:**" + rows[0]["text"][len(GENERIC_THOUGHT_HEADER) :]
    assert not split_output(emph, GENERIC_SEPARATOR).thought.startswith("**")


def test_a_forced_separator_starts_a_line_so_the_split_reads_it():
    """Budget forcing closes a cut thought with the separator; a real thought cut after a
    space must still get it on a line of its own (the phrase rule), or the split misses it."""
    from tpo.generate import forced_prefix

    thought = generation("generic", "mtbench-82", 0)["text"][:200].rstrip() + " "
    text = forced_prefix(thought, GENERIC_SEPARATOR) + " Dear supervisor, ..."
    s = split_output(text, GENERIC_SEPARATOR)
    assert s.parse_ok and s.response == "Dear supervisor, ..."
