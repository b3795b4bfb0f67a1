"""Operator faults: killed and restarted anywhere, API errors injected; no run or Job lost.

Two layers (see docs/reliability.md):

1. Simulated API, real reconcile (`kubesim`): the real `handlers.reconcile_run` (observe ->
   plan -> apply -> status patch) runs against an in-memory API whose n-th write can kill the
   operator (before or after the write lands), fail with 500, time out after it landed, return a
   spurious 409, or let the Job controller move mid-reconcile. Hypothesis picks the faults for
   a 3-iteration run (60 cases); every run must end Succeeded with the undisturbed run's status
   and exactly one created, successful Job per phase and iteration.
2. Real kopf, emulated API server (`harness`): the real operator in its thread against kmock's
   emulator, stopped and started at several points of a 3-iteration run, and with API errors
   injected into the emulator (watch streams ended by 410 Gone or 500, Job creates and status
   patches answered 500 after they were applied, so the retry meets a 409).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import threading
from collections.abc import Iterator
from typing import Any

import aiohttp.web
import kmock
import kopf
import pytest
from harness import Cluster, Emulator, JobController, Operator, manifest, summary
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kubesim import FAULT_KINDS, JOBS, RUN_COLLECTION, SimKube, comparable, drive
from tpo_operator import handlers
from tpo_operator.reconcile import steps

from tpo.spec import API_GROUP, API_VERSION, KIND, PLURAL

ITERATIONS = 3
STEPS = steps(ITERATIONS)
JOB_NAMES = sorted(f"demo-{p}-{t}" for p, t in STEPS)


@contextlib.contextmanager
def events_into(api: SimKube) -> Iterator[None]:
    """kopf's event poster needs a running operator; here events are writes into the store."""
    saved = kopf.info, kopf.warn
    kopf.info = lambda body, *, reason, message: api.post_event("Normal", body, reason, message)
    kopf.warn = lambda body, *, reason, message: api.post_event("Warning", body, reason, message)
    try:
        yield
    finally:
        kopf.info, kopf.warn = saved


def simulate(faults: dict[int, str]):
    api = SimKube(faults=faults)
    api.put(RUN_COLLECTION, manifest(iterations=ITERATIONS))
    with events_into(api):
        return drive(api)


_REFERENCE: dict[str, Any] = {}


def reference():
    if not _REFERENCE:
        out = simulate({})
        _REFERENCE.update(outcome=out, status=comparable(out.status))
    return _REFERENCE


def test_undisturbed_reference_run_is_what_the_faulted_runs_must_match():
    ref = reference()["outcome"]
    assert ref.status["phase"] == "Succeeded" and ref.kills == 0 and ref.errors == 0
    assert [h["iteration"] for h in ref.status["history"]] == [0, 1, 2, 3]
    assert sorted(ref.api.creates) == JOB_NAMES
    assert ref.api.writes > 40  # enough write points for faults to land on


faults = st.dictionaries(
    st.integers(min_value=0, max_value=90), st.sampled_from(FAULT_KINDS), min_size=1, max_size=8
)


@settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(faults=faults)
def test_killed_anywhere_the_run_succeeds_with_the_same_status_and_one_job_per_step(faults):
    ref = reference()
    out = simulate(faults)
    assert out.status["phase"] == "Succeeded", out.status.get("message")
    assert comparable(out.status) == ref["status"]
    # exactly one Job per phase and iteration was created, each once, and each succeeded
    assert out.api.creates == dict.fromkeys(JOB_NAMES, 1)
    jobs = {j["metadata"]["name"]: j for j in out.api.items(JOBS)}
    assert sorted(jobs) == JOB_NAMES
    assert all(j["status"]["succeeded"] == 1 for j in jobs.values())
    assert out.api.violations == []
    # the status never went back: steps applied in order, once Succeeded always Succeeded
    order = [*STEPS, (None, ITERATIONS)]
    seen = [order.index((s, t)) if s else len(STEPS) for s, t, _ in out.api.status_steps]
    assert seen == sorted(seen), out.api.status_steps


def test_kill_points_cover_every_write_of_a_run():
    """Each single kill point, before and after each write: the exhaustive version of the above."""
    ref = reference()
    n = ref["outcome"].api.writes
    for at in range(n):
        for kind in ("kill-before", "kill-after"):
            out = simulate({at: kind})
            assert comparable(out.status) == ref["status"], (at, kind)
            assert out.api.creates == dict.fromkeys(JOB_NAMES, 1), (at, kind)
            assert out.kills == 1


# --------------------------------------------------------------------------- real kopf


class FaultyEmulator(Emulator):
    """The harness emulator with faults: `plan(request)` returns a fault name or None."""

    plan: Any = None
    injected: list[str]

    async def _handle(self, request: Any) -> Any:
        fault = self.plan(request) if self.plan else None
        if fault is None:
            return await super()._handle(request)
        self.injected.append(fault)
        if fault == "watch-410":
            line = {
                "type": "ERROR",
                "object": {
                    "kind": "Status",
                    "apiVersion": "v1",
                    "status": "Failure",
                    "reason": "Expired",
                    "code": 410,
                    "message": "too old resource version",
                },
            }
            return aiohttp.web.Response(
                text=json.dumps(line) + "\n", content_type="application/json"
            )
        if fault == "500-before":
            return _status(500, "injected: etcdserver: leader changed")
        # "500-after": the write lands, then the client is told it failed
        await super()._handle(request)
        return _status(500, "injected: the response was lost")


def _status(code: int, message: str) -> aiohttp.web.Response:
    body = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code}
    body["message"] = message
    return aiohttp.web.Response(status=code, text=json.dumps(body), content_type="application/json")


class FaultyCluster(Cluster):
    """`Cluster` serving `FaultyEmulator` (same setup as the harness's `_main`)."""

    def __init__(self, tmp, plan):
        super().__init__(tmp)
        self._plan = plan

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with FaultyEmulator() as em, kmock.Server(em) as server:
            em.plan, em.injected = self._plan, []
            em.resources.load_bundled()
            em.resources[f"{API_GROUP}/{API_VERSION}/{PLURAL}"] = kmock.ResourceInfo(
                kind=KIND,
                singular="tporun",
                namespaced=True,
                subresources={"status"},
                verbs={"get", "list", "watch", "create", "patch", "update", "delete"},
            )
            self.emulator = em
            self.url = str(server.url).rstrip("/")
            self._ready.set()
            await self._stop.wait()


def _operator(request: Any) -> bool:
    """The operator's own client (kubernetes package); kopf uses aiohttp, tests `requests`."""
    agent = request.headers.get("User-Agent", "")
    return not agent.startswith(("python-requests", "kopf")) and "aiohttp" not in agent


def _kopf(request: Any) -> bool:
    return not request.headers.get("User-Agent", "").startswith("python-requests")


def fault_plan(seed: int):
    """Every 3rd watch of kopf ends with 410 Gone, every 5th with a 500; one in three of the
    operator's Job creates and status patches lands but is answered 500."""
    rng = random.Random(seed)
    lock = threading.Lock()
    counts = {"watch": 0}

    def plan(request: Any) -> str | None:
        action = request.action
        if action is None or request.resource is None:
            return None
        with lock:
            if action == kmock.action.WATCH and _kopf(request):
                counts["watch"] += 1
                if counts["watch"] % 5 == 0:
                    return "500-before"
                if counts["watch"] % 3 == 0:
                    return "watch-410"
            if not _operator(request):
                return None
            plural = request.resource.plural
            if action == kmock.action.CREATE and plural == "jobs" and rng.random() < 0.34:
                return "500-after"
            if action == kmock.action.UPDATE and request.subresource == "status":
                return "500-after" if rng.random() < 0.34 else None
        return None

    return plan


def _creates(cluster: Cluster) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in list(cluster.emulator._requests):
        if r.action == kmock.action.CREATE and r.resource and r.resource.plural == "jobs":
            name = r.data["metadata"]["name"]
            out[name] = out.get(name, 0) + 1
    return out


def _finish_with_restarts(cluster: Cluster, restart_after: set[int]) -> dict[str, Any]:
    """Play the Job controller through a 3-iteration run; stop the operator after the listed
    steps' Jobs appear and let the step finish while no operator runs, then start a new one."""
    ctl = JobController(cluster)
    op = Operator(cluster)
    op.start()
    try:
        cluster.create_run(manifest(iterations=ITERATIONS))
        for i, (phase, t) in enumerate(STEPS):
            job = cluster.wait_job(f"demo-{phase}-{t}")
            if i in restart_after:
                op.stop()
                assert op.error is None, op.error
                ctl.succeed(job, [summary(phase, t)])
                op = Operator(cluster)
                op.start()
            else:
                ctl.succeed(job, [summary(phase, t)])
        return cluster.wait_status("demo", lambda s: s.get("phase") == "Succeeded")
    finally:
        op.stop()
        assert op.error is None, op.error


@pytest.mark.timeout(300)  # a hung run is cut here; its waits report first (harness.WAIT)
def test_real_kopf_restarted_at_random_steps_finishes_like_the_undisturbed_run(tmp_path):
    rng = random.Random(9)
    restart_after = set(rng.sample(range(len(STEPS)), 5))
    with Cluster(tmp_path) as cluster:
        st_ = _finish_with_restarts(cluster, restart_after)
        creates = _creates(cluster)
        jobs = cluster.list("jobs")
    assert comparable(st_) == reference()["status"]
    assert sorted(creates) == JOB_NAMES and set(creates.values()) == {1}
    assert len(jobs) == len(STEPS)
    assert all(
        any(c["type"] == "Complete" and c["status"] == "True" for c in j["status"]["conditions"])
        for j in jobs
    )


@pytest.mark.timeout(300)  # a hung run is cut here; its waits report first (harness.WAIT)
def test_real_kopf_survives_410_gone_500s_and_lost_responses(tmp_path):
    with FaultyCluster(tmp_path, fault_plan(seed=9)) as cluster:
        st_ = _finish_with_restarts(cluster, {4, 9})
        creates = _creates(cluster)
        injected = list(cluster.emulator.injected)
        jobs = cluster.list("jobs")
    # the faults did happen, of every kind
    assert {"watch-410", "500-before", "500-after"} <= set(injected), injected
    assert comparable(st_) == reference()["status"]
    # a create answered 500 after it landed is retried and meets 409: still one Job per step
    assert sorted(creates) == JOB_NAMES
    assert sorted(j["metadata"]["name"] for j in jobs) == JOB_NAMES


def test_handler_errors_propagate_so_kopf_retries_them():
    """An API error inside a reconcile is raised (kopf logs and retries it), never swallowed
    into a half-applied status: nothing was patched before the failing write."""
    api = SimKube(faults={0: "500"})
    api.put(RUN_COLLECTION, manifest(iterations=1))
    handlers._KUBE = api
    with events_into(api), pytest.raises(handlers.ApiError):
        handlers.reconcile_run("default", "demo")
    assert "status" not in api.get(RUN_COLLECTION, "demo")
    handlers._KUBE = None
