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
(an event is a write that can be lost too). The Job controller is tests/kubeemu.py's `JobSim`
(the one the operator tests and the benchmark use), driven by `complete_live` and `job_sim`.
"""

from __future__ import annotations

import copy
import itertools
import json
import uuid
from dataclasses import dataclass, field
from typing import Any

from harness import summary as phase_summary
from kubeemu import JobSim, Write, merge_patch, rfc3339, stamp
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
        meta = stamp(obj.setdefault("metadata", {}), NAMESPACE)
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
        """Every Job not yet complete succeeds: a pod with the phase summary, then Complete."""
        done = []
        for job in self.items(JOBS):
            if _complete(job):
                continue
            labels = job["metadata"]["labels"]
            summary = phase_summary(labels[J.LABEL_PHASE], int(labels[J.LABEL_ITERATION]))
            self.controller(self.job_sim(job).succeed([json.dumps(summary)]))
            done.append(job["metadata"]["name"])
        return done

    def job_sim(self, job: dict[str, Any] | str) -> JobSim:
        """The Job controller's view of one Job and its pods; pass what it returns (its
        `crash`, `preempt`, `succeed`...) to `controller`."""
        body = self.get(JOBS, job) if isinstance(job, str) else job
        assert body is not None, f"job {job} does not exist"
        return JobSim(body, self.items(PODS))

    def controller(self, writes: list[Write]) -> None:
        """The Job controller's and kubelet's writes, straight into the store: they are not the
        operator's, so they take no fault and no write number."""
        for w in writes:
            collection = JOBS if w.resource == "jobs" else PODS
            if w.method == "POST":
                assert w.body is not None
                self.put(collection, w.body)
                continue
            obj = self.get(collection, w.name)
            if obj is None:
                continue
            if w.method == "DELETE":
                if obj["metadata"].get("finalizers"):  # graceful: marked, kept until released
                    self.put(
                        collection, merge_patch(obj, {"metadata": {"deletionTimestamp": rfc3339()}})
                    )
                else:
                    del self.store[collection][w.name]
                continue
            new = merge_patch(obj, w.body)
            meta = new["metadata"]
            if meta.get("deletionTimestamp") and not meta.get("finalizers"):
                del self.store[collection][w.name]
            else:
                self.put(collection, new)

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
