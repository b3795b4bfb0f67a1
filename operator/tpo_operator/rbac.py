"""The operator's least-privilege Role rules, the single list the Helm chart renders.

An end-to-end test derives the verbs the operator actually used from the API server's request
log and asserts both ways: every request is covered here, and every rule here was used, except
the ADMISSION_ONLY permissions, which no request uses: an admission plugin checks them.
"""

from __future__ import annotations

from typing import Any

from tpo.spec import API_GROUP, PLURAL

RULES: list[dict[str, Any]] = [
    {
        "apiGroups": [API_GROUP],
        "resources": [PLURAL],
        "verbs": ["get", "list", "watch", "patch"],
    },
    {"apiGroups": [API_GROUP], "resources": [f"{PLURAL}/status"], "verbs": ["patch"]},
    # Children carry an ownerReference to their TPORun with blockOwnerDeletion: true (kopf.adopt);
    # see ADMISSION_ONLY.
    {"apiGroups": [API_GROUP], "resources": [f"{PLURAL}/finalizers"], "verbs": ["update"]},
    {
        "apiGroups": ["batch"],
        "resources": ["jobs"],
        # delete: only a user suspend of a Kueue-managed Job (Kueue would undo a suspend)
        "verbs": ["list", "watch", "create", "patch", "delete"],
    },
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]},
    {"apiGroups": [""], "resources": ["services"], "verbs": ["create"]},
    {"apiGroups": [""], "resources": ["persistentvolumeclaims"], "verbs": ["create"]},
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]},
]


# (verb, apiGroup, resource) granted above that the operator never sends a request for, each with
# why it is needed anyway. The e2e request-log test accepts exactly these as unused.
ADMISSION_ONLY: dict[tuple[str, str, str], str] = {
    ("update", API_GROUP, f"{PLURAL}/finalizers"): (
        "OwnerReferencesPermissionEnforcement (on by default in OpenShift) refuses to create an "
        "object whose ownerReference has blockOwnerDeletion: true unless the creator may update "
        "the owner's finalizers subresource: every Job, Service and owned PVC of a run"
    ),
}


def allows(group: str, resource: str, verb: str, rules: list[dict[str, Any]] | None = None) -> bool:
    """Whether `rules` (default RULES) grant `verb` on `resource` (`plural[/subresource]`)."""
    return any(
        group in r["apiGroups"] and resource in r["resources"] and verb in r["verbs"]
        for r in (RULES if rules is None else rules)
    )
