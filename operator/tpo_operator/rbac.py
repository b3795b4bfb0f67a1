"""The operator's least-privilege Role rules, the single list the Helm chart renders.

An end-to-end test derives the verbs the operator actually used from the API server's request
log and asserts both ways: every request is covered here, and every rule here was used.
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


def allows(group: str, resource: str, verb: str) -> bool:
    return any(
        group in r["apiGroups"] and resource in r["resources"] and verb in r["verbs"] for r in RULES
    )
