"""Tiny Hugging Face models built offline: no hub, no download, seconds on a CPU.

Used by the embedded example (`tpo tiny build`) and by every test that needs a real model for
vLLM, TRL or a reward-model judge. Constraints found on this hardware (docs/testing.md): vLLM's
CPU attention needs head_dim in {32, 64, 80, ...}, so hidden 128 with 4 heads (head_dim 32).
Digits are split one per token so arithmetic stays learnable by a ~1 M-parameter model.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

BOS, EOS, PAD = "<|bos|>", "<|end|>", "<|pad|>"
USER, ASSISTANT = "<|user|>", "<|assistant|>"
SPECIAL_TOKENS = [PAD, BOS, EOS, USER, ASSISTANT]

# One user turn, one assistant turn; `add_generation_prompt` opens the assistant turn.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for m in messages %}"
    "{% if m['role'] == 'user' %}" + USER + "\n{{ m['content'] }}\n"
    "{% elif m['role'] == 'assistant' %}" + ASSISTANT + "\n{{ m['content'] }}" + EOS + "\n"
    "{% else %}{{ m['content'] }}\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}" + ASSISTANT + "\n{% endif %}"
)


def train_tokenizer(corpus: Iterable[str], vocab_size: int = 1024, *, within_lines: bool = False):
    """A byte-level BPE (any text round-trips) with single-digit tokens and a chat template.

    `within_lines`: merges may cross spaces but never a line break (the pairwise judge's
    tokenizer, whose prompts are mostly fixed lines of its template); else words are split
    apart first, as GPT-2's byte-level pre-tokenizer does."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    lines = [pre_tokenizers.Split(Regex("\n"), behavior="isolated")] if within_lines else []
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            *lines,
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=not within_lines),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=[USER, ASSISTANT],
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.padding_side = "left"
    fast.model_max_length = 1024
    return fast


def _config(tokenizer, hidden: int, layers: int, heads: int, max_positions: int):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 4,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=max_positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
        rms_norm_eps=1e-5,
    )


def build_causal_lm(
    out_dir: str | Path,
    tokenizer,
    *,
    hidden: int = 128,
    layers: int = 4,
    heads: int = 4,
    max_positions: int = 1024,
    seed: int = 0,
):
    """A randomly initialised Llama-style LM saved with its tokenizer; returns the model."""
    import torch
    from transformers import GenerationConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(_config(tokenizer, hidden, layers, heads, max_positions))
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    save(model, tokenizer, out_dir)
    return model


def build_reward_model(
    out_dir: str | Path,
    tokenizer,
    *,
    hidden: int = 128,
    layers: int = 2,
    heads: int = 4,
    seed: int = 0,
):
    """A Llama sequence classifier with one output: the shape of ArmoRM-style reward models."""
    import torch
    from transformers import LlamaForSequenceClassification

    torch.manual_seed(seed)
    cfg = _config(tokenizer, hidden, layers, heads, 1024)
    cfg.num_labels = 1
    model = LlamaForSequenceClassification(cfg)
    save(model, tokenizer, out_dir)
    return model


def save(model, tokenizer, out_dir: str | Path) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out
