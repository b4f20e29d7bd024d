"""The chart's Grafana dashboard and alerts query only metrics that really exist.

Every metric name in dashboards/manymodels.json and in the rendered PrometheusRule
(templates/prometheusrule.yaml) must be one the app exports -- gathered by rendering the real
``manymodels.metrics.Metrics`` over a real ``ModelCache`` and parsing its text exposition -- or one of
the few others listed in OTHER_METRICS, each with its source (Ray's are looked up in the installed
ray package). Renaming a metric in the app without updating the dashboard or the alerts fails here.
The alert expressions' behaviour is unit-tested with promtool (tests/chart/prometheusrule/alerts.yaml).

The PrometheusRule is rendered with helm; without it those tests skip, unless MANYMODELS_REQUIRE_HELM=1
(ci/test-chart.sh sets it).
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from helm_tool import find_helm
from prometheus_client.parser import text_string_to_metric_families

from manymodels.cache import ModelCache
from manymodels.dataplane.response_cache import ResponseCacheStats
from manymodels.metrics import Metrics
from manymodels.serve import gateway_metrics
from manymodels.serve.concurrency import ConcurrencyLimits
from manymodels.serve.metrics_merge import merge_pages

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "dashboards" / "manymodels.json"
KUBE_VERSION = os.environ.get("MANYMODELS_KUBE_VERSION", "1.35.0")

# Metrics the dashboard and alerts may use that the app does not export, and where each comes from.
OTHER_METRICS = {
    # Prometheus' own: 1 when the target's last scrape succeeded (the monitors' targets)
    "up": None,
    # Ray Serve's controller (ray/serve/_private/deployment_state.py), exported with Ray's "ray_"
    # prefix on the metrics port (8080) that metrics.podMonitor scrapes; per replica 1/0
    "ray_serve_deployment_replica_healthy": "serve/_private/deployment_state.py",
    # ... and the number of replicas the controller is trying to reach, per deployment
    "ray_serve_autoscaling_target_replicas": "serve/_private/deployment_state.py",
}

# Sample names a metric family of each type exposes (text format, prometheus_client)
SUFFIXES = {
    "counter": ("_total",),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count"),
    "summary": ("", "_sum", "_count"),
    "info": ("_info",),
}


def gateway_page() -> str:
    """A Gateway's own series, rendered from the stats rows its HAProxy's ``show stat`` gives: the
    inference backend with one server, and the backend that answers queue_full."""
    inference, queue_full = gateway_metrics.INFERENCE_BACKEND, gateway_metrics.QUEUE_FULL_BACKEND
    rows = [
        {"pxname": inference, "svname": "BACKEND", "qcur": "1", "hrsp_5xx": "2"},
        {"pxname": inference, "svname": "r1", "qcur": "0", "scur": "8", "hrsp_5xx": "1"},
        {"pxname": queue_full, "svname": "BACKEND", "hrsp_5xx": "3"},
    ]
    return gateway_metrics.render_page("g1", rows, ConcurrencyLimits(max_ongoing=8, max_queued=4))


def app_metric_names() -> set[str]:
    """Every sample name a node's /metrics page can hold: a real Metrics over a real cache, merged
    with a Gateway's own page as the Gateway merges them."""
    cache: ModelCache[object] = ModelCache(1 << 20)

    async def load() -> tuple[object, int]:
        return object(), 1024

    asyncio.run(cache.get_or_load("m:1", load))
    metrics = Metrics("r1")
    metrics.watch_cache(cache.stats, cache.resident)
    # one sample of every labelled family, so that each one's samples are on the page
    metrics.observe("m", 200, 0.01)
    metrics.loads.labels("r1", "m").observe(0.5)
    metrics.rollout_failures.labels("r1", "m").inc()
    metrics.config_rejected.labels("r1").inc()
    metrics.rejected.labels("r1", "queue_full").inc()
    metrics.batch_size.labels("r1", "m").observe(4)
    metrics.batch_queue.labels("r1", "m").observe(0.001)
    metrics.watch_admission(lambda: 2, lambda: 1)
    metrics.watch_responses(
        lambda: ResponseCacheStats(
            hits={"m": 3}, misses={"m": 1}, entries=1, bytes=100, capacity_bytes=1000, evictions=0, skipped=0
        )
    )
    names: set[str] = set()
    for family in text_string_to_metric_families(merge_pages([gateway_page(), metrics.render().decode()])):
        names.update(sample.name for sample in family.samples)
        names.update(family.name + suffix for suffix in SUFFIXES.get(family.type, ("",)))
    return names


APP_METRICS = app_metric_names()
KNOWN = APP_METRICS | set(OTHER_METRICS)

# PromQL words that are not metric names where they stand without a "(" after them
KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan", "start", "end"}
GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", re.IGNORECASE)
TOKEN = re.compile(r"\d[\w.]*(?:[eE][+-]?\d+)?|[A-Za-z_:][\w:]*|\S")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression (Grafana variables allowed) selects."""
    text = re.sub(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`', '""', expr)  # string literals
    text = re.sub(r"\$\{?\w+\}?", "", text)  # Grafana variables ($__rate_interval, ${datasource})
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges and subqueries
    text = GROUPING.sub("", text)  # label lists of by/without/on/ignoring/group_*
    tokens = TOKEN.findall(text)
    names = set()
    for i, token in enumerate(tokens):
        if not re.fullmatch(r"[A-Za-z_:][\w:]*", token) or token.lower() in KEYWORDS:
            continue
        if i + 1 < len(tokens) and tokens[i + 1] == "(":
            continue  # a function or an aggregation
        names.add(token)
    return names


def dashboard_queries(dashboard: dict) -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target and query variable of the dashboard."""
    queries = []

    def walk(panels: list[dict]) -> None:
        for panel in panels:
            for target in panel.get("targets", []):
                queries.append((f"panel {panel['title']!r} {target['refId']}", target["expr"]))
            walk(panel.get("panels", []))

    walk(dashboard["panels"])
    for var in dashboard["templating"]["list"]:
        if var["type"] != "query":
            continue
        query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        # Grafana's label_values(<series selector>, <label>) is not PromQL; its selector is
        match = re.fullmatch(r"label_values\((.*),\s*\w+\)", query)
        assert match, f"variable {var['name']}: unexpected query {query!r}"
        queries.append((f"variable {var['name']!r}", match.group(1)))
    return queries


def render(template: str, *settings: str) -> dict:
    cmd = [find_helm(), "template", "mm", str(ROOT), "--namespace", "models"]
    cmd += ["--kube-version", KUBE_VERSION, "--show-only", f"templates/{template}"]
    cmd += ["-f", str(ROOT / "ci/minimal-values.yaml")]  # the bare defaults name no catalog: no render
    for setting in settings:
        cmd += ["--set", setting]
    out = subprocess.run(cmd, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return yaml.safe_load(out.stdout)


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


@pytest.fixture(scope="module")
def alert_rules() -> list[dict]:
    rule = render(
        "prometheusrule.yaml", "metrics.prometheusRule.enabled=true", "metrics.serviceMonitor.enabled=true"
    )
    return [r for group in rule["spec"]["groups"] for r in group["rules"]]


def test_the_app_metrics_are_gathered() -> None:
    # a guard on app_metric_names itself: if it found nothing, every check below would be vacuous
    for name in (
        "manymodels_requests_total",
        "manymodels_request_seconds_bucket",
        "manymodels_model_load_seconds_count",
        "manymodels_cache_hits_total",
        "manymodels_cache_resident_bytes",
        "manymodels_model_resident_bytes",
        "manymodels_config_rejected_total",
        "manymodels_requests_rejected_total",
        "manymodels_requests_queued",
        "manymodels_batch_size_sum",
        "manymodels_batch_queue_seconds_bucket",
        "manymodels_response_cache_hits_total",
        "manymodels_response_cache_capacity_bytes",
        "manymodels_gateway_queued",
        "manymodels_gateway_max_queued_requests",
        "manymodels_gateway_rejected_total",
    ):
        assert name in APP_METRICS
    assert not set(OTHER_METRICS) & APP_METRICS, "an OTHER_METRICS entry is the app's own: drop it"


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        (
            'sum by (code) (rate(manymodels_requests_total{namespace="$namespace", code=~"5.."}'
            "[$__rate_interval]))",
            {"manymodels_requests_total"},
        ),
        (
            "histogram_quantile(0.99, sum by (le, model) (rate(a_bucket[5m]))) > 1.5e-3",
            {"a_bucket"},
        ),
        ("(x unless x offset 15m) or increase(y[15m]) > bool 0", {"x", "y"}),
        ("a / on (namespace) group_left (model) b and absent(up{job='j'} == 1)", {"a", "b", "up"}),
        ('{__name__=~"ignored"}', set()),
    ],
)
def test_metric_names(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


def test_a_renamed_metric_is_caught() -> None:
    assert metric_names("rate(manymodels_request_total[5m])") - KNOWN == {"manymodels_request_total"}


def test_dashboard_queries_only_exported_metrics(dashboard: dict) -> None:
    queries = dashboard_queries(dashboard)
    assert len(queries) >= 10
    for where, expr in queries:
        names = metric_names(expr)
        assert names, f"{where}: no metric in {expr!r}"
        assert names <= KNOWN, (
            f"{where}: {sorted(names - KNOWN)} exported by neither the app nor OTHER_METRICS"
        )


def test_alerts_query_only_exported_metrics(alert_rules: list[dict]) -> None:
    assert len(alert_rules) == 12
    for rule in alert_rules:
        names = metric_names(rule["expr"])
        assert names, f"{rule['alert']}: no metric in {rule['expr']!r}"
        assert names <= KNOWN, (
            f"{rule['alert']}: {sorted(names - KNOWN)} exported by neither the app nor OTHER_METRICS"
        )


@pytest.mark.parametrize("name", sorted(n for n, source in OTHER_METRICS.items() if source))
def test_ray_metrics_exist_in_ray(name: str) -> None:
    spec = importlib.util.find_spec("ray")
    if spec is None or not spec.origin:
        pytest.skip("ray is not installed")
    source = Path(spec.origin).parent / OTHER_METRICS[name]
    assert f'"{name.removeprefix("ray_")}"' in source.read_text(), f"{name}: not defined in {source}"


def test_dashboard_panels(dashboard: dict) -> None:
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    titles = {p["title"] for p in panels}
    for wanted in (
        "Request rate by code",
        "Error ratio (5xx)",
        "Latency p50 / p99",
        "Cache hit ratio",
        "Resident vs capacity bytes",
        "Loads / evictions",
        "Model load time p99",
        "Rollout failures",
        "Config rejected",
        "Rejected (503) per second by reason",
        "Rejected share",
        "Queued requests",
        "In flight vs max_ongoing_requests",
        "Mean batch size",
        "Batch queue time p99",
        "Response cache hit ratio",
        "Response cache bytes vs capacity",
    ):
        assert wanted in titles
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    for panel in panels:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24, panel["title"]
        for target in panel["targets"]:
            used = set(re.findall(r"\$\{?(\w+)", target["expr"])) - {"__rate_interval"}
            assert used <= variables, f"{panel['title']}: undefined variables {used - variables}"


def find_promtool() -> str:
    """promtool on PATH or the one ci/chart-tools.sh installed; missing skips (fails in CI)."""
    found = shutil.which("promtool")
    if not found:
        tools = subprocess.run([str(ROOT / "ci/chart-tools.sh"), "path"], capture_output=True, text=True)
        folders = [Path(f) for f in tools.stdout.strip().split(":") if f]
        found = next((str(f / "promtool") for f in folders if (f / "promtool").exists()), None)
    if not found:
        if os.environ.get("MANYMODELS_REQUIRE_HELM") == "1":
            pytest.fail("promtool not found: run ci/chart-tools.sh")
        pytest.skip("promtool not installed (ci/chart-tools.sh installs it)")
    return found


def test_dashboard_queries_parse(dashboard: dict, tmp_path: Path) -> None:
    # Grafana sends the queries to Prometheus as they are: promtool's parser (as recording rules, with
    # the variables filled in) catches a query that the metric-name check above reads past.
    values = {"$__rate_interval": "5m", "$namespace": "models", "$model": ".*"}
    rules = []
    for i, (where, expr) in enumerate(dashboard_queries(dashboard)):
        for variable, value in values.items():
            expr = expr.replace(variable, value)
        rules.append({"record": f"dashboard:query_{i}", "expr": expr, "labels": {"where": where}})
    path = tmp_path / "dashboard-rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    out = subprocess.run([find_promtool(), "check", "rules", str(path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_configmap_holds_the_dashboard(dashboard: dict) -> None:
    cm = render("grafana-dashboard.yaml", "metrics.grafanaDashboard.enabled=true")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(cm["data"]["manymodels.json"]) == dashboard
