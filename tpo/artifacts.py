"""The artifact layout (docs/design.md, "Artifact contract") and its safe readers and writers.

Every path a phase reads or writes comes from `RunDir`; nothing else in the code base builds an
artifact path. Writes are atomic (temp file in the same directory, fsync, rename), and a phase's
`DONE` marker is written last, so a crashed phase never leaves a file a later phase could
mistake for a finished one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class ArtifactError(ValueError):
    """A malformed or missing artifact, named by path (and line)."""


@dataclass(frozen=True)
class RunDir:
    """`<root>/<namespace>/<run>/` and everything under it."""

    path: Path

    @classmethod
    def of(cls, root: str | Path, namespace: str, run: str) -> RunDir:
        return cls(Path(root) / namespace / run)

    # run-level
    @property
    def spec(self) -> Path:
        return self.path / "spec.json"

    @property
    def status(self) -> Path:
        return self.path / "status.json"

    @property
    def data(self) -> Path:
        return self.path / "data"

    def prompts(self, iteration: int) -> Path:
        return self.data / f"prompts-{iteration}.jsonl"

    @property
    def eval_prompts(self) -> Path:
        return self.data / "eval.jsonl"

    @property
    def seed_model(self) -> Path:
        """Where prepare stages a hub seed model, if the spec names one by hub id."""
        return self.path / "seed-model"

    # iteration-level
    def iter_dir(self, iteration: int) -> Path:
        return self.path / f"iter-{iteration}"

    def samples_dir(self, iteration: int) -> Path:
        return self.iter_dir(iteration) / "samples"

    def samples(self, iteration: int, shard: int) -> Path:
        return self.samples_dir(iteration) / f"{shard}.jsonl"

    def scores_dir(self, iteration: int) -> Path:
        return self.iter_dir(iteration) / "scores"

    def scores(self, iteration: int, shard: int) -> Path:
        return self.scores_dir(iteration) / f"{shard}.jsonl"

    def pairs_dir(self, iteration: int) -> Path:
        return self.iter_dir(iteration) / "pairs"

    def pairs(self, iteration: int, shard: int) -> Path:
        """One file per judge shard, so sharded judges never write the same file."""
        return self.pairs_dir(iteration) / f"{shard}.jsonl"

    def battles(self, iteration: int, shard: int) -> Path:
        """A pairwise judge's battle log ({"prompt", "a", "b", "outcome"} per call), per shard."""
        return self.iter_dir(iteration) / "battles" / f"{shard}.jsonl"

    def model(self, iteration: int) -> Path:
        return self.iter_dir(iteration) / "model"

    def checkpoints(self, iteration: int) -> Path:
        return self.iter_dir(iteration) / "checkpoints"

    def eval_result(self, iteration: int) -> Path:
        return self.iter_dir(iteration) / "eval.json"

    def baseline_outputs(self, key: str) -> Path:
        """Evaluation outputs of a fixed arm (the seed, a baseline model), made once per run."""
        return self.data / f"eval-outputs-{key}.jsonl"

    @property
    def logs(self) -> Path:
        return self.path / "logs"

    def eval_outputs(self, iteration: int) -> Path:
        return self.iter_dir(iteration) / "eval-outputs.jsonl"

    def ifeval(self, iteration: int) -> Path:
        """The IFEval guard's per-prompt results (tpo/ifeval_guard.py)."""
        return self.iter_dir(iteration) / "ifeval.jsonl"

    def exports_dir(self, iteration: int) -> Path:
        """M(t)'s evaluation outputs in the field's formats (tpo/exports.py, docs/exports.md)."""
        return self.iter_dir(iteration) / "exports"

    def export_answers(self, iteration: int, fmt: str, model: str) -> Path:
        """One model's answers. The file is named after the model because the field's readers
        (FastChat's and Arena-Hard-Auto's load_model_answers) take the model name from it."""
        if fmt == "alpaca_eval":
            return self.exports_dir(iteration) / fmt / f"{model}.json"
        return self.exports_dir(iteration) / fmt / "model_answer" / f"{model}.jsonl"

    def export_questions(self, iteration: int, fmt: str) -> Path:
        """The eval prompts as the benchmark's question file (MT-Bench, Arena-Hard-Auto)."""
        return self.exports_dir(iteration) / fmt / "question.jsonl"

    def export_references(self, iteration: int) -> Path:
        """dataset.referenceField's answers as MT-Bench's reference answers, named after
        FastChat's default judge (its check_data looks them up by the judge's name)."""
        return self.exports_dir(iteration) / "mt_bench" / "reference_answer" / "gpt-4.jsonl"

    def done(self, phase: str, iteration: int, shard: int | None = None) -> Path:
        """`prepare` is run-level (iteration 0); sharded phases get one marker per shard."""
        name = f"{phase}.DONE" if shard is None else f"{phase}-{shard}.DONE"
        if phase == "prepare":
            return self.path / name
        return self.iter_dir(iteration) / name

    @property
    def report(self) -> Path:
        return self.path / "report.md"

    @property
    def plot(self) -> Path:
        return self.path / "report.png"


# --------------------------------------------------------------------------- writing


@contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temp path beside `target`; rename it into place only if the block succeeds."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, target)
        _fsync_dir(target.parent)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """Yield a temp directory beside `target`; it replaces `target` only on success."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield tmp
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]], *, sort_keys: bool = True) -> int:
    """`sort_keys=False` for readers that depend on key order (Arena-Hard's style features)."""
    n = 0
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False, sort_keys=sort_keys) + "\n")
            n += 1
    return n


# --------------------------------------------------------------------------- reading


def read_json(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ArtifactError(f"{path}: missing") from None
    except UnicodeDecodeError as e:
        raise ArtifactError(f"{path}: not UTF-8 ({e.reason})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ArtifactError(f"{path}: line {e.lineno}: invalid JSON ({e.msg})") from None


def iter_jsonl(
    path: Path, required: Iterable[str] = (), *, final_newline: bool = True
) -> Iterator[dict[str, Any]]:
    """Yield objects; a malformed line raises ArtifactError naming the file and line number.

    Our own artifacts always end in a newline, so a last line without one is a truncated
    write; user datasets (`final_newline=False`) may omit it.
    """
    for _, obj in iter_jsonl_numbered(path, required, final_newline=final_newline):
        yield obj


def iter_jsonl_numbered(
    path: Path, required: Iterable[str] = (), *, final_newline: bool = True
) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) pairs; blank lines are skipped but counted."""
    required = tuple(required)
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed by the `with` below
    except FileNotFoundError:
        raise ArtifactError(f"{path}: missing") from None
    except IsADirectoryError:
        raise ArtifactError(f"{path}: is a directory, expected a JSONL file") from None
    with f:
        lineno = 0
        while True:
            lineno += 1
            raw = f.readline()
            if not raw:
                return
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ArtifactError(f"{path}:{lineno}: not UTF-8 ({e.reason})") from None
            if not line.strip():
                continue
            if final_newline and not line.endswith("\n"):
                raise ArtifactError(f"{path}:{lineno}: truncated line (no newline at end)")
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ArtifactError(f"{path}:{lineno}: invalid JSON ({e.msg})") from None
            if not isinstance(obj, dict):
                raise ArtifactError(
                    f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}"
                )
            missing = [k for k in required if k not in obj]
            if missing:
                raise ArtifactError(f"{path}:{lineno}: missing field(s) {', '.join(missing)}")
            yield lineno, obj


def read_jsonl(
    path: Path, required: Iterable[str] = (), *, final_newline: bool = True
) -> list[dict[str, Any]]:
    return list(iter_jsonl(path, required, final_newline=final_newline))


# --------------------------------------------------------------------------- DONE markers

OUTPUTS = "_outputs"  # key of the DONE marker listing the phase's files and their digests
_FULL_HASH = 64 << 20  # larger files (model shards): size + digest of the first and last MiB


def digest(path: Path) -> dict[str, Any]:
    size = path.stat().st_size
    h = hashlib.sha256()
    with open(path, "rb") as f:
        if size <= _FULL_HASH:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        else:
            h.update(f.read(1 << 20))
            f.seek(size - (1 << 20))
            h.update(f.read(1 << 20))
    return {"bytes": size, "sha256": h.hexdigest()}


def write_done(path: Path, summary: dict[str, Any], outputs: Iterable[Path] = ()) -> None:
    """The phase summary, plus each output file's size and digest (relative to the marker's
    run directory) so a later reader can tell a finished phase from a damaged one."""
    base = path.parent
    files = {}
    for out in outputs:
        for f in sorted(out.rglob("*")) if out.is_dir() else [out]:
            if f.is_file() and not f.name.startswith("."):
                files[os.path.relpath(f, base)] = digest(f)
    write_json(path, {**summary, OUTPUTS: files} if files else summary)


def read_done(path: Path) -> dict[str, Any] | None:
    """The phase summary, or None when the phase has not finished. A corrupt marker, or an
    output file missing, truncated or changed since the marker was written, is an
    ArtifactError naming that file: the phase's results are not to be trusted."""
    if not path.exists():
        return None
    obj = read_json(path)
    if not isinstance(obj, dict):
        raise ArtifactError(f"{path}: expected a JSON object")
    files = obj.pop(OUTPUTS, None) or {}
    for rel, want in files.items():
        f = path.parent / rel
        if not f.is_file():
            raise ArtifactError(f"{f}: missing (listed in {path.name})")
        if f.stat().st_size != want.get("bytes") or digest(f) != want:
            raise ArtifactError(f"{f}: changed or truncated since {path.name} was written")
    return obj
