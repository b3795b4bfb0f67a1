"""The thin kopf shell: observe -> `reconcile.plan` -> apply -> one status patch -> events.

Every trigger (the TPORun created, resumed or changed; one of its Jobs changed; a slow timer)
runs the same `reconcile_run`, which reads the world afresh, so a missed or repeated event
changes nothing. Results come from the pods' termination messages; the operator mounts no volume.
Handlers are sync (kopf runs them in threads) and serialised per run by a lock. What is known to
change nothing is not reconciled: a Job event with the state its run's last pass already saw,
a timer tick for a run reconciled within the interval.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import kopf

from tpo.spec import (
    API_GROUP,
    API_VERSION,
    PLURAL,
    SpecError,
    TPORunStatus,
    name_problem,
    parse_spec,
)
from tpo_operator import jobs as J
from tpo_operator import metrics
from tpo_operator import progress as P
from tpo_operator.defaults import OperatorDefaults, with_defaults
from tpo_operator.reconcile import (
    USER_SUSPENDED,
    CreateJob,
    CreatePVC,
    CreateService,
    DeleteJob,
    Denied,
    Event,
    JobOutcome,
    Peer,
    Plan,
    SuspendJob,
    denied,
    job_state,
    observe,
    peer_of,
    permitted,
    plan,
)

METRICS_PORT: int | None = None  # set by __main__; None: no metrics server
DEFAULTS = OperatorDefaults()  # set by __main__ from the chart's env
TIMER_INTERVAL = 60.0
# Handlers are sync and block on API calls (~7 per reconcile): kopf's default thread pool
# (min(32, cores + 4): 6 on a 2-core pod) capped hand-offs at ~20/s with 500 runs
# (benchmarks/control_plane.py). Threads waiting on I/O cost little; runs stay serialised.
MAX_WORKERS = 32
_LOCKS: dict[tuple[str, str], threading.Lock] = {}
_LOCKS_GUARD = threading.Lock()
# (namespace, run, Job) -> the Job's state (reconcile.job_state) as the last successful
# reconcile of its run saw it, or as the operator created it: its events with that state
# again are no-ops. Halved the reconciles per phase transition (benchmarks/control_plane.py).
_SEEN: dict[tuple[str, str, str], tuple[Any, ...]] = {}
# (namespace, run) -> what its compareWith dependents last saw of it (reconcile.Peer).
_PEERS: dict[tuple[str, str], Peer] = {}
# (namespace, run) -> time.monotonic() of its last complete reconcile (see `safety_net`).
_RECONCILED: dict[tuple[str, str], float] = {}
_KUBE: Kube | None = None
log = logging.getLogger("tpo_operator")


class ApiError(Exception):
    def __init__(self, status: int, body: str):
        self.status = status
        self.body = body
        super().__init__(f"HTTP {status}: {body[:300]}")

    @property
    def message(self) -> str:
        """The API server's Status message (what kubectl prints), else the raw body."""
        try:
            status = json.loads(self.body)
        except ValueError:
            return self.body.strip()
        if isinstance(status, dict) and isinstance(status.get("message"), str):
            return status["message"]
        return self.body.strip()


class Kube:
    """Raw JSON requests through the `kubernetes` client's auth and TLS (no model classes)."""

    def __init__(self) -> None:
        import kubernetes

        try:
            kubernetes.config.load_incluster_config()
        except kubernetes.config.ConfigException:
            kubernetes.config.load_kube_config()
        self.client = kubernetes.client.ApiClient()

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        query: dict[str, str] | None = None,
        content_type: str = "application/json",
    ) -> dict[str, Any]:
        m, url, headers, data, _ = self.client.param_serialize(
            method,
            path,
            query_params=list((query or {}).items()),
            header_params={"Content-Type": content_type, "Accept": "application/json"},
            body=body,
            auth_settings=["BearerToken"],
        )
        resp = self.client.call_api(m, url, headers, data, _request_timeout=30)
        resp.read()
        text = resp.data.decode() if isinstance(resp.data, bytes) else str(resp.data)
        if resp.status >= 400:
            raise ApiError(resp.status, text)
        return json.loads(text) if text else {}

    def create(self, path: str, body: dict[str, Any]) -> dict[str, Any] | None:
        """Create-if-absent: the object as created, None when it already existed (409)."""
        try:
            return self.request("POST", path, body) or body
        except ApiError as e:
            if e.status == 409:
                return None
            raise

    def merge_patch(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return self.request("PATCH", path, body, content_type="application/merge-patch+json")

    def delete(self, path: str) -> None:
        """Delete-if-present, pods in the background (the Job controller stops them)."""
        try:
            self.request("DELETE", path, query={"propagationPolicy": "Background"})
        except ApiError as e:
            if e.status != 404:
                raise


def run_path(namespace: str, name: str = "") -> str:
    base = f"/apis/{API_GROUP}/{API_VERSION}/namespaces/{namespace}/{PLURAL}"
    return f"{base}/{name}" if name else base


def _core(namespace: str, plural: str) -> str:
    return f"/api/v1/namespaces/{namespace}/{plural}"


def _jobs(namespace: str) -> str:
    return f"/apis/batch/v1/namespaces/{namespace}/jobs"


def now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _lock(namespace: str, name: str) -> threading.Lock:
    with _LOCKS_GUARD:
        return _LOCKS.setdefault((namespace, name), threading.Lock())


def kube() -> Kube:
    global _KUBE
    if _KUBE is None:
        _KUBE = Kube()
    return _KUBE


# --------------------------------------------------------------------------- reconcile


def reconcile_run(namespace: str, name: str, unless: Callable[[], bool] | None = None) -> None:
    """`unless` is asked under the run's lock, once any pass in flight has recorded its work."""
    with _lock(namespace, name):
        if unless is not None and unless():
            return
        with metrics.reconcile_timer():
            _reconcile_now(namespace, name)


def _reconcile_now(namespace: str, name: str) -> None:
    api = kube()
    try:
        body = api.request("GET", run_path(namespace, name))
    except ApiError as e:
        if e.status == 404:
            return
        raise
    if body.get("metadata", {}).get("deletionTimestamp"):
        return
    _reconcile(api, body, namespace, name)


def _reconcile(api: Kube, body: dict[str, Any], namespace: str, name: str) -> None:
    try:
        spec: Any = parse_spec(with_defaults(body.get("spec"), DEFAULTS))
    except SpecError as e:
        spec = e
    bad_name = name_problem(name)  # the API admits names no Job could be named after
    if bad_name:
        spec = SpecError([bad_name, *(spec.problems if isinstance(spec, SpecError) else [])])
    raw_status = {k: v for k, v in (body.get("status") or {}).items() if k != "kopf"}
    try:
        status = TPORunStatus.model_validate(raw_status)
    except ValueError:
        status = TPORunStatus()
    selector = {"labelSelector": f"{J.LABEL_RUN}={name}"}
    job_list = api.request("GET", _jobs(namespace), query=selector).get("items", [])
    pod_list = api.request("GET", _core(namespace, "pods"), query=selector).get("items", [])
    observed = observe(job_list, pod_list, name)
    seen = {(namespace, name, j["metadata"]["name"]): job_state(j) for j in job_list}
    generation = body.get("metadata", {}).get("generation")
    peer = _peer(api, spec, status, namespace)
    result = plan(spec, status, observed, now(), name, generation, peer)
    live = fetch_progress(P.targets(result.status, pod_list, name))
    result.status = P.with_progress(result.status, pod_list, live, name, now())
    created, refused = _apply(api, body, result, namespace, name, peer)
    if refused is not None:
        # The pass is redone in full on the next trigger or timer tick (it is not marked
        # reconciled: the admin may fix RBAC meanwhile); the run says what was refused.
        result = denied(status, refused, now(), generation)
        _post(body, result.actions)
    else:
        seen |= created
        result.status = permitted(result.status, now(), generation)
    if result.status != status:
        data = result.status.model_dump(by_alias=True, mode="json")  # nulls clear fields
        data["history"] = [h.dump() for h in result.status.history]
        api.merge_patch(run_path(namespace, name) + "/status", {"status": data})
    if refused is None:
        _SEEN.update(seen)  # only once all of it was applied: a failed pass is redone on the echo
        _RECONCILED[(namespace, name)] = time.monotonic()
    metrics.observe_run(namespace, name, result.status)


PROGRESS_TIMEOUT = 2.0  # seconds per pod: a slow pod must not hold the run's reconcile


def fetch_progress(targets: list[P.Target]) -> dict[str, list[P.Reading]]:
    """Reads the `tpo_progress_*` gauges of each running phase pod from its metrics endpoint
    (the pod IP from the pod list this pass already made; no API call, no RBAC). A pod that does
    not answer is left out: progress is a nicety, never the reason a reconcile fails."""
    if not targets:
        return {}
    from concurrent.futures import ThreadPoolExecutor
    from urllib.request import urlopen

    from prometheus_client.parser import text_string_to_metric_families

    def one(t: P.Target) -> tuple[str, list[P.Reading]]:
        try:
            with urlopen(t.url, timeout=PROGRESS_TIMEOUT) as resp:
                text = resp.read(1 << 20).decode("utf-8", "replace")
            samples = [
                (s.name, s.labels, s.value)
                for fam in text_string_to_metric_families(text)
                for s in fam.samples
            ]
            return t.pod, P.readings(samples)
        except (OSError, ValueError) as e:
            log.debug("progress of pod %s not read: %s", t.pod, e)
            return t.pod, []

    with ThreadPoolExecutor(max_workers=min(8, len(targets))) as pool:
        return {pod: rs for pod, rs in pool.map(one, targets) if rs}


def _peer(api: Kube, spec: Any, status: TPORunStatus, namespace: str) -> Peer | None:
    """The run named by evaluation.compareWith (the accepted spec's), as the API has it now.

    Its progress wakes this run through `on_peer_change` (the `compare_dependents` index).
    """
    snap = status.spec_snapshot
    effective = (
        snap if snap is not None else (spec.dump() if not isinstance(spec, SpecError) else {})
    )
    other = compare_with(effective)
    if not other:
        return None
    try:
        return peer_of(other, api.request("GET", run_path(namespace, other)))
    except ApiError as e:
        if e.status == 404:
            return peer_of(other, None)
        raise


def compare_with(spec: dict[str, Any] | None) -> str | None:
    return ((spec or {}).get("evaluation") or {}).get("compareWith") or None


# The verb and (group-qualified) resource of each write the plan can hold, for a refusal's report.
_WRITES: dict[type, tuple[str, str]] = {
    CreatePVC: ("create", "persistentvolumeclaims"),
    CreateService: ("create", "services"),
    CreateJob: ("create", "jobs.batch"),
    DeleteJob: ("delete", "jobs.batch"),
    SuspendJob: ("patch", "jobs.batch"),
}


def _apply(
    api: Kube,
    body: dict[str, Any],
    result: Plan,
    namespace: str,
    name: str,
    peer: Peer | None = None,
) -> tuple[dict[tuple[str, str, str], tuple[Any, ...]], Denied | None]:
    """Carries out the plan's writes in order, then its Events and metrics.

    Returns the state of each Job it created (see `_SEEN`) and the write the API server refused
    with 403 (RBAC, or an admission plugin), if one was: the writes after it are not tried and
    the plan's Events are not posted (they would announce what did not happen; the redone pass
    posts them). Other API errors propagate, as before.
    """
    created: dict[tuple[str, str, str], tuple[Any, ...]] = {}
    snapshot = result.status.spec_snapshot
    spec = parse_spec(snapshot) if snapshot is not None else None
    for action in result.actions:
        if isinstance(action, Event | JobOutcome):
            continue
        try:
            made = _write(api, body, action, spec, namespace, name, peer)
        except ApiError as e:
            if e.status != 403:
                raise
            verb, resource = _WRITES[type(action)]
            return created, Denied(verb, resource, namespace, e.message)
        if made is not None and isinstance(action, CreateJob):
            created[(namespace, name, action.name)] = job_state(made)
    _post(body, result.actions)
    for action in result.of(JobOutcome):
        metrics.observe_job(namespace, name, action.phase, action.outcome, action.reason)
    return created, None


def _write(
    api: Kube,
    body: dict[str, Any],
    action: Any,
    spec: Any,
    namespace: str,
    name: str,
    peer: Peer | None,
) -> dict[str, Any] | None:
    """One write of a plan; a created Job's body (None: it existed, or no Job was made)."""
    if isinstance(action, CreatePVC) and spec is not None:
        claim = J.pvc(spec, namespace, name)
        if claim is not None:
            if J.pvc_owned(spec):
                kopf.adopt(claim, owner=body)
            api.create(_core(namespace, "persistentvolumeclaims"), claim)
    elif isinstance(action, CreateService) and spec is not None:
        svc = J.train_service(spec, namespace, name, action.iteration)
        kopf.adopt(svc, owner=body)
        api.create(_core(namespace, "services"), svc)
    elif isinstance(action, CreateJob) and spec is not None:
        manifest = J.job(
            spec,
            namespace,
            name,
            action.phase,
            action.iteration,
            action.attempt,
            compare_claim=peer.claim if peer is not None else None,
        )
        kopf.adopt(manifest, owner=body)
        return api.create(_jobs(namespace), manifest)
    elif isinstance(action, DeleteJob):
        api.delete(f"{_jobs(namespace)}/{quote(action.name)}")
    elif isinstance(action, SuspendJob):
        ann = {USER_SUSPENDED: "true" if action.suspend else None}
        patch = {"metadata": {"annotations": ann}, "spec": {"suspend": action.suspend}}
        api.merge_patch(f"{_jobs(namespace)}/{quote(action.name)}", patch)
    return None


def _post(body: dict[str, Any], actions: list[Any]) -> None:
    """The Events among `actions`, on the run (kopf queues and posts them in order)."""
    for action in actions:
        if isinstance(action, Event):
            post = kopf.warn if action.type == "Warning" else kopf.info
            post(body, reason=action.reason, message=action.message)


# --------------------------------------------------------------------------- kopf wiring


# Watch-stream timeouts, seconds. A watch stalled by a dead proxy or load balancer (the
# operator's connection stays open, the one behind it to the API server is gone) never ends by
# itself: no event, no close, so no Job or TPORun change reaches the operator. server_timeout
# asks the API server to end each watch cleanly (kopf then resumes from the last
# resourceVersion); client_timeout ends, from our side, a stream that outlives that: it is dead,
# reconnect (kopf's docs: never shorter than the server's). connect_timeout bounds each watch's
# TCP connect (otherwise networking.request_timeout, 5 minutes). kopf 1.45's inactivity_timeout
# (70 s without an event or bookmark) may notice a silent stall sooner; client_timeout does not
# depend on the server sending bookmarks. tests/operator/test_watch_stall.py shortens it.
WATCH_SERVER_TIMEOUT = 300.0
WATCH_CLIENT_TIMEOUT = WATCH_SERVER_TIMEOUT + 30.0
WATCH_CONNECT_TIMEOUT = 30.0


@kopf.on.startup()
def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
    global _KUBE
    _KUBE = None  # a fresh client per operator start (tests restart it against new servers)
    for memo in (_SEEN, _PEERS, _RECONCILED):
        memo.clear()  # what another operator instance saw (tests start several per process)
    settings.posting.level = logging.INFO
    settings.watching.server_timeout = WATCH_SERVER_TIMEOUT
    settings.watching.client_timeout = WATCH_CLIENT_TIMEOUT
    settings.watching.connect_timeout = WATCH_CONNECT_TIMEOUT
    # Serve the namespaces given and the CRD present at start; no namespace/CRD discovery, so
    # the Role needs no list/watch on namespaces or customresourcedefinitions (least privilege).
    settings.scanning.disabled = True
    settings.execution.max_workers = MAX_WORKERS
    if METRICS_PORT is not None:
        metrics.start_server(METRICS_PORT)


@kopf.on.resume(API_GROUP, API_VERSION, PLURAL)
@kopf.on.create(API_GROUP, API_VERSION, PLURAL)
@kopf.on.update(API_GROUP, API_VERSION, PLURAL)
def on_run(namespace: str, name: str, **_: Any) -> None:
    reconcile_run(namespace, name)


@kopf.on.event("batch", "v1", "jobs", labels={J.LABEL_RUN: kopf.PRESENT})
def on_job(
    type: str | None, body: Any, namespace: str, name: str, labels: dict[str, str], **_: Any
) -> None:
    run = labels[J.LABEL_RUN]
    key, state = (namespace, run, name), job_state(body)
    if type == "DELETED":
        _SEEN.pop(key, None)

    def seen() -> bool:
        if type != "DELETED" and _SEEN.get(key) == state:
            metrics.SKIPPED_EVENTS.inc()
            return True
        return False

    reconcile_run(namespace, run, unless=seen)


@kopf.index(API_GROUP, API_VERSION, PLURAL)
async def compare_dependents(
    namespace: str, name: str, spec: Any, status: Any, **_: Any
) -> dict[tuple[str, str], str]:
    """Runs by the run they compare with (evaluation.compareWith), from the watch itself.

    Async, as is `on_peer_change`: both run on every TPORun event and are dict look-ups;
    sync handlers would each cost a thread hand-off per event."""
    other = compare_with((status or {}).get("specSnapshot") or spec)
    return {(namespace, other): name} if other else {}


@kopf.on.event(API_GROUP, API_VERSION, PLURAL)
async def on_peer_change(
    type: str | None,
    body: Any,
    namespace: str,
    name: str,
    compare_dependents: kopf.Index,
    **_: Any,
) -> None:
    """A run's progress (a new M(t), its end) wakes the runs that wait to compare with it."""
    dependents = list(compare_dependents.get((namespace, name), []))
    if not dependents:
        return
    seen = peer_of(name, None if type == "DELETED" else dict(body))
    if _PEERS.get((namespace, name)) == seen:
        return
    _PEERS[(namespace, name)] = seen
    for dependent in dependents:
        await asyncio.to_thread(reconcile_run, namespace, dependent)


@kopf.timer(API_GROUP, API_VERSION, PLURAL, interval=TIMER_INTERVAL, initial_delay=TIMER_INTERVAL)
def safety_net(namespace: str, name: str, **_: Any) -> None:
    """Catches anything the watches missed (a dropped stream, a pod event without a Job event).

    A run reconciled within the interval has missed nothing worth a pass: runs created together
    would otherwise all reconcile in the same second, interval after interval (500 runs: 1,500
    reads in a burst that delayed hand-offs by seconds; benchmarks/control_plane.py).
    """
    last = _RECONCILED.get((namespace, name))
    if last is not None and time.monotonic() - last < TIMER_INTERVAL:
        return
    reconcile_run(namespace, name)


@kopf.on.delete(API_GROUP, API_VERSION, PLURAL, optional=True)
def on_delete(namespace: str, name: str, **_: Any) -> None:
    """Children go with the owner references; only the metrics forget the run."""
    metrics.forget_run(namespace, name)
    with _LOCKS_GUARD:
        _LOCKS.pop((namespace, name), None)
    _PEERS.pop((namespace, name), None)
    _RECONCILED.pop((namespace, name), None)
    for key in [k for k in _SEEN if k[:2] == (namespace, name)]:
        _SEEN.pop(key, None)
