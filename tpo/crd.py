"""The TPORun CustomResourceDefinition, generated from the pydantic models in `spec.py`.

Kubernetes wants a *structural* schema: no `$ref`, a `type` on every node, no `type` inside
`anyOf`/`oneOf`, nullable instead of `null` branches. Pydantic's JSON schema is converted into
that form here so the CRD can never drift from the models (a test compares the committed file).
"""

from __future__ import annotations

from typing import Any

from tpo import spec as S
from tpo import yamlsafe

_KEEP = {
    "type",
    "description",
    "properties",
    "required",
    "items",
    "enum",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "pattern",
    "additionalProperties",
    "format",
}


def _resolve(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, dict) and "$ref" in node:
        ref = node["$ref"].split("/")[-1]
        merged = {**defs[ref], **{k: v for k, v in node.items() if k != "$ref"}}
        return _resolve(merged, defs)
    return node


def _structural(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    node = _resolve(node, defs)
    for key in ("anyOf", "oneOf"):
        if key in node:
            branches = [_resolve(b, defs) for b in node[key]]
            non_null = [b for b in branches if b.get("type") != "null"]
            nullable = len(non_null) < len(branches)
            if len(non_null) != 1:
                raise ValueError(f"cannot make a structural schema of a union: {node}")
            rest = {k: v for k, v in node.items() if k != key}
            out = _structural({**non_null[0], **rest}, defs)
            if nullable:
                out["nullable"] = True
            return out
    if "const" in node:
        node = {**node, "enum": [node["const"]]}
    out: dict[str, Any] = {}
    for k, v in node.items():
        if k == "default" or k == "title" or k not in _KEEP:
            continue
        if k == "properties":
            out[k] = {name: _structural(sub, defs) for name, sub in v.items()}
        elif k == "items":
            out[k] = _structural(v, defs)
        elif k == "additionalProperties":
            if v is True:
                out["x-kubernetes-preserve-unknown-fields"] = True
            elif isinstance(v, dict):
                sub = _structural(v, defs) if v else {}
                if sub:
                    out[k] = sub
                else:
                    out["x-kubernetes-preserve-unknown-fields"] = True
        else:
            out[k] = v
    if "type" not in out:
        if "enum" in node:
            vals = node["enum"]
            out["type"] = "integer" if all(isinstance(x, int) for x in vals) else "string"
        elif "properties" in out:
            out["type"] = "object"
        else:
            # Free-form value (e.g. an Affinity object or an EnvVar list item).
            out["type"] = "object"
            out["x-kubernetes-preserve-unknown-fields"] = True
    if (
        out.get("type") == "object"
        and "properties" not in out
        and "additionalProperties" not in out
    ):
        out["x-kubernetes-preserve-unknown-fields"] = True
    if "exclusiveMinimum" in out and not isinstance(out["exclusiveMinimum"], bool):
        out["minimum"], out["exclusiveMinimum"] = out["exclusiveMinimum"], True
    if "exclusiveMaximum" in out and not isinstance(out["exclusiveMaximum"], bool):
        out["maximum"], out["exclusiveMaximum"] = out["exclusiveMaximum"], True
    return out


def model_schema(model: type[S.Model]) -> dict[str, Any]:
    """Structural openAPIV3Schema of a pydantic model (by alias, validation mode)."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.pop("$defs", {})
    return _structural(raw, defs)


def crd() -> dict[str, Any]:
    spec_schema = model_schema(S.TPORunSpec)
    status_schema = model_schema(S.TPORunStatus)
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{S.PLURAL}.{S.API_GROUP}"},
        "spec": {
            "group": S.API_GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": S.KIND,
                "listKind": f"{S.KIND}List",
                "plural": S.PLURAL,
                "singular": S.SINGULAR,
                "shortNames": S.SHORT_NAMES,
                "categories": ["all"],
            },
            "versions": [
                {
                    "name": S.API_VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [
                        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
                        {"name": "Iteration", "type": "integer", "jsonPath": ".status.iteration"},
                        {"name": "Win-Rate", "type": "number", "jsonPath": ".status.winRate"},
                        {
                            "name": "Thought-Tokens",
                            "type": "number",
                            "jsonPath": ".status.thoughtTokens",
                        },
                        {
                            "name": "Progress",
                            "type": "string",
                            "description": "The step in flight: percent done and ETA.",
                            "jsonPath": ".status.progress.summary",
                        },
                        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                    ],
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": "A Thought Preference Optimization run.",
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec_schema,
                                "status": status_schema,
                            },
                        }
                    },
                }
            ],
        },
    }


def crd_yaml() -> str:
    """The CRD as YAML, through the shared dumper (`yamlsafe`): the text `tpo crd` prints and
    both committed copies hold. Go's YAML must read it as PyYAML does, or the API server sees
    e.g. the property `n` as the boolean false."""
    header = "# GENERATED by `tpo crd` from tpo/spec.py. Do not edit; regenerate.\n"
    return header + yamlsafe.dump(crd())


CHART_TEMPLATE = "charts/tpo-operator/templates/crd.yaml"


def chart_template() -> str:
    """The Helm chart's CRD: a template, not a `crds/` file, so `helm upgrade` upgrades it
    (Helm never touches `crds/` after the first install), `crds.install=false` leaves it to
    kubectl, and `helm.sh/resource-policy: keep` makes `helm uninstall` keep it (deleting a CRD
    deletes every TPORun). The body is the generated CRD, through the same dumper."""
    doc = crd()
    doc["metadata"]["annotations"] = {"helm.sh/resource-policy": "keep"}
    body = yamlsafe.dump(doc)
    if "{{" in body:
        raise ValueError("the CRD text holds `{{`, which Helm would read as a template action")
    name = f"  name: {doc['metadata']['name']}\n"
    labels = '  labels:\n    {{- include "tpo-operator.labels" . | nindent 4 }}\n'
    assert body.count(name) == 1
    return (
        "{{- /* GENERATED by `make crd` from tpo/spec.py (tpo.crd.chart_template). */}}\n"
        # `dig`: values without `crds` (`helm upgrade --reuse-values` from chart 0.1.0) install it.
        '{{- if dig "crds" "install" true .Values.AsMap }}\n'
        + body.replace(name, name + labels)
        + "{{- end }}\n"
    )
