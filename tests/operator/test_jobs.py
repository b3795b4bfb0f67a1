"""Manifests from jobs.py: valid Kubernetes objects (offline schemas), safe defaults, render."""

from __future__ import annotations

import json
import subprocess
import sys

import kubernetes_validate
import pytest
import yaml
from harness import manifest
from tpo_operator import jobs as J

from tpo.errors import EXIT_BAD_INPUT, EXIT_UPSTREAM_DAMAGED
from tpo.spec import parse_manifest


def rich() -> dict:
    m = manifest(name="a" * 40, iterations=2)
    m["spec"].update(
        model={"hubId": "org/seed", "tokenSecretRef": {"name": "hf", "key": "token"}},
        generation={"shards": 3},
        judge={
            "type": "endpoint",
            "shards": 2,
            "endpoint": {
                "url": "https://judge.example/v1",
                "model": "judge",
                "apiKeySecretRef": {"name": "judge-key", "key": "api-key"},
            },
        },
        training={"nodes": 2, "gpusPerNode": 8},
        pools={
            "generate": {
                "gpus": 2,
                "queueName": "gpu-queue",
                "nodeSelector": {"pool": "h100"},
                "tolerations": [
                    {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
                ],
                "affinity": {
                    "nodeAffinity": {
                        "requiredDuringSchedulingIgnoredDuringExecution": {
                            "nodeSelectorTerms": [
                                {
                                    "matchExpressions": [
                                        {"key": "zone", "operator": "In", "values": ["a"]}
                                    ]
                                }
                            ]
                        }
                    }
                },
                "resources": {"requests": {"cpu": "4", "memory": "32Gi"}},
                "priorityClassName": "batch-high",
                "activeDeadlineSeconds": 7200,
                "backoffLimit": 1,
            }
        },
        env=[{"name": "EXTRA", "value": "1"}],
    )
    return m


def all_objects(m: dict) -> list[dict]:
    meta, spec = parse_manifest(m)
    return [
        o for t in range(spec.iterations + 1) for o in J.children(spec, "team-a", meta["name"], t)
    ]


@pytest.mark.parametrize("build", [rich, lambda: manifest()], ids=["rich", "minimal"])
def test_every_manifest_is_a_valid_kubernetes_object(build):
    objs = all_objects(build())
    kinds = {o["kind"] for o in objs}
    assert kinds >= {"Job", "PersistentVolumeClaim"}
    for obj in objs:
        obj = json.loads(json.dumps(obj))
        obj["metadata"]["ownerReferences"] = [
            {
                "apiVersion": "tpo.dev/v1alpha1",
                "kind": "TPORun",
                "name": "x",
                "uid": "0b7c3c1e-7f1a-4f7e-9b1a-2f1d8c1e0a11",
                "controller": True,
            }
        ]
        kubernetes_validate.validate(obj, desired_version="1.32", strict=True)
        assert len(obj["metadata"]["name"]) <= 63


def test_job_details_for_a_sharded_queued_gpu_phase():
    meta, spec = parse_manifest(rich())
    job = J.job(spec, "team-a", meta["name"], "generate", 2)
    pod = job["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert job["metadata"]["name"] == f"{meta['name']}-generate-2"
    assert job["metadata"]["labels"][J.KUEUE_QUEUE] == "gpu-queue" and job["spec"]["suspend"]
    assert job["metadata"]["labels"][J.LABEL_ITERATION] == "2"
    assert job["spec"]["completionMode"] == "Indexed" and job["spec"]["completions"] == 3
    assert {"name": "TPO_SHARDS", "value": "3"} in c["env"]
    assert c["resources"]["limits"][J.GPU] == "2" and c["resources"]["requests"]["cpu"] == "4"
    assert c["command"][:3] == ["tpo", "phase", "generate"]
    assert c["command"][3:] == [
        "--run-dir",
        f"/artifacts/team-a/{meta['name']}",
        "--iteration",
        "2",
    ]
    assert pod["nodeSelector"] == {"pool": "h100"} and pod["priorityClassName"] == "batch-high"
    assert job["spec"]["activeDeadlineSeconds"] == 7200 and job["spec"]["backoffLimit"] == 1
    rules = job["spec"]["podFailurePolicy"]["rules"]
    assert rules[0] == {
        "action": "Ignore",
        "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
    }
    assert rules[1]["action"] == "FailJob"
    assert rules[1]["onExitCodes"]["values"] == [EXIT_BAD_INPUT, EXIT_UPSTREAM_DAMAGED]
    sc = c["securityContext"]
    assert (
        sc["readOnlyRootFilesystem"]
        and sc["runAsNonRoot"]
        and sc["capabilities"] == {"drop": ["ALL"]}
    )
    assert not sc["allowPrivilegeEscalation"] and pod["automountServiceAccountToken"] is False
    assert c["terminationMessagePolicy"] == "FallbackToLogsOnError"
    mounts = {m["mountPath"] for m in c["volumeMounts"]}
    assert {"/artifacts", "/tmp", J.CACHE} <= mounts
    env = {e["name"]: e for e in c["env"]}
    assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "hf", "key": "token"}
    assert "TPO_JUDGE_API_KEY" not in env  # only judge/evaluate pods get the judge's key
    assert "HF_HUB_OFFLINE" not in env  # hub model: downloads allowed
    assert env["EXTRA"]["value"] == "1"
    judge = J.job(spec, "team-a", meta["name"], "judge", 1)
    jenv = {e["name"]: e for e in judge["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert jenv["TPO_JUDGE_API_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "judge-key"
    assert not any("value" in e and "secret" in str(e["value"]).lower() for e in jenv.values())


def test_prepare_carries_the_spec_snapshot_and_multinode_train_has_a_service():
    meta, spec = parse_manifest(rich())
    prep = J.job(spec, "ns", meta["name"], "prepare", 0)
    argv = prep["spec"]["template"]["spec"]["containers"][0]["command"]
    assert json.loads(argv[argv.index("--spec") + 1]) == json.loads(json.dumps(spec.dump()))
    train = J.job(spec, "ns", meta["name"], "train", 1)
    assert train["spec"]["completions"] == 2 and train["spec"]["completionMode"] == "Indexed"
    pod = train["spec"]["template"]["spec"]
    svc = J.train_service(spec, "ns", meta["name"], 1)
    assert pod["subdomain"] == svc["metadata"]["name"] and svc["spec"]["clusterIP"] == "None"
    assert "--nnodes 2" in pod["containers"][0]["command"][-1]


def test_claim_and_retained_pvc():
    m = manifest()
    m["spec"]["storage"] = {"claimName": "shared", "mountPath": "/data"}
    _meta, spec = parse_manifest(m)
    assert J.pvc(spec, "ns", "demo") is None
    vols = J.job(spec, "ns", "demo", "train", 1)["spec"]["template"]["spec"]["volumes"]
    assert vols[0]["persistentVolumeClaim"]["claimName"] == "shared"
    m["spec"]["storage"] = {"template": {"size": "10Gi"}, "retain": True}
    _, spec = parse_manifest(m)
    assert J.pvc(spec, "ns", "demo")["metadata"]["name"] == "demo-artifacts"
    assert not J.pvc_owned(spec)


def run_render(path, *args):
    return subprocess.run(
        [sys.executable, "-m", "tpo.cli", "render", str(path), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_render_prints_the_objects_of_an_iteration(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(rich()))
    out = run_render(path, "--iteration", "1", "--namespace", "team-b")
    assert out.returncode == 0, out.stderr
    docs = list(yaml.safe_load_all(out.stdout))
    names = [(d["kind"], d["metadata"]["name"].split("-", 1)[-1]) for d in docs]
    assert names == [
        ("PersistentVolumeClaim", "artifacts"),
        ("Job", "generate-1"),
        ("Job", "judge-1"),
        ("Service", "train-1"),
        ("Job", "train-1"),
        ("Job", "evaluate-1"),
    ]
    assert all(d["metadata"]["namespace"] == "team-b" for d in docs)


def test_render_rejects_an_invalid_manifest_with_field_messages(tmp_path):
    bad = manifest()
    bad["spec"]["iterations"] = 0
    bad["spec"]["pools"] = {"train": {"gpus": "many"}}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    out = run_render(path)
    assert out.returncode == EXIT_BAD_INPUT
    assert "spec.iterations" in out.stderr and "spec.pools.train.gpus" in out.stderr
    assert out.stdout == ""


def test_pods_expose_their_metrics_and_the_spec_env_wins():
    m = manifest(name="r", iterations=1)
    m["spec"]["env"] = [{"name": "HF_HOME", "value": "/models/hf"}, {"name": "X", "value": "1"}]
    _, spec = parse_manifest(m)
    body = J.job(spec, "ns", "r", "generate", 1)
    tmpl = body["spec"]["template"]
    assert tmpl["metadata"]["annotations"] == {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(J.POD_METRICS_PORT),
    }
    c = tmpl["spec"]["containers"][0]
    assert {"name": "metrics", "containerPort": J.POD_METRICS_PORT} in c["ports"]
    names = [e["name"] for e in c["env"]]
    assert len(names) == len(set(names)), names  # no name twice
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["HF_HOME"] == "/models/hf" and env["X"] == "1"
    assert env["TPO_RUN"] == "r" and env["TPO_NAMESPACE"] == "ns"
    assert env["TPO_PHASE"] == "generate" and env["TPO_ITERATION"] == "1"
    assert env["TPO_METRICS_PORT"] == str(J.POD_METRICS_PORT)
