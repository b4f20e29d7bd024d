"""deploy/azureml/: every YAML loads offline with azure-ai-ml's own loaders (the ones `az ml ... create -f`
runs), and says what the image honours: routes and port equal the variables the image reads (checked
with the app's own settings models), image tags follow docs/image.md, the managed deployments mount the
registered catalog, and the Kubernetes deployment forwards to the serve Service the chart renders for
values/aks.yaml. What only Azure can check is listed in docs/azureml.md.
"""

from __future__ import annotations

import importlib.util
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from manymodels.azureml.forward import ForwardSettings
from manymodels.config import app_settings, load_serve_config

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy" / "azureml"
MANAGED = sorted((DEPLOY / "managed").glob("deployment-*.yml"))
KUBERNETES = DEPLOY / "kubernetes" / "deployment.yml"
ROUTE_VARS = {"liveness_route": "MM_LIVENESS_ROUTE", "readiness_route": "MM_READINESS_ROUTE",
              "scoring_route": "MM_SCORING_ROUTE"}  # fmt: skip
REGISTRY = "<registry>.azurecr.io/manymodels"
# What `helm install mm . -n models -f values/aks.yaml` is documented with (deploy YAML placeholders).
RELEASE, NAMESPACE = "mm", "models"


def app_version() -> str:
    return yaml.safe_load((ROOT / "Chart.yaml").read_text())["appVersion"]


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """The loaders must not need Azure: any connection attempt fails the test."""

    def refuse(self: socket.socket, address: Any) -> None:
        raise AssertionError(f"network access to {address} while loading Azure ML YAML")

    monkeypatch.setattr(socket.socket, "connect", refuse)


def load_deployment(path: Path) -> Any:
    from azure.ai.ml import load_online_deployment

    return load_online_deployment(path)


def load_endpoint(path: Path) -> Any:
    from azure.ai.ml import load_online_endpoint

    return load_online_endpoint(path)


def test_every_file_is_checked() -> None:
    files = {p.relative_to(DEPLOY).as_posix() for p in DEPLOY.rglob("*.yml")}
    assert files == {
        "model.yml",
        "managed/endpoint.yml",
        "managed/deployment-cpu.yml",
        "managed/deployment-gpu.yml",
        "kubernetes/endpoint.yml",
        "kubernetes/deployment.yml",
    }


def test_endpoints_load_as_their_kind() -> None:
    from azure.ai.ml.entities import KubernetesOnlineEndpoint, ManagedOnlineEndpoint

    managed = load_endpoint(DEPLOY / "managed" / "endpoint.yml")
    assert type(managed) is ManagedOnlineEndpoint and managed.auth_mode == "key"
    aks = load_endpoint(DEPLOY / "kubernetes" / "endpoint.yml")
    assert type(aks) is KubernetesOnlineEndpoint and aks.auth_mode == "key"
    assert aks.compute == "aks-manymodels"  # azureml:<the attached Kubernetes compute>
    assert "compute: azureml:aks-manymodels" in (DEPLOY / "kubernetes" / "endpoint.yml").read_text()


def routes_and_port(deployment: Any) -> tuple[dict[str, str], int]:
    """The inference_config routes, checked against the deployment's environment variables."""
    config = deployment.environment.inference_config
    env = deployment.environment_variables
    paths, ports = {}, set()
    for name, var in ROUTE_VARS.items():
        route = getattr(config, name)
        assert route.path == env[var], f"{name} {route.path} but {var}={env.get(var)}"
        paths[var] = route.path
        ports.add(route.port)
    assert ports == {int(env["MM_PORT"])}, f"routes on {ports}, MM_PORT={env['MM_PORT']}"
    return paths, ports.pop()


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    for var in ("MM_MODEL_ROOT", "MM_PORT", "MM_HOST", "MM_DEFAULT_MODEL", "MM_DEVICE", *ROUTE_VARS.values()):
        monkeypatch.delenv(var, raising=False)
    yield monkeypatch


@pytest.mark.parametrize("path", MANAGED, ids=lambda p: p.stem)
def test_managed_deployment(path: Path, clean_env: pytest.MonkeyPatch) -> None:
    from azure.ai.ml import load_model
    from azure.ai.ml.entities import ManagedOnlineDeployment

    deployment = load_deployment(path)
    assert type(deployment) is ManagedOnlineDeployment
    assert deployment.endpoint_name == load_endpoint(DEPLOY / "managed" / "endpoint.yml").name
    env = deployment.environment_variables
    paths, port = routes_and_port(deployment)

    # The image's bundled serve config, expanded with these variables, takes the same routes and port.
    for var, value in env.items():
        clean_env.setenv(var, value)
    clean_env.setenv("MM_MODEL_ROOT", "/var/azureml-app/azureml-models/manymodels-catalog/1/models")
    gateway = app_settings(load_serve_config(ROOT / "images" / "serve_config.yaml")).gateway
    assert gateway.port == port and gateway.host == "0.0.0.0"
    assert (gateway.routes.liveness, gateway.routes.readiness, gateway.routes.scoring) == (
        paths["MM_LIVENESS_ROUTE"],
        paths["MM_READINESS_ROUTE"],
        paths["MM_SCORING_ROUTE"],
    )
    # The catalog is the registered model Azure ML mounts (AZUREML_MODEL_DIR), never a fixed root.
    assert "MM_MODEL_ROOT" not in env
    model = load_model(DEPLOY / "model.yml")
    assert deployment.model == f"{model.name}:{model.version}"
    assert model.type == "custom_model"

    # Image and SKU per variant: CPU image (<appVersion>-cpu) on a CPU VM, GPU image on an N-series VM.
    gpu = path.stem.endswith("gpu")
    tag = app_version() + ("" if gpu else "-cpu")
    assert deployment.environment.image == f"{REGISTRY}:{tag}"
    assert env["MM_DEVICE"] == ("cuda" if gpu else "cpu")
    assert deployment.instance_type.startswith("Standard_N") == gpu
    assert deployment.request_settings.request_timeout_ms <= 180000  # Azure ML's maximum
    # Ray and Serve start before the Gateway answers: probes must allow minutes, not seconds.
    for probe in (deployment.liveness_probe, deployment.readiness_probe):
        assert probe.initial_delay + probe.period * probe.failure_threshold >= 180


def test_docs_name_the_same_image_tags() -> None:
    image_md = (ROOT / "docs" / "image.md").read_text()
    assert "manymodels:<v>-cpu" in image_md  # the naming the deployments follow
    azureml_md = (ROOT / "docs" / "azureml.md").read_text()
    for tag in (f"manymodels:{app_version()}-cpu", f"manymodels:{app_version()}"):
        assert tag in azureml_md


def helm_template(*args: str) -> list[dict[str, Any]]:
    spec = importlib.util.spec_from_file_location("helm_tool", ROOT / "tests" / "chart" / "helm_tool.py")
    assert spec is not None and spec.loader is not None
    helm_tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(helm_tool)
    helm = helm_tool.find_helm()
    rendered = subprocess.run(
        [helm, "template", RELEASE, str(ROOT), "-n", NAMESPACE, *args],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return [doc for doc in yaml.safe_load_all(rendered) if doc]


def test_kubernetes_deployment_forwards_to_the_charts_serve_service(clean_env: pytest.MonkeyPatch) -> None:
    from azure.ai.ml.entities import KubernetesOnlineDeployment

    deployment = load_deployment(KUBERNETES)
    assert type(deployment) is KubernetesOnlineDeployment
    assert deployment.endpoint_name == load_endpoint(DEPLOY / "kubernetes" / "endpoint.yml").name
    assert deployment.model is None  # the catalog is the chart's, not a mounted asset
    assert deployment.environment.image == f"{REGISTRY}:{app_version()}-cpu"
    paths, port = routes_and_port(deployment)

    # The forwarder's own settings model accepts exactly these variables.
    env = deployment.environment_variables
    settings = ForwardSettings.from_env(env)
    assert (settings.port, settings.liveness, settings.readiness, settings.scoring) == (
        port,
        paths["MM_LIVENESS_ROUTE"],
        paths["MM_READINESS_ROUTE"],
        paths["MM_SCORING_ROUTE"],
    )
    # Its JSON 504 reaches the client before Azure ML's front end gives up on the request.
    assert settings.timeout_s * 1000 < deployment.request_settings.request_timeout_ms

    # The Service the chart renders for AKS: KubeRay names it <RayService name>-serve-svc, port 8000.
    docs = helm_template("-f", str(ROOT / "values/aks.yaml"), "-f", str(ROOT / "ci/sites/aks.yaml"))
    [rayservice] = [d for d in docs if d["kind"] == "RayService"]
    upstream = httpx.URL(settings.upstream)
    name = rayservice["metadata"]["name"]
    assert upstream.host == f"{name}-serve-svc.{rayservice['metadata']['namespace']}.svc"
    service_ports = rayservice["spec"]["serveService"]["spec"]["ports"]
    assert [p["port"] for p in service_ports if p["name"] == "serve"] == [upstream.port]
    # The chart's NetworkPolicy lets the Azure ML pods (another namespace) reach the serve port.
    [policy] = [d for d in docs if d["kind"] == "NetworkPolicy"]
    serve = {"port": "serve", "protocol": "TCP"}
    serve_rules = [r for r in policy["spec"]["ingress"] if serve in r.get("ports", [])]
    assert serve_rules and all("from" not in r for r in serve_rules)
