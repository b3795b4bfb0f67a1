"""Every pod the operator or the chart creates meets the "restricted" Pod Security Standard.

The rules of https://kubernetes.io/docs/concepts/security/pod-security-standards/ (baseline and
restricted, v1.32) are checked field by field on the rendered objects: every Job of every phase
(single pod, sharded Indexed Jobs, torchrun on one node, multi-node train with its Service, Kueue
queues, secrets by reference, the examples' manifests) and the chart's operator Deployment in
each values variant the chart tests render (a real helm binary). A deliberately unsafe pod
proves the checker reports each rule.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from harness import manifest
from test_chart import HELM, VARIANTS, _tool, render
from tpo_operator import jobs as J
from tpo_operator.reconcile import steps

from tpo.spec import parse_manifest

ROOT = Path(__file__).resolve().parents[2]

ALLOWED_VOLUMES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}
SAFE_SYSCTLS = {
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
}
SELINUX_TYPES = {"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}


def violations(pod: dict[str, Any], annotations: dict[str, str] | None = None) -> list[str]:
    """Every baseline and restricted rule this pod spec breaks, as 'field: why'."""
    out: list[str] = []
    psc = pod.get("securityContext") or {}
    containers = [
        (f"{kind}[{c.get('name')}]", c)
        for kind in ("containers", "initContainers", "ephemeralContainers")
        for c in pod.get(kind) or []
    ]
    # baseline: host namespaces, host process, privileged, host ports, hostPath
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(key):
            out.append(f"spec.{key}: must be unset or false")
    if (psc.get("windowsOptions") or {}).get("hostProcess"):
        out.append("spec.securityContext.windowsOptions.hostProcess: must not be true")
    for s in psc.get("sysctls") or []:
        if s.get("name") not in SAFE_SYSCTLS:
            out.append(f"spec.securityContext.sysctls: {s.get('name')} is not a safe sysctl")
    # volumes: restricted allows only these types (baseline forbids hostPath)
    for v in pod.get("volumes") or []:
        sources = [k for k in v if k != "name"]
        if len(sources) != 1 or sources[0] not in ALLOWED_VOLUMES:
            out.append(f"spec.volumes[{v.get('name')}]: type {sources} not allowed")
    # pod-level seccomp / runAsNonRoot / runAsUser / SELinux / AppArmor
    pod_seccomp = (psc.get("seccompProfile") or {}).get("type")
    if pod_seccomp is not None and pod_seccomp not in ("RuntimeDefault", "Localhost"):
        out.append(f"spec.securityContext.seccompProfile.type: {pod_seccomp}")
    if psc.get("runAsUser") == 0:
        out.append("spec.securityContext.runAsUser: 0 (root)")
    out += _selinux("spec.securityContext", psc)
    out += _apparmor("spec.securityContext", psc)
    for key, value in (annotations or {}).items():
        if key.startswith("container.apparmor.security.beta.kubernetes.io/") and not (
            value == "runtime/default" or value.startswith("localhost/")
        ):
            out.append(f"metadata.annotations[{key}]: {value}")
    for where, c in containers:
        sc = c.get("securityContext") or {}
        if sc.get("privileged"):
            out.append(f"{where}.securityContext.privileged: must be false")
        if (sc.get("windowsOptions") or {}).get("hostProcess"):
            out.append(f"{where}.securityContext.windowsOptions.hostProcess: must not be true")
        if sc.get("procMount") not in (None, "Default"):
            out.append(f"{where}.securityContext.procMount: {sc['procMount']}")
        for p in c.get("ports") or []:
            if p.get("hostPort"):
                out.append(f"{where}.ports[{p.get('name')}].hostPort: {p['hostPort']}")
        if sc.get("allowPrivilegeEscalation") is not False:
            out.append(f"{where}.securityContext.allowPrivilegeEscalation: must be false")
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            out.append(f"{where}.securityContext.capabilities.drop: must contain ALL")
        extra = set(caps.get("add") or []) - {"NET_BIND_SERVICE"}
        if extra:
            out.append(f"{where}.securityContext.capabilities.add: {sorted(extra)}")
        non_root = sc.get("runAsNonRoot", psc.get("runAsNonRoot"))
        if non_root is not True:
            out.append(f"{where}.securityContext.runAsNonRoot: must be true (pod or container)")
        if sc.get("runAsUser") == 0:
            out.append(f"{where}.securityContext.runAsUser: 0 (root)")
        seccomp = (sc.get("seccompProfile") or {}).get("type", pod_seccomp)
        if seccomp not in ("RuntimeDefault", "Localhost"):
            out.append(f"{where}.securityContext.seccompProfile.type: {seccomp}")
        out += _selinux(f"{where}.securityContext", sc)
        out += _apparmor(f"{where}.securityContext", sc)
    return out


def _selinux(where: str, sc: dict[str, Any]) -> list[str]:
    opts = sc.get("seLinuxOptions") or {}
    out = []
    if opts.get("type", "") not in SELINUX_TYPES:
        out.append(f"{where}.seLinuxOptions.type: {opts['type']}")
    for key in ("user", "role"):
        if opts.get(key):
            out.append(f"{where}.seLinuxOptions.{key}: must be unset")
    return out


def _apparmor(where: str, sc: dict[str, Any]) -> list[str]:
    kind = (sc.get("appArmorProfile") or {}).get("type")
    if kind not in (None, "RuntimeDefault", "Localhost"):
        return [f"{where}.appArmorProfile.type: {kind}"]
    return []


def pod_of(obj: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    tpl = obj["spec"]["template"]
    return tpl["spec"], (tpl.get("metadata") or {}).get("annotations") or {}


# --------------------------------------------------------------------------- operator Jobs

SECRETS = {
    "model": {"hubId": "org/seed", "tokenSecretRef": {"name": "hf", "key": "token"}},
    "judge": {
        "type": "endpoint",
        "endpoint": {
            "url": "https://judge.example/v1",
            "model": "judge",
            "apiKeySecretRef": {"name": "judge", "key": "api-key"},
        },
    },
}
SPECS: dict[str, dict[str, Any]] = {
    "default": manifest(iterations=1),
    "sharded": manifest(
        iterations=1,
        generation={"shards": 4, "tensorParallel": 2},
        judge={"type": "programmatic", "programmatic": {"function": "m:f"}, "shards": 3},
    ),
    "torchrun-one-node": manifest(iterations=1, training={"gpusPerNode": 8}),
    "multi-node": manifest(
        iterations=1, training={"nodes": 4, "gpusPerNode": 8, "deepspeed": {"zeroStage": 3}}
    ),
    "queued-pools": manifest(
        iterations=1,
        pools={
            "train": {
                "gpus": 8,
                "queueName": "q",
                "priorityClassName": "train",
                "tolerations": [{"key": "gpu", "operator": "Exists"}],
                "affinity": {"nodeAffinity": {}},
            }
        },
        images={"pullSecrets": ["regcred"]},
    ),
    "secrets": manifest(iterations=1, **SECRETS),
    "user-env": manifest(iterations=1, env=[{"name": "NCCL_DEBUG", "value": "INFO"}]),
}
for example in ("tporun.yaml", "tiny-cpu.yaml"):
    SPECS[f"examples/{example}"] = yaml.safe_load((ROOT / "examples" / example).read_text())


def all_jobs(doc: dict[str, Any]) -> list[dict[str, Any]]:
    meta, spec = parse_manifest(copy.deepcopy(doc))
    out = []
    for phase, t in steps(spec.iterations):
        out.append(J.job(spec, "ns", meta["name"], phase, t))
        if J.multinode(spec, phase):
            out.append(J.job(spec, "ns", meta["name"], phase, t, attempt=2))  # a group restart
    return out


@pytest.mark.parametrize("variant", sorted(SPECS))
def test_every_job_the_operator_renders_is_restricted(variant):
    jobs = all_jobs(SPECS[variant])
    assert len(jobs) >= 6
    for job in jobs:
        pod, annotations = pod_of(job)
        assert violations(pod, annotations) == [], job["metadata"]["name"]
        # the operator's own extras beyond the standard: no service account token, RO root
        assert pod["automountServiceAccountToken"] is False
        assert all(c["securityContext"]["readOnlyRootFilesystem"] for c in pod["containers"])


# --------------------------------------------------------------------------- chart


@pytest.fixture(scope="module")
def chart_docs(tmp_path_factory) -> dict[str, list[dict[str, Any]]]:
    helm = _tool("get-helm.sh", HELM)
    return {
        name: render(helm, tmp_path_factory.mktemp(f"pss-{name}"), values)
        for name, values in VARIANTS.items()
    }


def test_the_chart_operator_deployment_is_restricted_in_every_variant(chart_docs):
    assert set(chart_docs) == set(VARIANTS)
    for name, docs in chart_docs.items():
        workloads = [d for d in docs if d["kind"] in ("Deployment", "Job", "DaemonSet", "Pod")]
        assert [d["kind"] for d in workloads].count("Deployment") == 1, name
        for obj in workloads:
            pod, annotations = pod_of(obj) if obj["kind"] != "Pod" else (obj["spec"], {})
            assert violations(pod, annotations) == [], (name, obj["metadata"]["name"])


# --------------------------------------------------------------------------- the checker


def test_the_checker_reports_each_rule_on_an_unsafe_pod():
    pod, _ = pod_of(all_jobs(SPECS["default"])[0])
    bad = copy.deepcopy(pod)
    bad.update(hostNetwork=True, hostPID=True, hostIPC=True)
    bad["securityContext"] = {
        "runAsUser": 0,
        "seccompProfile": {"type": "Unconfined"},
        "sysctls": [{"name": "kernel.msgmax", "value": "1"}],
        "seLinuxOptions": {"type": "spc_t", "user": "root"},
    }
    bad["volumes"].append({"name": "host", "hostPath": {"path": "/"}})
    c = bad["containers"][0]
    c["securityContext"] = {
        "privileged": True,
        "capabilities": {"add": ["SYS_ADMIN"]},
        "procMount": "Unmasked",
        "appArmorProfile": {"type": "Unconfined"},
    }
    c["ports"].append({"name": "h", "containerPort": 80, "hostPort": 80})
    bad["initContainers"] = [{"name": "init", "securityContext": {"runAsNonRoot": False}}]
    found = "\n".join(violations(bad, {"container.apparmor.security.beta.kubernetes.io/w": "x"}))
    for rule in (
        "spec.hostNetwork",
        "spec.hostPID",
        "spec.hostIPC",
        "runAsUser: 0",
        "spec.securityContext.seccompProfile.type: Unconfined",
        "kernel.msgmax",
        "seLinuxOptions.type: spc_t",
        "seLinuxOptions.user",
        "spec.volumes[host]",
        "privileged",
        "capabilities.add: ['SYS_ADMIN']",
        "capabilities.drop",
        "procMount",
        "appArmorProfile.type",
        "hostPort",
        "allowPrivilegeEscalation",
        "initContainers[init].securityContext.runAsNonRoot",
        "metadata.annotations",
    ):
        assert rule in found, f"{rule} not reported:\n{found}"
