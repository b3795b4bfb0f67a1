"""evaluation.compareWith in the operator: the planner waits for the other run's M(t), the
evaluate Job finds that run's artifacts (same PVC or its own, mounted read-only), and the
two-arm result reaches the status and the metrics."""

from __future__ import annotations

from harness import NAMESPACE, manifest, summary
from tpo_operator import jobs as J
from tpo_operator import metrics
from tpo_operator.reconcile import CreateJob, Event, ObservedJob, Peer, peer_of, plan

from tpo.spec import TPORunStatus, parse_manifest

NOW = "2026-01-01T00:00:00Z"
_, SPEC = parse_manifest(manifest(iterations=2, evaluation={"compareWith": "twin"}))
COMPARE = {
    "run": "twin",
    "win_rate": 0.62,
    "win_rate_low": 0.57,
    "win_rate_high": 0.67,
    "wins": 240,
    "ties": 16,
    "losses": 144,
    "n": 400,
    "categories": [
        {"category": "add", "n": 100, "winRate": 0.7, "winRateLow": 0.6, "winRateHigh": 0.78},
        {"category": "count", "n": 7, "note": "too few prompts (n=7)"},
    ],
}


def until(step: tuple[str, int], peer: Peer | None):
    """Play the run (every Job completes) until the planner stops creating Jobs."""
    status, jobs, created, waits = TPORunStatus(), {}, [], []
    for _ in range(40):
        p = plan(SPEC, status, list(jobs.values()), NOW, "tpo", peer=peer)
        status = p.status
        new = p.of(CreateJob)
        for a in new:
            created.append((a.phase, a.iteration))
            extra = {"compare": COMPARE} if (a.phase, a.iteration) != ("evaluate", 0) else {}
            if a.phase != "evaluate":
                extra = {}
            s = summary(a.phase, a.iteration, **extra)
            jobs[a.name] = ObservedJob(
                a.name, a.phase, a.iteration, succeeded=1, complete=True, summaries=(s,)
            )
        if not new:
            waits.append(status.message)
            return status, created, p, waits
    raise AssertionError("planner never stopped")


def test_evaluate_waits_for_the_other_runs_model():
    status, created, _, _ = until(("evaluate", 1), None)
    assert created[-1] == ("train", 1)  # evaluate-1 not created: the twin is not there
    assert "waits for TPORun twin" in status.message and status.phase == "Evaluating"

    training = Peer("twin", exists=True, models=frozenset(), iterations=2)
    status, created, _, _ = until(("evaluate", 1), training)
    assert created[-1] == ("train", 1)
    assert "waits for TPORun twin to train iteration 1" in status.message

    status, created, _, _ = until(("evaluate", 2), Peer("twin", True, False, frozenset({1}), 2))
    assert created[-1] == ("train", 2) and ("evaluate", 1) in created
    assert "train iteration 2" in status.message

    status, created, _, _ = until(("evaluate", 2), Peer("twin", True, False, frozenset({1, 2}), 2))
    assert created[-1] == ("evaluate", 2) and status.phase == "Succeeded"
    h = next(h for h in status.history if h.iteration == 2)
    assert h.compare is not None and h.compare.run == "twin" and h.compare.win_rate == 0.62
    assert [c.note for c in h.compare.categories] == [None, "too few prompts (n=7)"]


def test_a_twin_that_ended_without_the_model_does_not_block():
    ended = Peer("twin", True, True, frozenset({1}), 2)
    status, created, _, _ = until(("evaluate", 2), ended)
    assert ("evaluate", 2) in created and status.phase == "Succeeded"
    shorter = Peer("twin", True, False, frozenset({1}), 1)  # only 1 iteration: never M(2)
    status, created, _, _ = until(("evaluate", 2), shorter)
    assert ("evaluate", 2) in created


def test_compare_skipped_event():
    st = TPORunStatus()
    ended = Peer("twin", True, True, frozenset(), 2)
    events = []
    jobs: dict = {}
    for _ in range(12):
        p = plan(SPEC, st, list(jobs.values()), NOW, "tpo", peer=ended)
        st = p.status
        events += [e.reason for e in p.of(Event)]
        for a in p.of(CreateJob):
            s = summary(a.phase, a.iteration)
            jobs[a.name] = ObservedJob(
                a.name, a.phase, a.iteration, succeeded=1, complete=True, summaries=(s,)
            )
    assert "CompareSkipped" in events


def test_peer_from_the_other_runs_object():
    assert peer_of("twin", None) == Peer("twin")
    body = manifest("twin", iterations=3, storage={"claimName": "shared"})
    body["status"] = {
        "phase": "Training",
        "history": [
            {"iteration": 0, "phaseSeconds": {"evaluate": 1.0}},
            {"iteration": 1, "phaseSeconds": {"train": 3.0}, "modelPath": "/a/iter-1/model"},
            {"iteration": 2, "phaseSeconds": {"generate": 3.0}},
        ],
    }
    assert peer_of("twin", body) == Peer("twin", True, False, frozenset({1}), 3, "shared")
    body["status"]["phase"] = "Failed"
    assert peer_of("twin", body).terminal
    default = manifest("twin")
    assert peer_of("twin", default).claim == "twin-artifacts"


def _env(job: dict) -> dict[str, str]:
    c = job["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value") for e in c["env"]}


def test_evaluate_job_gets_the_other_runs_directory():
    ns = NAMESPACE
    same = J.job(SPEC, ns, "tpo", "evaluate", 1, compare_claim="tpo-artifacts")
    assert _env(same)[J.COMPARE_DIR_ENV] == f"/artifacts/{ns}/twin"
    vols = same["spec"]["template"]["spec"]["volumes"]
    assert J.COMPARE_VOLUME not in {v["name"] for v in vols}

    other = J.job(SPEC, ns, "tpo", "evaluate", 2, compare_claim="twin-artifacts")
    pod = other["spec"]["template"]["spec"]
    assert _env(other)[J.COMPARE_DIR_ENV] == f"/compare/{ns}/twin"
    vol = next(v for v in pod["volumes"] if v["name"] == J.COMPARE_VOLUME)
    assert vol["persistentVolumeClaim"] == {"claimName": "twin-artifacts", "readOnly": True}
    mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == J.COMPARE_VOLUME)
    assert mount == {"name": J.COMPARE_VOLUME, "mountPath": "/compare", "readOnly": True}

    # other phases, iteration 0, and runs without compareWith are untouched
    assert J.COMPARE_DIR_ENV not in _env(J.job(SPEC, ns, "tpo", "generate", 1))
    assert J.COMPARE_DIR_ENV not in _env(J.job(SPEC, ns, "tpo", "evaluate", 0))
    _, plain = parse_manifest(manifest(iterations=2))
    assert J.COMPARE_DIR_ENV not in _env(J.job(plain, ns, "tpo", "evaluate", 1))
    from tpo.phases import COMPARE_DIR_ENV

    assert COMPARE_DIR_ENV == J.COMPARE_DIR_ENV  # the worker reads what the Job sets


def test_two_arm_and_category_interval_metrics():
    status, _, _, _ = until(("evaluate", 2), Peer("twin", True, False, frozenset({1, 2}), 2))
    series = metrics.run_series(NAMESPACE, "tpo", status)
    got = {(g._name, labels): v for (g, labels), v in series.items()}
    it = (NAMESPACE, "tpo", "2")
    assert got[("tpo_compare_win_rate", (*it, "twin"))] == 0.62
    assert got[("tpo_compare_win_rate_low", (*it, "twin"))] == 0.57
    assert got[("tpo_compare_win_rate_high", (*it, "twin"))] == 0.67
    assert got[("tpo_compare_category_win_rate", (*it, "twin", "add"))] == 0.7
    assert ("tpo_compare_category_win_rate", (*it, "twin", "count")) not in got
    assert got[("tpo_compare_category_eval_prompts", (*it, "twin", "count"))] == 7


def test_the_other_runs_progress_wakes_the_waiting_run_at_once(cluster, ctl, monkeypatch):
    """The real operator: a run waiting at evaluate for its compareWith twin moves on when the
    twin's M(1) appears in its status, through the watch. The safety-net timer is out of play
    (an infinite interval: every run counts as just reconciled), so only the twin's watch event
    can wake it, however slow the machine; a fixed time bound would fail under load."""
    import math

    from test_operator_e2e import finish
    from tpo_operator import handlers

    monkeypatch.setattr(handlers, "TIMER_INTERVAL", math.inf)
    cluster.create_run(manifest("twin", iterations=1))
    cluster.create_run(manifest("tpo", iterations=1, evaluation={"compareWith": "twin"}))
    steps = [("prepare", 0), ("evaluate", 0), ("generate", 1), ("judge", 1), ("train", 1)]
    finish(cluster, ctl, steps, run="tpo")
    cluster.wait_status("tpo", lambda s: "waits for TPORun twin" in s.get("message", ""))
    finish(cluster, ctl, steps[:-1], run="twin")  # the twin moves on, but has no M(1) yet
    cluster.wait_status("twin", lambda s: s.get("phase") == "Training")
    assert cluster.get("jobs", "tpo-evaluate-1") is None
    finish(cluster, ctl, steps[-1:], run="twin")  # twin's M(1) is trained
    cluster.wait_job("tpo-evaluate-1")
