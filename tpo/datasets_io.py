"""The prepare phase's reader of user instructions (spec.dataset; docs/datasets.md).

Sources: a JSONL file (read line by line here, so an error names `<file>:<line>:` and no
schema is imposed on the lines), a JSON, Parquet or CSV file, a local directory laid out like
a Hugging Face dataset repository (`data/train-*.parquet`, or a README.md with `configs`), or
a hub dataset id; all but JSONL go through `datasets.load_dataset`. Rows are numbered from 0
(`row 3` is `ds[3]`), lines from 1.

Field names are dotted paths into a row: `conversation.0.content` is
`row["conversation"][0]["content"]`; a key that itself holds dots is matched whole first. With
`messagesField` the instruction is the content of the FIRST user turn of a chat-format list
(`[{"role": "user", "content": ...}, ...]`); other turns are not used.

This module is not named `datasets.py`: that would shadow the library.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tpo import artifacts as A
from tpo.errors import BadInput

if TYPE_CHECKING:  # light to import (tpo.exports, the operator's jobs.py): no pydantic
    from tpo.spec import Dataset, HubDataset

# The prepare pod's env var for spec.dataset.hub.tokenSecret (operator/tpo_operator/jobs.py).
DATASET_TOKEN_ENV = "TPO_DATASET_TOKEN"
EXTENSIONS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".parquet": "parquet"}
EXTENSIONS[".csv"] = "csv"


class _Missing:
    def __repr__(self) -> str:
        return "<missing>"


MISSING: Any = _Missing()


@dataclass(frozen=True)
class Row:
    where: str  # how an error names the row: "<file>:<line>" or "<source> row <index>"
    default_id: str  # the prompt id when dataset.idField is unset or absent
    obj: dict[str, Any]


# --------------------------------------------------------------------------- pure helpers


def get_path(obj: Any, path: str) -> Any:
    """The value at a dotted field path, or MISSING. Dict keys by name, list items by index."""
    if isinstance(obj, dict) and path in obj:
        return obj[path]
    cur = obj
    for part in path.split("."):
        if isinstance(cur, dict) and part in cur:
            cur = cur[part]
        elif isinstance(cur, list) and part.isdigit() and int(part) < len(cur):
            cur = cur[int(part)]
        else:
            return MISSING
    return cur


def _describe(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:60]}{'...' if len(text) > 60 else ''}"


def instruction_of(ds: Dataset, row: Row) -> str:
    """The row's instruction text; BadInput naming the row and the field otherwise."""
    if ds.messages_field:
        return first_user_turn(row, ds.messages_field)
    name = ds.instruction_field
    value = get_path(row.obj, name)
    if value is MISSING or value is None:  # a table's null is a missing value
        raise BadInput(f"{row.where}: field {name!r} (dataset.instructionField) missing")
    if not isinstance(value, str) or not value.strip():
        raise BadInput(
            f"{row.where}: field {name!r} (dataset.instructionField) must be a non-empty "
            f"string, got {_describe(value)}"
        )
    return value


def first_user_turn(row: Row, name: str) -> str:
    """The content of the first `role: user` message (a string, or OpenAI-style text parts)."""
    what = f"{row.where}: field {name!r} (dataset.messagesField)"
    messages = get_path(row.obj, name)
    if messages is MISSING or messages is None:
        raise BadInput(f"{what} missing")
    if not isinstance(messages, list):
        raise BadInput(f"{what} must be a list of messages, got {_describe(messages)}")
    for k, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") != "user":
            continue
        content = m.get("content")
        if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
            texts = [p.get("text") for p in content if isinstance(p, dict)]
            if texts and all(isinstance(t, str) for t in texts):
                content = "".join(texts)
        if not isinstance(content, str) or not content.strip():
            raise BadInput(
                f"{what}: message {k} (the first user turn) must have non-empty string "
                f"content, got {_describe(content)}"
            )
        return content
    raise BadInput(f"{what} has no message with role 'user'")


def json_safe(obj: dict[str, Any]) -> dict[str, Any]:
    """A row as JSON (prompts files are JSONL): dates, bytes and the like become strings."""
    return json.loads(json.dumps(obj, default=str))


def source_format(ds: Dataset) -> str:
    """jsonl, json, parquet, csv, directory or hub."""
    if ds.hub is not None:
        return "hub"
    assert ds.path is not None
    path = Path(ds.path)
    if not path.exists():
        raise BadInput(f"spec.dataset.path: {path}: no such file or directory")
    if path.is_dir():
        if ds.format:
            raise BadInput(
                f"spec.dataset.format: {ds.format!r} is for a file; {path} is a directory, read "
                "as a hub-layout dataset (point path at a file to give its format)"
            )
        return "directory"
    if ds.format:
        return ds.format
    fmt = EXTENSIONS.get(path.suffix.lower())
    if fmt is None:
        raise BadInput(
            f"spec.dataset.path: {path}: cannot tell the format from {path.suffix or 'no'} "
            f"extension; set spec.dataset.format (one of jsonl, json, parquet, csv)"
        )
    return fmt


# --------------------------------------------------------------------------- readers


def iter_rows(ds: Dataset, env: Mapping[str, str] = os.environ) -> Iterator[Row]:
    fmt = source_format(ds)
    if fmt == "jsonl":
        path = Path(str(ds.path))
        for lineno, obj in A.iter_jsonl_numbered(path, final_newline=False):
            yield Row(f"{path}:{lineno}", f"L{lineno}", obj)
        return
    if fmt == "hub":
        assert ds.hub is not None
        table, where = _load_hub(ds.hub, env), f"hub dataset {ds.hub.id} ({ds.hub.split})"
    else:
        table, where = _load_local(Path(str(ds.path)), fmt), str(ds.path)
    for i, obj in enumerate(table):
        yield Row(f"{where} row {i}", f"R{i}", json_safe(obj))


def _load_local(path: Path, fmt: str) -> Any:
    """A local file or hub-layout directory, read into memory (nothing cached on disk)."""
    import datasets

    try:
        with tempfile.TemporaryDirectory(prefix="tpo-datasets-") as cache:
            if fmt == "directory":
                return datasets.load_dataset(
                    str(path), split="train", cache_dir=cache, keep_in_memory=True
                )
            return datasets.load_dataset(
                fmt, data_files=str(path), split="train", cache_dir=cache, keep_in_memory=True
            )
    except BadInput:
        raise
    except Exception as e:  # the library's many parse errors: name the file, keep the reason
        what = "a hub-layout dataset directory" if fmt == "directory" else fmt
        raise BadInput(
            f"spec.dataset.path: {path}: cannot read as {what}: {type(e).__name__}: {str(e)[:500]}"
        ) from None


def _load_hub(hub: HubDataset, env: Mapping[str, str]) -> Any:
    """A hub dataset (the download is cached under HF_HOME, so a retried prepare reuses it).
    Offline mode (HF_HUB_OFFLINE) without a cached copy is bad input, said at once; an
    unreachable hub is a crash the Job retries. The token is passed, never printed."""
    import datasets
    from datasets.exceptions import DatasetNotFoundError

    token = None
    if hub.token_secret is not None:
        token = env.get(DATASET_TOKEN_ENV) or None
        if token is None:
            raise BadInput(
                f"spec.dataset.hub.tokenSecret is set but {DATASET_TOKEN_ENV} is empty "
                "(is the secret key present?)"
            )
    name = f"spec.dataset.hub: {hub.id!r}" + (f" revision {hub.revision!r}" if hub.revision else "")

    def scrub(e: BaseException) -> str:
        text = str(e)[:500]
        return text.replace(token, "***") if token else text

    try:
        return datasets.load_dataset(
            hub.id, name=hub.config, split=hub.split, revision=hub.revision, token=token
        )
    except DatasetNotFoundError as e:
        raise BadInput(
            f"{name}: not found, or gated/private without access (check id, revision and "
            f"tokenSecret): {scrub(e)}"
        ) from None
    except ConnectionError as e:
        if datasets.config.HF_HUB_OFFLINE:
            raise BadInput(
                f"{name}: offline mode (HF_HUB_OFFLINE=1) and no cached copy; let the prepare "
                "phase reach the hub (HF_HUB_OFFLINE=0; `tpo run` sets 1 unless told) or use a "
                "local path"
            ) from None
        raise ConnectionError(f"{name}: hub unreachable: {scrub(e)}") from None
    except ValueError as e:  # unknown split or config: the library lists the valid ones
        raise BadInput(f"{name}: {scrub(e)}") from None


# --------------------------------------------------------------------------- prepare


def _scalar(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (str, int, float)) and str(value) != ""


def prompt_records(ds: Dataset, env: Mapping[str, str] = os.environ) -> list[dict[str, Any]]:
    """The distinct instructions of the dataset in source order, as prepare writes them:
    {prompt_id, instruction, category, record}. A repeated instruction is dropped (its first
    row kept); the first bad row stops the read with its line or row named."""
    records: list[dict[str, Any]] = []
    seen: set[str] = set()
    for row in iter_rows(ds, env):
        text = instruction_of(ds, row)
        if text in seen:
            continue
        seen.add(text)
        pid = row.default_id
        if ds.id_field:
            value = get_path(row.obj, ds.id_field)
            if value is not MISSING and value is not None:
                if not _scalar(value):
                    raise BadInput(
                        f"{row.where}: field {ds.id_field!r} (dataset.idField) must be a "
                        f"string or number, got {_describe(value)}"
                    )
                pid = str(value)
        category = None
        if ds.category_field:
            value = get_path(row.obj, ds.category_field)
            category = None if value is MISSING else value
        if ds.reference_field:
            ref = get_path(row.obj, ds.reference_field)
            if ref is MISSING or not _scalar(ref):
                raise BadInput(
                    f"{row.where}: field {ds.reference_field!r} (dataset.referenceField) "
                    f"must be a non-empty string or number, got "
                    f"{'nothing (missing)' if ref is MISSING else repr(ref)}"
                )
        records.append(
            {"prompt_id": pid, "instruction": text, "category": category, "record": row.obj}
        )
    ids = [r["prompt_id"] for r in records]
    if len(set(ids)) != len(ids):
        raise BadInput(f"{source_name(ds)}: field {ds.id_field!r} has duplicate ids")
    return records


def source_name(ds: Dataset) -> str:
    return f"hub dataset {ds.hub.id}" if ds.hub is not None else str(ds.path)
