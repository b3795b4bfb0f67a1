"""A model token and a judge API key given by Secret reference never leak.

Recognizable fake values are planted where the real ones would be, then everything a user or
an attacker could read is searched for them:

- operator (real kopf against the emulated API): the Secrets exist in the emulator; a
  3-iteration run with `model.tokenSecretRef`, `dataset.hub.tokenSecret` and
  `judge.endpoint.apiKeySecretRef` goes to
  Succeeded; searched: every log record of the process (kopf and the operator), the TPORun
  and its status, events, Jobs, pods, Services, PVCs, the metrics exposition, `tpo render`.
  The Jobs must reference both secrets (secretKeyRef), so the search is not vacuous; the
  operator must never request a Secret.
- worker (real `tpo phase` subprocesses): HF_TOKEN and TPO_JUDGE_API_KEY are in the env as a
  pod would have them; prepare and the seed evaluation run with an endpoint judge served by a
  stdlib stand-in that checks the bearer key (and fails once with 500, once with 400, to walk
  the retry and warning paths); searched: stdout/stderr and every byte of every file of the run
  directory (artifacts, DONE markers, spec snapshot, status).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import prometheus_client
import pytest
import yaml
from harness import Cluster, JobController, Operator, manifest, summary
from tinyrun import tiny_spec, write_dataset
from tpo_operator.reconcile import steps

from tpo.artifacts import RunDir

TOKEN = "hf_FAKE-SECRET-TOKEN-7f3a9c1d"
API_KEY = "sk-FAKE-JUDGE-KEY-b41e55aa"
DATASET_TOKEN = "hf_FAKE-DATASET-TOKEN-0c9e2b7d"
SECRETS = (TOKEN, API_KEY, DATASET_TOKEN)
TESTS = Path(__file__).resolve().parents[1]


def secret(name: str, key: str, value: str) -> dict:
    import base64

    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": "default"},
        "type": "Opaque",
        "data": {key: base64.b64encode(value.encode()).decode()},
        "stringData": {key: value},
    }


def leaks(text: str) -> list[str]:
    return [s for s in SECRETS if s in text]


class Capture(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(self.format(record) + repr(record.__dict__.get("args")))


@pytest.mark.timeout(300)  # a hung run is cut here; its waits report first (harness.WAIT)
def test_operator_never_exposes_the_secrets(tmp_path):
    doc = manifest(
        iterations=3,
        model={"hubId": "org/seed", "tokenSecretRef": {"name": "hf-token", "key": "token"}},
        dataset={
            "hub": {"id": "org/prompts", "tokenSecret": {"name": "ds-token", "key": "token"}},
            "promptsPerIteration": 4,
            "evalPrompts": 4,
        },
        judge={
            "type": "endpoint",
            "endpoint": {
                "url": "https://judge.example/v1",
                "model": "judge",
                "apiKeySecretRef": {"name": "judge-key", "key": "api-key"},
            },
        },
    )
    capture = Capture()
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(capture)
    root.setLevel(logging.DEBUG)
    try:
        with Cluster(tmp_path) as cluster, Operator(cluster, metrics_port=0):
            cluster.create("secrets", secret("hf-token", "token", TOKEN))
            cluster.create("secrets", secret("judge-key", "api-key", API_KEY))
            cluster.create("secrets", secret("ds-token", "token", DATASET_TOKEN))
            cluster.create_run(doc)
            ctl = JobController(cluster)
            for phase, t in steps(3):
                ctl.succeed(cluster.wait_job(f"demo-{phase}-{t}"), [summary(phase, t)])
            cluster.wait_status("demo", lambda s: s.get("phase") == "Succeeded")
            cluster.wait_event("demo", "Succeeded")  # the last event, posted after the status
            objects = {
                res: cluster.list(res)
                for res in ("tporuns", "jobs", "pods", "services", "persistentvolumeclaims")
            }
            objects["events"] = cluster.list("events")
            requests = cluster.requests()
    finally:
        root.removeHandler(capture)
        root.setLevel(old_level)
    # the secrets are wired into the Jobs by reference
    refs = set()
    for job in objects["jobs"]:
        for env in job["spec"]["template"]["spec"]["containers"][0]["env"]:
            ref = (env.get("valueFrom") or {}).get("secretKeyRef")
            if ref:
                refs.add((job["metadata"]["name"], env["name"], ref["name"], ref["key"]))
    assert {r[1:] for r in refs} == {
        ("HF_TOKEN", "hf-token", "token"),
        ("TPO_JUDGE_API_KEY", "judge-key", "api-key"),
        ("TPO_DATASET_TOKEN", "ds-token", "token"),
    }
    # the dataset token goes to the one pod that reads the hub dataset
    assert {r[0] for r in refs if r[1] == "TPO_DATASET_TOKEN"} == {"demo-prepare-0"}
    assert len(objects["events"]) > 10 and len(capture.lines) > 50
    # ... and appear nowhere
    for res, items in objects.items():
        assert leaks(json.dumps(items)) == [], res
    assert leaks("\n".join(capture.lines)) == []
    assert leaks(prometheus_client.generate_latest().decode()) == []
    assert not [r for r in requests if r[2] == "secrets"], "the operator read a Secret"
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(doc))
    for t in range(4):
        cmd = [sys.executable, "-m", "tpo.cli", "render", str(path), "--iteration", str(t)]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=True)
        assert "secretKeyRef" in out.stdout and leaks(out.stdout + out.stderr) == []


class Judge(BaseHTTPRequestHandler):
    """An OpenAI-compatible judge that insists on the bearer key; fails once with 500 and
    once with 400 so the retry and the warning paths run."""

    def log_message(self, *args):
        pass

    def do_POST(self):
        srv = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with srv.lock:
            srv.calls += 1
            n = srv.calls
        if self.headers.get("Authorization") != f"Bearer {API_KEY}":
            srv.unauthorized += 1
            return self._send(401, {"error": "bad key"})
        if n == 1:
            return self._send(500, {"error": "overloaded"})
        if n == 2:
            return self._send(400, {"error": "too long"})
        srv.authorized += 1
        verdict = f"Rating: [[{1 + len(body['messages'][-1]['content']) % 9}]]"
        return self._send(
            200, {"choices": [{"message": {"role": "assistant", "content": verdict}}]}
        )

    def _send(self, code, obj):
        data = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.mark.slow
@pytest.mark.timeout(900)  # hang guard: 75 s quiet, several times that loaded
def test_worker_phases_never_write_the_secrets(tmp_path, tiny_lm):
    server = ThreadingHTTPServer(("127.0.0.1", 0), Judge)
    server.lock, server.calls, server.authorized, server.unauthorized = threading.Lock(), 0, 0, 0
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        ds = write_dataset(tmp_path / "ds.jsonl", 12)
        spec = tiny_spec(
            tiny_lm,
            ds,
            iterations=1,
            generation={"samples": 2},
        )
        spec["judge"] = {
            "type": "endpoint",
            "endpoint": {
                "url": f"http://127.0.0.1:{server.server_address[1]}/v1",
                "model": "judge",
                "apiKeySecretRef": {"name": "judge-key", "key": "api-key"},
                "maxRetries": 2,
                "maxConcurrency": 1,
                "mode": "pointwise",
            },
        }
        spec["evaluation"] = {"temperature": 1.0}  # sampled: the untrained model's greedy is empty
        spec["model"]["tokenSecretRef"] = {"name": "hf-token", "key": "token"}
        spec["dataset"].update(promptsPerIteration=4, evalPrompts=4)
        run = RunDir(tmp_path / "runs" / "default" / "s")
        env = {**os.environ, "PYTHONPATH": str(TESTS), "HF_TOKEN": TOKEN}
        env["TPO_JUDGE_API_KEY"] = API_KEY
        env["TPO_TERMINATION_LOG"] = str(tmp_path / "runs" / "termination-log")
        output = []
        for phase, extra in (("prepare", ["--spec", json.dumps(spec)]), ("evaluate", [])):
            cmd = [sys.executable, "-m", "tpo.cli", "phase", phase, "--run-dir", str(run.path)]
            cmd += ["--iteration", "0", *extra]
            p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
            assert p.returncode == 0, p.stderr[-3000:]
            output.append(p.stdout + p.stderr)
    finally:
        server.shutdown()
    assert server.authorized >= 1 and server.unauthorized == 0, (server.calls, output)
    assert "HTTP 400" in "".join(output)  # the warning path ran (and names no key)
    assert leaks("\n".join(output)) == []
    files = [f for f in (tmp_path / "runs").rglob("*") if f.is_file()]
    assert run.done("evaluate", 0).exists() and len(files) >= 5
    for f in files:
        data = f.read_bytes()
        assert not [s for s in SECRETS if s.encode() in data], f
