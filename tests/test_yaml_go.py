"""Every manifest we ship or print reads the same to Go's YAML as to PyYAML.

kubectl and Helm parse YAML with sigs.k8s.io/yaml (Go, YAML 1.1 rules): a bare `n` is the
boolean false there, key or value, while PyYAML, which writes and tests our files, reads the
string "n". A real kube-apiserver refused the CRD for that (`cannot unmarshal bool into Go
struct field JSONSchemaProps...`). PyYAML round trips cannot see it, so this test reads each
file with the real Go parser: a throwaway chart whose template runs Helm's `fromYaml` (which is
sigs.k8s.io/yaml.Unmarshal) and `toJson` over every document, rendered by the real helm binary.
That JSON is compared with PyYAML's reading, node by node, key names and value types included.
kubectl itself (`kubectl label --local`, no cluster needed) reads the CRD copies a second time,
since that is the command that failed.

Documents are split as Kubernetes' YAML reader splits them (a line starting `---`), which is
what kubectl and Helm feed the parser one by one.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import random
import shutil
import subprocess
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tpo import cli, yamlsafe
from tpo import crd as C

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "tpo-operator"
HELM = ROOT / ".tools" / "bin" / "helm"
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))

# (release, namespace, values) exercising every template, with names, labels and selectors
# that are booleans, numbers or nulls to Go if a template prints them unquoted: `no` and `y` are
# valid namespace and release names.
CHART_RUNS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "default": ("tpo", "tpo-system", {}),
    "everything": (
        "y",
        "no",
        {
            "watchNamespaces": ["off", "n", "1e3"],
            "imagePullSecrets": ["n"],
            "serviceAccount": {"name": "on"},
            "serviceMonitor": {"enabled": True, "labels": {"release": "on", "y": "1e3"}},
            "dashboards": {"enabled": True, "namespace": "yes", "labels": {"grafana": "yes"}},
            "operator": {
                "verbose": True,
                "priorityClassName": "n",
                "podLabels": {"n": "no", "team": "08"},
                "podAnnotations": {"off": "0o17"},
                "nodeSelector": {"pool": "Y", "zone": "null"},
            },
            "defaults": {
                "storageClassName": "off",
                "pools": {"generate": {"nodeSelector": {"gpu": "on"}, "queueName": "n"}},
            },
        },
    ),
    "cluster-wide": ("n", "on", {"watchAllNamespaces": True, "serviceMonitor": {"enabled": True}}),
}

# --------------------------------------------------------------------------- the two readers


def split_documents(text: str) -> list[str]:
    """Documents as k8s.io/apimachinery's YAMLReader cuts them: at lines starting `---` that
    hold nothing else but a comment (kubectl and Helm's CRD installer read files this way)."""
    docs, cur = [], []
    for line in text.splitlines(keepends=True):
        if line.startswith("---"):
            rest = line[3:].strip()
            if rest and not rest.startswith("#"):
                raise ValueError(f"content after a document separator: {line!r}")
            docs.append("".join(cur))
            cur = []
        else:
            cur.append(line)
    docs.append("".join(cur))
    return docs


def helm() -> Path:
    """The pinned helm (scripts/get-helm.sh is idempotent); a missing one fails, never skips."""
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "get-helm.sh")], capture_output=True)
    if proc.returncode != 0 or not HELM.exists():
        pytest.fail(f"{HELM} missing; run `bash scripts/get-helm.sh`:\n{proc.stderr[-2000:]!r}")
    return HELM


_READER_TEMPLATE = """\
{{- $out := dict }}
{{- range $path, $_ := .Files.Glob "docs/*" }}
{{- $_ := set $out (base $path) ($.Files.Get $path | fromYaml) }}
{{- end }}
{{ toJson $out }}
"""


def go_read(texts: dict[str, str], work: Path) -> dict[str, list[Any]]:
    """Each text's documents as Go's sigs.k8s.io/yaml reads them (JSON values), one helm run.

    `fromYaml` answers a map with the single key "Error" when the Go parser refuses a document
    (e.g. `.inf`, which JSON cannot hold): that becomes a test failure naming the document.
    """
    chart = work / "go-yaml-reader"
    shutil.rmtree(chart, ignore_errors=True)
    (chart / "templates").mkdir(parents=True)
    (chart / "docs").mkdir()
    (chart / "Chart.yaml").write_text("apiVersion: v2\nname: go-yaml-reader\nversion: 0.1.0\n")
    (chart / "templates" / "read.yaml").write_text(_READER_TEMPLATE)
    names: dict[str, list[str]] = {}
    for n, (name, text) in enumerate(texts.items()):
        names[name] = []
        for i, doc in enumerate(split_documents(text)):
            file = f"{n:03d}-{i:04d}.yaml"
            (chart / "docs" / file).write_text(doc)
            names[name].append(file)
    proc = subprocess.run(
        [str(helm()), "template", "r", str(chart), "--show-only", "templates/read.yaml"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    body = "\n".join(ln for ln in proc.stdout.splitlines() if ln.startswith("{"))
    parsed = json.loads(body)
    out: dict[str, list[Any]] = {}
    for name, files in names.items():
        out[name] = [parsed[f] for f in files]
        for f, doc in zip(files, out[name], strict=True):
            if isinstance(doc, dict) and set(doc) == {"Error"}:
                pytest.fail(f"{name}: Go's YAML refuses document {f}: {doc['Error']}")
    return out


def py_read(text: str) -> list[Any]:
    """PyYAML's reading of the same documents, cut the same way."""
    return [yaml.safe_load(doc) for doc in split_documents(text)]


# --------------------------------------------------------------------------- the comparison


def _kind(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int | float):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "list"
    if isinstance(v, dict):
        return "map"
    return type(v).__name__  # date, datetime, bytes: no JSON value, Go reads a string


def differences(go: Any, py: Any, path: str = "$") -> Iterator[str]:
    """Where Go's JSON and PyYAML's value differ in a key, a type or a value."""
    kg, kp = _kind(go), _kind(py)
    if kg != kp:
        yield f"{path}: Go reads {kg} {go!r}, PyYAML {kp} {py!r}"
        return
    if kp == "map":
        for k in py:
            if not isinstance(k, str):
                yield f"{path}: key {k!r} is a {_kind(k)} to PyYAML, not a string"
        pkeys = {k for k in py if isinstance(k, str)}
        for k in sorted(pkeys - set(go)):
            yield f"{path}: key {k!r} of PyYAML is missing in Go's reading"
        for k in sorted(set(go) - pkeys):
            yield f"{path}: key {k!r} of Go's reading is not PyYAML's"
        for k in sorted(pkeys & set(go)):
            yield from differences(go[k], py[k], f"{path}.{k}")
    elif kp == "list":
        if len(go) != len(py):
            yield f"{path}: Go reads {len(go)} items, PyYAML {len(py)}"
        for i, (g, p) in enumerate(zip(go, py, strict=False)):
            yield from differences(g, p, f"{path}[{i}]")
    elif kp == "number":
        if not math.isclose(float(go), float(py), rel_tol=1e-15):  # Go reads float64
            yield f"{path}: Go reads {go!r}, PyYAML {py!r}"
    elif go != py:
        yield f"{path}: Go reads {go!r}, PyYAML {py!r}"


def disagreements(go_docs: list[Any], text: str) -> list[str]:
    py_docs = py_read(text)
    # Empty documents (a comment header before the first `---`) are skipped by kubectl and
    # Helm; Go's fromYaml answers {} for them, PyYAML None.
    pairs = [(g, p) for g, p in zip(go_docs, py_docs, strict=True) if not (g == {} and p is None)]
    assert [p for _, p in pairs] == [d for d in yaml.safe_load_all(text) if d is not None], (
        "the document split differs from PyYAML's"
    )
    return [d for i, (g, p) in enumerate(pairs) for d in differences(g, p, f"doc{i}")]


# --------------------------------------------------------------------------- the manifests


def _cli(*argv: str) -> str:
    """What `tpo ARGV` prints (the CLI's own entry point, in this process)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = cli.main(list(argv))
    assert rc == 0, argv
    return out.getvalue()


def _helm_template(release: str, namespace: str, values: dict[str, Any], work: Path) -> str:
    work.mkdir(parents=True, exist_ok=True)
    vfile = work / "values.yaml"
    vfile.write_text(yamlsafe.dump(values))
    cmd = [str(helm()), "template", release, str(CHART), "--namespace", namespace]
    proc = subprocess.run(
        [*cmd, "--include-crds", "-f", str(vfile)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def shipped() -> dict[str, Path]:
    files = [
        *sorted((ROOT / "crds").glob("*.yaml")),
        *sorted((ROOT / "charts").glob("**/crds/**/*.yaml")),
        *sorted((ROOT / "charts").glob("*/values.yaml")),
        *EXAMPLES,
    ]
    return {str(p.relative_to(ROOT)): p for p in files}


@pytest.fixture(scope="module")
def manifests(tmp_path_factory) -> dict[str, str]:
    """Every YAML text a user applies or installs: files, `tpo crd`, `tpo render`, the chart."""
    work = tmp_path_factory.mktemp("manifests")
    texts = {name: p.read_text() for name, p in shipped().items()}
    texts["tpo crd"] = _cli("crd")
    for ex in EXAMPLES:
        for t in (0, 1):
            texts[f"tpo render {ex.name} --iteration {t}"] = _cli(
                "render", str(ex), "--iteration", str(t)
            )
    for name, (release, namespace, values) in CHART_RUNS.items():
        texts[f"helm template ({name})"] = _helm_template(release, namespace, values, work / name)
    return texts


@pytest.fixture(scope="module")
def go_docs(manifests, tmp_path_factory) -> dict[str, list[Any]]:
    return go_read(manifests, tmp_path_factory.mktemp("go"))


def test_every_manifest_is_covered(manifests, go_docs):
    """The sources are really there: both CRD copies, the chart's CRD in its output, examples."""
    assert {"crds/tporun.yaml", "charts/tpo-operator/values.yaml"} <= set(manifests)
    assert len(EXAMPLES) >= 3
    for name in CHART_RUNS:
        kinds = [d.get("kind") for d in go_docs[f"helm template ({name})"] if d]
        assert "CustomResourceDefinition" in kinds and "Deployment" in kinds, kinds


def test_go_reads_every_manifest_as_pyyaml_does(manifests, go_docs):
    problems = {n: d for n, text in manifests.items() if (d := disagreements(go_docs[n], text))}
    assert not problems, "\n".join(f"{n}:\n  " + "\n  ".join(d[:20]) for n, d in problems.items())


def _service_monitor_strings(doc: dict[str, Any]) -> list[str]:
    """ServiceMonitor has no bundled schema: its names, labels and durations must be strings."""
    meta, spec = doc["metadata"], doc["spec"]
    values = [meta["name"], meta["namespace"], *meta.get("labels", {}).values()]
    values += spec["namespaceSelector"]["matchNames"]
    values += list(spec["selector"]["matchLabels"].values())
    for ep in spec["endpoints"]:
        values += [ep["port"], ep["interval"], ep["scrapeTimeout"]]
    return [repr(v) for v in values if not isinstance(v, str)]


@pytest.mark.parametrize("run", CHART_RUNS)
def test_go_reading_of_the_chart_is_valid_kubernetes(go_docs, run):
    """Agreement is not enough: with release `y` in namespace `no`, PyYAML and Go would both
    read a bare `namespace: no` as false. What the API server gets (Go's reading) must be valid
    objects with the names, labels and namespaces given."""
    release, namespace, values = CHART_RUNS[run]
    dashboards = values.get("dashboards", {}).get("namespace")
    given = {namespace, dashboards, *values.get("watchNamespaces", [])}
    docs = [d for d in go_docs[f"helm template ({run})"] if d]
    for doc in docs:
        assert doc["metadata"].get("namespace", namespace) in given, doc["metadata"]
        if doc["kind"] == "ServiceMonitor":
            assert _service_monitor_strings(doc) == []
            continue
        kubernetes_validate.validate(
            doc, desired_version=kubernetes_validate.latest_version(), strict=True
        )
        labels = doc["metadata"].get("labels", {})
        assert labels.get("app.kubernetes.io/instance", release) == release


@pytest.mark.parametrize("example", [p.name for p in EXAMPLES])
def test_go_reading_of_tpo_render_is_valid_kubernetes(go_docs, example):
    docs = [d for d in go_docs[f"tpo render {example} --iteration 1"] if d]
    assert docs
    for doc in docs:
        kubernetes_validate.validate(
            doc, desired_version=kubernetes_validate.latest_version(), strict=True
        )


# --------------------------------------------------------------------------- the dumper


# Strings that some YAML reader takes for a bool, null or number when written plain, and near
# misses that are strings everywhere (they must stay readable, quoted or not).
def _words(text: str) -> list[str]:
    return text.split()


TRICKY = [
    *_words("y Y yes Yes YES n N no No NO on On ON off Off OFF true True TRUE false False FALSE"),
    *_words("yEs nO oN ~ null Null NULL .inf .Inf -.inf +.INF .nan .NaN = <<"),
    *_words("0 -0 +1 08 09 012 0o17 0O17 0x1f 0X1F 0b101 1_000 +_1 1_ 1__0 _1 1e3 1E3 1.5e3 1e+3"),
    *_words("1.0 1. .5 -.5 1:20 190:20:30.15 2024-01-01 2024-01-01T10:00:00Z 1.32 v1 n1 no-op"),
    "",
    " ",
    "yes please",
    "category",
]


def _random_tricky(count: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    alphabet = "0123456789_.+-:eExXoObBnNyY"
    return ["".join(rng.choices(alphabet, k=rng.randint(1, 5))) for _ in range(count)]


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    return list(dict.fromkeys(TRICKY + _random_tricky(600)))


def test_shared_dumper_output_reads_as_strings_in_go(corpus, tmp_path):
    """Each tricky string, as a key and as a value, comes back from Go as that same string."""
    doc = {
        "byValue": {f"k{i}": s for i, s in enumerate(corpus)},
        "byKey": {s: i for i, s in enumerate(corpus)},
    }
    text = yamlsafe.dump(doc)
    assert yaml.safe_load(text) == doc
    (go,) = go_read({"corpus": text}, tmp_path)["corpus"]
    assert list(differences(go, doc)) == []


def test_go_route_sees_what_plain_pyyaml_gets_wrong(corpus, tmp_path):
    """The check is not vacuous: PyYAML's own dumper writes these plain, and Go misreads them."""
    doc = {f"k{i}": s for i, s in enumerate(corpus)}
    text = yaml.safe_dump(doc)
    (go,) = go_read({"plain": text}, tmp_path)["plain"]
    wrong = {doc[d.split(":")[0].removeprefix("$.")] for d in differences(go, doc)}
    assert {"n", "y", "N", "1e3", "08", "+_1", "0o17", "-.5"} <= wrong, sorted(wrong)
    assert "category" not in wrong and "v1" not in wrong
    assert all(yamlsafe.ambiguous(s) for s in wrong), sorted(
        s for s in wrong if not yamlsafe.ambiguous(s)
    )


def test_old_crd_text_fails_the_check(tmp_path):
    """The CRD as the previous generator wrote it (`yaml.safe_dump`) is caught: its property
    `n` and `required: [category, n]` are booleans to Go; the shared dumper's is clean."""
    old = "# old generator\n" + yaml.safe_dump(C.crd(), sort_keys=False, width=100)
    new = C.crd_yaml()
    got = go_read({"old": old, "new": new}, tmp_path)
    problems = disagreements(got["old"], old)
    assert any(p.endswith("key 'n' of PyYAML is missing in Go's reading") for p in problems)
    assert any("Go reads bool False, PyYAML string 'n'" in p for p in problems), problems
    assert disagreements(got["new"], new) == []


def test_kubectl_reads_both_crd_copies_as_pyyaml_does(tmp_path):
    """`kubectl apply -f crds/tporun.yaml` is what failed; kubectl's own decoder (offline, with
    `label --local`) must read the same CRD as PyYAML, apart from the label it adds."""
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl is not on PATH"
    for path in [ROOT / "crds" / "tporun.yaml", *(ROOT / "charts").glob("**/crds/*.yaml")]:
        proc = subprocess.run(
            [kubectl, "label", "--local", "-f", str(path), "yaml-check=1", "-o", "json"],
            capture_output=True,
            text=True,
            timeout=60,
            env={"PATH": "/usr/bin:/bin", "KUBECONFIG": str(tmp_path / "none"), "HOME": "/tmp"},
        )
        assert proc.returncode == 0, proc.stderr
        go = json.loads(proc.stdout)
        labels = go["metadata"].pop("labels")
        assert labels == {"yaml-check": "1"}
        (py,) = [d for d in yaml.safe_load_all(path.read_text()) if d]
        assert list(differences(go, py)) == [], path


def test_ambiguous_is_not_everything():
    """Ordinary words, names and versions stay plain (readable files), tricky ones are quoted."""
    assert not any(yamlsafe.ambiguous(s) for s in ["category", "v1", "n1", "no-op", "tpo.dev"])
    assert yamlsafe.dump({"n": ["n", "category", 1, True, None]}) == (
        "'n':\n- 'n'\n- category\n- 1\n- true\n- null\n"
    )
    assert isinstance(yaml.safe_load(yamlsafe.dump({"d": date(2024, 1, 1)}))["d"], date)
