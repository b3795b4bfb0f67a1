"""The committed CRD is the generated one, structural, valid, and agrees with the models."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tpo import crd as C
from tpo.spec import API_GROUP, API_VERSION, KIND, IterationStatus, TPORunStatus, parse_spec

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = ROOT / "crds" / "tporun.yaml"

MINIMAL = {
    "model": {"path": "/models/seed"},
    "dataset": {"path": "/data/instructions.jsonl"},
    "judge": {"type": "rewardModel", "rewardModel": {"path": "/models/rm"}},
}


@pytest.fixture(scope="module")
def crd() -> dict[str, Any]:
    return yaml.safe_load(C.crd_yaml())


@pytest.fixture(scope="module")
def version(crd) -> dict[str, Any]:
    (v,) = crd["spec"]["versions"]
    return v


@pytest.fixture(scope="module")
def validator(version) -> jsonschema.Draft4Validator:
    schema = to_jsonschema(version["schema"]["openAPIV3Schema"])
    jsonschema.Draft4Validator.check_schema(schema)
    return jsonschema.Draft4Validator(schema)


def to_jsonschema(node: Any) -> Any:
    """OpenAPI v3.0 -> JSON Schema draft 4: `nullable: true` becomes a null type branch.

    Draft 4 is the dialect whose boolean exclusiveMinimum/Maximum OpenAPI 3.0 inherits.
    x-kubernetes-* keys are ignored by jsonschema, as unknown keywords are.
    """
    if isinstance(node, list):
        return [to_jsonschema(x) for x in node]
    if not isinstance(node, dict):
        return node
    out = {k: to_jsonschema(v) for k, v in node.items() if k != "nullable"}
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
        if "enum" in out:
            out["enum"] = [*out["enum"], None]
    return out


def manifest(spec: dict[str, Any], status: dict[str, Any] | None = None) -> dict[str, Any]:
    doc = {
        "apiVersion": f"{API_GROUP}/{API_VERSION}",
        "kind": KIND,
        "metadata": {"name": "demo", "namespace": "ml"},
        "spec": spec,
    }
    if status is not None:
        doc["status"] = status
    return doc


def walk(node: Any, path: str = "$"):
    """Every schema node: (path, node)."""
    yield path, node
    for name, sub in (node.get("properties") or {}).items():
        yield from walk(sub, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from walk(node["additionalProperties"], f"{path}{{}}")


# --------------------------------------------------------------------------- the file


def test_committed_crd_is_up_to_date():
    assert COMMITTED.exists(), "crds/tporun.yaml is missing: run `tpo crd > crds/tporun.yaml`"
    assert COMMITTED.read_text() == C.crd_yaml(), (
        "crds/tporun.yaml is stale (tpo/spec.py changed): run `tpo crd > crds/tporun.yaml`"
    )


def test_structural_schema(version):
    schema = version["schema"]["openAPIV3Schema"]
    bad = []
    for path, node in walk(schema):
        for key in ("$ref", "anyOf", "oneOf", "allOf", "not", "$defs", "definitions", "default"):
            if key in node:
                bad.append(f"{path}: has {key}")
        if "type" not in node and not node.get("x-kubernetes-preserve-unknown-fields"):
            bad.append(f"{path}: no type and no x-kubernetes-preserve-unknown-fields")
        if node.get("type") == "array" and "items" not in node:
            bad.append(f"{path}: array without items")
    assert bad == []


def test_walk_sees_nested_nodes(version):
    # Guard the structural test against a walker that silently sees nothing.
    paths = {p for p, _ in walk(version["schema"]["openAPIV3Schema"])}
    assert "$.spec.judge.lengthControl.rho" in paths
    assert "$.spec.training.lossType[]" in paths
    assert "$.status.history[].categories[].winRate" in paths


def test_kubernetes_validate_accepts_crd(crd):
    kubernetes_validate.validate(crd, desired_version="1.32", strict=True)


def test_kubernetes_validate_catches_a_broken_crd(crd):
    # The validator is live: a wrong type and an unknown field in the CRD are caught.
    for mutate in (
        lambda c: c["spec"]["versions"][0].update(served="yes"),
        lambda c: c["spec"]["versions"][0].update(printerColumns=[]),
    ):
        broken = copy.deepcopy(crd)
        mutate(broken)
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(broken, desired_version="1.32", strict=True)


def test_names_status_subresource_and_printer_columns(crd, version):
    assert crd["metadata"]["name"] == f"tporuns.{API_GROUP}"
    assert crd["spec"]["names"]["kind"] == KIND
    assert "tpo" in crd["spec"]["names"]["shortNames"]
    assert version["name"] == API_VERSION and version["served"] and version["storage"]
    assert version["subresources"] == {"status": {}}
    cols = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert cols["Phase"] == ".status.phase"
    assert cols["Iteration"] == ".status.iteration"
    assert cols["Win-Rate"] == ".status.winRate"
    assert "Age" in cols
    status_props = version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
    assert cols["Progress"] == ".status.progress.summary"
    for col in version["additionalPrinterColumns"]:
        if col["jsonPath"].startswith(".status."):
            *parents, leaf = col["jsonPath"].removeprefix(".status.").split(".")
            props = status_props
            for part in parents:  # a nested field: each level an object of the schema
                props = props[part]["properties"]
            assert leaf in props, col


# --------------------------------------------------------------------------- TPORuns vs the schema


def test_minimal_tporun_validates(validator):
    validator.validate(manifest(MINIMAL))


def test_fully_defaulted_spec_and_status_validate(validator):
    # Every field present (the models' defaults, dumped): the schema accepts all of them.
    spec = parse_spec(
        {
            **MINIMAL,
            "thoughtPrompt": {"type": "custom", "template": "{instruction}", "separator": "#"},
            "training": {"lossType": ["sigmoid", "sft"], "lossWeights": [1.0, 0.2]},
            "evaluation": {"baseline": "model", "baselineModel": {"hubId": "org/base"}},
            "pools": {"train": {"gpus": 8, "tolerations": [{"key": "gpu", "operator": "Exists"}]}},
            "env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}],
        }
    ).model_dump(by_alias=True, mode="json", exclude_none=True)
    status = TPORunStatus(
        phase="Training",
        iteration=2,
        history=[IterationStatus(iteration=1, pairs=10, win_rate=0.6, phase_seconds={"train": 3})],
        retries={"train": 1},
    ).dump()
    validator.validate(manifest(spec, status))


@pytest.mark.parametrize(
    ("path", "value", "words"),
    [
        (("generation", "samples"), -1, "less than the minimum"),
        (("generation", "samples"), "eight", "not of type"),
        (("thoughtPrompt", "type"), "clever", "is not one of"),
        (("judge", "type"), "oracle", "is not one of"),
        (("judge", "lengthControl", "rho"), 1.5, "greater than the maximum"),
        (("generation", "topP"), 0.0, "less than or equal to the minimum"),
        (("training", "lossType"), ["dpo"], "is not one of"),
    ],
)
def test_invalid_tporuns_fail_the_schema(validator, path, value, words):
    spec = copy.deepcopy(MINIMAL)
    node = spec
    for p in path[:-1]:
        node = node.setdefault(p, {})
    node[path[-1]] = value
    errors = [e.message for e in validator.iter_errors(manifest(spec))]
    assert errors, f"schema accepted {path}={value!r}"
    assert any(words in e for e in errors), errors


def test_missing_required_fails_the_schema(validator):
    spec = {k: v for k, v in MINIMAL.items() if k != "dataset"}
    errors = [e.message for e in validator.iter_errors(manifest(spec))]
    assert any("'dataset' is a required property" in e for e in errors), errors
    assert list(validator.iter_errors({"apiVersion": "x", "kind": KIND, "metadata": {}}))
