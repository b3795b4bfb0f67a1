"""A write the API server refuses (403) becomes a condition and an Event on the run.

On a real cluster with the OwnerReferencesPermissionEnforcement admission plugin (OpenShift) and
a Role without `update` on `tporuns/finalizers`, every child create was refused, and the run sat
with an empty PHASE, no condition and no Event. Here the emulator answers as kube-apiserver does
(`Gate`: its RBAC authorizer and that admission plugin, with the messages they write), for the
real kopf operator, and the pure planner's part (`reconcile.denied`) is tested on its own.
"""

from __future__ import annotations

import copy
from typing import Any

import aiohttp.web
import kmock
import pytest
from harness import Cluster, Operator, manifest, wait_for
from tpo_operator.rbac import RULES, allows
from tpo_operator.reconcile import (
    PERMISSION_DENIED,
    Denied,
    Event,
    denied,
    missing_permission,
    permitted,
)

from tpo.spec import API_GROUP, KIND, PLURAL, RunPhase, TPORunStatus

# a hung test is cut here; every wait inside reports its own state well before (harness.WAIT)
pytestmark = pytest.mark.timeout(300)

NOW = "2024-01-01T00:00:00Z"
USER = "system:serviceaccount:tpo-system:tpo-tpo-operator"
OWNER_PLURALS = {(API_GROUP, KIND): PLURAL}  # the owner kinds this cluster knows


def admission_message(qualified: str, name: str) -> str:
    """What plugin/pkg/admission/gc says (admission.NewForbidden: `<resource> "<name>" is
    forbidden: <err>`; the RBAC authorizer gives no reason and no error)."""
    return (
        f'{qualified} "{name}" is forbidden: cannot set blockOwnerDeletion if an ownerReference '
        "refers to a resource you can't set finalizers on: , <nil>"
    )


def rbac_message(qualified: str, verb: str, plural: str, group: str, namespace: str) -> str:
    """What the authorization filter says (responsewriters.Forbidden + apierrors.NewForbidden;
    a create's attributes carry no name)."""
    return (
        f'{qualified} is forbidden: User "{USER}" cannot {verb} resource "{plural}" in API group '
        f'"{group}" in the namespace "{namespace}"'
    )


def without(rules: list[dict[str, Any]], resource: str, verb: str) -> list[dict[str, Any]]:
    """`rules` with `verb` on `resource` taken away (the chart of an older release, say)."""
    out = copy.deepcopy(rules)
    for rule in out:
        if resource in rule["resources"]:
            rule["verbs"] = [v for v in rule["verbs"] if v != verb]
    return [r for r in out if r["verbs"]]


class Gate:
    """kube-apiserver's checks on the operator's creates, in front of the emulator: RBAC against
    `rules` (the operator's Role), then OwnerReferencesPermissionEnforcement, which for a create
    checks only the ownerReferences with blockOwnerDeletion: true (`update` on the owner's
    `finalizers` subresource). A refused create stores nothing, as on a real server. The tests'
    own requests (python-requests) are cluster-admin."""

    def __init__(self, cluster: Cluster, rules: list[dict[str, Any]]):
        self.rules = rules
        self.refused: list[str] = []
        assert cluster.emulator is not None
        inner = cluster.emulator._handle

        async def handle(request: Any) -> Any:
            status = self.check(request)
            if status is not None:
                self.refused.append(status["message"])
                return aiohttp.web.json_response(status, status=403)
            return await inner(request)

        cluster.emulator._handle = handle  # type: ignore[method-assign]

    def check(self, request: Any) -> dict[str, Any] | None:
        if request.headers.get("User-Agent", "").startswith("python-requests"):
            return None
        if request.action != kmock.action.CREATE or request.resource is None:
            return None
        group, plural = request.resource.group or "", request.resource.plural
        qualified = f"{plural}.{group}" if group else plural
        meta = (request.data or {}).get("metadata") or {}
        if not allows(group, plural, "create", self.rules):
            message = rbac_message(qualified, "create", plural, group, request.namespace)
            return self._status(message, "", plural, group)
        for ref in meta.get("ownerReferences") or []:
            if ref.get("blockOwnerDeletion") is not True:
                continue
            owner_group = ref["apiVersion"].rpartition("/")[0]
            owner = OWNER_PLURALS[(owner_group, ref["kind"])]
            if not allows(owner_group, f"{owner}/finalizers", "update", self.rules):
                name = meta.get("name", "")
                return self._status(admission_message(qualified, name), name, plural, group)
        return None

    @staticmethod
    def _status(message: str, name: str, kind: str, group: str) -> dict[str, Any]:
        details = {"name": name, "kind": kind, **({"group": group} if group else {})}
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": "Forbidden",
            "details": details,
            "code": 403,
        }


# --------------------------------------------------------------------------- the planner


PVC_REFUSED = Denied(
    "create", "persistentvolumeclaims", "ml", admission_message("persistentvolumeclaims", "d-a")
)


def _condition(status: TPORunStatus) -> Any:
    return next(c for c in status.conditions if c.type == PERMISSION_DENIED)


def test_refusal_names_verb_resource_and_missing_permission():
    result = denied(TPORunStatus(), PVC_REFUSED, NOW, 3)
    cond = _condition(result.status)
    assert (cond.status, cond.reason, cond.observed_generation) == ("True", "Forbidden", 3)
    assert cond.message.startswith("cannot create persistentvolumeclaims in namespace ml")
    assert "missing permission update tporuns/finalizers (apiGroup tpo.dev)" in cond.message
    assert PVC_REFUSED.message in cond.message  # the server's own words, verbatim
    assert result.status.phase == RunPhase.pending  # not an empty PHASE column
    assert result.status.message == cond.message
    (event,) = result.of(Event)
    assert (event.type, event.reason, event.message) == ("Warning", "Forbidden", cond.message)
    progressing = next(c for c in result.status.conditions if c.type == "Progressing")
    assert (progressing.status, progressing.reason) == ("False", "Forbidden")


def test_rbac_refusal_names_the_permission_the_authorizer_named():
    msg = rbac_message("jobs.batch", "create", "jobs", "batch", "ml")
    assert missing_permission(Denied("create", "jobs.batch", "ml", msg)) == (
        "create jobs (apiGroup batch)"
    )
    core = rbac_message("services", "create", "services", "", "ml")
    assert missing_permission(Denied("create", "services", "ml", core)) == (
        "create services (apiGroup core)"
    )
    other = Denied("patch", "jobs.batch", "ml", 'jobs.batch "x" is forbidden: by policy')
    assert missing_permission(other) == "patch jobs.batch"


def test_one_event_per_distinct_refusal_and_the_status_it_had():
    """A retried pass refused the same way posts no second Event; another refusal does."""
    running = TPORunStatus.model_validate({"phase": "Generating", "step": "generate"})
    first = denied(running, PVC_REFUSED, NOW)
    assert first.status.phase == "Generating" and first.status.step == "generate"
    again = denied(first.status, PVC_REFUSED, "2024-01-01T00:01:00Z")
    assert again.of(Event) == []
    assert again.status == first.status  # nothing to patch either
    other = Denied(
        "create", "jobs.batch", "ml", rbac_message("jobs.batch", "create", "jobs", "batch", "ml")
    )
    changed = denied(again.status, other, NOW)
    (event,) = changed.of(Event)
    assert "create jobs (apiGroup batch)" in event.message


def test_permitted_clears_the_condition_only_when_set():
    refused = denied(TPORunStatus(), PVC_REFUSED, NOW).status
    cleared = permitted(refused, "2024-01-01T00:05:00Z", 4)
    cond = _condition(cleared)
    assert (cond.status, cond.reason, cond.message) == ("False", "Permitted", "")
    assert cond.last_transition_time == "2024-01-01T00:05:00Z"
    assert permitted(cleared, NOW) == cleared
    assert permitted(TPORunStatus(), NOW) == TPORunStatus()


# --------------------------------------------------------------------------- the operator


def _forbidden_events(cluster: Cluster) -> list[str]:
    return [e["message"] for e in cluster.events("demo") if e.get("reason") == "Forbidden"]


def _denial(status: dict[str, Any]) -> dict[str, Any] | None:
    return next((c for c in status.get("conditions", []) if c["type"] == PERMISSION_DENIED), None)


def _retry(cluster: Cluster, n: int) -> None:
    """A change of the run (a label) makes the operator reconcile it again now."""
    cluster.patch(PLURAL, "demo", {"metadata": {"labels": {"retry": str(n)}}})


def test_refused_creates_are_reported_retried_and_recover(tmp_path):
    """OwnerReferencesPermissionEnforcement refuses the run's first child (its PVC, owned: retain
    is false): the run says so (condition, phase Pending, one Event naming the permission); a
    retry refused the same way adds no Event; a different refusal (the Role fixed, but `create`
    on jobs missing) is one more; with the full RULES the run starts."""
    with Cluster(tmp_path) as cluster, Operator(cluster) as op:
        gate = Gate(cluster, without(RULES, f"{PLURAL}/finalizers", "update"))
        cluster.create_run(manifest())
        st = cluster.wait_status("demo", lambda s: (_denial(s) or {}).get("status") == "True")
        cond = _denial(st)
        assert cond is not None and st["phase"] == "Pending"
        want = admission_message("persistentvolumeclaims", "demo-artifacts")
        assert cond["message"] == (
            "cannot create persistentvolumeclaims in namespace default: missing permission "
            f"update tporuns/finalizers (apiGroup tpo.dev); the API server said: {want}"
        )
        assert wait_for(lambda: _forbidden_events(cluster)) == [cond["message"]]
        assert cluster.get("persistentvolumeclaims", "demo-artifacts") is None

        _retry(cluster, 1)  # refused the same way: no new Event (checked at the end)
        wait_for(lambda: len(gate.refused) >= 2, what="the retried create")

        gate.rules = without(RULES, "jobs", "create")
        _retry(cluster, 2)
        jobs = "create jobs (apiGroup batch)"
        st = cluster.wait_status("demo", lambda s: jobs in (_denial(s) or {}).get("message", ""))
        second = _denial(st)["message"]
        assert "cannot create jobs.batch in namespace default" in second
        assert cluster.get("persistentvolumeclaims", "demo-artifacts") is not None
        wait_for(lambda: second in _forbidden_events(cluster), what="the second Forbidden event")

        gate.rules = RULES
        _retry(cluster, 3)
        cluster.wait_job("demo-prepare-0")
        st = cluster.wait_status("demo", lambda s: (_denial(s) or {}).get("status") == "False")
        assert st["phase"] == "Preparing"
        # Events of one object are posted in order (kopf: one worker per object), so once this
        # pass's Started event is there, any extra Forbidden event of the earlier passes is too.
        wait_for(
            lambda: any(e.get("reason") == "Started" for e in cluster.events("demo")),
            what="the Started event",
        )
        assert _forbidden_events(cluster) == [cond["message"], second]
        assert op.alive, f"operator died: {op.error!r}"
