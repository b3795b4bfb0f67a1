"""Kubernetes' convention for status conditions, as a checker over a TPORun status.

Written from the convention, not from the code under test (tpo.status.set_lifecycle):
metav1.Condition requires a reason matching `^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$`
(k8s.io/apimachinery/pkg/apis/meta/v1/types.go), and the API conventions say the reason is
"a machine-readable explanation for the condition's last transition": it describes the
condition's CURRENT status. So a reason that names a state of the run (Running, Finished,
Suspended, Interrupted) must name the state the run is in, and the True/False of the run's
lifecycle conditions must agree with its phase.
"""

from __future__ import annotations

import re
from typing import Any

REASON = re.compile(r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$")  # metav1.Condition.reason
ACTIVE = {"Pending", "Preparing", "Generating", "Judging", "Training", "Evaluating"}
# Reasons that name a state of the run: they may only describe a run in that state.
STATE_OF_REASON = {
    **{r: "active" for r in ("Running", "PhaseRunning", *ACTIVE)},
    **{r: "Succeeded" for r in ("Finished", "AllIterationsDone", "Succeeded")},
    **{r: "Suspended" for r in ("Suspended", "SpecSuspend")},
    "Interrupted": "Interrupted",
}
LIFECYCLE = ("Progressing", "Ready", "Succeeded", "Failed", "Suspended")


def problems(status: Any) -> list[str]:
    """Every way the status's conditions break the convention (empty when they follow it)."""
    data = status if isinstance(status, dict) else status.model_dump(by_alias=True)
    phase = str(data.get("phase") or "Pending")
    state = "active" if phase in ACTIVE else phase
    out = []
    conds = {c["type"]: c for c in data.get("conditions") or []}
    for c in conds.values():
        what = f"{phase}: {c['type']}={c['status']} reason {c.get('reason')!r}"
        if not REASON.match(c.get("reason") or ""):
            out.append(f"{what}: not a valid condition reason")
        if c["type"] not in LIFECYCLE:
            continue
        bound = STATE_OF_REASON.get(c.get("reason") or "")
        if bound is not None and bound != state:
            out.append(f"{what}: the reason names a state the run is not in")
        true = c["status"] == "True"
        must_be_true = {
            "Succeeded": phase == "Succeeded",
            "Failed": phase == "Failed",
            "Suspended": phase == "Suspended",
            "Ready": phase == "Succeeded",
        }
        if c["type"] in must_be_true and true != must_be_true[c["type"]]:
            out.append(f"{what}: should be {not true} while the run is {phase}")
        if c["type"] == "Progressing" and true and state != "active":
            out.append(f"{what}: a {phase} run is not progressing")
        failed = conds.get("Failed")
        if phase == "Failed" and not true and failed and c["reason"] != failed["reason"]:
            out.append(f"{what}: a failed run's False conditions give the failure's reason")
    if phase == "Failed" and "Failed" not in conds:
        out.append("Failed run without a Failed condition")
    if phase == "Succeeded" and "Succeeded" not in conds:
        out.append("Succeeded run without a Succeeded condition")
    return out
