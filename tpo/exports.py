"""M(t)'s evaluation outputs in the formats the field's benchmarks read (docs/exports.md).

The evaluate phase writes, for every iteration, the candidate's outputs on the eval prompts as

- AlpacaEval's model outputs: a JSON list of {instruction, output, generator, dataset}
  (read by `alpaca_eval --model_outputs FILE`);
- Arena-Hard-Auto's answers, v2.0 (the repository's current layout: `uid`, `ans_id`, `model`,
  `messages` ending in the assistant's `{"answer": ...}`, `tstamp`, `metadata`) and v0.1
  (`question_id`, `answer_id`, `model_id`, `choices[{index, turns[{content, token_len}]}]`,
  `tstamp`, `conv_metadata`);
- MT-Bench's answers (FastChat llm_judge: `question_id`, `answer_id`, `model_id`,
  `choices[{index, turns[str]}]`, `tstamp`),

each twice: with the thought stripped (what our own judge saw, and what a benchmark's judge must
see) and with it (the whole generation, to study what the thought adds). Benchmarks that read a
question file (MT-Bench, Arena-Hard-Auto) get one beside the answers, so a custom prompt set can
be judged with their tools too. The answer files are named after the model because those
readers take the model's name from the file name.

Why the thought-stripped export is the default: TPO's thoughts are hidden from the user and from
the judge; a benchmark judge shown them would grade text the user never sees. An output whose
response could not be parsed exports as an empty answer: the model gave the user nothing usable,
and our own evaluation counts it as a loss too.

Pure functions build the rows from the prompts and the candidate's parsed outputs; `write` puts
them where `RunDir` says, and `render` reads them back for `tpo export`.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tpo import artifacts as A
from tpo.artifacts import ArtifactError, RunDir
from tpo.errors import BadInput

if TYPE_CHECKING:  # `tpo --help` imports FORMATS from here: keep pydantic out of it
    from tpo.spec import TPORunSpec

ALPACA_EVAL = "alpaca_eval"
ARENA_HARD = "arena_hard"  # Arena-Hard-Auto v2.0
ARENA_HARD_V01 = "arena_hard_v0.1"
MT_BENCH = "mt_bench"
FORMATS = (ALPACA_EVAL, ARENA_HARD, ARENA_HARD_V01, MT_BENCH)
QUESTION_FORMATS = (ARENA_HARD, ARENA_HARD_V01, MT_BENCH)  # AlpacaEval reads no question file

# Arena-Hard-Auto v2.0 picks its judge prompt and baseline by question category; these are the
# categories it knows (utils/judge_utils.py JUDGE_SETTINGS). Any other category is exported as
# its general one, "hard_prompt", with ours kept as "subcategory".
ARENA_HARD_CATEGORIES = ("hard_prompt", "coding", "math", "creative_writing")
ARENA_HARD_V01_CATEGORY = "arena-hard-v0.1"


@dataclass(frozen=True)
class Answer:
    """One eval prompt and the candidate's output for it, as every format needs it."""

    question_id: int | str
    instruction: str
    category: str | None
    dataset: str
    reference: str | None  # dataset.referenceField, shown to reference-guided judges
    text: str  # the whole generation, thought included
    response: str  # what the judge saw ("" when no response could be parsed)
    response_tokens: int
    thought_tokens: int

    def output(self, with_thought: bool) -> str:
        return self.text if with_thought else self.response

    def tokens(self, with_thought: bool) -> int:
        """The model's own token count (the separator aside when with_thought)."""
        return self.response_tokens + (self.thought_tokens if with_thought else 0)


def model_name(run_name: str, iteration: int, with_thought: bool = False) -> str:
    """`<run>-iter<t>` (AlpacaEval's generator, Arena-Hard's and MT-Bench's model): one name per
    M(t), so every iteration's files sit side by side in one benchmark directory."""
    return f"{run_name}-iter{iteration}" + ("-with-thought" if with_thought else "")


def question_id(prompt: dict[str, Any], id_field: str | None) -> int | str:
    """The dataset's own id when it carries one (MT-Bench's ints stay ints, so FastChat finds
    the answer to its question 81 under 81), else our prompt id."""
    if id_field:
        from tpo.datasets_io import get_path  # lazily: it imports the spec (pydantic)

        value = get_path(prompt.get("record") or {}, id_field)  # a dotted path (datasets.md)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return str(prompt["prompt_id"])


def dataset_name(spec: TPORunSpec, prompt: dict[str, Any]) -> str:
    """AlpacaEval's `dataset`: the record's own `dataset` field (AlpacaEval's eval set has one),
    else the dataset file's name without its extension (a hub dataset's name)."""
    own = (prompt.get("record") or {}).get("dataset")
    if isinstance(own, str) and own:
        return own
    ds = spec.dataset
    return Path(ds.path).stem if ds.path else ds.hub.id.rsplit("/", 1)[-1] if ds.hub else ""


def answers(spec: TPORunSpec, prompts: Sequence[dict], outputs: Sequence[dict]) -> list[Answer]:
    """Pair the eval prompts with the candidate's parsed outputs (the evaluate phase's rows)."""
    if len(prompts) != len(outputs):
        raise ValueError(f"exports: {len(prompts)} prompts but {len(outputs)} outputs")
    out = []
    for p, o in zip(prompts, outputs, strict=True):
        if o["prompt_id"] != p["prompt_id"]:
            raise ValueError(
                f"exports: output for {o['prompt_id']!r} paired with {p['prompt_id']!r}"
            )
        out.append(
            Answer(
                question_id=question_id(p, spec.dataset.id_field),
                instruction=p["instruction"],
                category=None if p.get("category") is None else str(p["category"]),
                dataset=dataset_name(spec, p),
                reference=_reference(p, spec.dataset.reference_field),
                text=o["text"],
                response=o["response"] if o["parse_ok"] else "",
                response_tokens=int(o.get("response_tokens") or 0),
                thought_tokens=int(o.get("thought_tokens") or 0),
            )
        )
    ids = [a.question_id for a in out]
    if len(set(ids)) != len(ids):
        raise BadInput("exports: eval prompts share a question id (dataset.idField)")
    return out


def _reference(prompt: dict[str, Any], field: str | None) -> str | None:
    value = (prompt.get("record") or {}).get(field) if field else None
    return None if value is None else str(value)


def reference_rows(items: Sequence[Answer], tstamp: float) -> list[dict]:
    """MT-Bench's reference answers (FastChat judges math, reasoning and coding against
    them), in its answer format, for the prompts that have one."""
    ref = "gpt-4"
    return [
        {
            "question_id": a.question_id,
            "answer_id": hashlib.sha256(json.dumps([ref, a.question_id]).encode()).hexdigest()[:22],
            "model_id": ref,
            "choices": [{"index": 0, "turns": [a.reference]}],
            "tstamp": tstamp,
        }
        for a in items
        if a.reference is not None
    ]


def answer_id(model: str, a: Answer, with_thought: bool) -> str:
    """Stable across retries (the field uses a random shortuuid; any unique string serves)."""
    h = hashlib.sha256(json.dumps([model, a.question_id, a.output(with_thought)]).encode())
    return h.hexdigest()[:22]


# --------------------------------------------------------------------------- the formats


def alpaca_eval_rows(items: Sequence[Answer], model: str, with_thought: bool) -> list[dict]:
    return [
        {
            "instruction": a.instruction,
            "output": a.output(with_thought),
            "generator": model,
            "dataset": a.dataset,
        }
        for a in items
    ]


_CODE_BLOCK = re.compile(r"```[^`]*```")


def markdown_counts(text: str) -> dict[str, dict[str, int]]:
    """Arena-Hard-Auto's style features (its style control regresses on them beside length):
    headers by level, ordered and unordered list items, bold spans, code blocks left out."""
    t = _CODE_BLOCK.sub("", text)
    return {
        "header_count": {
            f"h{n}": len(re.findall(rf"^#{{{n}}}\s", t, re.MULTILINE)) for n in range(1, 7)
        },
        "list_count": {
            "ordered": len(re.findall(r"^\s*\d+\.\s", t, re.MULTILINE)),
            "unordered": len(re.findall(r"^\s*[-*+]\s", t, re.MULTILINE)),
        },
        "bold_count": {
            "**": len(re.findall(r"\*\*[^*\n]+\*\*", t)),
            "__": len(re.findall(r"__[^_\n]+__", t)),
        },
    }


def _metadata(a: Answer, with_thought: bool) -> dict[str, Any]:
    # token_len first: Arena-Hard's style control reads the features in this order.
    return {"token_len": a.tokens(with_thought), **markdown_counts(a.output(with_thought))}


def arena_hard_rows(
    items: Sequence[Answer], model: str, with_thought: bool, tstamp: float
) -> list[dict]:
    return [
        {
            "uid": a.question_id,
            "ans_id": answer_id(model, a, with_thought),
            "model": model,
            "messages": [
                {"role": "user", "content": a.instruction},
                {"role": "assistant", "content": {"answer": a.output(with_thought)}},
            ],
            "tstamp": tstamp,
            "metadata": _metadata(a, with_thought),
        }
        for a in items
    ]


def arena_hard_v01_rows(
    items: Sequence[Answer], model: str, with_thought: bool, tstamp: float
) -> list[dict]:
    return [
        {
            "question_id": a.question_id,
            "answer_id": answer_id(model, a, with_thought),
            "model_id": model,
            "choices": [
                {
                    "index": 0,
                    "turns": [
                        {"content": a.output(with_thought), "token_len": a.tokens(with_thought)}
                    ],
                }
            ],
            "tstamp": tstamp,
            "conv_metadata": _metadata(a, with_thought),
        }
        for a in items
    ]


def mt_bench_rows(
    items: Sequence[Answer], model: str, with_thought: bool, tstamp: float
) -> list[dict]:
    return [
        {
            "question_id": a.question_id,
            "answer_id": answer_id(model, a, with_thought),
            "model_id": model,
            "choices": [{"index": 0, "turns": [a.output(with_thought)]}],
            "tstamp": tstamp,
        }
        for a in items
    ]


def question_rows(items: Sequence[Answer], fmt: str) -> list[dict]:
    """The eval prompts as the benchmark's question file (first turn only: ours are single-turn)."""
    if fmt == MT_BENCH:
        return [
            {
                "question_id": a.question_id,
                "category": a.category or "general",
                "turns": [a.instruction],
            }
            for a in items
        ]
    if fmt == ARENA_HARD:
        rows = []
        for a in items:
            known = a.category in ARENA_HARD_CATEGORIES
            row = {
                "uid": a.question_id,
                "category": a.category if known else "hard_prompt",
                "prompt": a.instruction,
            }
            if not known and a.category is not None:
                row["subcategory"] = a.category
            rows.append(row)
        return rows
    if fmt == ARENA_HARD_V01:
        return [
            {
                "question_id": a.question_id,
                "category": ARENA_HARD_V01_CATEGORY,
                "cluster": a.category or "general",
                "turns": [{"content": a.instruction}],
            }
            for a in items
        ]
    raise ValueError(f"exports: {fmt} has no question file")


def rows(
    fmt: str, items: Sequence[Answer], model: str, with_thought: bool, tstamp: float
) -> list[dict]:
    if fmt == ALPACA_EVAL:
        return alpaca_eval_rows(items, model, with_thought)
    if fmt == ARENA_HARD:
        return arena_hard_rows(items, model, with_thought, tstamp)
    if fmt == ARENA_HARD_V01:
        return arena_hard_v01_rows(items, model, with_thought, tstamp)
    if fmt == MT_BENCH:
        return mt_bench_rows(items, model, with_thought, tstamp)
    raise ValueError(f"exports: unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")


# --------------------------------------------------------------------------- files


def write(
    spec: TPORunSpec,
    run: RunDir,
    iteration: int,
    prompts: Sequence[dict],
    outputs: Sequence[dict],
    tstamp: float,
) -> list[Path]:
    """Every format, with and without the thought, under `run.exports_dir(iteration)`."""
    items = answers(spec, prompts, outputs)
    written = []
    for fmt in FORMATS:
        for with_thought in (False, True):
            model = model_name(run.path.name, iteration, with_thought)
            path = run.export_answers(iteration, fmt, model)
            data = rows(fmt, items, model, with_thought, tstamp)
            if fmt == ALPACA_EVAL:
                A.write_json(path, data)
            else:
                A.write_jsonl(path, data, sort_keys=False)  # metadata: token_len first
            written.append(path)
        if fmt in QUESTION_FORMATS:
            A.write_jsonl(run.export_questions(iteration, fmt), question_rows(items, fmt))
            written.append(run.export_questions(iteration, fmt))
    refs = reference_rows(items, tstamp)
    if refs:
        A.write_jsonl(run.export_references(iteration), refs)
        written.append(run.export_references(iteration))
    return written


def resolve_run(path: str | Path) -> RunDir:
    """`tpo export RUN`: a run directory (`<out>/<namespace>/<run>`, what `tpo run --out OUT`
    makes), or an artifacts root holding exactly one run."""
    p = Path(path)
    if (p / "spec.json").is_file():
        return RunDir(p)
    found = sorted(s.parent for s in p.glob("*/*/spec.json"))
    if len(found) == 1:
        return RunDir(found[0])
    if not found:
        raise BadInput(f"tpo export: {p}: no run here (no spec.json in it or in */*/)")
    names = ", ".join(str(f.relative_to(p)) for f in found)
    raise BadInput(f"tpo export: {p} holds {len(found)} runs ({names}); name one of them")


def render(
    run: RunDir,
    fmt: str,
    iteration: int | None = None,
    with_thought: bool = False,
    questions: bool = False,
) -> str:
    """The file the evaluate phase wrote, as text (the last evaluated iteration by default)."""
    if fmt not in FORMATS:
        raise BadInput(f"tpo export: --format {fmt!r}; expected one of {', '.join(FORMATS)}")
    done = [t for t in _iterations(run) if run.done("evaluate", t).exists()]
    if iteration is None:
        if not done:
            raise BadInput(f"tpo export: {run.path}: no iteration has been evaluated yet")
        iteration = done[-1]
    if questions:
        if fmt not in QUESTION_FORMATS:
            raise BadInput(f"tpo export: {fmt} has no question file")
        path = run.export_questions(iteration, fmt)
    else:
        path = run.export_answers(
            iteration, fmt, model_name(run.path.name, iteration, with_thought)
        )
    if not path.is_file():
        why = (
            "not evaluated yet"
            if iteration not in done
            else "evaluated before exports existed; redo its evaluate phase"
        )
        raise BadInput(f"tpo export: iteration {iteration} has no {fmt} export ({why}): {path}")
    try:
        A.read_done(run.done("evaluate", iteration))  # digests: a damaged export is not printed
    except ArtifactError as e:
        raise BadInput(f"tpo export: {e}") from None
    return path.read_text(encoding="utf-8")


def _iterations(run: RunDir) -> list[int]:
    its = []
    for d in run.path.glob("iter-*"):
        n = d.name.removeprefix("iter-")
        if n.isdigit():
            its.append(int(n))
    return sorted(its)


def main(args: Any) -> int:
    import sys

    run = resolve_run(args.run)
    sys.stdout.write(
        render(
            run, args.format, args.iteration, args.with_thought, getattr(args, "questions", False)
        )
    )
    return 0
