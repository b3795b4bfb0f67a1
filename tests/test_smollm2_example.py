"""examples/smollm2-cpu.yaml on the REAL SmolLM2-135M-Instruct: its generate and judge phases on
a few MT-Bench prompts, and what must happen on real text.

The model is built from the package's GGUF once per session (tests/conftest.py `smollm2`); the
example is read as a user's `tpo run` reads it (tpo.local.load_manifest) and only its sizes are
shrunk (prompts, K, maxTokens) so the test fits CI. One vLLM engine serves every phase of the
module: each phase asks `load_generator` for the model and gets the shared engine (its `close`
deferred to the module's end), because each engine start costs 12-40 s on 2 loaded cores; the
phases, the split, the guards and the pairing are the product's own, on the engine's own text.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from tpo import phases as P
from tpo.artifacts import RunDir, read_done, read_jsonl
from tpo.errors import EXIT_BAD_INPUT, EXIT_OK
from tpo.generate import load_generator as REAL_LOADER
from tpo.local import load_manifest
from tpo.spec import GENERIC_SEPARATOR, GENERIC_THOUGHT_HEADER

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "smollm2-cpu.yaml"
PROMPTS, K = 4, 2

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]  # hang guard


class SharedEngine:
    """The generator every phase of this module gets; records what each phase asked for."""

    def __init__(self, model: Path):
        self.model = str(model)
        self.engine: Any = None
        self.requests: list[dict[str, Any]] = []

    def load(self, model_path: str, gen, *, dtype: str = "auto", **kw) -> SharedEngine:
        assert Path(model_path) == Path(self.model), model_path
        self.requests.append({"backend": gen.backend, "dtype": dtype})
        if self.engine is None:  # the example's own engine settings (vLLM, float32, 1024)
            _, spec = load_manifest(EXAMPLE)
            self.engine = REAL_LOADER(self.model, spec.generation, dtype=spec.model.dtype)
        return self

    def generate(self, prompts, **kw):
        return self.engine.generate(prompts, **kw)

    def count_tokens(self, texts):
        return self.engine.count_tokens(texts)

    @property
    def max_model_len(self):
        return getattr(self.engine, "max_model_len", None)

    def close(self) -> None:
        """Each phase closes its generator; the shared one closes at the module's end."""


@pytest.fixture(scope="module")
def engine(smollm2):
    shared = SharedEngine(smollm2 / "model")
    yield shared
    if shared.engine is not None:
        shared.engine.close()


def example_spec(smollm2: Path, **changes: dict[str, Any]) -> dict[str, Any]:
    """The example as `tpo run` reads it, pointed at the session's build, at test size."""
    _, spec = load_manifest(EXAMPLE)
    d = spec.dump()
    d["model"]["path"] = str(smollm2 / "model")
    d["judge"]["pairwise"]["path"] = str(smollm2 / "model")
    d["dataset"].update(path=str(smollm2 / "mtbench.jsonl"), promptsPerIteration=PROMPTS)
    d["dataset"]["evalPrompts"] = 2
    d["iterations"] = 1
    d["generation"].update(samples=K, maxTokens=64)
    d["judge"]["pairwise"]["maxTokens"] = 48
    for key, over in changes.items():
        d[key] = {**d.get(key, {}), **over}
    return d


def phase(name: str, run: RunDir, capsys) -> tuple[int, str]:
    capsys.readouterr()
    args = SimpleNamespace(name=name, run_dir=str(run.path), iteration=1, shard=None, spec=None)
    code = P.main(args)
    return code, capsys.readouterr().err


def pct(count: int, total: int) -> str:
    return f"{100 * count / total:.1f}%".replace(".0%", "%")


def test_as_shipped_the_parse_guard_stops_generate_with_the_measured_rate(
    tmp_path, smollm2, engine, monkeypatch, capsys
):
    """The generic prompt as shipped: SmolLM2 rarely writes the separator at a line's start and
    runs past maxTokens, so generate fails with exit 3 naming the rate measured on its own
    samples, the threshold and the cause, and leaves no DONE (judge and train never run)."""
    monkeypatch.setattr("tpo.generate.load_generator", engine.load)
    run = RunDir(tmp_path / "run")
    P.run_phase("prepare", run, 0, spec_json=json.dumps(example_spec(smollm2)))
    code, err = phase("generate", run, capsys)
    assert run.samples(1, 0).exists(), err
    samples = read_jsonl(run.samples(1, 0))
    n = PROMPTS * K
    failed = sum(not r["parse_ok"] for r in samples)
    kinds = {k: sum(r["failure"] == k for r in samples) for k in ("no_separator", "truncated")}
    assert len(samples) == n and engine.requests[-1] == {"backend": "vllm", "dtype": "float32"}
    assert kinds["truncated"] == sum(r["finish_reason"] == "length" for r in samples)
    if failed / n > 0.9:  # the guard's threshold in the example (the default)
        assert code == EXIT_BAD_INPUT, err
        assert f"generate: {pct(failed, n)} of samples failed to parse ({failed} of {n}: " in err
        assert "guards.maxParseFailureRate 90%" in err
        assert not run.done("generate", 1, 0).exists()
    else:  # a lucky draw parsed: the phase passes and says what it measured
        assert code == EXIT_OK, err
        assert f"generate: {pct(failed, n)} of samples failed to parse" in err  # the warning


def test_prefill_and_budget_build_pairs_from_parsed_against_failed(
    tmp_path, smollm2, engine, monkeypatch, capsys
):
    """With the thought header prefilled and a thought budget every output is a thought then
    the separator (forced where the model ran on); the judge phase then pairs a parsed sample
    with a failed one of the same prompt even though this judge states no verdict, and never
    chooses a failure. Guards lifted so both phases run to their summaries."""
    monkeypatch.setattr("tpo.generate.load_generator", engine.load)
    spec = example_spec(
        smollm2,
        thoughtPrompt={"prefill": GENERIC_THOUGHT_HEADER},
        generation={"thoughtBudget": 16, "maxTokens": 96},
        guards={"maxParseFailureRate": 1.0, "maxJudgeNoVerdictRate": 1.0},
    )
    run = RunDir(tmp_path / "run")
    P.run_phase("prepare", run, 0, spec_json=json.dumps(spec))
    code, err = phase("generate", run, capsys)
    assert code == EXIT_OK, err
    samples = read_jsonl(run.samples(1, 0))
    assert all(r["text"].startswith(GENERIC_THOUGHT_HEADER) for r in samples)
    for r in samples:  # the budget: past it, the separator was forced into the text
        if r["forced"]:
            assert GENERIC_SEPARATOR in r["text"] and r["thought_generated_tokens"] >= 16
        if r["failure"] == "no_separator":  # only an output that stopped before the budget
            assert r["finish_reason"] == "stop" and not r["forced"]
    code, err = phase("judge", run, capsys)
    assert code == EXIT_OK, err
    summary = read_done(run.done("judge", 1, 0))
    by_prompt: dict[str, list[dict]] = {}
    for r in samples:
        by_prompt.setdefault(r["prompt_id"], []).append(r)
    pairs = {p["prompt_id"]: p for p in read_jsonl(run.pairs(1, 0))}
    text = {(r["prompt_id"], r["sample"]): r for r in samples}
    mixed = {
        pid
        for pid, rows in by_prompt.items()
        if any(r["parse_ok"] for r in rows) and not all(r["parse_ok"] for r in rows)
    }
    assert mixed <= set(pairs), (mixed, set(pairs))  # never skipped: parsing is a preference
    for pid, p in pairs.items():
        chosen, rejected = text[(pid, p["chosen_sample"])], text[(pid, p["rejected_sample"])]
        assert chosen["parse_ok"] and p["chosen"] == chosen["text"]
        if pid in mixed:
            assert not rejected["parse_ok"] and p["rejected"] == rejected["text"]
    assert summary["pairs"] == len(pairs)
    assert summary["skipped_prompts"] == PROMPTS - len(pairs)
