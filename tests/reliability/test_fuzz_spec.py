"""Bad input fuzzing: TPORuns from the CRD schema, and mutated valid ones, never crash the operator.

Each case is a TPORun object put into the simulated API (`kubesim`) and reconciled once by the
REAL `handlers.reconcile_run` (chart defaults filled in, spec parsed, planned, applied, status
patched). Hypothesis draws 700 of them (derandomized):

- specs generated from the CRD's openAPIV3Schema (what the API server would admit; checked
  with jsonschema), most of them failing the models' cross-field rules. The strategy is derived
  from the schema here: hypothesis-jsonschema 0.23.1 breaks on the installed hypothesis 6.170
  ('many' object has no attribute 'more');
- a valid spec with one mutation at a random path (a key deleted, a wrong type, a number out of
  range, an unknown field, null);
- run names that Kubernetes admits for a custom resource (RFC 1123 subdomains up to 253
  characters) but that this operator cannot name Jobs after.

The reconcile never raises. A valid TPORun plans: its status is Preparing (or Suspended) and
its prepare Job exists. An invalid one is Failed with reason InvalidSpec and a condition message
naming the field: for a mutation, the mutated path (or its parent, for a cross-field rule).
"""

from __future__ import annotations

import copy
import re
from functools import cache
from typing import Any

import jsonschema
import yaml
from harness import manifest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from kubesim import JOBS, RUN_COLLECTION, SimKube
from test_fault_operator import events_into
from tpo_operator import handlers

from tpo import crd as C

VALID = manifest(iterations=2)["spec"]
# a valid spec with most blocks present, so mutations reach deep paths
RICH = {
    **VALID,
    "thoughtPrompt": {"type": "specific"},
    "generation": {"samples": 4, "temperature": 0.7, "shards": 2, "backend": "transformers"},
    "training": {"beta": 0.1, "lossType": ["sigmoid", "sft"], "lossWeights": [1.0, 0.5]},
    "evaluation": {"baseline": "direct", "prompts": 3},
    "pools": {"train": {"gpus": 2, "tolerations": [{"key": "gpu", "operator": "Exists"}]}},
    "env": [{"name": "X", "value": "1"}],
}


def to_jsonschema(node: Any) -> Any:
    """OpenAPI 3.0 (CRD) -> JSON Schema draft 4: nullable becomes a null branch; a free-form
    object (x-kubernetes-preserve-unknown-fields) is kept small so examples stay cheap."""
    if isinstance(node, list):
        return [to_jsonschema(x) for x in node]
    if not isinstance(node, dict):
        return node
    out = {
        k: to_jsonschema(v)
        for k, v in node.items()
        if k != "nullable" and not k.startswith("x-kubernetes") and k != "description"
    }
    if node.get("x-kubernetes-preserve-unknown-fields"):
        out.setdefault("maxProperties", 2)
        out.setdefault("additionalProperties", {"type": ["string", "integer", "boolean", "null"]})
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
        if "enum" in out:
            out["enum"] = [*out["enum"], None]
    return out


@cache
def spec_schema() -> dict[str, Any]:
    crd = yaml.safe_load(C.crd_yaml())
    root = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return to_jsonschema(root)["properties"]["spec"]


def from_schema(node: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values valid under a (draft 4, structural) schema: every keyword the CRD uses."""
    types = node.get("type", "object")
    if isinstance(types, list):
        return st.one_of([from_schema({**node, "type": t}) for t in types])
    if types == "null":
        return st.none()
    if "enum" in node:
        return st.sampled_from([v for v in node["enum"] if v is not None])
    if types == "boolean":
        return st.booleans()
    if types in ("integer", "number"):
        lo, hi = node.get("minimum"), node.get("maximum")
        if types == "integer":
            lo = None if lo is None else int(lo) + (1 if node.get("exclusiveMinimum") else 0)
            hi = None if hi is None else int(hi) - (1 if node.get("exclusiveMaximum") else 0)
            return st.integers(min_value=lo, max_value=hi)
        return st.floats(
            min_value=lo,
            max_value=hi,
            exclude_min=bool(node.get("exclusiveMinimum")),
            exclude_max=bool(node.get("exclusiveMaximum")),
            allow_nan=False,
            allow_infinity=False,
        )
    if types == "string":
        if "pattern" in node:
            return st.from_regex(node["pattern"])
        return st.text(min_size=node.get("minLength", 0), max_size=node.get("maxLength", 12))
    if types == "array":
        lo = node.get("minItems", 0)
        return st.lists(
            from_schema(node.get("items", {})),
            min_size=lo,
            max_size=min(node.get("maxItems", 3), lo + 3),
        )
    props = node.get("properties", {})
    required = set(node.get("required", []))
    fixed = {k: from_schema(v) for k, v in props.items() if k in required}
    optional = {k: from_schema(v) for k, v in props.items() if k not in required}
    out = st.fixed_dictionaries(fixed, optional=optional)
    extra = node.get("additionalProperties")
    if isinstance(extra, dict) and not props:
        return st.dictionaries(
            st.text(min_size=1, max_size=8),
            from_schema(extra),
            max_size=node.get("maxProperties", 2),
        )
    return out


def paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for k, v in node.items():
            out += paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += paths(v, (*prefix, i))
    return out


BAD_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**12), max_value=10**12),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)


@st.composite
def mutated(draw) -> tuple[dict[str, Any], str | None]:
    """(spec, dotted path of the mutation) from one valid spec and one change."""
    spec = copy.deepcopy(draw(st.sampled_from([VALID, RICH])))
    path = draw(st.sampled_from(paths(spec)))
    op = draw(st.sampled_from(["delete", "replace", "unknown"]))
    parent = spec
    for p in path[:-1]:
        parent = parent[p]
    last = path[-1]
    if op == "delete":
        parent.pop(last)
    elif op == "replace":
        parent[last] = draw(BAD_VALUES)
    else:
        target = parent[last]
        if not isinstance(target, dict):
            return spec, None
        target[draw(st.sampled_from(["bogus", "Samples", "x_y"]))] = 1
        path = (*path, "?")
    dotted = "spec"
    for p in path:
        dotted += f"[{p}]" if isinstance(p, int) else f".{p}"
    return spec, dotted.removesuffix(".?")


@st.composite
def subdomains(draw) -> str:
    """Names the API server admits for a custom resource: RFC 1123 subdomains, <= 253 chars."""
    n = draw(st.sampled_from([1, 2, 10, 39, 40, 41, 63, 64, 200, 253]))
    middle = draw(st.text("abcz09-.", min_size=max(n - 2, 0), max_size=max(n - 2, 0)))
    name = (draw(st.sampled_from("a0")) + middle + draw(st.sampled_from("z9")))[:n]
    return re.sub(r"\.(?=[.-])|-(?=\.)", "a", name)  # no empty or dash-edged dot segments


_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def reconcile_once(spec: Any, name: str) -> tuple[dict[str, Any], SimKube]:
    body = manifest(name=name)
    body["spec"] = spec
    api = SimKube()
    api.put(RUN_COLLECTION, body)
    handlers._KUBE = api
    try:
        with events_into(api):
            handlers.reconcile_run("default", name)
    finally:
        handlers._KUBE = None
    return api.get(RUN_COLLECTION, name).get("status") or {}, api


def names(message: str, path: str) -> bool:
    """The message names `path` or one of its parents (below `spec`) as a field."""
    cuts = [*[m.start() for m in re.finditer(r"[.\[]", path)][1:], len(path)]
    return any(re.search(re.escape(path[:c]) + r"[.\[:]", message) for c in cuts)


def check(spec: Any, mutated_path: str | None, name: str) -> None:
    if mutated_path is None and name == "demo":
        jsonschema.Draft4Validator(spec_schema()).validate(spec)  # the generator is honest
    status, api = reconcile_once(spec, name)  # never raises
    event(str(status.get("phase")))
    name_ok = bool(_NAME.match(name)) and len(name) <= 40
    if status.get("phase") == "Failed":
        cond = next(c for c in status["conditions"] if c["type"] == "Failed")
        assert cond["status"] == "True" and cond["reason"] == "InvalidSpec"
        assert re.search(r"(spec|metadata)[.\w\[\]]*: ", cond["message"]), cond["message"]
        if not name_ok:
            assert "metadata.name: " in cond["message"], cond["message"]
        if mutated_path and name_ok:
            assert names(cond["message"], mutated_path), (mutated_path, cond["message"])
        assert api.items(JOBS) == []
        assert any(e["reason"] == "InvalidSpec" for e in api.events)
    else:
        assert name_ok, f"{name!r}: a name no Job can carry was accepted"
        assert status["phase"] in ("Preparing", "Suspended"), status
        created = [j["metadata"]["name"] for j in api.items(JOBS)]
        assert created == ([] if status["phase"] == "Suspended" else [f"{name}-prepare-0"])
        assert status["specSnapshot"]
    assert mutated_path is None or mutated_path.startswith("spec")


def fuzz(n: int) -> settings:
    return settings(
        max_examples=n,
        deadline=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


@fuzz(300)
@given(spec=from_schema(spec_schema()))
def test_schema_generated_specs_plan_or_fail_naming_the_field(spec):
    check(spec, None, "demo")


@fuzz(300)
@given(case=mutated())
def test_mutated_valid_specs_plan_or_fail_naming_the_mutated_field(case):
    check(case[0], case[1], "demo")


@fuzz(100)
@given(name=subdomains())
def test_names_the_api_admits_plan_or_fail_naming_metadata_name(name):
    check(copy.deepcopy(VALID), None, name)


def test_the_fuzzer_reaches_both_outcomes():
    """Guard against a vacuous fuzzer: valid and invalid cases both occur in its space."""
    assert reconcile_once(copy.deepcopy(RICH), "demo")[0]["phase"] == "Preparing"
    bad = copy.deepcopy(RICH)
    bad["generation"]["samples"] = 1
    st_, _ = reconcile_once(bad, "demo")
    assert st_["phase"] == "Failed" and "spec.generation.samples" in st_["message"]
