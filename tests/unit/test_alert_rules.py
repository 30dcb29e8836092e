"""The alert rules, their promtool tests, the runbooks and the Grafana dashboard: valid, tested,
documented, and written against series that fmstack and Ray Serve really export."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
FILES = ROOT / "helm" / "fmstack" / "files"
ALERTS = FILES / "alerts.yaml"
ALERT_TESTS = FILES / "alerts.test.yaml"
DASHBOARD = FILES / "dashboard.json"
RUNBOOKS = ROOT / "docs" / "runbooks.md"
RUNBOOK_URL = "https://github.com/fmstack/fmstack/blob/main/docs/runbooks.md#"

SERIES = re.compile(r"\b(?:fmstack|ray)_[a-z0-9_]+\b")
RECORDED = re.compile(r"\bfmstack:[a-z0-9_:]+")
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$run": ".*", "$variant": ".*", "$route": ".*"}


def _rules() -> list[dict[str, Any]]:
    return [
        rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]
    ]


def _alerts() -> dict[str, dict[str, Any]]:
    return {rule["alert"]: rule for rule in _rules() if "alert" in rule}


def _dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def _dashboard_exprs() -> list[str]:
    exprs = [t["expr"] for p in _dashboard()["panels"] for t in p.get("targets", [])]
    for variable in _dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            exprs.append(variable["query"]["query"])
    return exprs


def _anchor(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    return re.sub(r"[^a-z0-9 _-]", "", heading.strip().lower()).replace(" ", "-")


def _runbook_sections() -> dict[str, str]:
    """Anchor -> the section's text, up to the next heading of any level."""
    parts = re.split(r"^#+ (.+)$", RUNBOOKS.read_text(), flags=re.MULTILINE)
    return {_anchor(title): body for title, body in zip(parts[1::2], parts[2::2], strict=True)}


class _Recorder:
    """Stands in for ray.util.metrics: records each metric's name and kind."""

    created: list[tuple[str, str]] = []

    def __init__(self, name: str, *args: Any, **kwargs: Any) -> None:
        self.created.append((name, type(self).__name__))

    def set_default_tags(self, tags: dict[str, str]) -> None:
        pass


def _exported_series(monkeypatch: pytest.MonkeyPatch) -> set[str]:
    """The series names fmstack's metric classes create, histograms with their suffixes."""
    fake = types.ModuleType("ray.util.metrics")
    created: list[tuple[str, str]] = []
    for kind in ("Counter", "Gauge", "Histogram"):
        setattr(fake, kind, type(kind, (_Recorder,), {"created": created}))
    monkeypatch.setitem(sys.modules, "ray.util.metrics", fake)
    from serving.metrics import IngressMetrics, ModelMetrics
    from training.metrics import TrainingMetrics

    TrainingMetrics("run", "causal_lm")
    ModelMetrics("full")
    IngressMetrics()
    names = set()
    for name, kind in created:
        suffixes = ("_bucket", "_sum", "_count") if kind == "Histogram" else ("",)
        names |= {name + suffix for suffix in suffixes}
    return names


def _ray_serve_series() -> set[str]:
    """`ray_serve_*` series the installed Ray Serve defines (read from its source)."""
    spec = importlib.util.find_spec("ray")
    assert spec is not None and spec.submodule_search_locations
    source = Path(spec.submodule_search_locations[0]) / "serve"
    pattern = re.compile(r"metrics\.(?:Gauge|Counter|Histogram)\(\s*\"(serve_\w+)\"")
    return {
        f"ray_{name}"
        for path in source.rglob("*.py")
        for name in pattern.findall(path.read_text(encoding="utf-8"))
    }


# ---------------------------------------------------------------- promtool


def test_promtool_accepts_the_rules(promtool):
    run = subprocess.run(
        [promtool, "check", "rules", str(ALERTS)], capture_output=True, text=True, check=False
    )
    assert run.returncode == 0, run.stdout + run.stderr


def test_promtool_unit_tests_pass(promtool):
    run = subprocess.run(
        [promtool, "test", "rules", ALERT_TESTS.name],
        cwd=FILES,
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr


def test_every_alert_fires_in_a_test_case():
    firing = {
        case["alertname"]
        for test in yaml.safe_load(ALERT_TESTS.read_text())["tests"]
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    assert set(_alerts()) - firing == set()


def _series_labels(series: str) -> dict[str, str]:
    return dict(re.findall(r'(\w+)="([^"]*)"', series))


def test_every_alert_stays_silent_on_healthy_series():
    """promtool compares the expected alerts exactly, so a series in a firing case's group that
    the case does not list was proven silent; or a case expects no alert at all."""
    silent: set[str] = set()
    for test in yaml.safe_load(ALERT_TESTS.read_text())["tests"]:
        inputs = [_series_labels(s["series"]) for s in test.get("input_series", [])]
        for case in test.get("alert_rule_test", []):
            expected = [a["exp_labels"] for a in case.get("exp_alerts") or []]
            if not expected:
                silent.add(case["alertname"])
                continue
            keys = set.intersection(*(set(e) for e in expected)) - {"severity", "component"}
            fired = {tuple(str(e[k]) for k in sorted(keys)) for e in expected}
            subjects = {tuple(i.get(k, "") for k in sorted(keys)) for i in inputs}
            if subjects - fired:
                silent.add(case["alertname"])
    assert set(_alerts()) - silent == set()


def test_the_rules_embed_in_a_prometheus_rule(validate_manifest):
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    validate_manifest(
        {
            "apiVersion": "monitoring.coreos.com/v1",
            "kind": "PrometheusRule",
            "metadata": {"name": "fmstack", "labels": {"app.kubernetes.io/name": "fmstack"}},
            "spec": {"groups": groups},
        }
    )


# ---------------------------------------------------------------- alerts and runbooks


def test_the_issue_s_alerts_are_all_there():
    assert set(_alerts()) == {
        "FmstackTrainingStalled",
        "FmstackTrainingLossNaN",
        "FmstackTrainingLossSpike",
        "FmstackCheckpointTooOld",
        "FmstackServingErrorRatio",
        "FmstackServingLatencyP99",
        "FmstackReplicasAtMax",
        "FmstackCascadeEscalationHigh",
        "FmstackShadowDisagreementHigh",
        "FmstackModelLoadFailures",
    }


@pytest.mark.parametrize("name", sorted(_alerts()))
def test_alert_has_severity_wait_and_annotations_naming_the_series(name):
    rule = _alerts()[name]
    assert rule["labels"]["severity"] in {"critical", "warning", "info"}
    assert re.fullmatch(r"\d+[smh]", rule["for"]), rule["for"]
    annotations = rule["annotations"]
    assert {"summary", "description", "runbook_url"} <= set(annotations)
    assert "{{ $labels." in annotations["summary"] + annotations["description"]


@pytest.mark.parametrize("name", sorted(_alerts()))
def test_alert_links_to_its_runbook_section(name):
    url = _alerts()[name]["annotations"]["runbook_url"]
    assert url == RUNBOOK_URL + name.lower()
    sections = _runbook_sections()
    assert name.lower() in sections, f"docs/runbooks.md has no section '### {name}'"
    body = sections[name.lower()]
    for part in ("**Meaning.**", "**Likely causes.**", "**How to check.**", "**How to fix.**"):
        assert part in body, f"runbook of {name} lacks {part}"
    assert "**Threshold.**" in body and "```promql" in body


# ---------------------------------------------------------------- series names


def test_rules_and_dashboard_use_only_series_that_exist(monkeypatch):
    known = _exported_series(monkeypatch) | _ray_serve_series()
    assert "ray_serve_autoscaling_desired_replicas" in known
    assert "ray_serve_autoscaling_target_replicas" in known
    exprs = [rule["expr"] for rule in _rules()] + _dashboard_exprs()
    used = {name for expr in exprs for name in SERIES.findall(expr)}
    assert used - known == set()
    # The alerts watch every training and serving series family they promise to.
    assert {
        "fmstack_train_step",
        "fmstack_train_loss",
        "fmstack_train_last_checkpoint_timestamp_seconds",
        "fmstack_serve_requests_total",
        "fmstack_serve_request_seconds_bucket",
        "fmstack_serve_cascade_escalations_total",
        "fmstack_serve_shadow_comparisons_total",
        "fmstack_serve_model_load_failures_total",
    } <= used


def test_recorded_series_used_anywhere_are_defined():
    defined = {rule["record"] for rule in _rules() if "record" in rule}
    exprs = [rule["expr"] for rule in _rules()] + _dashboard_exprs()
    used = {name for expr in exprs for name in RECORDED.findall(expr)}
    assert used - defined == set()


# ---------------------------------------------------------------- dashboard


def test_dashboard_panels_have_unique_ids_and_queries():
    panels = _dashboard()["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    for panel in panels:
        if panel["type"] == "row":
            continue
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        assert all(t["expr"].strip() for t in panel["targets"]), panel["title"]
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]


def test_dashboard_has_datasource_and_filter_variables():
    dashboard = _dashboard()
    assert dashboard["schemaVersion"] >= 39
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert {"run", "variant", "route"} <= set(variables)


def test_dashboard_queries_parse(promtool, tmp_path):
    """promtool parses every panel query, with Grafana's variables filled in."""
    rules = []
    for i, expr in enumerate(_dashboard_exprs()):
        if expr.startswith("label_values("):
            continue  # Grafana's own function, not PromQL
        for variable, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(variable, value)
        rules.append({"record": f"dashboard:query{i}", "expr": expr})
    path = tmp_path / "dashboard-queries.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    run = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, check=False
    )
    assert run.returncode == 0, run.stdout + run.stderr


def test_dashboard_shows_training_and_serving_with_full_and_distilled_side_by_side():
    panels = [p for p in _dashboard()["panels"] if p["type"] != "row"]
    titles = " ".join(p["title"].lower() for p in panels)
    for wanted in (
        "training loss",
        "validation loss",
        "perplexity",
        "accuracy",
        "tokens per second",
        "flop/s",
        "step time",
        "learning rate",
        "checkpoint age",
        "requests per second",
        "p99",
        "error ratio",
        "batch size",
        "inference time",
        "cascade",
        "shadow",
        "model version",
        "replicas",
    ):
        assert wanted in titles, f"no {wanted} panel"

    def mentions(panel: dict[str, Any], variant: str) -> bool:
        return any(f'variant="{variant}"' in t["expr"] for t in panel["targets"])

    rows = {}
    for panel in panels:
        for variant in ("full", "distilled"):
            if mentions(panel, variant):
                rows.setdefault(panel["gridPos"]["y"], set()).add(variant)
    assert {"full", "distilled"} in rows.values(), "no row with full and distilled side by side"
