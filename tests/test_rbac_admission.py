"""RBAC backs every ownerReference the operator writes, as OwnerReferencesPermissionEnforcement
demands (on by default in OpenShift; plugin/pkg/admission/gc in kube-apiserver).

For a create, that plugin checks each ownerReference with blockOwnerDeletion: true: the creator
needs `update` on the owner's `finalizers` subresource (`<owner plural>/finalizers`). The
requirement is derived here from the code: the operator's own shell (`handlers._apply`, with
`kopf.adopt`) builds every object of a plan holding every create it can make (the PVC, the
headless Service, a Job of each phase, a group restart), against a recording API. Each owner
kind found must be covered in `rbac.RULES` and in the Role / ClusterRole the chart renders.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from tpo_operator import handlers
from tpo_operator.rbac import ADMISSION_ONLY, allows
from tpo_operator.reconcile import CreateJob, CreatePVC, CreateService, Plan, steps

from tpo import crd as C
from tpo.spec import API_GROUP, API_VERSION, KIND, TPORunStatus, parse_spec

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "tpo-operator"
HELM = ROOT / ".tools" / "bin" / "helm"

SPEC = {
    "model": {"path": "/models/seed"},
    "dataset": {"path": "/data/instructions.jsonl"},
    "iterations": 1,
    "judge": {"type": "programmatic", "programmatic": {"function": "tpo.toy:judge"}},
    "training": {"nodes": 2},  # multi-node train: a headless Service too
    "storage": {"template": {"size": "1Gi"}, "retain": False},  # an owned PVC
}


def _owner_plurals() -> dict[tuple[str, str], str]:
    """(group, kind) -> plural of the kinds this project defines (from its CRD)."""
    names = C.crd()["spec"]["names"]
    return {(C.crd()["spec"]["group"], names["kind"]): names["plural"]}


class Recorder:
    """The API as the shell's `_apply` sees it: every create is recorded and succeeds."""

    def __init__(self) -> None:
        self.created: list[dict[str, Any]] = []

    def create(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        self.created.append(body)
        return body

    def merge_patch(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return body

    def delete(self, path: str) -> None:
        return None


@pytest.fixture(scope="module")
def created() -> list[dict[str, Any]]:
    """What the operator's shell creates for a plan with every kind of create in it."""
    spec = parse_spec(SPEC)
    run = {
        "apiVersion": f"{API_GROUP}/{API_VERSION}",
        "kind": KIND,
        "metadata": {"name": "demo", "namespace": "ml", "uid": "0000-run-uid"},
        "spec": SPEC,
    }
    actions: list[Any] = [CreatePVC()]
    for phase, t in steps(spec.iterations):
        if phase == "train":
            actions.append(CreateService(f"demo-train-{t}", t))
        actions.append(CreateJob(f"demo-{phase}-{t}", phase, t))
    actions.append(CreateJob("demo-train-1-r1", "train", 1, attempt=1))  # a group restart
    status = TPORunStatus(spec_snapshot=spec.dump())
    api = Recorder()
    plan = Plan(status, actions)
    _, refused = handlers._apply(api, run, plan, "ml", "demo")  # type: ignore[arg-type]
    assert refused is None
    return api.created


def blocking_owners(created: list[dict[str, Any]]) -> set[tuple[str, str]]:
    """(group, kind) of every owner referenced with blockOwnerDeletion: true."""
    out = set()
    for obj in created:
        for ref in (obj.get("metadata") or {}).get("ownerReferences") or []:
            if ref.get("blockOwnerDeletion") is True:
                out.add((ref["apiVersion"].rpartition("/")[0], ref["kind"]))
    return out


def required(created: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    """(verb, group, resource) the admission plugin checks for these creates."""
    plurals = _owner_plurals()
    out = set()
    for group, kind in blocking_owners(created):
        assert (group, kind) in plurals, f"owner kind {group}/{kind}: its plural is unknown here"
        out.add(("update", group, f"{plurals[(group, kind)]}/finalizers"))
    return out


def test_every_create_kind_was_built_with_a_blocking_owner(created):
    """The derivation sees what the operator makes (so the checks below are not vacuous)."""
    kinds = {o["kind"] for o in created}
    assert kinds == {"PersistentVolumeClaim", "Service", "Job"}
    for obj in created:
        refs = obj["metadata"].get("ownerReferences") or []
        assert [r.get("blockOwnerDeletion") for r in refs] == [True], obj["metadata"]["name"]
    assert required(created) == {("update", API_GROUP, "tporuns/finalizers")}


def test_rules_back_every_blocking_owner_reference(created):
    missing = sorted(p for p in required(created) if not allows(p[1], p[2], p[0]))
    assert not missing, f"rbac.RULES lack (verb, group, resource) {missing}: refused on OpenShift"


def test_admission_only_permissions_are_exactly_the_derived_ones(created):
    """The e2e request-log test accepts ADMISSION_ONLY as unused; nothing else may hide there."""
    assert set(ADMISSION_ONLY) == required(created)
    for perm, why in ADMISSION_ONLY.items():
        assert allows(perm[1], perm[2], perm[0]) and len(why) > 40, perm


@pytest.mark.parametrize("values", [[], ["--set", "watchAllNamespaces=true"]])
def test_chart_roles_back_every_blocking_owner_reference(created, values):
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "get-helm.sh")], capture_output=True)
    assert proc.returncode == 0 and HELM.exists(), "run `bash scripts/get-helm.sh`"
    out = subprocess.run(
        [str(HELM), "template", "tpo", str(CHART), "-n", "tpo-system", *values],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    roles = [d for d in yaml.safe_load_all(out) if d and d["kind"] in ("Role", "ClusterRole")]
    assert roles
    for role in roles:
        missing = sorted(
            p for p in required(created) if not allows(p[1], p[2], p[0], role["rules"])
        )
        assert not missing, f"the chart's {role['kind']} lacks {missing}"
