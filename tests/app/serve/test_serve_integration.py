"""End to end on a real local Ray: Gateway (HAProxy) -> 2 ModelServer replicas -> ONNX/torch."""

from __future__ import annotations

import shutil
import threading
import time
from collections import Counter

import httpx
import numpy as np
import pytest
import tritonclient.http as triton

from manymodels.store import LocalStore, publish_version

pytestmark = pytest.mark.integration

SAMPLE = [0.25] * 64


def post(url: str, body: dict, **kwargs) -> httpx.Response:
    return httpx.post(url + "/predict", json=body, timeout=60, **kwargs)


def test_predict_original_contract_uses_default_model(served) -> None:
    response = post(served.url, {"input_data": "I love this product, it works great"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "text-sentiment" and body["version"] == "1"
    assert body["outputs"][0]["label"] == "positive"


def test_predict_tensor_model_alias_and_version(served) -> None:
    stable = post(served.url, {"model": "mlp-000", "version": "stable", "input_data": SAMPLE})
    v2 = post(served.url, {"model": "mlp-000", "version": "2", "input_data": [SAMPLE, SAMPLE]})
    assert stable.status_code == 200 and v2.status_code == 200, (stable.text, v2.text)
    assert stable.json()["version"] == "1" and v2.json()["version"] == "2"
    assert len(stable.json()["outputs"]["logits"]) == 10
    assert np.array(v2.json()["outputs"]["logits"]).shape == (2, 10)


def test_torch_models_answer(served) -> None:
    for name in ("torch-mlp", "torch-script", "torch-state"):
        response = post(served.url, {"model": name, "input_data": SAMPLE})
        assert response.status_code == 200, response.text
        assert response.json()["outputs"]["logits"]


def test_unmodified_triton_client(served) -> None:
    client = triton.InferenceServerClient(url=served.url.removeprefix("http://"))
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("mlp-001")
    meta = client.get_model_metadata("mlp-001")
    assert meta["inputs"][0] == {"name": "input", "datatype": "FP32", "shape": [-1, 64]}
    batch = np.random.default_rng(0).random((3, 64), dtype=np.float32)
    for binary in (True, False):
        tensor = triton.InferInput("input", list(batch.shape), "FP32")
        tensor.set_data_from_numpy(batch, binary_data=binary)
        wanted = triton.InferRequestedOutput("logits", binary_data=binary)
        result = client.infer("mlp-001", [tensor], outputs=[wanted], model_version="1")
        assert result.as_numpy("logits").shape == (3, 10)
    direct = post(served.url, {"model": "mlp-001", "input_data": batch.tolist()}).json()
    np.testing.assert_allclose(result.as_numpy("logits"), direct["outputs"]["logits"], rtol=1e-5)
    index = client.get_model_repository_index()
    assert {"mlp-001", "text-sentiment"} <= {m["name"] for m in index}
    client.load_model("mlp-002")
    client.unload_model("mlp-002")
    with pytest.raises(triton.InferenceServerException):
        client.get_model_metadata("no-such-model")


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"{not json", 400),
        (b'{"model": "mlp-000", "input_data": [[1, 2, 3]]}', 400),
        (b'{"model": "mlp-000", "input_data": [NaN]}', 400),
        (b'{"model": "mlp-000", "input_data": "text for a tensor model"}', 400),
        (b'{"model": "no-such-model", "input_data": [1]}', 404),
        (b'{"model": "mlp-000", "version": "99", "input_data": [1]}', 404),
        (b'{"model": "../../etc/passwd", "input_data": [1]}', 400),
    ],
)
def test_bad_input_gets_4xx_json(served, body: bytes, status: int) -> None:
    response = httpx.post(served.url + "/predict", content=body, timeout=30)
    assert response.status_code == status, response.text
    assert response.json()["error"]
    assert post(served.url, {"model": "mlp-000", "input_data": SAMPLE}).status_code == 200


def test_oversized_body_is_413(served) -> None:
    huge = b'{"model": "mlp-000", "input_data": [' + b"0.5," * 3_000_000 + b"0.5]}"
    response = httpx.post(served.url + "/predict", content=huge, timeout=60)
    assert response.status_code == 413
    assert "limit" in response.json()["error"]


def test_metrics_cover_every_replica(served) -> None:
    for i in range(6):
        post(served.url, {"model": f"mlp-00{i}", "input_data": SAMPLE})
    text = httpx.get(served.url + "/metrics", timeout=30).text
    replicas = {
        line.split('replica="')[1].split('"')[0]
        for line in text.splitlines()
        if line.startswith("manymodels_cache_capacity_bytes")
    }
    assert len(replicas) == 2
    for family in (
        "manymodels_requests_total",
        "manymodels_request_seconds_bucket",
        "manymodels_cache_hits_total",
        "manymodels_cache_loads_total",
        "manymodels_cache_resident_bytes",
        "manymodels_model_load_seconds_count",
    ):
        assert family in text


def test_ray_proxy_path_still_works(served) -> None:
    response = post(served.ray_proxy_url, {"model": "mlp-000", "input_data": SAMPLE})
    assert response.status_code == 200, response.text
    assert response.json()["version"] == "1"


def _hammer(url: str, body: dict, stop: threading.Event, seen: list, errors: list) -> None:
    with httpx.Client(timeout=30) as client:
        while not stop.is_set():
            try:
                response = client.post(url + "/predict", json=body)
                if response.status_code != 200:
                    errors.append(response.text)
                else:
                    seen.append((time.monotonic(), response.json()["version"]))
            except httpx.HTTPError as exc:
                errors.append(repr(exc))


def test_alias_switch_under_load_fails_nothing(served) -> None:
    body = {"model": "text-sentiment", "version": "stable", "input_data": "great value"}
    stop, seen, errors = threading.Event(), [], []
    threads = [
        threading.Thread(target=_hammer, args=(served.url, body, stop, seen, errors)) for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    time.sleep(1.5)
    config = served.edited()
    server = next(d for d in config["applications"][0]["deployments"] if d["name"] == "ModelServer")
    server["user_config"]["models"]["text-sentiment"]["aliases"]["stable"] = "2"
    switched_at = time.monotonic()
    served.redeploy(config)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not any(v == "2" for _, v in seen[-50:]):
        time.sleep(0.2)
    time.sleep(1.0)
    stop.set()
    for thread in threads:
        thread.join()
    assert not errors, errors[:5]
    versions = Counter(v for _, v in seen)
    assert versions["1"] > 0 and versions["2"] > 0, versions
    assert all(v == "2" for _, v in seen[-40:])
    assert len(seen) > 100
    print(
        f"alias switch: {len(seen)} requests, 0 failed, v2 visible "
        f"{min(t for t, v in seen if v == '2') - switched_at:.2f}s after submit"
    )


def test_corrupt_version_is_refused_and_old_keeps_serving(served) -> None:
    before = post(served.url, {"model": "mlp-003", "input_data": SAMPLE})
    assert before.status_code == 200 and before.json()["version"] == "1"
    v1 = LocalStore(served.root).manifest("mlp-003", "1")
    src = served.root / "mlp-003" / "1" / v1.artifact
    publish_version(
        served.root,
        "mlp-003",
        "2",
        runtime="onnx",
        artifact=src,
        inputs=list(v1.inputs),
        outputs=list(v1.outputs),
    )
    corrupt = served.root / "mlp-003" / "2" / v1.artifact
    data = bytearray(corrupt.read_bytes())
    data[len(data) // 2] ^= 0xFF
    corrupt.write_bytes(bytes(data))
    time.sleep(2.5)  # > refresh_interval_s: version 2 is listed, and is now "latest"
    explicit = post(served.url, {"model": "mlp-003", "version": "2", "input_data": SAMPLE})
    assert explicit.status_code == 422, explicit.text
    assert "sha256" in explicit.json()["error"]
    # "latest" names the corrupt version 2: the version that answered before keeps serving.
    for _ in range(10):
        response = post(served.url, {"model": "mlp-003", "input_data": SAMPLE})
        assert response.status_code == 200, response.text
        assert response.json()["version"] == "1"
    shutil.rmtree(served.root / "mlp-003" / "2")


def test_autoscaling_sees_gateway_traffic(served) -> None:
    """Requests bypass Serve's router; the inflight policy must still scale replicas up."""
    from ray import serve

    config = served.edited()
    server = next(d for d in config["applications"][0]["deployments"] if d["name"] == "ModelServer")
    server.pop("num_replicas")
    server["autoscaling_config"] = {
        "min_replicas": 1,
        "max_replicas": 3,
        "initial_replicas": 2,
        "target_ongoing_requests": 1,
        "upscale_delay_s": 0,
        "downscale_delay_s": 600,
        "metrics_interval_s": 0.5,
        "look_back_period_s": 2,
        "policy": {"policy_function": "manymodels.serve.autoscaling:inflight_policy"},
    }
    original = served.config
    served.redeploy(config)
    body = {"model": "mlp-000", "input_data": SAMPLE}
    stop, seen, errors = threading.Event(), [], []
    threads = [
        threading.Thread(target=_hammer, args=(served.url, body, stop, seen, errors)) for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    running = 0
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline and running < 3:
            app = serve.status().applications.get("manymodels")
            deployment = app.deployments.get("ModelServer") if app else None
            if deployment is not None:  # absent for a moment while the new config applies
                running = deployment.replica_states.get("RUNNING", 0)
            time.sleep(0.5)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
        served.redeploy(original)
    assert running == 3, f"stayed at {running} replicas"
    assert not errors, errors[:5]
