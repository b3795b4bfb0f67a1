"""A stalled watch stream does not blind the operator.

A dead proxy or load balancer between the operator and the API server leaves the operator's
connection open and silent: no event, no close. kopf waits on such a stream until a timeout
ends it; handlers.startup sets kopf's client timeout for that. Here the emulator (kmock) answers
the operator's first watch of one resource with a response that starts (200, headers) and then
sends nothing until the client goes away, while later watches are served normally; a change
made during the stall must still reach the operator.

The operator runs with a short client timeout (handlers.WATCH_CLIENT_TIMEOUT, which startup
applies) so the test takes seconds. Without one, the stream stays stalled until kopf's own
inactivity timeout (70 s in kopf 1.45), past what the test waits for the stall to end. The
safety-net timer is out of play (an infinite interval: every run counts as just reconciled),
so only a watch event can move the run on.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import kmock
import pytest
from harness import WAIT, Cluster, JobController, Operator, manifest, summary, wait_for
from tpo_operator import handlers

from tpo.spec import PLURAL

# a hung test is cut here; every wait inside reports its own state well before (harness.WAIT)
pytestmark = pytest.mark.timeout(300)

CLIENT_TIMEOUT = 4.0  # the test's client timeout (production: handlers.WATCH_CLIENT_TIMEOUT)
MARGIN = 30.0  # for kopf to notice the timeout on a loaded machine; below kopf's 70 s


class Stall:
    """Once armed, the next watch of `plural` is held open and silent until its client leaves.

    A kmock reaction: kmock tries reactions before the emulator's own watch handler; raising
    NotImplementedError hands the request on to the next one (without disabling this one)."""

    def __init__(self, plural: str):
        self.plural = plural
        self.started = threading.Event()
        self.ended = threading.Event()
        self.started_at = math.nan
        self._armed = False
        self._used = False

    def arm(self) -> None:
        self._armed = True

    def matches(self, request: Any) -> bool:
        return (
            request.action == kmock.action.WATCH
            and request.resource is not None
            and request.resource.plural == self.plural
        )

    def __call__(self, request: Any) -> AsyncIterator[bytes]:
        if not self._armed or self._used:
            raise NotImplementedError  # not the stalled one: the emulator serves it as usual
        self._used = True
        return self._silence(request)

    async def _silence(self, request: Any) -> AsyncIterator[bytes]:
        yield b""  # the response begins: status and headers reach the client, then nothing
        self.started_at = time.monotonic()
        self.started.set()
        try:
            raw = request._raw_request  # aiohttp's request: its transport goes on disconnect
            while raw.transport is not None and not raw.transport.is_closing():
                await asyncio.sleep(0.05)
        finally:
            self.ended.set()


def stall_watch(cluster: Cluster, plural: str) -> Stall:
    stall = Stall(plural)
    assert cluster.emulator is not None
    cluster.emulator[stall.matches] << stall
    return stall


def left(stall: Stall) -> float:
    """Seconds left of the stall's budget: the client timeout plus a margin from its start."""
    return max(0.0, stall.started_at + CLIENT_TIMEOUT + MARGIN - time.monotonic())


def during_stall(stall: Stall) -> None:
    """The change just made reached the API while the stalled stream was open: it is one that
    the operator's watch missed (else the test would prove nothing)."""
    assert not stall.ended.is_set(), "the stall ended before the change: nothing was missed"


def wait_stall_cut(stall: Stall) -> None:
    assert stall.ended.wait(left(stall)), (
        f"the stalled {stall.plural} watch was still open {CLIENT_TIMEOUT + MARGIN:.0f} s after"
        " it stalled: no client timeout ended it"
    )


@pytest.fixture()
def short_timeouts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(handlers, "WATCH_CLIENT_TIMEOUT", CLIENT_TIMEOUT)
    monkeypatch.setattr(handlers, "TIMER_INTERVAL", math.inf)


def test_a_job_change_during_a_stalled_jobs_watch_still_moves_the_run(tmp_path, short_timeouts):
    """The run and its first Job exist; a new operator's jobs watch stalls from its start (its
    listing works); the Job then completes, which only that watch would have told it."""
    with Cluster(tmp_path) as cluster:
        stall = stall_watch(cluster, "jobs")
        ctl = JobController(cluster)
        with Operator(cluster):
            cluster.create_run(manifest(iterations=1))
            job = cluster.wait_job("demo-prepare-0")
            cluster.wait_status("demo", lambda s: s.get("phase") == "Preparing")
        stall.arm()
        with Operator(cluster) as op:
            inactivity = op.settings.watching.inactivity_timeout
            assert inactivity is None or inactivity > CLIENT_TIMEOUT + MARGIN, inactivity
            assert stall.started.wait(WAIT), "the operator never watched jobs"
            # its resume pass (which reads the Jobs itself) is over before the Job completes
            wait_for(lambda: ("default", "demo") in handlers._RECONCILED, what="resume pass")
            ctl.succeed(job, [summary("prepare", 0)])
            during_stall(stall)
            wait_stall_cut(stall)
            cluster.wait_job("demo-evaluate-0", timeout=left(stall))
            assert op.alive, op.error


def test_a_run_created_during_a_stalled_tporun_watch_is_still_seen(tmp_path, short_timeouts):
    with Cluster(tmp_path) as cluster:
        stall = stall_watch(cluster, PLURAL)
        stall.arm()
        with Operator(cluster) as op:
            assert stall.started.wait(WAIT), "the operator never watched TPORuns"
            cluster.create_run(manifest(iterations=1))
            during_stall(stall)
            wait_stall_cut(stall)
            cluster.wait_job("demo-prepare-0", timeout=left(stall))
            assert op.alive, op.error


def test_the_shipped_watch_timeouts_are_set_and_ordered(monkeypatch):
    """What production runs with: every watch has a client-side end, after the server's."""
    import kopf

    monkeypatch.setattr(handlers, "METRICS_PORT", None)  # startup alone, no metrics server
    settings = kopf.OperatorSettings()
    handlers.startup(settings=settings)
    w = settings.watching
    assert w.server_timeout == handlers.WATCH_SERVER_TIMEOUT
    assert w.client_timeout == handlers.WATCH_CLIENT_TIMEOUT
    assert w.connect_timeout == handlers.WATCH_CONNECT_TIMEOUT
    assert 0 < w.server_timeout < w.client_timeout <= 600
    assert 0 < w.connect_timeout < w.client_timeout
