"""A Kubernetes API without a cluster, the real operator against it, and a scripted Job controller.

Reusable by any test that needs the operator end to end (the metrics tests use it too):

    with Cluster() as cluster, Operator(cluster):          # emulator + kopf, each in its own thread
        cluster.create_run(manifest)                       # a TPORun dict (namespace "default")
        ctl = JobController(cluster)
        job = cluster.wait_job("demo-prepare-0")           # waits until the operator created it
        ctl.succeed(job, [summary])                        # pods with termination messages + status
        cluster.wait_status("demo", lambda s: s["phase"] == "Evaluating")
        cluster.requests()                                 # (verb, group, resource) of every call

`Operator(cluster, metrics_port=0)` also starts the metrics server (handlers.METRICS_PORT).

What is emulated and why: kmock 0.8's KubernetesEmulator stores objects and serves list/watch/
patch, but sets no uid/namespace/creationTimestamp and has no Job controller or garbage
collector. tests/kubeemu.py (shared with the reliability tests and the control-plane
benchmark) adds the metadata a real API server sets (`Emulator`) and the Job controller's
decisions (`JobSim`: podFailurePolicy messages, peers deleted and counted, DisruptionTarget,
startTime); the tests say when a pod succeeds, crashes or is preempted (`JobController`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kmock
import requests

from tpo.spec import API_GROUP, API_VERSION, KIND, PLURAL

if str(Path(__file__).resolve().parents[1]) not in sys.path:  # tests/: the shared emulator
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kubeemu import NAMESPACE, Emulator, JobSim, Write, pods_of

# A wait returns as soon as its state holds: the limit only matters when something is wrong, so
# it is sized for a loaded 2-core CI machine (the suite beside other jobs ran 2.5x slower).
WAIT = 120.0


class Cluster:
    """The emulator served over HTTP from a background thread with its own event loop."""

    def __init__(self, tmp: Path | None = None):
        self.url = ""
        self.emulator: Emulator | None = None
        self._tmp = tmp
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="kmock", daemon=True)
        self.http = requests.Session()
        self.kubeconfig: Path | None = None

    # -- lifecycle
    def __enter__(self) -> Cluster:
        self._thread.start()
        if not self._ready.wait(WAIT):
            raise RuntimeError("emulator did not start")
        self._write_kubeconfig()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._loop and self._stop:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(WAIT)
        self.http.close()

    def _serve(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with Emulator() as em, kmock.Server(em) as server:
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

    def _write_kubeconfig(self) -> None:
        """Point the `kubernetes` client (kopf's login and the operator's) at the emulator."""
        import tempfile

        import kubernetes.config.kube_config as kc
        import yaml

        folder = self._tmp or Path(tempfile.mkdtemp(prefix="tpo-kube-"))
        self.kubeconfig = folder / "kubeconfig"
        self.kubeconfig.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "emu", "cluster": {"server": self.url}}],
                    "users": [{"name": "emu", "user": {"token": "emulator"}}],
                    "contexts": [{"name": "emu", "context": {"cluster": "emu", "user": "emu"}}],
                    "current-context": "emu",
                }
            )
        )
        kc.KUBE_CONFIG_DEFAULT_LOCATION = str(self.kubeconfig)

    # -- raw API
    def api(self, method: str, path: str, body: Any = None, merge: bool = True) -> dict[str, Any]:
        headers = {"Content-Type": "application/merge-patch+json" if merge else "application/json"}
        r = self.http.request(method, self.url + path, json=body, headers=headers, timeout=WAIT)
        if r.status_code >= 400:
            raise RuntimeError(f"{method} {path}: HTTP {r.status_code}: {r.text[:300]}")
        return r.json() if r.text else {}

    @staticmethod
    def path(resource: str, name: str = "", namespace: str = NAMESPACE) -> str:
        prefix = {
            "jobs": "/apis/batch/v1",
            PLURAL: f"/apis/{API_GROUP}/{API_VERSION}",
        }.get(resource, "/api/v1")
        base = f"{prefix}/namespaces/{namespace}/{resource}"
        return f"{base}/{name}" if name else base

    def list(self, resource: str, namespace: str = NAMESPACE) -> list[dict[str, Any]]:
        return self.api("GET", self.path(resource, namespace=namespace)).get("items", [])

    def get(self, resource: str, name: str, namespace: str = NAMESPACE) -> dict[str, Any] | None:
        r = self.http.get(self.url + self.path(resource, name, namespace), timeout=WAIT)
        return r.json() if r.status_code == 200 else None

    def create(self, resource: str, body: dict[str, Any], namespace: str = NAMESPACE) -> dict:
        return self.api("POST", self.path(resource, namespace=namespace), body, merge=False)

    def patch(self, resource: str, name: str, body: dict[str, Any], sub: str = "") -> dict:
        return self.api("PATCH", self.path(resource, name) + (f"/{sub}" if sub else ""), body)

    # -- TPORuns
    def create_run(self, manifest: dict[str, Any]) -> dict[str, Any]:
        return self.create(PLURAL, manifest)

    def run(self, name: str) -> dict[str, Any]:
        body = self.get(PLURAL, name)
        assert body is not None, f"TPORun {name} not found"
        return body

    def job_names(self) -> list[str]:
        return sorted(j["metadata"]["name"] for j in self.list("jobs"))

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        evs = self.list("events")
        return [e for e in evs if name is None or e.get("involvedObject", {}).get("name") == name]

    # -- waiting
    def wait_job(self, name: str, timeout: float = WAIT) -> dict[str, Any]:
        return wait_for(lambda: self.get("jobs", name), timeout, f"job {name} created")

    def wait_status(
        self, run: str, pred: Callable[[dict[str, Any]], bool], timeout: float = WAIT
    ) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            status = (self.get(PLURAL, run) or {}).get("status") or {}
            return status if pred(status) else None

        try:
            return wait_for(check, timeout, f"status of {run}")
        except TimeoutError as e:
            raise TimeoutError(f"{e}; last status: {self.run(run).get('status')}") from None

    def wait_event(
        self, run: str, reason: str, count: int = 1, timeout: float = WAIT
    ) -> list[dict[str, Any]]:
        """Waits until `count` events of `reason` about `run` exist; returns all of the run's.

        kopf posts events from its own task, after the status patch of the same pass: a status
        is no proof that its event arrived. Events of one object are posted in order, so once
        the last one of a pass is here, so are the ones before it."""

        def check() -> list[dict[str, Any]] | None:
            evs = self.events(run)
            return evs if [e.get("reason") for e in evs].count(reason) >= count else None

        try:
            return wait_for(check, timeout, f"{count} {reason} event(s) of {run}")
        except TimeoutError as e:
            got = [(ev.get("reason"), ev.get("message")) for ev in self.events(run)]
            raise TimeoutError(f"{e}; events: {got}") from None

    # -- request log
    def requests(self, operator_only: bool = True) -> list[tuple[str, str, str]]:
        """(verb, apiGroup, resource[/subresource]) of every API call, in RBAC terms.

        operator_only drops the tests' own calls (made with `requests`, its User-Agent).
        """
        assert self.emulator is not None
        out = []
        for req in list(self.emulator._requests):
            agent = req.headers.get("User-Agent", "")
            if operator_only and agent.startswith("python-requests"):
                continue
            if req.resource is None or req.action is None or not req.resource.plural:
                continue  # discovery (/api, /apis, /version): allowed to every authenticated user
            verb = {
                "LIST": "list",
                "WATCH": "watch",
                "FETCH": "get",
                "CREATE": "create",
                "UPDATE": "patch" if req.method.value == "PATCH" else "update",
                "DELETE": "delete",
            }[req.action.name]
            res = req.resource.plural + (f"/{req.subresource}" if req.subresource else "")
            out.append((verb, req.resource.group, res))
        return out


def wait_for(fn: Callable[[], Any], timeout: float = WAIT, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


class Operator:
    """The real kopf operator (`tpo_operator.handlers`) in its own thread and event loop."""

    def __init__(self, cluster: Cluster, metrics_port: int | None = None):
        self.cluster = cluster
        self.metrics_port = metrics_port
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kopf", daemon=True)
        self.error: BaseException | None = None
        self.settings: Any = None  # the kopf settings it runs with, as its startup left them

    def __enter__(self) -> Operator:
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def start(self) -> None:
        from tpo_operator import handlers

        handlers.METRICS_PORT = self.metrics_port
        self._thread.start()
        if not self._ready.wait(WAIT):
            raise RuntimeError(f"operator did not become ready: {self.error!r}")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(WAIT)
        if self._thread.is_alive():
            raise RuntimeError("operator did not stop")

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and self.error is None

    def _run(self) -> None:
        import kopf
        import tpo_operator.handlers  # noqa: F401  (registers the handlers)

        self.settings = settings = kopf.OperatorSettings()
        settings.scanning.disabled = True
        settings.peering.standalone = True
        settings.watching.reconnect_backoff = 0.1
        settings.batching.batch_window = 0.02
        settings.batching.idle_timeout = 0.5
        settings.batching.exit_timeout = 2.0
        settings.posting.level = 20
        try:
            asyncio.run(
                kopf.operator(
                    clusterwide=True,
                    standalone=True,
                    settings=settings,
                    stop_flag=self._stop,
                    ready_flag=self._ready,
                )
            )
        except BaseException as e:
            self.error = e
            self._ready.set()


@contextlib.contextmanager
def running(tmp: Path | None = None, metrics_port: int | None = None) -> Iterator[Cluster]:
    with Cluster(tmp) as cluster, Operator(cluster, metrics_port):
        yield cluster


# --------------------------------------------------------------------------- Job controller


class JobController:
    """The Kubernetes Job controller and kubelet (`kubeemu.JobSim`), driven by the test.

    Each call reads the Job and its pods from the emulator, lets `JobSim` decide what the real
    controller would do, and makes its writes over HTTP in order, so the operator may see
    every intermediate state a real cluster shows (a failed pod before the Job's condition, the
    FailureTarget before Failed). Outcomes follow the Job's own podFailurePolicy and
    backoffLimit (the manifests of tpo_operator.jobs): the test says what a pod does, never
    what the Job concludes.
    """

    def __init__(self, cluster: Cluster):
        self.cluster = cluster

    # -- what the tests do to pods
    def start(self, job: dict[str, Any] | str) -> dict[str, Any]:
        """The Job's pods are scheduled and running (active, startTime)."""
        return self._do(job, lambda sim: sim.start())

    def succeed(self, job: dict[str, Any] | str, summaries: list[dict[str, Any] | str]) -> None:
        """Every pod succeeds, pod i with summaries[i] as its termination message; Complete."""
        msgs = [s if isinstance(s, str) else json.dumps(s) for s in summaries]
        self._do(job, lambda sim: sim.succeed(msgs))

    def crash(
        self,
        job: dict[str, Any] | str,
        message: str = "Traceback: boom",
        exit_code: int = 1,
        index: int = 0,
    ) -> dict[str, Any]:
        """Pod `index`'s worker exits `exit_code`; the Job retries it, or fails if its policy
        or backoffLimit says so. Returns the Job's status."""
        return self._do(job, lambda sim: sim.crash(message, exit_code, index))

    def fail(
        self, job: dict[str, Any] | str, reason: str, message: str, exit_code: int = 1
    ) -> dict[str, Any]:
        """Pods crash (`message`, `exit_code`) until the Job gives up; the controller must end
        it with `reason` (e.g. BackoffLimitExceeded, PodFailurePolicy), as the test expects."""
        sim = self._sim(job)
        for _ in range(int(sim.spec.get("backoffLimit") or 6) + 2):
            self._apply(sim.crash(message, exit_code))
            if sim.finished:
                break
        got = sim.conditions().get("Failed", {})
        assert got.get("reason") == reason, f"the Job controller said {got}, not {reason}"
        return sim.status

    def preempt(
        self, job: dict[str, Any] | str, index: int = 0, reason: str = "PreemptionByScheduler"
    ) -> dict[str, Any]:
        """Pod `index` is disrupted (DisruptionTarget): not counted, a replacement starts."""
        return self._do(job, lambda sim: sim.preempt(index, reason))

    def sync(self, job: dict[str, Any] | str) -> dict[str, Any]:
        """React to `spec.suspend` (pods deleted on suspend; on resume new ones, startTime)."""
        return self._do(job, lambda sim: sim.sync())

    def gc(self, job: dict[str, Any] | str) -> dict[str, Any]:
        """Deleted pods finish terminating and disappear."""
        return self._do(job, lambda sim: sim.gc())

    def pods(self, job: dict[str, Any] | str) -> list[dict[str, Any]]:
        return pods_of(self._job(job), self.cluster.list("pods"))

    # -- plumbing
    def _job(self, job: dict[str, Any] | str) -> dict[str, Any]:
        name = job if isinstance(job, str) else job["metadata"]["name"]
        body = self.cluster.get("jobs", name)
        assert body is not None, f"job {name} does not exist"
        return body

    def _sim(self, job: dict[str, Any] | str) -> JobSim:
        return JobSim(self._job(job), self.cluster.list("pods"))

    def _do(self, job: dict[str, Any] | str, what: Callable[[JobSim], list[Write]]) -> dict:
        sim = self._sim(job)
        self._apply(what(sim))
        return sim.status

    def _apply(self, writes: list[Write]) -> None:
        for w in writes:
            self.cluster.api(w.method, w.path, w.body, merge=w.method == "PATCH")


def summary(phase: str, iteration: int, shard: int = 0, shards: int = 1, **extra: Any) -> dict:
    """A plausible phase summary (the contract in the brief), with `extra` overriding keys."""
    base: dict[str, Any] = {"phase": phase, "iteration": iteration, "seconds": 1.5}
    if shards > 1:
        base.update(shard=shard, shards=shards)
    base.update(
        {
            "prepare": {"prompts_per_iteration": 4, "eval_prompts": 4, "iterations": 2},
            "generate": {
                "prompts": 4,
                "samples": 16,
                "parse_failure_rate": 0.25,
                "mean_thought_tokens": 20.0 + iteration,
                "mean_response_tokens": 5.0,
                "tokens_per_second": 100.0,
                "truncated_rate": 0.125,
            },
            "judge": {
                "pairs": 3,
                "skipped_prompts": 1,
                "judge_mean_score": 0.4,
                "rho": 0.0,
                "chosen_mean_tokens": 20.0,
                "rejected_mean_tokens": 22.0,
                "parse_failure_rate": 0.25,
                "pair_yield": 0.75,
                "judge_no_verdict_rate": 0.05,
            },
            "train": {
                "train_loss": 0.6,
                "reward_margin": 0.1,
                "reward_accuracy": 0.7,
                "steps": 3,
                "model_path": f"/artifacts/default/x/iter-{iteration}/model",
            },
            "evaluate": {
                "win_rate": 0.5 + 0.1 * iteration,
                "win_rate_low": 0.3,
                "win_rate_high": 0.8,
                "lc_win_rate": 0.45 + 0.1 * iteration,  # docs/length-controlled-win-rate.md
                "lc_win_rate_low": 0.25,
                "lc_win_rate_high": 0.75,
                "wins": 2 + iteration,
                "ties": 0,
                "losses": 2,
                "n": 4 + iteration,
                "both_failed": 1,
                "judge_errors": 0,
                "eval_prompts": 5 + iteration,
                "mean_thought_tokens": 30.0 + iteration,
                "mean_response_tokens": 6.0,
                "eval_parse_failure_rate": 0.0,
                "baseline_parse_failure_rate": 0.2,
                "judge_mean_score": 0.5,
                "categories": [],
            },
        }[phase]
    )
    base.update(extra)
    return base


def manifest(name: str = "demo", iterations: int = 2, **spec: Any) -> dict[str, Any]:
    """A small valid TPORun; keyword arguments replace top-level spec fields."""
    body: dict[str, Any] = {
        "model": {"path": "/models/seed"},
        "dataset": {"path": "/data/instructions.jsonl", "promptsPerIteration": 4, "evalPrompts": 4},
        "iterations": iterations,
        "judge": {"type": "programmatic", "programmatic": {"function": "tpo.toy:judge"}},
        "storage": {"template": {"size": "1Gi", "accessModes": ["ReadWriteOnce"]}},
    }
    body.update(spec)
    return {
        "apiVersion": f"{API_GROUP}/{API_VERSION}",
        "kind": KIND,
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": body,
    }
