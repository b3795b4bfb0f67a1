"""The train phase: DPO on the judge's preference pairs with TRL, optionally under DeepSpeed ZeRO.

Policy and reference both start from M(t-1) (paper); the result M(t) is a plain Hugging Face
model (LoRA adapters merged) so the next generate phase loads it like the seed.

Under `torchrun` every rank calls `train_dpo`; collectives (dataset staging, the ZeRO-3 save)
happen on all ranks and rank 0 alone publishes the model. A killed phase resumes from the latest
complete checkpoint in `work_dir` instead of restarting.

Per-step metrics: rank 0 prints one line per TRL log event to stdout,
`TPO_METRIC {"step": ..., "loss": ..., "rewards/margins": ...}`, for a log scraper; callers may
also pass their own `transformers.TrainerCallback`s.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import socket
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tpo import artifacts as A
from tpo import podmetrics
from tpo.errors import BadInput
from tpo.spec import TPORunSpec, Training

METRIC_PREFIX = "TPO_METRIC "
PAIR_FIELDS = ("prompt", "chosen", "rejected")
SAVE_FRACTION = 0.25  # a checkpoint every quarter of the run: bounded loss when a pod dies
LOG_FRACTION = 0.05  # about 20 log events per run, whatever its length
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


# --------------------------------------------------------------------------- pure parts


def deepspeed_config(training: Training) -> dict[str, Any] | None:
    """The DeepSpeed config for ZeRO 2/3, or None when DeepSpeed is off.

    Batch sizes, clipping and precision are "auto" so the HF Trainer fills them from DPOConfig
    and the two can never disagree.
    """
    stage = training.deepspeed.zero_stage
    if stage not in (2, 3):
        return None
    zero: dict[str, Any] = {
        "stage": stage,
        "overlap_comm": False,
        "contiguous_gradients": True,
        "reduce_bucket_size": "auto",
    }
    if stage == 3:
        zero.update(
            stage3_prefetch_bucket_size="auto",
            stage3_param_persistence_threshold="auto",
            stage3_gather_16bit_weights_on_model_save=True,
        )
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": "auto",
        "train_batch_size": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "bf16": {"enabled": "auto"},
        "zero_optimization": zero,
    }
    if training.deepspeed.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
        # the HF optimizer (torch AdamW) instead of DeepSpeedCPUAdam, which needs a compiled op
        config["zero_force_ds_cpu_optimizer"] = False
    return config


def dpo_rows(pairs: Sequence[dict[str, Any]], source: str = "pairs") -> list[dict[str, Any]]:
    """Judge pairs -> conversational DPO rows, so TRL applies the model's own chat template."""
    if not pairs:
        raise BadInput(f"no preference pairs to train on ({source} is empty)")
    rows = []
    for i, p in enumerate(pairs):
        bad = [k for k in PAIR_FIELDS if not isinstance(p.get(k), str) or not p.get(k)]
        if bad:
            raise BadInput(f"{source}[{i}]: field(s) {', '.join(bad)} missing or not text")
        rows.append(
            {
                "prompt": [{"role": "user", "content": p["prompt"]}],
                "chosen": [{"role": "assistant", "content": p["chosen"]}],
                "rejected": [{"role": "assistant", "content": p["rejected"]}],
            }
        )
    return rows


def rows_digest(rows: list[dict[str, Any]]) -> str:
    """Names the staged dataset by content: a resumed run reuses it and its cached ref log-probs."""
    blob = json.dumps(rows, sort_keys=True, ensure_ascii=False).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def latest_checkpoint(work_dir: Path) -> Path | None:
    """The newest complete checkpoint (its trainer state written); a half-saved one is ignored."""
    if not work_dir.is_dir():
        return None
    found = []
    for d in work_dir.iterdir():
        m = _CHECKPOINT.match(d.name)
        if m and d.is_dir() and (d / "trainer_state.json").is_file():
            found.append((int(m.group(1)), d))
    return max(found)[1] if found else None


def summarize(log_history: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    """Summary numbers from TRL's log history: the last logged value of each metric."""
    steps = [h for h in log_history if "loss" in h]
    last = steps[-1] if steps else {}
    first = steps[0] if steps else {}
    final = next((h for h in reversed(log_history) if "train_loss" in h), {})
    out: dict[str, Any] = {
        "train_loss": final.get("train_loss", last.get("loss")),
        "final_loss": last.get("loss"),
        "first_loss": first.get("loss"),
        "reward_margin": last.get("rewards/margins"),
        "reward_accuracy": last.get("rewards/accuracies"),
        "chosen_logps": last.get("logps/chosen"),
        "rejected_logps": last.get("logps/rejected"),
    }
    out.update({k: v for k, v in extra.items() if v is not None})
    return {k: v for k, v in out.items() if v is not None}


# --------------------------------------------------------------------------- environment


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ensure_dist_env() -> None:
    """A single process started without a launcher: DeepSpeed would otherwise look for MPI."""
    defaults = {
        "RANK": "0",
        "WORLD_SIZE": "1",
        "LOCAL_RANK": "0",
        "MASTER_ADDR": "127.0.0.1",
    }
    for k, v in defaults.items():
        os.environ.setdefault(k, v)
    if "MASTER_PORT" not in os.environ:
        os.environ["MASTER_PORT"] = str(_free_port())


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _shutdown_distributed() -> None:
    """Tear the process group down before exit: a rank that exits with gloo's threads still up
    aborted ('terminate called without an active exception', exit -6) under ZeRO-3 + LoRA."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def check_base_model(base_model: Path | str) -> Path | str:
    """A local directory must hold a config; a bare string that is no path is a hub id."""
    as_path = Path(base_model)
    looks_local = isinstance(base_model, Path) or str(base_model).startswith(("/", "."))
    if looks_local or as_path.exists():
        if not (as_path / "config.json").is_file():
            raise BadInput(f"{as_path}: base model not found (no config.json)")
        return as_path
    return str(base_model)


def load_pairs(pairs: Sequence[dict[str, Any]] | Path) -> tuple[list[dict[str, Any]], str]:
    if isinstance(pairs, Path):
        try:
            return A.read_jsonl(pairs, required=PAIR_FIELDS), str(pairs)
        except A.ArtifactError as e:
            raise BadInput(str(e)) from None
    return list(pairs), "pairs"


# --------------------------------------------------------------------------- TRL shell


def dpo_config(spec: TPORunSpec, work_dir: Path, ds: dict[str, Any] | None):
    import torch
    from trl import DPOConfig

    tr = spec.training
    cuda = torch.cuda.is_available()
    dtype = spec.model.dtype
    return DPOConfig(
        output_dir=str(work_dir),
        beta=tr.beta,
        learning_rate=tr.learning_rate,
        num_train_epochs=tr.epochs,
        per_device_train_batch_size=tr.per_device_batch_size,
        gradient_accumulation_steps=tr.gradient_accumulation_steps,
        warmup_steps=tr.warmup_ratio,  # transformers 5: a float < 1 is a ratio of all steps
        max_length=tr.max_length,
        loss_type=list(tr.loss_type),
        loss_weights=list(tr.loss_weights) if tr.loss_weights else None,
        precompute_ref_log_probs=tr.precompute_ref_log_probs,
        gradient_checkpointing=tr.gradient_checkpointing,
        seed=tr.seed,
        bf16=cuda,
        use_cpu=not cuda,
        deepspeed=ds,
        model_init_kwargs={"dtype": dtype},
        report_to=[],
        logging_strategy="steps",
        logging_steps=LOG_FRACTION,
        logging_first_step=True,
        save_strategy="steps",
        save_steps=SAVE_FRACTION,
        save_total_limit=1,
        save_only_model=False,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )


def staged_dataset(rows: list[dict[str, Any]], work_dir: Path):
    """A file-backed dataset: under torchrun every rank must see the same cache files
    (precomputed reference log-probs are written beside it), which in-memory datasets lack."""
    from datasets import Dataset, load_from_disk

    target = work_dir / f"pairs-{rows_digest(rows)}"
    if rank() == 0 and not (target / "state.json").is_file():
        with A.atomic_dir(target) as tmp:
            Dataset.from_list(rows).save_to_disk(str(tmp))
    _barrier()
    return load_from_disk(str(target))


def _metric_callback():
    from transformers import TrainerCallback

    class MetricLines(TrainerCallback):
        """One JSON line per log event on rank 0, for scraping from pod logs."""

        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.is_world_process_zero and logs:
                line = {"step": state.global_step, "epoch": state.epoch, **logs}
                print(METRIC_PREFIX + json.dumps(line, default=float), flush=True)

    return MetricLines()


def _lora_config(training: Training):
    from peft import LoraConfig

    lo = training.lora
    targets: str | list[str] = lo.target_modules
    if targets == ["all-linear"]:
        targets = "all-linear"
    return LoraConfig(
        r=lo.r,
        lora_alpha=lo.alpha,
        lora_dropout=lo.dropout,
        target_modules=targets,
        task_type="CAUSAL_LM",
    )


def publish(
    staging: Path, out_dir: Path, base_model: Path | str, lora: bool, tokenizer, dtype: str
) -> None:
    """Rank 0: M(t) appears at out_dir complete or not at all (atomic rename)."""
    with A.atomic_dir(out_dir) as tmp:
        if lora:
            from peft import PeftModel
            from transformers import AutoModelForCausalLM

            base = AutoModelForCausalLM.from_pretrained(str(base_model), dtype=dtype)
            merged = PeftModel.from_pretrained(base, str(staging)).merge_and_unload()
            merged.save_pretrained(str(tmp), safe_serialization=True)
        else:
            for f in staging.iterdir():
                if f.is_file() and not f.name.startswith("training_args"):
                    shutil.copy2(f, tmp / f.name)
        tokenizer.save_pretrained(str(tmp))
        if not (tmp / "config.json").is_file() or not list(tmp.glob("*.safetensors")):
            raise RuntimeError(f"{staging}: trainer saved no safetensors model")


def train_dpo(
    spec: TPORunSpec,
    *,
    base_model: Path | str,
    pairs: Sequence[dict[str, Any]] | Path,
    out_dir: Path,
    work_dir: Path,
    callbacks: Sequence[Any] = (),
) -> dict[str, Any]:
    """DPO from M(t-1) on the pairs; M(t) saved to out_dir; returns a JSON-able summary."""
    started = time.time()
    base = check_base_model(base_model)
    raw, source = load_pairs(pairs)
    rows = dpo_rows(raw, source)
    tr = spec.training
    ds = deepspeed_config(tr)
    if ds is not None:
        import deepspeed
        import torch

        ensure_dist_env()
        deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")
    work_dir.mkdir(parents=True, exist_ok=True)
    args = dpo_config(spec, work_dir, ds)  # before the model: ZeRO-3 partitions at load
    _ = args.device  # initialises the process group under torchrun without DeepSpeed
    dataset = staged_dataset(rows, work_dir)

    from transformers import AutoTokenizer
    from trl import DPOTrainer

    tokenizer = AutoTokenizer.from_pretrained(str(base))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    trainer = DPOTrainer(
        model=str(base),
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=_lora_config(tr) if tr.lora.enabled else None,
        callbacks=[_metric_callback(), podmetrics.TrainingMetricsCallback(), *callbacks],
    )
    resume = latest_checkpoint(work_dir)
    if resume is not None and rank() == 0:
        print(f"train: resuming from {resume}", file=sys.stderr, flush=True)
    result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)

    staging = work_dir / "final"
    if rank() == 0:  # a crashed earlier attempt may have left part of a save here
        shutil.rmtree(staging, ignore_errors=True)
    _barrier()
    trainer.save_model(str(staging))  # collective under ZeRO-3: every rank calls it
    _barrier()
    if ds is not None:
        from transformers.integrations.deepspeed import unset_hf_deepspeed_config

        # else rank 0's plain reload of the base (LoRA merge) is partitioned: a collective
        # that the other ranks never join, and it hangs
        unset_hf_deepspeed_config()
    log_history, steps = trainer.state.log_history, trainer.state.global_step
    # publish() loads the base again (LoRA merge); without this the trained model, its
    # optimizer state and the heap the train step grew (glibc keeps freed memory) stay
    # resident under it: +1.2 GB peak for SmolLM2-135M (benchmarks/README.md, real model).
    del trainer
    release_memory()
    if rank() == 0:
        publish(staging, out_dir, base, tr.lora.enabled, tokenizer, spec.model.dtype)
        clean_work_dir(work_dir)
    _barrier()
    _shutdown_distributed()
    return summarize(
        log_history,
        train_loss=result.training_loss if not math.isnan(result.training_loss) else None,
        steps=steps,
        resumed_from_step=_step_of(resume),
        pairs=len(rows),
        seconds=round(time.time() - started, 3),
        model_path=str(out_dir),
    )


def release_memory() -> None:
    """Collect what the trainer held and hand freed heap back to the OS (glibc's malloc_trim),
    so the next allocation does not stack on memory that is free but still resident."""
    import contextlib
    import ctypes
    import gc

    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to trim
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def clean_work_dir(work_dir: Path) -> None:
    """After M(t) is published its checkpoints (optimizer state: several times the model) go."""
    for d in work_dir.iterdir():
        if d.is_dir() and (d.name == "final" or _CHECKPOINT.match(d.name)):
            shutil.rmtree(d, ignore_errors=True)


def _step_of(checkpoint: Path | None) -> int | None:
    if checkpoint is None:
        return None
    m = _CHECKPOINT.match(checkpoint.name)
    return int(m.group(1)) if m else None
