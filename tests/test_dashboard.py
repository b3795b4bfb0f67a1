"""The Grafana dashboard is well formed, queries only exported metrics, all of them documented.

The helpers here (`dashboard_queries`, `substitute`) are also used by test_prometheus_e2e.py,
which evaluates the same queries against a real Prometheus.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import promql_parser
import pytest
from tpo_operator import metrics

from tpo import podmetrics

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "charts" / "tpo-operator" / "dashboards" / "tpo-operator.json"
DOCS = ROOT / "docs" / "metrics.md"
# Series Prometheus itself makes for every target; the dashboard may use them.
PROMETHEUS_BUILTIN = {"up"}
GRAFANA_BUILTIN = {"__rate_interval": "1m", "__range": "1h", "__interval": "15s"}
DEFAULTS = {"namespace": ".*", "run": ".*", "job": ".*"}


def load() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def data_panels(dash: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel that queries data (rows only group; nested row panels included)."""
    out = []
    for p in dash["panels"]:
        if p["type"] == "row":
            out += p.get("panels", [])
        else:
            out.append(p)
    return out


def dashboard_queries(dash: dict[str, Any] | None = None) -> list[tuple[str, str]]:
    """(panel title / refId, PromQL expression) of every target."""
    dash = dash or load()
    return [
        (f"{p['title']} / {t['refId']}", t["expr"]) for p in data_panels(dash) for t in p["targets"]
    ]


def substitute(expr: str, values: dict[str, str] | None = None) -> str:
    """Replace Grafana template variables ($x, ${x}, [[x]]) the way Grafana would."""
    vals = {**GRAFANA_BUILTIN, **DEFAULTS, **(values or {})}

    def repl(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2) or m.group(3)
        if name not in vals:
            raise KeyError(f"undefined template variable ${name} in {expr!r}")
        return vals[name]

    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]", repl, expr)


def metric_names(expr: str) -> set[str]:
    names: set[str] = set()

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector) and node.name:
            names.add(node.name)

    promql_parser.walk(promql_parser.parse(expr), visit)
    return names


def exported() -> dict[str, set[str]]:
    """Documented name -> names that appear in the exposition, for both registries."""
    out: dict[str, set[str]] = {}
    for registry in (metrics.REGISTRY, podmetrics.REGISTRY):
        for fam in registry.collect():
            if fam.type == "counter":
                out[fam.name + "_total"] = {fam.name + "_total"}
            elif fam.type == "histogram":
                out[fam.name] = {fam.name + s for s in ("_bucket", "_sum", "_count")}
            else:
                out[fam.name] = {fam.name}
    return out


def documented_names() -> set[str]:
    return set(re.findall(r"`([a-z_][a-z0-9_]*)`", DOCS.read_text()))


# --------------------------------------------------------------------------- structure


def test_dashboard_structure():
    dash = load()
    assert dash["title"] and dash["uid"] == "tpo-operator"
    assert isinstance(dash["schemaVersion"], int) and dash["schemaVersion"] >= 36
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for p in dash["panels"]:
        g = p["gridPos"]
        assert {"h", "w", "x", "y"} <= g.keys(), p["title"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24 and g["h"] > 0, p["title"]
    # no two panels overlap on the 24-column grid
    cells: dict[tuple[int, int], str] = {}
    for p in dash["panels"]:
        g = p["gridPos"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = p["title"]


def test_template_variables():
    variables = {v["name"]: v for v in load()["templating"]["list"]}
    ds = variables["datasource"]
    assert ds["type"] == "datasource" and ds["query"] == "prometheus"
    assert "label_values(tpo_run_info" in variables["run"]["query"]["query"]
    assert "$namespace" in variables["run"]["query"]["query"]
    assert "label_values(tpo_run_info, namespace)" in variables["namespace"]["query"]["query"]
    for name in ("namespace", "run"):
        v = variables[name]
        assert v["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        inner = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", v["query"]["query"])
        assert inner, v["query"]
        promql_parser.parse(substitute(inner.group(1)))


def test_every_panel_has_datasource_and_targets():
    panels = data_panels(load())
    assert len(panels) >= 15
    for p in panels:
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert p["targets"], f"{p['title']} has no targets"
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs)), p["title"]
        for t in p["targets"]:
            assert t["datasource"]["uid"] == "${datasource}", p["title"]
            assert t["expr"].strip(), p["title"]


def test_every_expression_parses_after_substitution():
    queries = dashboard_queries()
    for where, expr in queries:
        try:
            promql_parser.parse(substitute(expr))
        except ValueError as e:
            pytest.fail(f"{where}: {expr!r} does not parse: {e}")
        # with a concrete run selected too
        promql_parser.parse(substitute(expr, {"namespace": "default", "run": "demo"}))


def test_a_broken_expression_is_caught():
    """The parser check above can fail: a typo is a ValueError, an unknown variable a KeyError."""
    with pytest.raises(ValueError):
        promql_parser.parse(substitute('sum(tpo_run_info{run=~"$run"}'))
    with pytest.raises(KeyError, match="undefined template variable"):
        substitute("tpo_run_info{run=~'$nope'}")


# --------------------------------------------------------------------------- names


def test_dashboard_uses_only_exported_metrics():
    names = set().union(*exported().values()) | PROMETHEUS_BUILTIN
    used: set[str] = set()
    for where, expr in dashboard_queries():
        for name in metric_names(substitute(expr)):
            assert name in names, f"{where}: {name} is not exported by metrics.py or podmetrics.py"
            used.add(name)
    # the panels the brief asks for are there
    for needed in (
        "tpo_iteration_win_rate",
        "tpo_iteration_win_rate_low",
        "tpo_iteration_win_rate_high",
        "tpo_iteration_thought_tokens",
        "tpo_iteration_response_tokens",
        "tpo_run_phase",
        "tpo_iteration_phase_seconds",
        "tpo_phase_duration_seconds_bucket",
        "tpo_iteration_pairs",
        "tpo_iteration_parse_failure_ratio",
        "tpo_iteration_chosen_tokens",
        "tpo_iteration_rejected_tokens",
        "tpo_iteration_length_rho",
        "tpo_train_loss",
        "tpo_train_reward_margin",
        "tpo_job_outcomes_total",
        "tpo_reconcile_duration_seconds_bucket",
        "tpo_reconcile_errors_total",
        "up",
        "tpo_category_win_rate",
        "tpo_category_win_rate_low",
        "tpo_category_win_rate_high",
        "tpo_compare_win_rate",
        "tpo_compare_win_rate_low",
        "tpo_compare_win_rate_high",
        "tpo_compare_category_win_rate",
    ):
        assert needed in used, f"the dashboard has no panel for {needed}"


def test_every_exported_metric_is_documented():
    docs = documented_names()
    missing = sorted(name for name in exported() if name not in docs)
    assert not missing, f"exported but not in docs/metrics.md: {missing}"


def test_docs_name_no_metric_that_does_not_exist():
    names = set(exported()) | PROMETHEUS_BUILTIN
    stale = sorted(n for n in documented_names() if n.startswith("tpo_") and n not in names)
    assert not stale, f"docs/metrics.md documents metrics nobody exports: {stale}"


def test_metric_names_follow_conventions():
    for name, series in exported().items():
        assert re.fullmatch(r"[a-z_][a-z0-9_]*", name), name
        if name.startswith(("process_", "python_")):
            continue
        assert name.startswith("tpo_"), name
        assert not name.endswith("_total") or series == {name}, name
        assert "_percent" not in name and "_ms" not in name, f"{name}: use ratios and seconds"
