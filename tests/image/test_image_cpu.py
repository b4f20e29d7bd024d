"""The CPU serving image as a real container: standalone serving, non-root, errors, SIGTERM."""

from __future__ import annotations

import json
import time

import httpx
import pytest
from image_helpers import SAMPLE, app_version

pytestmark = pytest.mark.image


def test_image_metadata(docker_client, cpu_image: str) -> None:
    config = docker_client.images.get(cpu_image).attrs["Config"]
    labels = config["Labels"]
    assert labels["org.opencontainers.image.version"] == app_version()
    assert labels["org.opencontainers.image.source"].startswith("https://")
    assert labels["io.manymodels.variant"] == "cpu"
    assert labels["io.ray.version"] == "2.60.0"
    assert config["User"] not in ("", "0", "root") and not config["User"].startswith("0:")
    # Only the Gateway's port: Ray's dashboard / GCS / client ports are never exposed.
    assert set(config["ExposedPorts"]) == {"8000/tcp"}
    assert config["Healthcheck"]["Test"][0] in ("CMD", "CMD-SHELL")


def test_no_build_tools_and_login_shell_path(run_once, cpu_image: str) -> None:
    # KubeRay runs `/bin/bash -lc -- "ulimit -n 65536; ray start ..."`: a login shell must find the
    # venv's ray and python; the entrypoint passes such commands through. (This sandbox's runtime caps
    # nofile below 65536, so the ulimit is tolerated here; the kubelet's runtime allows it.) KubeRay's probes
    # are `wget ... | grep success` commands.
    code, out = run_once(
        cpu_image,
        [
            "/bin/bash",
            "-lc",
            "--",
            "(ulimit -n 65536 2>/dev/null || true); command -v ray python; id -u; command -v wget;"
            " for t in gcc cc g++ make; do command -v $t && echo BUILD-TOOL $t; done;"
            " python -c 'import manymodels, onnxruntime; print(onnxruntime.__version__)'",
        ],
    )
    assert code == 0, out
    assert "/opt/manymodels/bin/ray" in out and "/opt/manymodels/bin/python" in out, out
    assert "BUILD-TOOL" not in out, out
    assert out.splitlines()[2] == "1000", out
    # KubeRay's liveness/readiness probes exec wget (pods stay unready and restart without it)
    assert out.splitlines()[3].endswith("/wget"), out
    code, out = run_once(cpu_image, ["ray", "--version"])
    assert code == 0 and "2.60.0" in out, out


def test_ready_and_health(served) -> None:
    assert httpx.get(f"{served.url}/v2/health/ready", timeout=5).status_code == 200
    healthz = httpx.get(f"{served.url}/-/healthz", timeout=5)
    assert healthz.status_code == 200 and healthz.text.strip() == "success"
    assert served.ready_s < 180


def test_predict(served) -> None:
    response = served.post("/predict", {"model": "mlp-000", "input_data": SAMPLE})
    assert response.status_code == 200, response.text
    text = served.post("/predict", {"model": "text-sentiment", "input_data": "I love this, it works great"})
    assert text.status_code == 200, text.text
    assert "positive" in text.text or "negative" in text.text


def test_oip_infer(served) -> None:
    body = {"inputs": [{"name": "input", "shape": [2, 64], "datatype": "FP32", "data": SAMPLE * 2}]}
    response = served.post("/v2/models/mlp-001/infer", body)
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["model_name"] == "mlp-001"
    [out] = result["outputs"]
    assert out["shape"] == [2, 10] and len(out["data"]) == 20


def test_runs_as_non_root(served) -> None:
    code, out = served.container.exec(["id", "-u"])
    assert code == 0 and out.decode().strip() not in ("", "0"), out
    # Every process in the container (Ray's raylet, GCS, workers, HAProxy) runs without root.
    script = (
        "import os, json; u = {}\n"
        "for p in filter(str.isdigit, os.listdir('/proc')):\n"
        "    try: u[p] = [l.split()[1] for l in open(f'/proc/{p}/status') if l.startswith('Uid:')][0]\n"
        "    except OSError: pass\n"
        "print(json.dumps(u))"
    )
    code, out = served.container.exec(["python", "-c", script])
    uids = json.loads(out)
    assert code == 0 and len(uids) > 3 and "0" not in uids.values(), uids


def test_corrupt_artifact_is_refused_and_serving_continues(served) -> None:
    corrupt = served.post("/predict", {"model": "mlp-002", "input_data": SAMPLE})
    assert corrupt.status_code == 422, corrupt.text
    assert "sha256" in corrupt.json()["error"]
    oip = served.post(
        "/v2/models/mlp-002/infer",
        {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": SAMPLE}]},
    )
    assert oip.status_code == 422 and "sha256" in oip.text, oip.text
    for _ in range(3):
        ok = served.post("/predict", {"model": "mlp-000", "input_data": SAMPLE})
        assert ok.status_code == 200, ok.text


def test_cpu_variant_refuses_torch_models_clearly(served, catalog) -> None:
    # The CPU variant carries no torch (docs/image.md): torch models fail with a message saying so.
    if not (catalog / "torch-mlp").is_dir():
        pytest.skip("the test venv has no torch, so the catalog has no torch model")
    response = served.post("/predict", {"model": "torch-mlp", "input_data": SAMPLE})
    assert response.status_code >= 400, response.text
    assert "torch" in response.json()["error"], response.text
    assert served.post("/predict", {"model": "mlp-001", "input_data": SAMPLE}).status_code == 200


def test_healthcheck_reports_healthy(served) -> None:
    wrapped = served.container.get_wrapped_container()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        wrapped.reload()
        if wrapped.attrs["State"]["Health"]["Status"] == "healthy":
            return
        time.sleep(2)
    raise AssertionError(wrapped.attrs["State"]["Health"])


def test_docker_stop_is_quick_and_clean(served) -> None:
    """Last: `docker stop` (SIGTERM, then SIGKILL after its timeout; the kubelet does the same) ends
    the server in an orderly way well within the bound (the goal is under 10 s)."""
    wrapped = served.container.get_wrapped_container()
    started = time.monotonic()
    wrapped.stop(timeout=30)  # returns once the container has exited
    elapsed = time.monotonic() - started
    result = wrapped.wait(timeout=10)
    out = wrapped.logs().decode(errors="replace")
    print(f"\n[stop] docker stop -> exit {result['StatusCode']} in {elapsed:.1f} s")
    assert result["StatusCode"] == 0, out[-3000:]  # 137 would mean docker had to SIGKILL it
    assert elapsed < 15, out[-3000:]
    assert "[manymodels] stopped" in out, out[-3000:]
