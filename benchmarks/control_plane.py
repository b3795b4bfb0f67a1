"""Control plane: N concurrent TPORuns against the emulated API server, the real operator.

The operator runs as its own process (`python -m tpo_operator -A`, the image's entrypoint) so
its CPU time and resident memory are its own. The API server is kmock's emulator (as in
tests/operator/harness.py) plus what a real one does that matters at this scale:
`labelSelector` on list (the operator lists a run's Jobs and pods by label; without it every
reconcile would read every run's objects). The Job controller of the tests (tests/kubeemu.py's
`JobSim`, the same one the operator and reliability tests use) finishes each Job `--delay`
seconds after it is created: a succeeded pod with the phase summary as its termination message,
then the Job's Complete condition, as the writes the real controller makes.

Load: all N runs are created at once; each Job runs U(1 - jitter, 1 + jitter) x D seconds,
D = N / rate, so every N sees the same offered load (`--rate` phase transitions per second;
default 25/s: 500 runs whose phases last 20 s each, 10-100x shorter than real phases).
`--delay D --jitter 0` instead gives every Job the same D: the runs move in lockstep, and with a
short D the offered load exceeds what the operator can serve (a saturation test: read the
achieved transitions/s, not the latency).

Measured (clock of the emulator, which sees both ends):
  hand-off    Job Complete accepted -> the run's next Job created, p50 / p99
  writes      operator create/patch/delete calls per phase transition, by resource
  operator    CPU seconds per run, peak RSS, RSS growth per run (after all runs vs idle)
Baseline: the emulator's own round trip (GET of a TPORun from this process), p50 / p99.

    python benchmarks/control_plane.py [--runs 10,100,500] [--iterations 1] [--rate 25]
    python benchmarks/control_plane.py --runs 500 --delay 0.5 --jitter 0     # saturation
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C

C.setup_env()
sys.path.insert(0, str(C.ROOT / "tests" / "operator"))

import aiohttp  # noqa: E402
import harness as H  # noqa: E402
import kmock  # noqa: E402
from kubeemu import Emulator, JobSim  # noqa: E402  (harness puts tests/ on sys.path)

from tpo.spec import API_GROUP, API_VERSION, PLURAL  # noqa: E402

BENCH_AGENT = "tpo-bench"
WARMUP = "warmup"  # one whole run before measuring: one-time costs are not per-run figures
PHASE_LABEL, ITER_LABEL, RUN_LABEL = "tpo.dev/phase", "tpo.dev/iteration", "tpo.dev/run"


def _matches(obj: dict[str, Any], selector: str) -> bool:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            k, v = term.split("!=", 1)
            if labels.get(k) == v:
                return False
        elif "=" in term:
            k, v = term.split("=", 1)
            if labels.get(k.rstrip("=")) != v:
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


class BenchEmulator(Emulator):
    """The harness emulator + labelSelector on list + timestamps + a simulated Job controller."""

    delay = 0.5
    jitter = 0.0

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.created: dict[str, float] = {}  # job name -> creation accepted
        self.finished: dict[str, float] = {}  # job name -> Complete accepted
        self.job_labels: dict[str, dict[str, str]] = {}
        self.session: aiohttp.ClientSession | None = None
        self.base = ""
        self.tasks: set[asyncio.Task] = set()
        self.log: list[tuple[str, str, str]] = []  # (User-Agent, verb, resource[/sub])
        self._inflight: set[int] = set()
        self.by_run: dict[tuple[str, str], list[tuple[str | None, str]]] = defaultdict(list)
        self.rng = random.Random(0)

    # -- kmock scans every stored object (and every declared resource) on each get/list/patch:
    # O(objects) per request. An index by resource and namespace keeps it O(answer).
    _resources_cache: list[Any] | None = None
    _buckets: dict[Any, dict[tuple[str | None, str], Any]] | None = None

    def _get_resources(self) -> list[Any]:
        if self._resources_cache is None:
            self._resources_cache = list(super()._get_resources())
        return self._resources_cache

    def _KubernetesEmulator__get_objs(self, request: Any, strict: bool) -> list[Any]:
        if self._buckets is None:
            self._buckets = defaultdict(dict)
        res, ns, name = request.resource, request.namespace, request.name
        bucket = self._buckets[res]
        if name is not None and (strict or ns is not None):
            obj = bucket.get((ns, name))
            if obj is None:
                obj = self._objects._objects.get((res, ns, name))
                if obj is None:
                    return []
                bucket[(ns, name)] = obj
            return [obj]
        return [
            o
            for (ons, _), o in bucket.items()
            if (ons == ns if strict else ns is None or ons == ns)
        ]

    def _trim(self) -> None:
        """kmock matches each request by scanning its whole request log (and each reaction's):
        O(requests served) per request, quadratic over a run. Keep only in-flight requests
        (counting happens in `self.log`), which makes the emulator's cost per request flat."""
        keep = [r for r in self._requests if id(r) in self._inflight]
        self._requests[:] = keep
        for payload in self._payloads:
            reqs = getattr(payload, "_requests", None)
            if isinstance(reqs, list) and len(reqs) > 64:
                reqs[:] = [r for r in reqs if id(r) in self._inflight]

    async def _serve_list(self, request: Any) -> Any:
        selector = (request.params or {}).get("labelSelector") or ""
        run = next(
            (t.split("=")[-1] for t in selector.split(",") if t.startswith(RUN_LABEL + "=")), None
        )
        if run is None or request.name is not None:
            out = await super()._serve_list(request)
            if selector:
                out["items"] = [o for o in out["items"] if _matches(o, selector)]
            return out
        # a real API server answers a label query from its index; so does this one
        bucket = (self._buckets or {}).get(request.resource, {})
        keys = self.by_run.get((request.resource.plural, run), [])
        objs = [bucket.get(k) for k in keys if request.namespace in (None, k[0])]
        items = [o.raw for o in objs if o is not None and not o.deleted]
        return {
            "metadata": {"resourceVersion": "..."},
            "items": [o for o in items if _matches(o, selector)],
        }

    async def _handle(self, request: Any) -> Any:
        self._inflight.add(id(request))
        self._trim()
        if request.resource is not None and request.action is not None:
            sub = f"/{request.subresource}" if request.subresource else ""
            plural = request.resource.plural or ""
            agent = request.headers.get("User-Agent", "")
            self.log.append((agent, request.action.name, plural + sub))
        try:
            resp = await super()._handle(request)
        finally:
            self._inflight.discard(id(request))
        if request.action == kmock.action.CREATE and resp.status < 300:
            meta = (request.data or {}).get("metadata") or {}
            run = (meta.get("labels") or {}).get(RUN_LABEL)
            if run is not None and request.resource is not None:
                ns = request.namespace or meta.get("namespace")
                self.by_run[(request.resource.plural, run)].append((ns, meta["name"]))
        res = request.resource
        if res is None or getattr(res, "plural", None) != "jobs" or resp.status >= 300:
            return resp
        now = time.monotonic()
        if request.action == kmock.action.CREATE and isinstance(request.data, dict):
            meta = request.data["metadata"]
            self.created[meta["name"]] = now
            self.job_labels[meta["name"]] = dict(meta.get("labels") or {})
            task = asyncio.get_running_loop().create_task(self._finish(request.data))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        elif request.action == kmock.action.UPDATE and request.subresource == "status":
            conds = ((request.data or {}).get("status") or {}).get("conditions") or []
            if any(c.get("type") == "Complete" for c in conds):
                self.finished[request.name] = now
        return resp

    async def _finish(self, job: dict[str, Any]) -> None:
        """The Job controller: after the delay, a succeeded pod, then the Complete condition."""
        if (job["metadata"].get("labels") or {}).get(RUN_LABEL) == WARMUP:
            await asyncio.sleep(0.05)
        else:
            await asyncio.sleep(self.delay * self.rng.uniform(1 - self.jitter, 1 + self.jitter))
        assert self.session is not None
        labels = job["metadata"].get("labels") or {}
        phase, t = labels[PHASE_LABEL], int(labels.get(ITER_LABEL, 0))
        hdr = {"User-Agent": BENCH_AGENT}
        for w in JobSim(job).succeed([json.dumps(H.summary(phase, t))]):
            headers = {**hdr, "Content-Type": "application/merge-patch+json"}
            if w.method == "POST":
                headers["Content-Type"] = "application/json"
            async with self.session.request(
                w.method, self.base + w.path, data=json.dumps(w.body), headers=headers
            ) as r:
                await r.read()


class BenchCluster(H.Cluster):
    def __init__(self, tmp: Path, delay: float, jitter: float):
        super().__init__(tmp)
        self.delay, self.jitter = delay, jitter
        self.http.headers["User-Agent"] = BENCH_AGENT

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with BenchEmulator() as em, kmock.Server(em) as server:
            em.delay, em.jitter = self.delay, self.jitter
            em.resources.load_bundled()
            em.resources[f"{API_GROUP}/{API_VERSION}/{PLURAL}"] = kmock.ResourceInfo(
                kind="TPORun",
                singular="tporun",
                namespaced=True,
                subresources={"status"},
                verbs={"get", "list", "watch", "create", "patch", "update", "delete"},
            )
            self.emulator = em
            self.url = str(server.url).rstrip("/")
            em.base = self.url
            em.session = aiohttp.ClientSession()
            self._ready.set()
            try:
                await self._stop.wait()
            finally:
                await em.session.close()

    def operator_requests(self) -> list[tuple[str, str]]:
        """(verb, resource) of every operator call (everything not made by this script)."""
        em = self.emulator
        assert isinstance(em, BenchEmulator)
        out = []
        for agent, action, res in list(em.log):
            if agent == BENCH_AGENT or not res or res.startswith("/"):
                continue
            verb = {
                "LIST": "list",
                "WATCH": "watch",
                "FETCH": "get",
                "CREATE": "create",
                "UPDATE": "patch",
                "DELETE": "delete",
            }[action]
            out.append((verb, res))
        return out


# --------------------------------------------------------------------------- operator process


class OperatorProc:
    """`python -m tpo_operator -A` against the emulator; /proc sampled for CPU and RSS."""

    def __init__(self, kubeconfig: Path, log: Path):
        env = {**os.environ, "KUBECONFIG": str(kubeconfig), "PYTHONUNBUFFERED": "1"}
        self.log = log.open("w")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                *os.environ.get("TPO_BENCH_OPERATOR", "-m tpo_operator").split(),
                *("-A", "--metrics-port", "-1", "--liveness-port", "-1"),
            ],
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            cwd=C.ROOT,
        )
        self.samples: list[tuple[float, float]] = []  # (time, rss MB)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _status(self) -> dict[str, str]:
        out = {}
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                k, _, v = line.partition(":")
                out[k] = v.strip()
        return out

    def rss_mb(self) -> float:
        return int(self._status()["VmRSS"].split()[0]) / 1024

    def peak_rss_mb(self) -> float:
        return int(self._status()["VmHWM"].split()[0]) / 1024

    def cpu_s(self) -> float:
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def _sample(self) -> None:
        while not self._stop.wait(0.5):
            try:
                self.samples.append((time.monotonic(), self.rss_mb()))
            except (OSError, KeyError):
                return

    def stop(self) -> None:
        self._stop.set()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


# --------------------------------------------------------------------------- one scenario


def round_trips(cluster: BenchCluster, n: int = 200) -> list[float]:
    path = cluster.path(PLURAL, "rtt-probe")
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        r = cluster.http.get(cluster.url + path, timeout=10)
        out.append(time.perf_counter() - t0)
        assert r.status_code == 200
    return out


def scenario(
    n: int, iterations: int, delay: float, jitter: float, timeout: float, tmp: Path
) -> dict[str, Any]:
    steps_per_run = 2 + 4 * iterations
    with BenchCluster(tmp, delay, jitter) as cluster:
        cluster.create_run(H.manifest("rtt-probe", suspend=True))  # the RTT target; never runs
        rtt_idle = round_trips(cluster)
        op = OperatorProc(cluster.kubeconfig, tmp / f"operator-{n}.log")
        try:
            # ready: the operator watches TPORuns and its first reconcile (the probe) is done
            H.wait_for(
                lambda: any(v == "patch" for v, _ in cluster.operator_requests()),
                60,
                "operator started",
            )
            cluster.create_run(H.manifest(WARMUP, iterations=iterations))
            H.wait_for(
                lambda: (cluster.run(WARMUP).get("status") or {}).get("phase") == "Succeeded",
                60,
                "the warm-up run",
            )
            em = cluster.emulator
            assert isinstance(em, BenchEmulator)
            for log in (em.created, em.finished, em.job_labels):
                log.clear()
            time.sleep(1.0)
            cpu0, rss0 = op.cpu_s(), op.rss_mb()
            req0 = len(cluster.operator_requests())
            started = time.monotonic()
            for i in range(n):
                cluster.create_run(H.manifest(f"r{i:04d}", iterations=iterations))
            created_s = time.monotonic() - started
            done, last_progress, last_count = 0, time.monotonic(), -1
            rtt_load: list[float] = []
            deadline = started + timeout
            while time.monotonic() < deadline:
                items = cluster.list(PLURAL)
                done = sum(
                    1
                    for r in items
                    if (r.get("status") or {}).get("phase") == "Succeeded"
                    and r["metadata"]["name"] not in ("rtt-probe", WARMUP)
                )
                if done >= n:
                    break
                count = len(cluster.emulator.created) if cluster.emulator else 0
                if count != last_count:
                    last_count, last_progress = count, time.monotonic()
                elif time.monotonic() - last_progress > 60:
                    break  # stalled
                if len(rtt_load) < 200:
                    rtt_load.extend(round_trips(cluster, 10))
                time.sleep(0.5)
            elapsed = time.monotonic() - started
            time.sleep(1.5)  # trailing events and status patches
            cpu = op.cpu_s() - cpu0
            rss_end, peak = op.rss_mb(), op.peak_rss_mb()
            reqs = cluster.operator_requests()[req0:]
            alive = op.proc.poll() is None
        finally:
            op.stop()
        em = cluster.emulator
        assert em is not None
        by_run: dict[str, list[tuple[str, int]]] = defaultdict(list)
        handoffs, slow_at = [], []
        for name, labels in em.job_labels.items():
            by_run[labels.get(RUN_LABEL, "")].append((name, 0))
        for _run, jobs in by_run.items():
            ordered = sorted((em.created[j], j) for j, _ in jobs)
            for (_, prev), (t_next, _) in itertools.pairwise(ordered):
                if prev in em.finished:
                    handoffs.append(t_next - em.finished[prev])
                    slow_at.append((handoffs[-1], em.finished[prev] - started))
        transitions = len(handoffs)
        writes = Counter((v, r) for v, r in reqs if v in ("create", "patch", "delete"))
        reads = Counter((v, r) for v, r in reqs if v in ("get", "list"))
        total_writes = sum(writes.values())
        jobs_created = len(em.created)
        return {
            "runs": n,
            "job_seconds": delay,
            "jitter": jitter,
            "offered_per_s": n / delay,
            "achieved_per_s": jobs_created / elapsed,
            "iterations": iterations,
            "steps_per_run": steps_per_run,
            "runs_succeeded": done,
            "jobs_created": jobs_created,
            "jobs_expected": n * steps_per_run,
            "elapsed_s": elapsed,
            "create_runs_s": created_s,
            "operator_alive": alive,
            "handoffs": transitions,
            "handoff_p50_s": C.percentile(handoffs, 50),
            "handoff_p99_s": C.percentile(handoffs, 99),
            "handoff_max_s": max(handoffs) if handoffs else float("nan"),
            # when (s after the runs were created) the slowest 1% of hand-offs began
            "slowest_at_s": sorted(t for _, t in sorted(slow_at)[-max(1, len(slow_at) // 100) :]),
            "rtt_idle_p50_s": C.percentile(rtt_idle, 50),
            "rtt_idle_p99_s": C.percentile(rtt_idle, 99),
            "rtt_load_p50_s": C.percentile(rtt_load, 50),
            "rtt_load_p99_s": C.percentile(rtt_load, 99),
            # every Job is a phase transition of its run (the first one leaves "Pending")
            "writes_per_transition": total_writes / max(jobs_created, 1),
            "reads_per_transition": sum(reads.values()) / max(jobs_created, 1),
            "reads_by_resource": {
                f"{v} {r}": c / max(jobs_created, 1) for (v, r), c in reads.most_common()
            },
            "writes_by_resource": {
                f"{v} {r}": c / max(jobs_created, 1) for (v, r), c in writes.most_common()
            },
            "operator_cpu_s": cpu,
            "operator_cpu_s_per_run": cpu / n,
            "operator_cpu_ms_per_transition": 1000 * cpu / max(jobs_created, 1),
            "rss_idle_mb": rss0,
            "rss_end_mb": rss_end,
            "rss_peak_mb": peak,
            "rss_growth_mb_per_run": (rss_end - rss0) / n,
        }


def report(r: dict[str, Any]) -> None:
    ms = 1000
    print(
        f"N={r['runs']:>4}: {r['runs_succeeded']}/{r['runs']} runs succeeded, "
        f"{r['jobs_created']}/{r['jobs_expected']} Jobs in {r['elapsed_s']:.1f} s"
        f"{'' if r['operator_alive'] else ' (OPERATOR DIED)'}"
    )
    print(
        f"  load: Jobs run {r['job_seconds']:.2f} s x U({1 - r['jitter']:.2f}, "
        f"{1 + r['jitter']:.2f}); offered {r['offered_per_s']:.1f} transitions/s, "
        f"achieved {r['achieved_per_s']:.1f}/s (Jobs created / wall)"
    )
    print(
        f"  hand-off p50 {r['handoff_p50_s'] * ms:.0f} ms, p99 {r['handoff_p99_s'] * ms:.0f} ms, "
        f"max {r['handoff_max_s'] * ms:.0f} ms over {r['handoffs']} hand-offs; the slowest 1% "
        f"began {r['slowest_at_s'][0]:.0f}-{r['slowest_at_s'][-1]:.0f} s after creation"
    )
    print(
        f"  emulator round trip: idle p50 {r['rtt_idle_p50_s'] * ms:.1f} ms "
        f"p99 {r['rtt_idle_p99_s'] * ms:.1f} ms; under load p50 "
        f"{r['rtt_load_p50_s'] * ms:.1f} ms p99 {r['rtt_load_p99_s'] * ms:.1f} ms"
    )
    print(
        f"  API per transition: {r['writes_per_transition']:.2f} writes, "
        f"{r['reads_per_transition']:.2f} reads; writes: "
        + ", ".join(f"{k} {v:.2f}" for k, v in r["writes_by_resource"].items())
        + "; reads: "
        + ", ".join(f"{k} {v:.2f}" for k, v in r["reads_by_resource"].items())
    )
    print(
        f"  operator: {r['operator_cpu_s']:.1f} CPU s "
        f"({r['operator_cpu_s_per_run'] * ms:.0f} ms/run, "
        f"{r['operator_cpu_ms_per_transition']:.1f} ms/transition); RSS idle "
        f"{r['rss_idle_mb']:.1f} MB, end {r['rss_end_mb']:.1f} MB, peak {r['rss_peak_mb']:.1f} MB, "
        f"growth {r['rss_growth_mb_per_run'] * 1024:.0f} KB/run"
    )
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", default="10,100,500", help="comma-separated N")
    p.add_argument("--iterations", type=int, default=1, help="TPO iterations per run")
    p.add_argument(
        "--rate", type=float, default=25.0, help="offered phase transitions/s (Job time N/rate)"
    )
    p.add_argument("--delay", type=float, help="seconds a simulated Job runs (overrides --rate)")
    p.add_argument("--jitter", type=float, default=0.5, help="Job time spread, +- fraction")
    p.add_argument(
        "--timeout",
        type=float,
        help="seconds per N before giving up (default: the slowest possible run plus 60 s)",
    )
    p.add_argument("--quick", action="store_true", help="N=5 only (the smoke test)")
    p.add_argument("--json", type=Path, help="also write the results here")
    a = p.parse_args(argv)
    ns = [5] if a.quick else [int(x) for x in a.runs.split(",")]
    C.header("control plane", "kopf", "kmock", "kubernetes")
    import tempfile

    results = []
    with tempfile.TemporaryDirectory(prefix="tpo-bench-cp-") as tmp:
        for n in ns:
            delay = a.delay if a.delay is not None else n / a.rate
            steps = 2 + 4 * a.iterations
            timeout = a.timeout or steps * delay * (1 + a.jitter) + 60
            r = scenario(n, a.iterations, delay, a.jitter, timeout, Path(tmp))
            report(r)
            results.append(r)
    if a.json:
        a.json.write_text(json.dumps(results, indent=1, default=float))
    print("# ratios (against the emulator's own round trip, same run)")
    for r in results:
        n = r["runs"]
        rtt = r["rtt_load_p50_s"] if r["rtt_load_p50_s"] == r["rtt_load_p50_s"] else 0.0
        rtt = rtt or r["rtt_idle_p50_s"]
        print(
            C.ratio_line(
                f"N={n} handoff_p50/rtt_p50", r["handoff_p50_s"] / r["rtt_idle_p50_s"], "-", None
            )
        )
        print(C.ratio_line(f"N={n} handoff_p99/rtt_load_p50", r["handoff_p99_s"] / rtt, "-", None))
        print(
            f"TARGET N={n} handoff_p99 = {r['handoff_p99_s']:.3f} s (target < 1 s at N=500)"
            + ("  " + ("MET" if r["handoff_p99_s"] < 1 else "MISSED") if n >= 500 else "")
        )
        print(
            f"TARGET N={n} writes_per_transition = {r['writes_per_transition']:.2f} (target <= 5)  "
            + ("MET" if r["writes_per_transition"] <= 5 else "MISSED")
        )
        print(
            f"TARGET N={n} rss_growth_per_run = {r['rss_growth_mb_per_run']:.3f} MB "
            "(target < 0.5 MB)  " + ("MET" if r["rss_growth_mb_per_run"] < 0.5 else "MISSED")
        )
        print(
            f"TARGET N={n} completed = {r['runs_succeeded']}/{n} runs "
            + ("MET" if r["runs_succeeded"] >= n else "MISSED")
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
