"""The one emulated Kubernetes of the tests and benchmarks: API-server metadata and the Job
controller, written once so the next real-cluster behaviour is added once.

Three shells use it: tests/operator/harness.py (kmock's HTTP emulator with the real kopf
operator), tests/reliability/kubesim.py (an in-memory store for fault injection) and
benchmarks/control_plane.py (kmock at scale). What they share:

- `stamp`: the metadata a real API server adds on create (uid, namespace, timestamps,
  generation, resourceVersion); `merge_patch`: RFC 7386, as `application/merge-patch+json`.
- `Emulator`: kmock's KubernetesEmulator plus `stamp` (kmock sets none of it).
- `JobSim`: the Kubernetes Job controller (kube-controller-manager 1.32) for one Job, as a
  pure function of the Job and its pods to the API writes it (and the kubelet) would make.
  No I/O: each shell executes the `Write`s its own way (HTTP, a dict, aiohttp).

Where the Job controller matters to the operator, `JobSim` follows upstream
(kubernetes/kubernetes pkg/controller/job: job_controller.go, pod_failure_policy.go):

- podFailurePolicy rules are matched in order against a failed pod (`match_policy`); a FailJob
  match writes the controller's own message into the Failed condition, e.g. `Container worker
  for pod default/<pod> failed with exit code 3 matching FailJob rule at index 1`. The worker's
  text is only in the pod's `containerStatuses[].state.terminated.message`.
- Count (or no match) counts the pod in `status.failed`; past `backoffLimit` the Job fails
  with BackoffLimitExceeded, `Job has reached the specified backoff limit`. Ignore (a
  DisruptionTarget pod under the operator's policy) is not counted; a replacement starts.
- A finishing failure deletes the active pods (the peers of a multi-pod Job) and counts each in
  `status.failed` (one crash in a 2-pod Job: failed=2). The kubelet then stops them (SIGTERM:
  exit 143, reason Error, no termination message, `deletionTimestamp` set, no DisruptionTarget:
  the Job controller's deletion is not a disruption). The interim FailureTarget condition comes
  first; Failed only once no pod is terminating (1.32's delayed terminal condition).
- A preempted pod carries `DisruptionTarget` (reason PreemptionByScheduler by default), is
  deleted by the scheduler and ends Failed with exit 143.
- `startTime` is set when the Job first runs unsuspended, reset on resume, never removed.
- Pods carry what the controller puts on them: `job-name` / `batch.kubernetes.io/*` labels,
  the completion index of an Indexed Job, the Job as controller owner, the tracking finalizer.

Peers stay "terminating" (Failed, exit 143, deletionTimestamp) until `gc()`: the state an
operator most easily misreads; after `gc()` they are gone, as once the kubelet finishes.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import kmock

NAMESPACE = "default"
TRACKING_FINALIZER = "batch.kubernetes.io/job-tracking"
JOB_NAME_LABEL = "batch.kubernetes.io/job-name"
INDEX_KEY = "batch.kubernetes.io/job-completion-index"
EXIT_SIGTERM = 143  # 128 + SIGTERM: how a stopped container ends
BACKOFF_LIMIT_DEFAULT = 6
BACKOFF_MESSAGE = "Job has reached the specified backoff limit"
# DisruptionTarget reasons set by Kubernetes components (k8s.io/api core/v1 types.go)
DISRUPTION_REASONS = (
    "PreemptionByScheduler",
    "DeletionByTaintManager",
    "EvictionByEvictionAPI",
    "DeletionByPodGC",
    "TerminationByKubelet",
)

_VERSIONS = itertools.count(1)


def rfc3339(t: float | None = None) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() if t is None else t))


def stamp(meta: dict[str, Any], namespace: str | None = None) -> dict[str, Any]:
    """What a real API server sets on create (in place; returns `meta`)."""
    if not meta.get("name") and meta.get("generateName"):
        meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
    meta.setdefault("uid", str(uuid.uuid4()))
    meta.setdefault("creationTimestamp", rfc3339())
    meta.setdefault("generation", 1)
    meta.setdefault("resourceVersion", str(next(_VERSIONS)))
    if namespace:
        meta.setdefault("namespace", namespace)
    return meta


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch (a None value removes the key)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out


class Emulator(kmock.KubernetesEmulator):
    """kmock's emulator plus what a real API server adds on create: uid, namespace, timestamps.

    (kmock already does finalizers: a DELETE of an object with finalizers only sets its
    deletionTimestamp, and removing the last finalizer then deletes it.)
    """

    async def _handle(self, request: Any) -> Any:
        if request.action == kmock.action.CREATE and isinstance(request.data, dict):
            stamp(request.data.setdefault("metadata", {}), request.namespace)
        return await super()._handle(request)


# --------------------------------------------------------------------------- the Job controller


@dataclass(frozen=True)
class Write:
    """One API call of the Job controller or the kubelet: POST, PATCH (merge) or DELETE."""

    method: str
    resource: str  # "pods" | "jobs"
    name: str
    body: dict[str, Any] | None = None
    sub: str = ""  # "status": the status subresource
    namespace: str = NAMESPACE

    @property
    def path(self) -> str:
        prefix = "/apis/batch/v1" if self.resource == "jobs" else "/api/v1"
        base = f"{prefix}/namespaces/{self.namespace}/{self.resource}"
        if self.method == "POST":
            return base
        return f"{base}/{self.name}" + (f"/{self.sub}" if self.sub else "")


def pods_of(job: dict[str, Any], pods: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The pods the Job controller created for this Job (by its `job-name` label)."""
    name = job["metadata"]["name"]
    return [
        p for p in pods if ((p.get("metadata") or {}).get("labels") or {}).get("job-name") == name
    ]


def _terminated(status: dict[str, Any], container: str | None) -> list[dict[str, Any]]:
    out = []
    for key in ("containerStatuses", "initContainerStatuses"):
        for cs in status.get(key) or []:
            term = (cs.get("state") or {}).get("terminated")
            if term is not None and (container is None or cs.get("name") == container):
                out.append({**term, "name": cs.get("name")})
    return out


def match_policy(job: dict[str, Any], pod: dict[str, Any]) -> tuple[str | None, str | None, bool]:
    """Upstream `matchPodFailurePolicy`: (action, FailJob message, counts toward backoffLimit).

    Rules are tried in order; the first match decides. onExitCodes looks at terminated
    containers with a non-zero exit code; onPodConditions at the pod's conditions.
    """
    policy = (job.get("spec") or {}).get("podFailurePolicy")
    if not policy:
        return None, None, True
    meta, st = pod["metadata"], pod.get("status") or {}
    who = f"{meta.get('namespace', NAMESPACE)}/{meta['name']}"
    for index, rule in enumerate(policy.get("rules") or []):
        action = rule.get("action")
        if rule.get("onExitCodes") is not None:
            req = rule["onExitCodes"]
            for term in _terminated(st, req.get("containerName")):
                code = int(term.get("exitCode") or 0)
                if code == 0:
                    continue
                values = [int(v) for v in req.get("values") or []]
                hit = code in values if req.get("operator") == "In" else code not in values
                if req.get("operator") not in ("In", "NotIn") or not hit:
                    continue
                if action == "FailJob":
                    msg = (
                        f"Container {term['name']} for pod {who} failed with exit code {code} "
                        f"matching FailJob rule at index {index}"
                    )
                    return action, msg, True
                return action, None, action != "Ignore"
        elif rule.get("onPodConditions") is not None:
            for cond in st.get("conditions") or []:
                for pat in rule["onPodConditions"]:
                    if cond.get("type") == pat.get("type") and cond.get("status") == pat.get(
                        "status", "True"
                    ):
                        if action == "FailJob":
                            msg = (
                                f"Pod {who} has condition {cond['type']} matching FailJob rule "
                                f"at index {index}"
                            )
                            return action, msg, True
                        return action, None, action != "Ignore"
    return None, None, True


def _index_of(pod: dict[str, Any]) -> int:
    ann = (pod.get("metadata") or {}).get("annotations") or {}
    try:
        return int(ann.get(INDEX_KEY, "0"))
    except ValueError:
        return 0


def _terminal(pod: dict[str, Any]) -> bool:
    return (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")


def _active(pod: dict[str, Any]) -> bool:
    """Upstream FilterActivePods: not terminal and not being deleted."""
    return not _terminal(pod) and not pod["metadata"].get("deletionTimestamp")


def _cond(type_: str, reason: str, message: str, now: str, status: str = "True") -> dict:
    return {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message,
        "lastProbeTime": now,
        "lastTransitionTime": now,
    }


@dataclass
class JobSim:
    """The Job controller's (and kubelet's) reaction to what happens to one Job's pods.

    Built from the Job and its pods as the API serves them; each method changes this snapshot
    and returns the API writes that make the same change in a store. Methods compose: a
    crash after a start sees the started pods.
    """

    job: dict[str, Any]
    pods: list[dict[str, Any]] = field(default_factory=list)
    clock: Callable[[], str] = rfc3339

    def __post_init__(self) -> None:
        self.job = copy.deepcopy(self.job)
        self.job.setdefault("status", {})
        self.pods = [copy.deepcopy(p) for p in pods_of(self.job, self.pods)]

    # -- what the Job says
    @property
    def name(self) -> str:
        return self.job["metadata"]["name"]

    @property
    def namespace(self) -> str:
        return self.job["metadata"].get("namespace") or NAMESPACE

    @property
    def spec(self) -> dict[str, Any]:
        return self.job.get("spec") or {}

    @property
    def indexed(self) -> bool:
        return self.spec.get("completionMode") == "Indexed"

    @property
    def completions(self) -> int:
        return int(self.spec.get("completions") or 1)

    @property
    def parallelism(self) -> int:
        return int(self.spec.get("parallelism") or 1)

    @property
    def container(self) -> str:
        containers = self.spec["template"]["spec"].get("containers") or [{"name": "worker"}]
        return containers[0].get("name", "worker")

    @property
    def status(self) -> dict[str, Any]:
        return self.job["status"]

    def conditions(self) -> dict[str, dict[str, Any]]:
        return {c["type"]: c for c in self.status.get("conditions") or []}

    @property
    def finished(self) -> bool:
        conds = self.conditions()
        return any(conds.get(t, {}).get("status") == "True" for t in ("Complete", "Failed"))

    def active(self) -> list[dict[str, Any]]:
        return [p for p in self.pods if _active(p)]

    # -- the Job controller's operations
    def start(self) -> list[Write]:
        """Unsuspended and unfinished: startTime, and a running pod per missing slot."""
        writes: list[Write] = []
        if self.finished or self.spec.get("suspend"):
            return writes
        self.status.setdefault("startTime", self.clock())
        done = {
            _index_of(p) for p in self.pods if (p.get("status") or {}).get("phase") == "Succeeded"
        }
        running = {_index_of(p) for p in self.active()}
        want = min(self.parallelism, self.completions)
        if self.indexed:
            missing = [i for i in range(self.completions) if i not in done | running][:want]
        else:
            missing = [0] * max(0, want - len(running) - len(done))
        for index in missing:
            writes.append(self._create(index, self._running_status()))
        writes.append(self._flush())
        return writes

    def succeed(self, messages: Sequence[str]) -> list[Write]:
        """Every pod of the Job succeeds; pod i's termination message is messages[i] (none
        past the end: a multi-node train's other ranks write no summary). Then Complete."""
        writes: list[Write] = []
        n = max(self.completions, len(messages))
        for i in range(n):
            msg = messages[i] if i < len(messages) else ""
            status = self._terminated_status("Succeeded", 0, "Completed", msg)
            pod = self._active_at(i)
            if pod is not None:
                writes.append(self._kubelet(pod, status))
            else:
                writes.append(self._create(i, status, tracked=False))
        self.status.setdefault("startTime", self.clock())
        now = self.clock()
        self.status.update(succeeded=n, completionTime=now)
        if self.indexed:
            self.status["completedIndexes"] = f"0-{n - 1}" if n > 1 else "0"
        msg = "Reached expected number of succeeded pods"
        self._add_condition(_cond("SuccessCriteriaMet", "CompletionsReached", msg, now))
        self._add_condition(_cond("Complete", "CompletionsReached", msg, now))
        writes.append(self._flush())
        return writes

    def crash(
        self, message: str, exit_code: int = 1, index: int = 0, reason: str = "Error"
    ) -> list[Write]:
        """Pod `index`'s worker exits `exit_code` with `message` (its termination message);
        the Job controller then does what the Job's podFailurePolicy and backoffLimit say."""
        writes = self.start() if not self.active() else []
        pod = self._active_at(index) or self._adopt_new(index, writes)
        writes.append(
            self._kubelet(pod, self._terminated_status("Failed", exit_code, reason, message))
        )
        return writes + self._pod_failed(pod)

    def preempt(self, index: int = 0, reason: str = "PreemptionByScheduler") -> list[Write]:
        """Pod `index` is disrupted (DisruptionTarget), deleted and stopped; the Job ignores
        it under the operator's policy (rule 0) and starts a replacement."""
        if reason not in DISRUPTION_REASONS:
            raise ValueError(f"{reason!r} is not a DisruptionTarget reason Kubernetes sets")
        writes = self.start() if not self.active() else []
        pod = self._active_at(index) or self._adopt_new(index, writes)
        now = self.clock()
        target = _cond("DisruptionTarget", reason, f"{reason}: the pod was disrupted", now)
        conds = [c for c in pod["status"].get("conditions") or [] if c["type"] != target["type"]]
        pod["status"]["conditions"] = [*conds, target]
        writes.append(self._patch_pod(pod, {"status": {"conditions": pod["status"]["conditions"]}}))
        writes += [self._delete(pod), self._flush(), self._kubelet(pod, self._stopped())]
        return writes + self._pod_failed(pod)

    def sync(self) -> list[Write]:
        """Suspend / resume as the controller does on a `spec.suspend` change."""
        writes: list[Write] = []
        conds = self.conditions()
        suspended = conds.get("Suspended", {}).get("status") == "True"
        now = self.clock()
        if self.spec.get("suspend") and not self.finished:
            stopping = self.active()  # deleted, not counted: a suspension is no failure
            writes += [self._delete(pod) for pod in stopping]
            if stopping:
                writes.append(self._flush())
            writes += [self._kubelet(pod, self._stopped()) for pod in stopping]
            if not suspended:
                self._add_condition(_cond("Suspended", "JobSuspended", "Job suspended", now))
            writes.append(self._flush())
        elif not self.spec.get("suspend") and suspended:
            self._add_condition(_cond("Suspended", "JobResumed", "Job resumed", now, "False"))
            self.status["startTime"] = now  # reset on resume (never removed)
            writes += self.start()
        elif not self.finished and not self.active():
            writes += self.start()
        return writes

    def gc(self) -> list[Write]:
        """The kubelet finished stopping the deleted pods: their finalizer goes, so do they."""
        writes = []
        for pod in [p for p in self.pods if p["metadata"].get("deletionTimestamp")]:
            writes.append(self._patch_pod(pod, {"metadata": {"finalizers": None}}))
            self.pods.remove(pod)
        return writes

    # -- internals
    def _pod_failed(self, pod: dict[str, Any]) -> list[Write]:
        action, message, counts = match_policy(self.job, pod)
        if counts:
            self.status["failed"] = int(self.status.get("failed") or 0) + 1
        if action == "FailJob":
            return self._finish("PodFailurePolicy", message or "")
        limit = self.spec.get("backoffLimit")
        limit = BACKOFF_LIMIT_DEFAULT if limit is None else int(limit)
        if int(self.status.get("failed") or 0) > limit:
            return self._finish("BackoffLimitExceeded", BACKOFF_MESSAGE)
        # the replacement is Pending (not ready) at first, so the Job's status differs from
        # what it was before this pod failed even when nothing was counted (an Ignore)
        writes = [self._create(_index_of(pod), self._pending_status())]
        writes.append(self._flush())
        return writes

    def _finish(self, reason: str, message: str) -> list[Write]:
        """Fail the Job: delete the active pods and count them, FailureTarget, the kubelet
        stops them, then Failed (its message written by the controller)."""
        now = self.clock()
        peers = self.active()
        writes = [self._delete(p) for p in peers]
        failed = int(self.status.get("failed") or 0) + len(peers)
        self.status["failed"] = failed or None
        self._add_condition(_cond("FailureTarget", reason, message, now))
        writes.append(self._flush())
        writes += [self._kubelet(p, self._stopped()) for p in peers]
        self._add_condition(_cond("Failed", reason, message, now))
        writes.append(self._flush())
        return writes

    def _add_condition(self, cond: dict[str, Any]) -> None:
        conds = [c for c in self.status.get("conditions") or [] if c["type"] != cond["type"]]
        self.status["conditions"] = [*conds, cond]

    def _flush(self) -> Write:
        """The Job's status as the controller writes it; the pod counts are derived from the
        pods (`active` omitted when 0, as the API's omitempty does)."""
        active = self.active()
        self.status["active"] = len(active) or None
        self.status["ready"] = sum(
            1
            for p in active
            for c in p["status"].get("conditions") or []
            if c["type"] == "Ready" and c["status"] == "True"
        )
        self.status["terminating"] = sum(
            1 for p in self.pods if p["metadata"].get("deletionTimestamp") and not _terminal(p)
        )
        self.status.setdefault("uncountedTerminatedPods", {})
        body = {"status": dict(self.status)}
        self.job["status"] = {k: v for k, v in self.status.items() if v is not None}
        return Write("PATCH", "jobs", self.name, body, "status", self.namespace)

    def _active_at(self, index: int) -> dict[str, Any] | None:
        """The running pod of completion index `index` (any running pod: a NonIndexed Job's
        pods have no identity)."""
        active = self.active()
        if self.indexed:
            return next((p for p in active if _index_of(p) == index), None)
        return active[0] if active else None

    def _adopt_new(self, index: int, writes: list[Write]) -> dict[str, Any]:
        """No pod runs at `index` (a test may act on a suspended Job): one starts there."""
        writes.append(self._create(index, self._running_status()))
        return self.pods[-1]

    def _pod_name(self, index: int) -> str:
        seed = f"{self.job['metadata'].get('uid', '')}/{self.name}/{index}/{len(self.pods)}"
        suffix = hashlib.sha1(seed.encode()).hexdigest()[:5]
        return f"{self.name}-{index}-{suffix}" if self.indexed else f"{self.name}-{suffix}"

    def _create(self, index: int, status: dict[str, Any], tracked: bool = True) -> Write:
        """A pod as the Job controller creates it (already in `status`, to save writes)."""
        tpl = self.spec["template"]
        uid = self.job["metadata"].get("uid", "")
        labels = {
            **((tpl.get("metadata") or {}).get("labels") or {}),
            "batch.kubernetes.io/controller-uid": uid,
            JOB_NAME_LABEL: self.name,
            "controller-uid": uid,
            "job-name": self.name,
        }
        annotations = dict((tpl.get("metadata") or {}).get("annotations") or {})
        pod_spec = copy.deepcopy(tpl["spec"])
        if self.indexed:
            labels[INDEX_KEY] = str(index)
            annotations[INDEX_KEY] = str(index)
            pod_spec["hostname"] = f"{self.name}-{index}"
        meta: dict[str, Any] = {
            "name": self._pod_name(index),
            "namespace": self.namespace,
            "labels": labels,
            "annotations": annotations,
            "ownerReferences": [
                {
                    "apiVersion": "batch/v1",
                    "kind": "Job",
                    "name": self.name,
                    "uid": uid,
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        }
        if tracked:
            meta["finalizers"] = [TRACKING_FINALIZER]
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": pod_spec}
        pod["status"] = status
        self.pods.append(pod)
        return Write("POST", "pods", meta["name"], copy.deepcopy(pod), namespace=self.namespace)

    def _running_status(self) -> dict[str, Any]:
        now = self.clock()
        return {
            "phase": "Running",
            "startTime": now,
            "conditions": [_cond("Ready", "", "", now)],
            "containerStatuses": [
                {
                    "name": self.container,
                    "ready": True,
                    "restartCount": 0,
                    "state": {"running": {"startedAt": now}},
                }
            ],
        }

    def _pending_status(self) -> dict[str, Any]:
        now = self.clock()
        return {
            "phase": "Pending",
            "conditions": [_cond("Ready", "ContainersNotReady", "", now, "False")],
            "containerStatuses": [
                {
                    "name": self.container,
                    "ready": False,
                    "restartCount": 0,
                    "state": {"waiting": {"reason": "ContainerCreating"}},
                }
            ],
        }

    def _terminated_status(
        self, phase: str, exit_code: int, reason: str, message: str
    ) -> dict[str, Any]:
        now = self.clock()
        term: dict[str, Any] = {
            "exitCode": exit_code,
            "reason": reason,
            "startedAt": now,
            "finishedAt": now,
        }
        if message:
            term["message"] = message
        return {
            "phase": phase,
            "conditions": [_cond("Ready", "PodCompleted", "", now, "False")],
            "containerStatuses": [
                {
                    "name": self.container,
                    "ready": False,
                    "restartCount": 0,
                    "state": {"terminated": term},
                }
            ],
        }

    def _stopped(self) -> dict[str, Any]:
        """A container stopped by SIGTERM: exit 143, reason Error, no termination message."""
        return self._terminated_status("Failed", EXIT_SIGTERM, "Error", "")

    def _kubelet(self, pod: dict[str, Any], status: dict[str, Any]) -> Write:
        """The kubelet reports the pod's new state (the conditions it had are kept)."""
        mine = {c["type"] for c in status["conditions"]}
        old = [
            c for c in (pod.get("status") or {}).get("conditions") or [] if c["type"] not in mine
        ]
        new = {**status, "conditions": [*old, *status["conditions"]]}
        pod["status"] = new
        return self._patch_pod(pod, {"status": new}, sub="status")

    def _patch_pod(self, pod: dict[str, Any], body: dict[str, Any], sub: str = "") -> Write:
        return Write(
            "PATCH", "pods", pod["metadata"]["name"], copy.deepcopy(body), sub, self.namespace
        )

    def _delete(self, pod: dict[str, Any]) -> Write:
        """A graceful DELETE: with the tracking finalizer, the pod stays, marked for deletion."""
        pod["metadata"]["deletionTimestamp"] = self.clock()
        return Write("DELETE", "pods", pod["metadata"]["name"], namespace=self.namespace)
