"""An in-memory Kubernetes API for the REAL `tpo_operator.handlers` reconcile, with faults.

What is real: `handlers.reconcile_run` -> `_reconcile` -> `with_defaults`, `parse_spec`,
`observe`, `plan`, `_apply` (Job/PVC/Service manifests, `kopf.adopt`), the status patch, the
metrics; the operator's `Kube` class with its create-if-absent (409) and delete-if-absent (404)
semantics (only its raw `request` is replaced).

What is simulated, and why: the API server is a dict of objects behind `request` (merge patch,
409 on a duplicate create, the status subresource) because faults must land between any two
writes, deterministically, hundreds of times a test. A "killed operator" is a `Killed`
exception (BaseException: nothing in the operator catches it) raised before or after the n-th
write reaches the store; a "fresh operator" is the next `reconcile_run` with cleared
in-process state (locks, client), which is all kopf would give a new process: the API's
objects. kopf's event poster (`kopf.info`/`kopf.warn`) is replaced by a writer into this store
(an event is a write that can be lost too). The Job controller is played by `complete_live`.
"""

from __future__ import annotations

import copy
import itertools
import json
import uuid
from dataclasses import dataclass, field
from typing import Any

from harness import summary as phase_summary
from tpo_operator import handlers
from tpo_operator import jobs as J

from tpo.spec import API_GROUP, API_VERSION, PLURAL

NAMESPACE = "default"
RUN_COLLECTION = f"/apis/{API_GROUP}/{API_VERSION}/namespaces/{NAMESPACE}/{PLURAL}"
JOBS = f"/apis/batch/v1/namespaces/{NAMESPACE}/jobs"
PODS = f"/api/v1/namespaces/{NAMESPACE}/pods"
WRITES = ("POST", "PATCH", "PUT", "DELETE")


class Killed(BaseException):
    """The operator process died here (SIGKILL, OOM, node loss): nothing may catch it."""


class ReadTimeout(Exception):
    """The client gave up waiting; the server may or may not have applied the request."""


@dataclass
class Fault:
    """What happens at write number `at` (0-based, counted over the whole run)."""

    at: int
    kind: str  # kill-before | kill-after | 500 | timeout-after | 409-spurious | controller


FAULT_KINDS = ("kill-before", "kill-after", "500", "timeout-after", "409-spurious", "controller")


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out


@dataclass
class SimKube(handlers.Kube):
    """The operator's `Kube` against an in-memory store (its `request` replaced, nothing else)."""

    faults: dict[int, str] = field(default_factory=dict)
    store: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    writes: int = 0
    creates: dict[str, int] = field(default_factory=dict)  # successful creates per Job name
    status_steps: list[tuple[str | None, int, str]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    _rv: Any = field(default_factory=lambda: itertools.count(1))

    # -- the store
    @staticmethod
    def _split(path: str) -> tuple[str, str | None, str | None]:
        """(collection path, name, subresource)."""
        parts = path.split("?")[0].rstrip("/").split("/")
        # /api/v1/namespaces/ns/<plural>[/name[/sub]] or /apis/g/v/namespaces/ns/<plural>[...]
        base = 6 if parts[1] == "api" else 7
        collection = "/".join(parts[:base])
        name = parts[base] if len(parts) > base else None
        sub = parts[base + 1] if len(parts) > base + 1 else None
        return collection, name, sub

    def put(self, collection: str, obj: dict[str, Any]) -> dict[str, Any]:
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        meta.setdefault("namespace", NAMESPACE)
        meta.setdefault("uid", str(uuid.uuid4()))
        meta.setdefault("generation", 1)
        meta["resourceVersion"] = str(next(self._rv))
        self.store.setdefault(collection, {})[meta["name"]] = obj
        return obj

    def get(self, collection: str, name: str) -> dict[str, Any] | None:
        return self.store.get(collection, {}).get(name)

    def items(self, collection: str) -> list[dict[str, Any]]:
        return list(self.store.get(collection, {}).values())

    # -- the API
    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        query: dict[str, str] | None = None,
        content_type: str = "application/json",
    ) -> dict[str, Any]:
        if method not in WRITES:
            return self._read(path, query or {})
        n = self.writes
        self.writes += 1
        kind = self.faults.get(n)
        if kind == "kill-before":
            raise Killed(f"write {n}")
        if kind == "500":
            raise handlers.ApiError(500, "injected: etcdserver: request timed out")
        if kind == "409-spurious" and method == "POST":
            raise handlers.ApiError(409, "injected conflict")
        if kind == "controller":
            self.complete_live()  # the world moves while the operator is mid-reconcile
        result = self._write(method, path, body)
        if kind == "kill-after":
            raise Killed(f"after write {n}")
        if kind == "timeout-after":
            raise ReadTimeout(f"write {n} applied, response lost")
        return result

    def _read(self, path: str, query: dict[str, str]) -> dict[str, Any]:
        collection, name, _ = self._split(path)
        if name is not None:
            obj = self.get(collection, name)
            if obj is None:
                raise handlers.ApiError(404, "not found")
            return copy.deepcopy(obj)
        items = self.items(collection)
        sel = query.get("labelSelector")
        if sel:
            key, _, value = sel.partition("=")
            items = [o for o in items if (o["metadata"].get("labels") or {}).get(key) == value]
        return {"items": copy.deepcopy(items)}

    def _write(self, method: str, path: str, body: Any) -> dict[str, Any]:
        collection, name, sub = self._split(path)
        if method == "POST":
            name = body["metadata"]["name"]
            if self.get(collection, name) is not None:
                raise handlers.ApiError(409, "AlreadyExists")
            if collection == JOBS:
                self._check_job_create(body)
                self.creates[name] = self.creates.get(name, 0) + 1
            return self.put(collection, body)
        assert name is not None
        obj = self.get(collection, name)
        if obj is None:
            raise handlers.ApiError(404, "not found")
        if method == "DELETE":
            del self.store[collection][name]
            return {}
        if sub == "status":
            new = merge_patch(obj, {"status": body["status"]})
            st = new.get("status") or {}
            self.status_steps.append((st.get("step"), st.get("iteration", 0), st.get("phase")))
        else:
            new = merge_patch(obj, body)
        return self.put(collection, new)

    def _check_job_create(self, body: dict[str, Any]) -> None:
        """At most one live Job per run; a step's Job only after every earlier Job completed."""
        for other in self.items(JOBS):
            if not _complete(other):
                self.violations.append(
                    f"{body['metadata']['name']} created while {other['metadata']['name']} "
                    "was still running"
                )

    # -- the Job controller
    def complete_live(self) -> list[str]:
        """Every Job not yet complete succeeds: one pod with the phase summary, then Complete."""
        done = []
        for job in self.items(JOBS):
            if _complete(job):
                continue
            labels = job["metadata"]["labels"]
            phase, t = labels[J.LABEL_PHASE], int(labels[J.LABEL_ITERATION])
            name = job["metadata"]["name"]
            pod = {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": f"{name}-0",
                    "labels": {**job["spec"]["template"]["metadata"]["labels"], "job-name": name},
                },
                "status": {
                    "phase": "Succeeded",
                    "containerStatuses": [
                        {
                            "name": "worker",
                            "state": {
                                "terminated": {
                                    "exitCode": 0,
                                    "message": json.dumps(phase_summary(phase, t)),
                                }
                            },
                        }
                    ],
                },
            }
            self.put(PODS, pod)
            job["status"] = {
                "succeeded": 1,
                "active": 0,
                "conditions": [{"type": "Complete", "status": "True", "reason": "Completed"}],
            }
            self.put(JOBS, job)
            done.append(name)
        return done

    # -- kopf's event poster (best effort, like kopf's), as writes into this store
    def post_event(self, type_: str, body: dict[str, Any], reason: str, message: str) -> None:
        event = {
            "metadata": {"name": f"{body['metadata']['name']}.{uuid.uuid4().hex[:10]}"},
            "type": type_,
            "reason": reason,
            "message": message,
            "involvedObject": {"kind": body.get("kind"), "name": body["metadata"]["name"]},
        }
        try:
            self.request("POST", f"/api/v1/namespaces/{NAMESPACE}/events", event)
        except (handlers.ApiError, ReadTimeout):
            return  # kopf's poster logs a failed event post and goes on
        self.events.append(event)


def _complete(job: dict[str, Any]) -> bool:
    conds = (job.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Complete" and c.get("status") == "True" for c in conds)


@dataclass
class Outcome:
    status: dict[str, Any]
    api: SimKube
    reconciles: int
    kills: int
    errors: int


def drive(api: SimKube, run: str = "demo", max_reconciles: int = 400) -> Outcome:
    """Reconcile (as any trigger would), let the Job controller act, repeat until terminal.

    A `Killed` reconcile starts a fresh operator (cleared locks and client); an API error or a
    timeout is what kopf would log before its next trigger (an event, a retry, the timer).
    """
    kills = errors = 0
    for n in range(1, max_reconciles + 1):
        handlers._KUBE = api
        try:
            handlers.reconcile_run(NAMESPACE, run)
        except Killed:
            kills += 1
            handlers._LOCKS.clear()  # a new process: no locks, a new client, nothing else
            handlers._KUBE = None
        except (handlers.ApiError, ReadTimeout):
            errors += 1
        status = (api.get(RUN_COLLECTION, run) or {}).get("status") or {}
        if status.get("phase") in ("Succeeded", "Failed"):
            return Outcome(status, api, n, kills, errors)
        api.complete_live()
    raise AssertionError(f"no terminal phase after {max_reconciles} reconciles: {status}")


def comparable(status: dict[str, Any]) -> dict[str, Any]:
    """The status without wall-clock times (startedAt, finishedAt, lastTransitionTime)."""
    out = {k: v for k, v in status.items() if k not in ("startedAt", "finishedAt")}
    out["conditions"] = sorted(
        (c["type"], c["status"], c.get("reason", ""), c.get("message", ""))
        for c in status.get("conditions", [])
    )
    return out
