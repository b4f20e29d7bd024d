"""Chart <-> app contract: the rendered serveConfigV2 is read by the app's own config loader.

Renders the chart with the pinned helm (ci/chart-tools.sh) for every values/*.yaml and every
ci/*-values.yaml (ci/minimal-values.yaml: the defaults plus the catalog a user must give; the bare
defaults do not render), and feeds spec.serveConfigV2 to
``manymodels.config.app_settings``. Also checks that values.schema.json describes exactly the
fields of the app's pydantic models, and that a model rollout changes serveConfigV2 only, never
rayClusterConfig.

Without helm the tests skip, unless MANYMODELS_REQUIRE_HELM=1 (ci/test-chart.sh sets it).
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml
from helm_tool import find_helm

from manymodels import config as app_config

ROOT = Path(__file__).resolve().parents[2]
KUBE_VERSION = os.environ.get("MANYMODELS_KUBE_VERSION", "1.35.0")
MINIMAL = "ci/minimal-values.yaml"
VALUES_FILES = sorted(
    str(p.relative_to(ROOT)) for p in [*ROOT.glob("values/*.yaml"), *ROOT.glob("ci/*-values.yaml")]
)


def helm_template(
    values_file: str | None, overrides: dict | None, tmp_path: Path | None
) -> subprocess.CompletedProcess[str]:
    """helm template the RayService (None: the bare defaults); the finished process."""
    if not (ROOT / "charts/kuberay-operator/Chart.yaml").exists():
        if os.environ.get("MANYMODELS_REQUIRE_HELM") == "1":
            pytest.fail("charts/kuberay-operator missing: run ci/chart-deps.sh")
        pytest.skip("dependency not materialised (ci/chart-deps.sh)")
    cmd = [
        find_helm(),
        "template",
        "t",
        str(ROOT),
        "--namespace",
        "models",
        "--kube-version",
        KUBE_VERSION,
        "--show-only",
        "templates/rayservice.yaml",
    ]
    if values_file:
        cmd += ["-f", str(ROOT / values_file)]
        site = ROOT / "ci" / "sites" / Path(values_file).name  # what a user adds to a cloud file
        if values_file.startswith("values/") and site.exists():
            cmd += ["-f", str(site)]
    if overrides:
        assert tmp_path is not None
        extra = tmp_path / "overrides.yaml"
        extra.write_text(yaml.safe_dump(overrides))
        cmd += ["-f", str(extra)]
    return subprocess.run(cmd, capture_output=True, text=True)


def render(
    values_file: str | None = MINIMAL, overrides: dict | None = None, tmp_path: Path | None = None
) -> dict:
    """helm template the RayService and return it as a dict."""
    out = helm_template(values_file, overrides, tmp_path)
    assert out.returncode == 0, out.stderr
    return yaml.safe_load(out.stdout)


def test_bare_defaults_name_both_ways_to_a_catalog():
    """No catalog is guessed: object storage or a PVC, and the error says how to give either."""
    out = helm_template(None, None, None)
    assert out.returncode != 0
    assert "no model catalog: set modelServer.userConfig.store.uri" in out.stderr
    assert "or set modelStore.pvc.enabled=true" in out.stderr


def serve_config(rayservice: dict) -> dict:
    text = rayservice["spec"]["serveConfigV2"]
    assert isinstance(text, str), "serveConfigV2 must be a YAML string"
    return yaml.safe_load(text)


@pytest.mark.parametrize("values_file", VALUES_FILES)
def test_rendered_serve_config_is_read_by_the_app(values_file):
    config = serve_config(render(values_file))
    settings = app_config.app_settings(config)  # raises ValueError naming the field on any mismatch

    app = config["applications"][0]
    assert app["import_path"] == app_config.APP_IMPORT_PATH
    assert app["route_prefix"] == "/"
    deployments = {d["name"]: d for d in app["deployments"]}
    assert set(deployments) == {app_config.MODEL_SERVER, app_config.GATEWAY}

    model_server = deployments[app_config.MODEL_SERVER]
    assert ("num_replicas" in model_server) != ("autoscaling_config" in model_server)
    assert model_server["max_ongoing_requests"] >= 1
    assert model_server["max_queued_requests"] == -1 or model_server["max_queued_requests"] >= 1
    assert isinstance(model_server["ray_actor_options"].get("memory", 0), int)

    gateway = deployments[app_config.GATEWAY]
    assert gateway["max_replicas_per_node"] == 1
    assert gateway["ray_actor_options"] == {"num_cpus": 0}
    # the Gateway owns the public serve port KubeRay routes to; Ray's proxy sits elsewhere
    assert settings.gateway.port == 8000 and settings.gateway.host == "0.0.0.0"
    assert config["http_options"]["port"] != 8000
    assert config["proxy_location"] == "EveryNode"
    assert settings.server.store.uri


def test_demo_config_and_chart_agree_on_shape():
    """The chart renders the same structure as the app's own demo config."""
    demo = yaml.safe_load((ROOT / "app/manymodels/demo/serve_config.yaml").read_text())
    chart = serve_config(render())
    assert set(chart) == set(demo)
    demo_app, chart_app = demo["applications"][0], chart["applications"][0]
    assert {k for k in chart_app} == {k for k in demo_app}
    names = [d["name"] for d in chart_app["deployments"]]
    assert names == [d["name"] for d in demo_app["deployments"]]


@pytest.mark.parametrize("queued", [-1, 1, 64])
def test_concurrency_limits_reach_serve(queued, tmp_path):
    """modelServer.maxOngoingRequests / maxQueuedRequests become the ModelServer deployment's
    max_ongoing_requests / max_queued_requests, in a config Serve itself accepts."""
    from ray.serve.schema import ServeDeploySchema

    values = {"modelServer": {"maxOngoingRequests": 8, "maxQueuedRequests": queued}}
    config = serve_config(render(overrides=values, tmp_path=tmp_path))
    [model_server] = [d for d in config["applications"][0]["deployments"] if d["name"] == "ModelServer"]
    assert (model_server["max_ongoing_requests"], model_server["max_queued_requests"]) == (8, queued)
    ServeDeploySchema.model_validate(config)


@pytest.mark.parametrize("queued", [0, -2, "ten"])
def test_invalid_max_queued_requests_is_refused_by_name(queued, tmp_path):
    out = helm_template(MINIMAL, {"modelServer": {"maxQueuedRequests": queued}}, tmp_path)
    assert out.returncode != 0
    assert "/modelServer/maxQueuedRequests" in out.stderr


def _schema_fields(node: dict) -> set[str]:
    return set(node.get("properties", {}))


def _model_fields(model) -> set[str]:
    return set(model.model_fields)


def test_values_schema_matches_the_app_models():
    """values.schema.json describes exactly the app's ServerConfig/GatewayConfig fields."""
    schema = json.loads((ROOT / "values.schema.json").read_text())
    user = schema["properties"]["modelServer"]["properties"]["userConfig"]
    server = app_config.ServerConfig
    assert _schema_fields(user) == _model_fields(server)
    nested = {
        "store": app_config.StoreConfig,
        "cache": app_config.CacheConfig,
        "limits": app_config.Limits,
        "runtime": app_config.RuntimeSettings,
        "http": app_config.ListenConfig,
    }
    for key, model in nested.items():
        assert _schema_fields(user["properties"][key]) == _model_fields(model), key
    model_options = schema["definitions"]["modelOptions"]
    assert _schema_fields(model_options) == _model_fields(app_config.ModelOptions)
    gateway = schema["properties"]["gateway"]["properties"]["userConfig"]
    assert _schema_fields(gateway) | {"host", "port"} == _model_fields(app_config.GatewayConfig)


def _user_config(**fields) -> dict:
    return {"modelServer": {"userConfig": fields}}


BASELINE = _user_config(default_model="m", models={"m": {"aliases": {"stable": "1"}}})
ROLLOUTS = {
    "new version behind stable": _user_config(models={"m": {"aliases": {"stable": "2"}}}),
    "canary alias": _user_config(models={"m": {"aliases": {"stable": "1", "canary": "2"}}}),
    "new model + default": _user_config(default_model="new-model", models={"new-model": {}}),
    "cache budget": _user_config(cache={"capacity_bytes": "3Gi", "pin": ["m"]}),
    "store uri": _user_config(store={"uri": "s3://bucket/other"}),
    "replicas": {"modelServer": {"numReplicas": 5, "maxOngoingRequests": 64}},
    "queue bound": {"modelServer": {"maxQueuedRequests": 32}},
}


@pytest.mark.parametrize("change", list(ROLLOUTS), ids=list(ROLLOUTS))
def test_model_rollout_changes_only_serve_config(change, tmp_path):
    before = render(overrides=BASELINE, tmp_path=tmp_path)
    after_values = copy.deepcopy(BASELINE)
    _merge(after_values, ROLLOUTS[change])
    after = render(overrides=after_values, tmp_path=tmp_path)
    assert before["spec"]["serveConfigV2"] != after["spec"]["serveConfigV2"]
    assert before["spec"]["rayClusterConfig"] == after["spec"]["rayClusterConfig"]

    def rest(rayservice: dict) -> dict:
        return {k: v for k, v in rayservice["spec"].items() if k != "serveConfigV2"}

    assert rest(before) == rest(after)
    app_config.app_settings(serve_config(after))


def _merge(into: dict, new: dict) -> None:
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value
