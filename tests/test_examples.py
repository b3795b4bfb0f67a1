"""Every example TPORun is accepted by both gates a real apply meets, and builds valid Jobs.

Gate 1 is the API server's: the CRD's openAPIV3Schema (checked with jsonschema, Draft 4, whose
boolean `exclusiveMinimum` and tolerance of `nullable`/`x-kubernetes-*` match OpenAPI v3.0).
Gate 2 is the operator's: the pydantic model (`tpo.spec.parse_manifest`).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tpo.render import render
from tpo.spec import KIND, SpecError, parse_manifest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
PAPER = ROOT / "examples" / "tporun.yaml"
DIRECT = ROOT / "examples" / "tporun-direct.yaml"


def tporuns(path: Path) -> list[dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    runs = [d for d in docs if d.get("kind") == KIND]
    assert runs, f"{path.name}: no {KIND} document"
    return runs


@pytest.fixture(scope="module")
def crd_validator() -> jsonschema.Draft4Validator:
    crd = yaml.safe_load((ROOT / "crds" / "tporun.yaml").read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["storage"]]
    schema = version["schema"]["openAPIV3Schema"]
    jsonschema.Draft4Validator.check_schema(schema)
    return jsonschema.Draft4Validator(schema)


def crd_errors(validator: jsonschema.Draft4Validator, doc: dict[str, Any]) -> list[str]:
    return [
        f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
        for e in validator.iter_errors(doc)
    ]


def test_the_examples_exist():
    names = {p.name for p in EXAMPLES}
    assert {"tporun.yaml", "tporun-direct.yaml"} <= names


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_passes_the_crd_schema(crd_validator, path):
    for doc in tporuns(path):
        assert not crd_errors(crd_validator, doc), crd_errors(crd_validator, doc)


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_passes_the_pydantic_model(path):
    for doc in tporuns(path):
        meta, spec = parse_manifest(doc)
        assert meta["name"] and spec.iterations >= 1


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_builds_valid_kubernetes_objects(path):
    """What the operator would create for every iteration passes Kubernetes' own schemas."""
    for doc in tporuns(path):
        _, spec = parse_manifest(doc)
        for iteration in range(spec.iterations + 1):
            for obj in render(doc, iteration, "ml-team"):
                kubernetes_validate.validate(obj, desired_version="1.32", strict=True)


# Mutations each gate must reject, so the passes above mean something.
CRD_REJECTS = [
    (("spec", "generation", "samples"), 1),
    (("spec", "generation", "topP"), 0.0),
    (("spec", "thoughtPrompt", "type"), "verbose"),
    (("spec", "training", "deepspeed", "zeroStage"), 1),
    (("spec", "iterations"), "four"),
]


def _mutated(doc: dict[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    out = copy.deepcopy(doc)
    node = out
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = value
    return out


@pytest.mark.parametrize(("path", "value"), CRD_REJECTS, ids=[".".join(p) for p, _ in CRD_REJECTS])
def test_both_gates_reject_a_broken_paper_example(crd_validator, path, value):
    (doc,) = tporuns(PAPER)
    bad = _mutated(doc, path, value)
    errors = crd_errors(crd_validator, bad)
    assert errors and any(".".join(path) in e for e in errors), errors
    with pytest.raises(SpecError) as exc:
        parse_manifest(bad)
    assert any(".".join(path) in p for p in exc.value.problems), exc.value.problems


def test_pydantic_names_an_unknown_field():
    """The CRD prunes unknown fields silently; the operator's model refuses them by name."""
    (doc,) = tporuns(PAPER)
    with pytest.raises(SpecError, match=r"spec\.generation\.topK: unknown field"):
        parse_manifest(_mutated(doc, ("spec", "generation", "topK"), 40))


# --------------------------------------------------------------------------- the paper's recipe


def test_paper_example_is_the_papers_recipe():
    (doc,) = tporuns(PAPER)
    _, spec = parse_manifest(doc)
    assert spec.model.hub_id == "meta-llama/Meta-Llama-3-8B-Instruct"
    assert spec.model.token_secret_ref and spec.model.token_secret_ref.name == "hf-token"
    assert spec.judge.type == "rewardModel"
    assert spec.judge.reward_model and spec.judge.reward_model.hub_id == (
        "RLHFlow/ArmoRM-Llama3-8B-v0.1"
    )
    assert spec.dataset.path.startswith(spec.storage.mount_path + "/")
    assert spec.thought_prompt.type == "specific"
    g = spec.generation
    assert (g.samples, g.temperature, g.top_p) == (8, 0.8, 0.95)
    assert (spec.dataset.prompts_per_iteration, spec.iterations) == (5000, 4)
    assert 0 < spec.judge.length_control.rho <= 0.5
    t = spec.training
    assert (t.loss_type, t.beta, t.learning_rate) == (["sigmoid"], 0.1, 5e-7)
    assert (t.deepspeed.zero_stage, t.nodes, t.gpus_per_node) == (3, 2, 8)
    assert spec.storage.template and spec.storage.template.access_modes == ["ReadWriteMany"]
    for phase in ("generate", "judge", "train", "evaluate"):
        pool = getattr(spec.pools, phase)
        assert pool.gpus >= 1 and pool.node_selector and pool.tolerations, phase


def test_paper_example_spreads_over_gpu_pools():
    (doc,) = tporuns(PAPER)
    objs = render(doc, 1, "ml-team")
    jobs = {o["metadata"]["labels"]["tpo.dev/phase"]: o for o in objs if o["kind"] == "Job"}
    generate, train = jobs["generate"]["spec"], jobs["train"]["spec"]
    assert generate["completions"] == 8
    assert train["completions"] == 2
    container = train["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "8"
    tolerations = train["template"]["spec"]["tolerations"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in tolerations
    assert any(o["kind"] == "Service" for o in objs), "multi-node training needs its Service"


def test_direct_twin_differs_only_in_the_thought_prompt():
    (tpo_doc,) = tporuns(PAPER)
    (direct_doc,) = tporuns(DIRECT)
    _, tpo_spec = parse_manifest(tpo_doc)
    _, direct_spec = parse_manifest(direct_doc)
    assert direct_spec.thought_prompt.resolved() == ("{instruction}", None)
    assert tpo_doc["metadata"]["name"] != direct_doc["metadata"]["name"]
    a = tpo_spec.model_dump(exclude={"thought_prompt"})
    b = direct_spec.model_dump(exclude={"thought_prompt"})
    assert a == b
