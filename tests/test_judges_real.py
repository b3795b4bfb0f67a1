"""The verdict readers on REAL judge replies: SmolLM2-135M-Instruct as its own pairwise and
pointwise judge (tests/data/smollm2/judge_*.jsonl, tpo.judges' templates), and each phrasing
the forgiving reader accepts, alone and at the end of a real reply."""

from __future__ import annotations

import pytest
from smollm2 import generation, rows

from tpo.judges import JudgeItem, PairwiseCore, parse_rating, parse_verdict
from tpo.scoring import Pair, select_pair
from tpo.spec import GENERIC_SEPARATOR
from tpo.thoughts import split_output

PAIRWISE = [r["reply"] for r in rows("judge_pairwise")]
POINTWISE = [r["reply"] for r in rows("judge_pointwise")]
# A real reply that rambles on and ends by quoting the template's answer block.
QUOTES_THE_TEMPLATE = next(r for r in PAIRWISE if "[The End of Assistant B's Answer]" in r)


def test_the_real_replies_hold_no_verdict_and_none_is_invented():
    """SmolLM2 never states a pairwise verdict (20 replies: 0% read), and mentions such as
    "[The End of Assistant B's Answer]" or "the second assistant" are not read as one. Of
    its 10 pointwise replies one opens with "Rating: 5" (the template's example number), one
    says "... is 10 out of 10." (the strict reader missed it); the other eight ramble without
    a number on the scale: 20% read."""
    assert len(PAIRWISE) == 20 and len(POINTWISE) == 10
    assert [parse_verdict(r) for r in PAIRWISE] == [None] * 20
    read = [parse_rating(r) for r in POINTWISE]
    assert read == [None, 5.0] + [None] * 7 + [10.0]
    assert POINTWISE[1].startswith("Rating: 5\n")
    assert "is 10 out of 10." in POINTWISE[9]


VERDICTS = [
    ("[[A]]", 1.0),
    ("[[B]]", 0.0),
    ("[[C]]", 0.5),
    ("[A]", 1.0),
    ("[B]", 0.0),
    ("Verdict: B", 0.0),
    ("Final verdict: Assistant A", 1.0),
    ("My verdict is **B**.", 0.0),
    ("Assistant A is better.", 1.0),
    ("Assistant B's answer is better.", 0.0),
    ("Response A is clearly better.", 1.0),
    ("It's a tie.", 0.5),
    ("Verdict: tie", 0.5),
]


@pytest.mark.parametrize(("ending", "outcome"), VERDICTS)
def test_each_accepted_verdict_form(ending, outcome):
    assert parse_verdict(ending) == outcome
    assert parse_verdict(f"{QUOTES_THE_TEMPLATE}\n\n{ending}") == outcome


@pytest.mark.parametrize(
    "ending",
    [
        "Assistant A is better. Verdict: B",  # contradicts itself: no guess
        "[A] ... Assistant B is better.",
        "A is better",  # a bare letter names no assistant
    ],
)
def test_contradicting_or_absent_verdicts_are_unread(ending):
    assert parse_verdict(f"{QUOTES_THE_TEMPLATE}\n\n{ending}") is None


RATINGS = [
    ("Rating: [[5]]", 5.0),
    ("[[7]]", 7.0),
    ("Rating: 5", 5.0),
    ("Score: 8", 8.0),
    ("5 out of 10", 5.0),
    ("5/10", 5.0),
    ("Rating: 6/10", 6.0),
    ("I give it 4.5 out of 10.", 4.5),
]


@pytest.mark.parametrize(("ending", "value"), RATINGS)
def test_each_accepted_rating_form(ending, value):
    assert parse_rating(ending) == value
    assert parse_rating(f"{POINTWISE[0]}\n\n{ending}") == value


@pytest.mark.parametrize(
    "ending",
    ["Rating: 5. On reflection 7/10.", "4 out of 5", "Rating: 11", "Rating: 0", "no rating"],
)
def test_contradicting_off_scale_or_absent_ratings_are_unread(ending):
    assert parse_rating(f"{POINTWISE[0]}\n\n{ending}") is None


def test_unread_replies_are_counted_and_the_prompt_still_gets_its_pair():
    """A pairwise judge that reads none of SmolLM2's replies: every battle is undecided and
    counted, every score None; the prompt's parsed samples still beat its failed one (the old
    rule skipped such a prompt: two parsed samples, no score)."""
    samples = [
        generation("generic", "mtbench-91", 0),  # parsed
        generation("generic-prefill", "mtbench-131", 0),  # parsed
        generation("generic", "mtbench-111", 0),  # quotes the separator: a failure
    ]
    splits = [split_output(s["text"], GENERIC_SEPARATOR) for s in samples]
    assert [s.parse_ok for s in splits] == [True, True, False]
    replies = iter(PAIRWISE)
    core = PairwiseCore(lambda prompts: [next(replies) for _ in prompts], template=None)
    group = [JudgeItem("q", s.response if s.parse_ok else None) for s in splits]
    (scores,) = core.score_groups([group])
    assert scores == [None, None, None]
    assert core.unparsed == 2 and len(core.battles) == 2  # one pair, both orders
    assert all(b["outcome"] is None for b in core.battles)
    assert select_pair(scores, [s.parse_ok for s in splits]) == Pair(0, 2)
