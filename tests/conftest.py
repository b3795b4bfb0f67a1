"""Session-wide fixtures shared by every test module: offline tiny models and a clean env.

Models are built once per session (seconds) from the project's own builder; nothing is
downloaded. vLLM and torch caches go under the session's temp dir so CI leaves nothing behind.
"""

from __future__ import annotations

import os
import random
import string
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")


def tiny_corpus(n: int = 400, seed: int = 0) -> list[str]:
    """Text to train the test tokenizer on: words, digits, and the thought-prompt phrasing."""
    from tpo.spec import GENERIC_THOUGHT_PROMPT, SPECIFIC_THOUGHT_PROMPT

    rng = random.Random(seed)
    words = ["".join(rng.choices(string.ascii_lowercase, k=rng.randint(2, 7))) for _ in range(200)]
    lines = [GENERIC_THOUGHT_PROMPT, SPECIFIC_THOUGHT_PROMPT]
    for _ in range(n):
        a, b = rng.randint(0, 999), rng.randint(0, 999)
        lines.append(f"What is {a} + {b}? {' '.join(rng.choices(words, k=8))} = {a + b}.")
    return lines


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from tpo.tiny.model import train_tokenizer

    return train_tokenizer(tiny_corpus(), vocab_size=512)


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory, tiny_tokenizer) -> Path:
    """An untrained 2-layer Llama-style causal LM (HF format) that vllm-cpu can load."""
    from tpo.tiny.model import build_causal_lm

    out = tmp_path_factory.mktemp("tiny-lm")
    build_causal_lm(out, tiny_tokenizer, layers=2)
    return out


@pytest.fixture(scope="session")
def tiny_rm(tmp_path_factory, tiny_tokenizer) -> Path:
    """An untrained reward model (sequence classifier, 1 label) sharing the LM's tokenizer."""
    from tpo.tiny.model import build_reward_model

    out = tmp_path_factory.mktemp("tiny-rm")
    build_reward_model(out, tiny_tokenizer)
    return out


@pytest.fixture(scope="session", autouse=True)
def _isolated_caches(tmp_path_factory):
    """vLLM / inductor caches and IPC sockets in a session temp dir (docs/testing.md)."""
    base = tmp_path_factory.mktemp("caches")
    for var, sub in (
        ("XDG_CACHE_HOME", "xdg"),
        ("TORCHINDUCTOR_CACHE_DIR", "inductor"),
        ("TORCH_EXTENSIONS_DIR", "torch-ext"),
        ("VLLM_CACHE_ROOT", "vllm"),
    ):
        os.environ.setdefault(var, str(base / sub))
    yield


@pytest.fixture(scope="session")
def smollm2(tmp_path_factory) -> Path:
    """The real-model fixture (`tpo realmodel build`: SmolLM2-135M-Instruct from the package's
    GGUF, MT-Bench's questions), built once per session (~35 s) like the tiny models.
    TPO_REALMODEL_CACHE names a directory to reuse across sessions instead (the build's stamp
    redoes it when its inputs change)."""
    from tpo import realmodel

    cached = os.environ.get("TPO_REALMODEL_CACHE")
    out = Path(cached) if cached else tmp_path_factory.mktemp("smollm2")
    realmodel.build(out)
    return out
