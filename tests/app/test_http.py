"""The HTTP contract (``/predict``, Open Inference Protocol v2, ``/metrics``) over a real DataPlane.

Every test drives ``build_http_app`` in process through ``httpx.ASGITransport`` on one event loop
(the cache's single-flight futures belong to it), against models from the demo catalog.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import orjson
import pytest
from metric_page import metric
from planes import serve

from manymodels.admission import Admission
from manymodels.config import ServerConfig
from manymodels.dataplane import DataPlane
from manymodels.errors import ConfigurationError, InvalidRequest
from manymodels.http import build_http_app
from manymodels.processors import Processor
from manymodels.store import publish_version

TEXT_OPTIONS: dict[str, Any] = {
    "aliases": {"stable": "1", "canary": "2"},
    "processor": "manymodels.processors.text:TextClassifierProcessor",
    "processor_options": {"labels": ["negative", "positive"]},
}
ROWS = np.random.default_rng(0).standard_normal((2, 64)).astype(np.float32)
ROW = ROWS[0].tolist()


def make_config(root: Path, **overrides: Any) -> ServerConfig:
    raw: dict[str, Any] = {
        "store": {"uri": str(root), "refresh_interval_s": 0},
        "default_model": "text-sentiment",
        "models": {"text-sentiment": TEXT_OPTIONS},
    }
    raw.update(overrides)
    return ServerConfig.model_validate(raw)


def reference(root: Path, model: str, version: str, rows: np.ndarray) -> np.ndarray:
    """The model's output computed with onnxruntime directly, bypassing manymodels."""
    session = ort.InferenceSession(
        str(root / model / version / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    return session.run(["logits"], {"input": rows})[0]


def assert_error(response: httpx.Response, status: int, match: str | None = None) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}
    assert isinstance(body["error"], str) and body["error"]
    if match is not None:
        assert match in body["error"], body["error"]
    return body["error"]


def copy_catalog(source: Path, target: Path, models: list[str]) -> Path:
    target.mkdir(parents=True)
    for model in models:
        shutil.copytree(source / model, target / model)
    return target


def publish_corrupt(root: Path, model: str, version: str, based_on: str = "1") -> Path:
    """Publish ``version`` with a valid artifact and manifest, then flip bytes in the artifact."""
    manifest = json.loads((root / model / based_on / "manifest.json").read_text())
    publish_version(
        root,
        model,
        version,
        runtime="onnx",
        artifact=root / model / based_on / "model.onnx",
        inputs=manifest["inputs"],
        outputs=manifest["outputs"],
        description="corrupted copy",
    )
    artifact = root / model / version / "model.onnx"
    data = bytearray(artifact.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 8] = bytes(b ^ 0xFF for b in data[middle : middle + 8])
    artifact.write_bytes(bytes(data))
    return artifact


@pytest.fixture
def config(demo_catalog: Path) -> ServerConfig:
    return make_config(demo_catalog)


# ---- /predict -----------------------------------------------------------------------------------


def test_predict_default_model_original_contract(config: ServerConfig) -> None:
    async def scenario(client: httpx.AsyncClient, plane: DataPlane) -> None:
        response = await client.post("/predict", json={"input_data": "sample text"})
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "application/json"
        body = response.json()
        assert set(body) == {"model", "version", "outputs"}
        assert body["model"] == "text-sentiment"
        assert body["version"] == "1"  # the stable alias
        [result] = body["outputs"]
        assert set(result) == {"label", "score", "scores"}
        assert set(result["scores"]) == {"negative", "positive"}
        assert result["label"] == max(result["scores"], key=result["scores"].get)
        assert result["score"] == result["scores"][result["label"]]
        assert sum(result["scores"].values()) == pytest.approx(1.0, abs=1e-4)

        both = await client.post(
            "/predict",
            json={
                "input_data": ["I love this product", "Terrible product, do not buy"],
            },
        )
        assert both.status_code == 200, both.text
        labels = [r["label"] for r in both.json()["outputs"]]
        assert labels == ["positive", "negative"]

    serve(config, scenario)


def test_predict_aliases_and_versions(config: ServerConfig) -> None:
    async def scenario(client: httpx.AsyncClient, plane: DataPlane) -> None:
        async def version_of(**body: Any) -> str:
            response = await client.post("/predict", json={"input_data": "sample text", **body})
            assert response.status_code == 200, response.text
            assert response.json()["model"] == body.get("model", "text-sentiment")
            return response.json()["version"]

        assert await version_of(model="text-sentiment") == "1"
        assert await version_of(model="text-sentiment", version="stable") == "1"
        assert await version_of(model="text-sentiment", version="canary") == "2"
        assert await version_of(version="canary") == "2"  # default model, aliased version
        assert await version_of(model="text-sentiment", version="2") == "2"
        assert await version_of(model="text-sentiment", version="1") == "1"

    serve(config, scenario)


def test_predict_tensor_model(config: ServerConfig, demo_catalog: Path) -> None:
    expected = reference(demo_catalog, "mlp-001", "1", ROWS)

    async def scenario(client: httpx.AsyncClient, plane: DataPlane) -> None:
        single = await client.post("/predict", json={"model": "mlp-001", "input_data": ROW})
        assert single.status_code == 200, single.text
        body = single.json()
        assert body["model"] == "mlp-001" and body["version"] == "1"
        assert list(body["outputs"]) == ["logits"]
        np.testing.assert_allclose(body["outputs"]["logits"], expected[0], rtol=1e-5, atol=1e-6)

        batch = await client.post(
            "/predict", json={"model": "mlp-001", "input_data": {"input": ROWS.tolist()}}
        )
        assert batch.status_code == 200, batch.text
        np.testing.assert_allclose(batch.json()["outputs"]["logits"], expected, rtol=1e-5, atol=1e-6)

        # The model can also come from the x-model header (what the Gateway routes on).
        header = await client.post("/predict", json={"input_data": ROW}, headers={"x-model": "mlp-001"})
        assert header.status_code == 200, header.text
        assert header.json()["model"] == "mlp-001"

        aliased = await client.post(
            "/predict", json={"model": "mlp-000", "version": "canary", "input_data": ROW}
        )
        assert aliased.status_code == 200, aliased.text
        assert aliased.json()["version"] == "2"
        assert np.shape(aliased.json()["outputs"]["logits"]) == (10,)

    serve(config, scenario)


def test_predict_torch_model(config: ServerConfig, demo_catalog: Path) -> None:
    if not (demo_catalog / "torch-script").is_dir():
        pytest.skip("the demo catalog was built without torch")

    async def scenario(client: httpx.AsyncClient, plane: DataPlane) -> None:
        response = await client.post("/predict", json={"model": "torch-script", "input_data": ROWS.tolist()})
        assert response.status_code == 200, response.text
        outputs = response.json()["outputs"]
        assert set(outputs) == {"logits", "probabilities"}
        assert np.shape(outputs["probabilities"]) == (2, 10)
        np.testing.assert_allclose(np.sum(outputs["probabilities"], axis=1), 1.0, atol=1e-5)

    serve(config, scenario)


# ---- OIP v2 -------------------------------------------------------------------------------------


def test_oip_health_and_server_metadata(config: ServerConfig) -> None:
    async def scenario(client: httpx.AsyncClient, plane: DataPlane) -> None:
        live = await client.get("/v2/health/live")
        assert live.status_code == 200 and live.json() == {"live": True}
        ready = await client.get("/v2/health/ready")
        assert ready.status_code == 200 and ready.json() == {"ready": True}
        meta = (await client.get("/v2")).json()
        assert meta["name"] == "manymodels"
        assert isinstance(meta["version"], str) and meta["version"]
        assert {"model_repository", "binary_tensor_data"} <= set(meta["extensions"])
        healthz = await client.get("/-/healthz")
        assert healthz.status_code == 200 and healthz.text == "success"

    serve(config, scenario)


def test_oip_model_metadata(config: ServerConfig) -> None:
    async def scenario(client: httpx.AsyncClient, plane: DataPlane) -> None:
        expected = {
            "name": "mlp-000",
            "versions": ["1", "2"],
            "platform": "onnxruntime_onnx",
            "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}],
            "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}],
        }
        for path in (
            "/v2/models/mlp-000",
            "/v2/models/mlp-000/versions/2",
            "/v2/models/mlp-000/versions/canary",
        ):
            response = await client.get(path)
            assert response.status_code == 200, (path, response.text)
            assert response.json() == expected

        text = (await client.get("/v2/models/text-sentiment")).json()
        assert text["inputs"] == [{"name": "features", "datatype": "FP32", "shape": [-1, 512]}]
        assert text["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 2]}]

        assert_error(await client.get("/v2/models/mlp-000/versions/9"), 404, "'9'")
        assert_error(await client.get("/v2/models/no-such-model"), 404, "no-such-model")

    serve(config, scenario)


def test_ready_only_once_models_are_servable(demo_catalog: Path, tmp_path: Path) -> None:
    """What probes ask (Kubernetes, Azure ML's readiness route): 503 with the reason while the catalog is
    empty or the default model missing, 200 as soon as the catalog has it (no restart)."""
    root = tmp_path / "store"
    root.mkdir()

    async def scenario(client: httpx.AsyncClient, plane: DataPlane) -> None:
        empty = await client.get("/v2/health/ready")
        assert empty.status_code == 503
        reason = f"the catalog at {plane.live.store.uri} holds no models"
        assert empty.json() == {"ready": False, "reason": reason}
        shutil.copytree(demo_catalog / "mlp-000", root / "mlp-000")
        plane.live.store.refresh()
        missing = await client.get("/v2/health/ready")
        assert missing.status_code == 503 and missing.json()["ready"] is False
        assert "default model 'text-sentiment' is not servable" in missing.json()["reason"]
        # Liveness asks nothing of the catalog.
        assert (await client.get("/v2/health/live")).status_code == 200
        shutil.copytree(demo_catalog / "text-sentiment", root / "text-sentiment")
        plane.live.store.refresh()
        ready = await client.get("/v2/health/ready")
        assert ready.status_code == 200 and ready.json() == {"ready": True}

    serve(make_config(root), scenario)


def test_oip_model_ready(config: ServerConfig) -> None:
    async def scenario(client: httpx.AsyncClient, plane: DataPlane) -> None:
        for path in (
            "/v2/models/text-sentiment/ready",
            "/v2/models/mlp-000/versions/2/ready",
            "/v2/models/mlp-000/versions/stable/ready",
        ):
            response = await client.get(path)
            assert response.status_code == 200, (path, response.text)
            assert response.json()["ready"] is True
        assert (await client.get("/v2/models/mlp-000/ready")).json() == {
            "name": "mlp-000",
            "ready": True,
        }

        unknown = await client.get("/v2/models/no-such-model/ready")
        assert unknown.status_code == 400
        assert unknown.json() == {"name": "no-such-model", "ready": False}
        no_version = await client.get("/v2/models/mlp-000/versions/9/ready")
        assert no_version.status_code == 400
        assert no_version.json()["ready"] is False

    serve(config, scenario)


def _infer_body(rows: np.ndarray, **extra: Any) -> dict[str, Any]:
    return {
        "inputs": [
            {
                "name": "input",
                "shape": list(rows.shape),
                "datatype": "FP32",
                "data": rows.reshape(-1).tolist(),
            }
        ],
        **extra,
    }


def test_oip_infer_json(config: ServerConfig, demo_catalog: Path) -> None:
    expected = reference(demo_catalog, "mlp-001", "1", ROWS)

    async def scenario(client: httpx.AsyncClient, plane: DataPlane) -> None:
        response = await client.post("/v2/models/mlp-001/infer", json=_infer_body(ROWS, id="req-42"))
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "application/json"
        body = response.json()
        assert body["model_name"] == "mlp-001"
        assert body["model_version"] == "1"
        assert body["id"] == "req-42"
        [out] = body["outputs"]
        assert out["name"] == "logits" and out["datatype"] == "FP32" and out["shape"] == [2, 10]
        np.testing.assert_allclose(np.reshape(out["data"], (2, 10)), expected, rtol=1e-5, atol=1e-6)

        nested = _infer_body(ROWS)
        nested["inputs"][0]["data"] = ROWS.tolist()
        again = await client.post("/v2/models/mlp-001/versions/1/infer", json=nested)
        assert again.status_code == 200, again.text
        assert again.json()["outputs"][0]["data"] == out["data"]
        assert "id" not in again.json()

        for ref, version in (("2", "2"), ("canary", "2"), ("stable", "1")):
            versioned = await client.post(
                f"/v2/models/mlp-000/versions/{ref}/infer", json=_infer_body(ROWS[:1])
            )
            assert versioned.status_code == 200, versioned.text
            assert versioned.json()["model_version"] == version

    serve(config, scenario)


def _split(response: httpx.Response) -> tuple[dict[str, Any], bytes]:
    length = int(response.headers["inference-header-content-length"])
    return orjson.loads(response.content[:length]), response.content[length:]


def test_oip_infer_binary_tensors(config: ServerConfig, demo_catalog: Path) -> None:
    expected = reference(demo_catalog, "mlp-001", "1", ROWS)

    async def scenario(client: httpx.AsyncClient, plane: DataPlane) -> None:
        header = orjson.dumps(
            {
                "inputs": [
                    {
                        "name": "input",
                        "shape": [2, 64],
                        "datatype": "FP32",
                        "parameters": {"binary_data_size": ROWS.nbytes},
                    }
                ],
                "outputs": [{"name": "logits", "parameters": {"binary_data": True}}],
            }
        )
        response = await client.post(
            "/v2/models/mlp-001/infer",
            content=header + ROWS.tobytes(),
            headers={
                "Inference-Header-Content-Length": str(len(header)),
                "content-type": "application/octet-stream",
            },
        )
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "application/octet-stream"
        meta, payload = _split(response)
        [out] = meta["outputs"]
        assert out == {
            "name": "logits",
            "datatype": "FP32",
            "shape": [2, 10],
            "parameters": {"binary_data_size": 80},
        }
        assert len(payload) == 80
        logits = np.frombuffer(payload, dtype=np.float32).reshape(2, 10)
        np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-6)

        # JSON input, binary output through the request-wide parameter.
        mixed = await client.post(
            "/v2/models/mlp-001/infer",
            json=_infer_body(ROWS, parameters={"binary_data_output": True}),
        )
        assert mixed.status_code == 200, mixed.text
        _, payload2 = _split(mixed)
        assert payload2 == payload

        # Binary input, JSON output (no outputs requested, no binary_data_output).
        header = orjson.dumps(
            {
                "inputs": [
                    {
                        "name": "input",
                        "shape": [2, 64],
                        "datatype": "FP32",
                        "parameters": {"binary_data_size": ROWS.nbytes},
                    }
                ]
            }
        )
        as_json = await client.post(
            "/v2/models/mlp-001/infer",
            content=header + ROWS.tobytes(),
            headers={"Inference-Header-Content-Length": str(len(header))},
        )
        assert as_json.status_code == 200, as_json.text
        assert "inference-header-content-length" not in as_json.headers
        np.testing.assert_allclose(
            np.reshape(as_json.json()["outputs"][0]["data"], (2, 10)), logits, rtol=0, atol=0
        )

    serve(config, scenario)


def test_oip_binary_with_tritonclient(config: ServerConfig, demo_catalog: Path) -> None:
    """What Triton's own client sends and parses must work unchanged."""
    triton = pytest.importorskip("tritonclient.http")
    expected = reference(demo_catalog, "mlp-001", "1", ROWS)
    tensor = triton.InferInput("input", [2, 64], "FP32")
    tensor.set_data_from_numpy(ROWS, binary_data=True)
    body, json_size = triton.InferenceServerClient.generate_request_body(
        [tensor],
        outputs=[triton.InferRequestedOutput("logits", binary_data=True)],
        request_id="triton-1",
    )

    async def scenario(client: httpx.AsyncClient, plane: DataPlane) -> httpx.Response:
        return await client.post(
            "/v2/models/mlp-001/infer",
            content=body,
            headers={
                "Inference-Header-Content-Length": str(json_size),
                "content-type": "application/octet-stream",
            },
        )

    response = serve(config, scenario)
    assert response.status_code == 200, response.text
    result = triton.InferenceServerClient.parse_response_body(
        response.content, header_length=int(response.headers["inference-header-content-length"])
    )
    assert result.get_response()["id"] == "triton-1"
    np.testing.assert_allclose(result.as_numpy("logits"), expected, rtol=1e-5, atol=1e-6)


def test_oip_select_outputs_of_a_multi_output_model(config: ServerConfig, demo_catalog: Path) -> None:
    if not (demo_catalog / "torch-script").is_dir():
        pytest.skip("the demo catalog was built without torch")

    async def scenario(client: httpx.AsyncClient, plane: DataPlane) -> None:
        both = await client.post("/v2/models/torch-script/infer", json=_infer_body(ROWS))
        assert both.status_code == 200, both.text
        assert [o["name"] for o in both.json()["outputs"]] == ["logits", "probabilities"]
        assert both.json()["model_version"] == "1"

        one = await client.post(
            "/v2/models/torch-script/infer",
            json=_infer_body(ROWS, outputs=[{"name": "probabilities"}]),
        )
        assert one.status_code == 200, one.text
        [out] = one.json()["outputs"]
        assert out["name"] == "probabilities" and out["shape"] == [2, 10]

    serve(config, scenario)


def test_oip_repository(config: ServerConfig) -> None:
    async def scenario(client: httpx.AsyncClient, plane: DataPlane) -> None:
        async def index() -> dict[tuple[str, str], dict[str, str]]:
            response = await client.post("/v2/repository/index")
            assert response.status_code == 200, response.text
            return {(e["name"], e["version"]): e for e in response.json()}

        before = await index()
        assert {
            ("mlp-000", "1"),
            ("mlp-000", "2"),
            ("mlp-002", "1"),
            ("text-sentiment", "2"),
        } <= set(before)
        assert before[("mlp-002", "1")] == {
            "name": "mlp-002",
            "version": "1",
            "state": "UNAVAILABLE",
            "reason": "not resident; loads on first request",
        }

        loaded = await client.post("/v2/repository/models/mlp-002/load")
        assert loaded.status_code == 200 and loaded.json() == {}
        assert "mlp-002:1" in plane.cache
        after_load = await index()
        assert after_load[("mlp-002", "1")]["state"] == "READY"
        assert after_load[("mlp-002", "1")]["reason"] == ""

        # Loading a model resolves like a request without a version: stable, else latest.
        assert (await client.post("/v2/repository/models/mlp-000/load")).status_code == 200
        assert (await index())[("mlp-000", "1")]["state"] == "READY"
        assert (await index())[("mlp-000", "2")]["state"] == "UNAVAILABLE"

        unloaded = await client.post("/v2/repository/models/mlp-002/unload")
        assert unloaded.status_code == 200 and unloaded.json() == {}
        assert "mlp-002:1" not in plane.cache
        assert (await index())[("mlp-002", "1")]["state"] == "UNAVAILABLE"

        assert_error(await client.post("/v2/repository/models/no-such/load"), 404)
        assert_error(await client.post("/v2/repository/models/no-such/unload"), 404)
        assert_error(await client.post("/v2/repository/models/a..b/load"), 400, "invalid model")

    serve(config, scenario)


# ---- /metrics -----------------------------------------------------------------------------------


def test_metrics_count_requests_and_cache_hits(config: ServerConfig) -> None:
    async def scenario(client: httpx.AsyncClient, plane: DataPlane) -> None:
        async def page() -> str:
            response = await client.get("/metrics")
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/plain")
            return response.text

        async def predict() -> None:
            response = await client.post("/predict", json={"input_data": "sample text"})
            assert response.status_code == 200, response.text

        labels = {"replica": "local", "model": "text-sentiment"}
        start = await page()
        assert (
            "manymodels_requests_total" not in start
            or metric(start, "manymodels_requests_total", code="200", **labels) == 0
        )
        await predict()
        first = await page()
        assert "manymodels_requests_total" in first
        assert "manymodels_cache_hits_total" in first
        assert metric(first, "manymodels_requests_total", code="200", **labels) == 1
        assert metric(first, "manymodels_cache_misses_total", replica="local") == 1
        hits = metric(first, "manymodels_cache_hits_total", replica="local")

        await predict()
        await predict()
        second = await page()
        assert metric(second, "manymodels_requests_total", code="200", **labels) == 3
        assert metric(second, "manymodels_cache_hits_total", replica="local") == hits + 2
        assert metric(second, "manymodels_cache_entries", replica="local") == 1
        assert metric(second, "manymodels_cache_resident_bytes", replica="local") > 0
        assert (
            metric(
                second,
                "manymodels_model_resident_bytes",
                replica="local",
                model="text-sentiment",
                version="1",
            )
            > 0
        )
        assert metric(second, "manymodels_request_seconds_count", **labels) == 3

        bad = await client.post("/predict", json={"model": "mlp-001", "input_data": [1, 2]})
        assert bad.status_code == 400
        oip = await client.post("/v2/models/mlp-001/infer", json=_infer_body(ROWS))
        assert oip.status_code == 200
        third = await page()
        assert metric(third, "manymodels_requests_total", replica="local", model="mlp-001", code="400") == 1
        assert metric(third, "manymodels_requests_total", replica="local", model="mlp-001", code="200") == 1

    serve(config, scenario)


# ---- bad input: always 4xx with {"error": ...} -------------------------------------------------

BAD_PREDICT = [
    pytest.param(b'{"input_data": ', 400, "malformed JSON", id="malformed-json"),
    pytest.param(b"", 400, "malformed JSON", id="empty-body"),
    pytest.param(b"[1, 2, 3]", 400, "must be a JSON object", id="array-body"),
    pytest.param(b'"sample text"', 400, "must be a JSON object", id="string-body"),
    pytest.param(b'{"model": "mlp-001"}', 400, "missing 'input_data'", id="no-input-data"),
    pytest.param(
        {"model": "mlp-001", "input_data": [1.0, 2.0, 3.0]},
        400,
        "dimension 1 must be 64",
        id="wrong-shape",
    ),
    pytest.param(
        {"model": "mlp-001", "input_data": [[[0.0] * 64]]},
        400,
        "expected 2 dimensions",
        id="wrong-rank",
    ),
    pytest.param({"model": "mlp-001", "input_data": ["a"] * 64}, 400, "expected numbers", id="wrong-dtype"),
    pytest.param(
        {"model": "mlp-001", "input_data": [[0.0] * 64, [0.0] * 63]},
        400,
        "not a rectangular array",
        id="ragged",
    ),
    pytest.param(
        {"model": "mlp-001", "input_data": {"input": [0.0] * 64, "x": [1]}},
        400,
        "unknown input",
        id="unknown-input",
    ),
    pytest.param(b'{"model": "mlp-001", "input_data": [NaN]}', 400, "malformed JSON", id="nan-literal"),
    pytest.param(
        b'{"model": "mlp-001", "input_data": [1e999]}',
        400,
        "malformed JSON",
        id="overflowing-number",
    ),
    pytest.param({"input_data": 42}, 400, "input_data", id="text-not-a-string"),
    pytest.param({"input_data": "   !!! "}, 400, "contains no words", id="text-no-words"),
    pytest.param({"input_data": []}, 400, "non-empty", id="text-empty-list"),
    pytest.param(
        {"model": "no-such-model", "input_data": ROW},
        404,
        "'no-such-model' not found",
        id="unknown-model",
    ),
    pytest.param(
        {"model": "mlp-001", "version": "7", "input_data": ROW},
        404,
        "no version or alias '7'",
        id="unknown-version",
    ),
    pytest.param({"version": "beta", "input_data": "sample"}, 404, "'beta'", id="unknown-alias"),
    pytest.param(
        {"model": "../../etc/passwd", "input_data": ROW},
        400,
        "invalid model name",
        id="model-traversal",
    ),
    pytest.param(
        {"model": "mlp-001", "version": "../1", "input_data": ROW},
        400,
        "invalid version name",
        id="version-traversal",
    ),
    pytest.param({"model": "mlp-001\n", "input_data": ROW}, 400, "invalid model name", id="model-newline"),
    pytest.param({"model": "a..b", "input_data": ROW}, 400, "invalid model name", id="model-dotdot"),
    pytest.param({"model": 5, "input_data": ROW}, 400, "'model' must be a string", id="model-not-a-string"),
    pytest.param(
        {"model": "mlp-001", "version": 1, "input_data": ROW},
        400,
        "'version' must be a string",
        id="version-not-a-string",
    ),
]


@pytest.mark.parametrize(("body", "status", "match"), BAD_PREDICT)
def test_predict_bad_input(
    config: ServerConfig, body: bytes | dict[str, Any], status: int, match: str
) -> None:
    async def scenario(client: httpx.AsyncClient, plane: DataPlane) -> httpx.Response:
        if isinstance(body, bytes):
            return await client.post("/predict", content=body, headers={"content-type": "application/json"})
        return await client.post("/predict", json=body)

    assert_error(serve(config, scenario), status, match)


def test_predict_nan_and_huge_batches_are_refused(config: ServerConfig, demo_catalog: Path) -> None:
    small = make_config(demo_catalog, limits={"max_batch": 2})

    async def scenario(client: httpx.AsyncClient, plane: DataPlane) -> None:
        rows = np.zeros((3, 64), dtype=np.float32)
        assert_error(
            await client.post("/predict", json={"model": "mlp-001", "input_data": rows.tolist()}),
            400,
            "batch of 3 exceeds 2",
        )
        rows[0, 0] = np.nan
        header = orjson.dumps(
            {
                "inputs": [
                    {
                        "name": "input",
                        "shape": [1, 64],
                        "datatype": "FP32",
                        "parameters": {"binary_data_size": 256},
                    }
                ]
            }
        )
        nan = await client.post(
            "/v2/models/mlp-001/infer",
            content=header + rows[:1].tobytes(),
            headers={"Inference-Header-Content-Length": str(len(header))},
        )
        assert_error(nan, 400, "NaN or infinity")

    serve(small, scenario)


def test_header_names_are_validated(config: ServerConfig) -> None:
    async def scenario(client: httpx.AsyncClient, plane: DataPlane) -> None:
        response = await client.post("/predict", json={"input_data": ROW}, headers={"x-model": "../mlp-001"})
        assert_error(response, 400, "invalid model name")

    serve(config, scenario)


BAD_INFER = [
    pytest.param("/v2/models/mlp-001/infer", b"{", {}, 400, "malformed JSON", id="malformed"),
    pytest.param("/v2/models/mlp-001/infer", b"[]", {}, 400, "JSON object", id="array-body"),
    pytest.param(
        "/v2/models/mlp-001/infer", {}, {}, 400, "'inputs' must be a non-empty list", id="no-inputs"
    ),
    pytest.param("/v2/models/mlp-001/infer", {"inputs": []}, {}, 400, "non-empty list", id="empty-inputs"),
    pytest.param(
        "/v2/models/mlp-001/infer",
        {"inputs": [5]},
        {},
        400,
        "unknown input",
        id="input-not-an-object",
    ),
    pytest.param(
        "/v2/models/mlp-001/infer",
        {"inputs": [{"name": "x", "shape": [1, 64], "datatype": "FP32", "data": ROW}]},
        {},
        400,
        "unknown input 'x'",
        id="unknown-input",
    ),
    pytest.param(
        "/v2/models/mlp-001/infer",
        {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP64", "data": ROW}]},
        {},
        400,
        "does not match the model's FP32",
        id="datatype",
    ),
    pytest.param(
        "/v2/models/mlp-001/infer",
        {"inputs": [{"name": "input", "shape": [2, 64], "datatype": "FP32", "data": ROW}]},
        {},
        400,
        "do not fit shape",
        id="size",
    ),
    pytest.param(
        "/v2/models/mlp-001/infer",
        {"inputs": [{"name": "input", "shape": [1, 32], "datatype": "FP32", "data": ROW[:32]}]},
        {},
        400,
        "dimension 1 must be 64",
        id="shape",
    ),
    pytest.param(
        "/v2/models/mlp-001/infer",
        {
            "inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": ROW}],
            "outputs": [{"name": "nope"}],
        },
        {},
        400,
        "unknown output 'nope'",
        id="unknown-output",
    ),
    pytest.param(
        "/v2/models/mlp-001/infer",
        b'{"inputs": []}',
        {"Inference-Header-Content-Length": "abc"},
        400,
        "bad inference-header-content-length",
        id="binary-header-not-a-number",
    ),
    pytest.param(
        "/v2/models/mlp-001/infer",
        b'{"inputs": []}',
        {"Inference-Header-Content-Length": "999"},
        400,
        "bad inference-header-content-length",
        id="binary-header-too-long",
    ),
    pytest.param(
        "/v2/models/mlp-001/infer",
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": [1, 64],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": 256},
                }
            ]
        },
        {},
        400,
        "bad binary_data_size 256",
        id="binary-size-beyond-body",
    ),
    pytest.param(
        "/v2/models/no-such/infer",
        {"inputs": []},
        {},
        404,
        "'no-such' not found",
        id="unknown-model",
    ),
    pytest.param("/v2/models/mlp-001/versions/3/infer", {"inputs": []}, {}, 404, "'3'", id="unknown-version"),
    pytest.param("/v2/models/a..b/infer", {"inputs": []}, {}, 400, "invalid model name", id="model-dotdot"),
    pytest.param("/v2/models/.hidden/infer", {"inputs": []}, {}, 400, "invalid model name", id="model-dot"),
    pytest.param(
        "/v2/models/mlp-001/versions/..1/infer",
        {"inputs": []},
        {},
        400,
        "invalid version name",
        id="version-dotdot",
    ),
    pytest.param("/v2/models/a..b/ready", None, {}, 400, "invalid model name", id="ready-name"),
    pytest.param("/v2/models/bad%24name", None, {}, 400, "invalid model name", id="metadata-name"),
]


@pytest.mark.parametrize(("path", "body", "headers", "status", "match"), BAD_INFER)
def test_oip_bad_input(
    config: ServerConfig, path: str, body: Any, headers: dict[str, str], status: int, match: str
) -> None:
    async def scenario(client: httpx.AsyncClient, plane: DataPlane) -> httpx.Response:
        if body is None:
            return await client.get(path)
        if isinstance(body, bytes):
            return await client.post(path, content=body, headers=headers)
        return await client.post(path, json=body, headers=headers)

    assert_error(serve(config, scenario), status, match)


@pytest.mark.parametrize(
    "patch",
    [
        pytest.param(
            {
                "inputs": [
                    {
                        "name": "input",
                        "shape": [1, 64],
                        "datatype": "FP32",
                        "data": ROW,
                        "parameters": "binary",
                    }
                ]
            },
            id="input-parameters",
        ),
        pytest.param(
            {"inputs": [{"name": ["input"], "shape": [1, 64], "datatype": "FP32", "data": ROW}]},
            id="input-name-list",
        ),
        pytest.param({"parameters": ["binary_data_output"]}, id="request-parameters"),
        pytest.param(
            {"outputs": [{"name": "logits", "parameters": 1}]},
            id="output-parameters",
        ),
        pytest.param({"outputs": [{"name": ["logits"]}]}, id="output-name-list"),
        pytest.param({"outputs": ["logits"]}, id="output-not-an-object"),
    ],
)
def test_oip_malformed_fields_are_client_errors(config: ServerConfig, patch: dict[str, Any]) -> None:
    body = _infer_body(ROWS[:1]) | patch

    async def scenario(client: httpx.AsyncClient, plane: DataPlane) -> httpx.Response:
        return await client.post("/v2/models/mlp-001/infer", json=body)

    assert_error(serve(config, scenario), 400)


def test_oversized_bodies_are_refused(demo_catalog: Path) -> None:
    config = make_config(demo_catalog, limits={"max_body_bytes": "1Ki"})
    big = {"input_data": "word " * 400}

    async def chunks() -> AsyncIterator[bytes]:  # no content-length: counted while streaming
        for _ in range(8):
            yield b" " * 200
        yield orjson.dumps({"input_data": "sample text"})

    async def scenario(client: httpx.AsyncClient, plane: DataPlane) -> None:
        assert_error(await client.post("/predict", json=big), 413, "exceeds the 1024-byte limit")
        assert_error(
            await client.post("/v2/models/mlp-001/infer", json=_infer_body(ROWS)),
            413,
            "1024-byte limit",
        )
        streamed = await client.post(
            "/predict", content=chunks(), headers={"content-type": "application/json"}
        )
        assert "content-length" not in streamed.request.headers
        assert_error(streamed, 413, "1024-byte limit")
        # Under the limit still works.
        ok = await client.post("/predict", json={"input_data": "sample text"})
        assert ok.status_code == 200, ok.text

    serve(config, scenario)


def test_unknown_routes_and_methods(config: ServerConfig) -> None:
    async def scenario(client: httpx.AsyncClient, plane: DataPlane) -> None:
        assert_error(await client.get("/nope"), 404, "no route GET /nope")
        assert_error(await client.post("/v2/models"), 404)
        assert_error(await client.post("/v2/models/mlp-001/explain", json={}), 404)
        assert_error(await client.get("/predict"), 405)
        assert_error(await client.get("/v2/models/mlp-001/infer"), 405)

    serve(config, scenario)


# ---- corrupt artifacts --------------------------------------------------------------------------


@pytest.fixture
def corrupt_root(demo_catalog: Path, tmp_path: Path) -> Path:
    """mlp-001 (v1) and text-sentiment copied, plus mlp-001 v2 whose artifact fails its sha256."""
    root = copy_catalog(demo_catalog, tmp_path / "store", ["text-sentiment", "mlp-001", "mlp-002"])
    publish_corrupt(root, "mlp-001", "2")
    return root


def test_corrupt_artifact_is_refused_and_the_server_keeps_serving(corrupt_root: Path) -> None:
    async def scenario(client: httpx.AsyncClient, plane: DataPlane) -> None:
        corrupt = await client.post("/predict", json={"model": "mlp-001", "version": "2", "input_data": ROW})
        error = assert_error(corrupt, 422, "sha256 mismatch")
        assert "'mlp-001' version '2'" in error
        assert "mlp-001:2" not in plane.cache

        oip = await client.post("/v2/models/mlp-001/versions/2/infer", json=_infer_body(ROWS))
        assert_error(oip, 422, "sha256")
        ready = await client.get("/v2/models/mlp-001/versions/2/ready")
        assert ready.status_code == 400 and ready.json()["ready"] is False
        index = (await client.post("/v2/repository/index")).json()
        [entry] = [e for e in index if (e["name"], e["version"]) == ("mlp-001", "2")]
        assert entry["state"] == "UNAVAILABLE" and "sha256" in entry["reason"]

        # Everything else still answers.
        v1 = await client.post("/predict", json={"model": "mlp-001", "version": "1", "input_data": ROW})
        assert v1.status_code == 200 and v1.json()["version"] == "1"
        text = await client.post("/predict", json={"input_data": "sample text"})
        assert text.status_code == 200, text.text
        other = await client.post("/v2/models/mlp-002/infer", json=_infer_body(ROWS))
        assert other.status_code == 200, other.text
        assert (await client.get("/v2/health/ready")).status_code == 200

        page = (await client.get("/metrics")).text
        assert metric(page, "manymodels_cache_load_failures_total", replica="local") >= 1
        assert metric(page, "manymodels_requests_total", model="mlp-001", code="422") == 2

        # Repaired in place, an explicit load retries at once (no back-off) and it serves.
        artifact = corrupt_root / "mlp-001" / "2" / "model.onnx"
        artifact.write_bytes((corrupt_root / "mlp-001" / "1" / "model.onnx").read_bytes())
        assert (await client.post("/v2/repository/models/mlp-001/load")).status_code == 200
        fixed = await client.post("/predict", json={"model": "mlp-001", "version": "2", "input_data": ROW})
        assert fixed.status_code == 200, fixed.text
        assert fixed.json()["outputs"] == v1.json()["outputs"]

    serve(make_config(corrupt_root), scenario)


def test_previously_loaded_version_keeps_serving(demo_catalog: Path, tmp_path: Path) -> None:
    root = copy_catalog(demo_catalog, tmp_path / "store", ["text-sentiment", "mlp-001", "mlp-002"])

    async def scenario(client: httpx.AsyncClient, plane: DataPlane) -> None:
        async def predict(**body: Any) -> httpx.Response:
            return await client.post("/predict", json={"input_data": ROW, **body})

        first = await predict(model="mlp-001")
        assert first.status_code == 200 and first.json()["version"] == "1"

        # A corrupt version 2 becomes "latest" (mlp-001 has no stable alias)...
        publish_corrupt(root, "mlp-001", "2")
        publish_corrupt(root, "mlp-002", "2")
        plane.catalog.store.refresh()
        assert plane.catalog.resolve("mlp-001") == "2"

        # ...but requests without a version keep getting the version that answered before.
        again = await predict(model="mlp-001")
        assert again.status_code == 200, again.text
        assert again.json()["version"] == "1"
        assert again.json()["outputs"] == first.json()["outputs"]
        assert (await predict(model="mlp-001")).json()["version"] == "1"

        # An explicit request for the broken version is still refused.
        assert_error(await predict(model="mlp-001", version="2"), 422, "sha256")
        # A model that never answered has nothing to fall back on.
        assert_error(await predict(model="mlp-002"), 422, "sha256")
        # Other requests are unaffected.
        assert (await client.post("/predict", json={"input_data": "sample"})).status_code == 200

    serve(make_config(root), scenario)


# ---- error classes: whose fault, and whether to retry -------------------------------------------


class BrokenProcessor(Processor):
    """A processor whose constructor refuses its options (a configuration mistake)."""

    def __init__(self, manifest: Any, options: dict[str, Any]) -> None:
        raise ValueError("option 'threshold' is required")


@pytest.mark.parametrize(
    ("failure", "status", "message"),
    [
        (RuntimeError("graph node 7 exploded"), 500, "failed at inference: RuntimeError: graph node 7"),
        (MemoryError(), 503, "ran out of memory"),
        (
            RuntimeError("[ONNXRuntimeError] : 6 : Failed to allocate memory for requested buffer"),
            503,
            "memory",
        ),
    ],
)
def test_a_model_failing_at_inference_is_a_server_error(
    config: ServerConfig, failure: Exception, status: int, message: str
) -> None:
    async def scenario(client: httpx.AsyncClient, plane: DataPlane) -> None:
        served = await plane.acquire("mlp-001", None)
        served.release()

        def explode(inputs: Any) -> Any:
            raise failure

        served.model.infer = explode  # type: ignore[method-assign]
        for response in (
            await client.post("/predict", json={"model": "mlp-001", "input_data": ROW}),
            await client.post(
                "/v2/models/mlp-001/infer",
                json={"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": ROW}]},
            ),
        ):
            assert_error(response, status, message)
            assert "mlp-001 version 1" in response.json()["error"]
            assert response.headers.get("retry-after") == ("1" if status == 503 else None)

    serve(config, scenario)


def test_a_processor_that_cannot_be_built_is_a_configuration_error(demo_catalog: Path) -> None:
    broken = {"processor": f"{__name__}:BrokenProcessor"}
    config = make_config(demo_catalog, models={"text-sentiment": TEXT_OPTIONS, "mlp-001": broken})

    async def scenario(client: httpx.AsyncClient, plane: DataPlane) -> None:
        response = await client.post("/predict", json={"model": "mlp-001", "input_data": ROW})
        error = assert_error(response, 500, "model mlp-001 version 1: processor ")
        assert error.endswith("BrokenProcessor: option 'threshold' is required"), error

    serve(config, scenario)


def test_a_processor_that_does_not_import_is_refused_when_the_config_is_applied(
    config: ServerConfig, demo_catalog: Path
) -> None:
    typo = {"models": {"text-sentiment": {**TEXT_OPTIONS, "processor": "manymodels.processors.txt:Nope"}}}
    with pytest.raises(ConfigurationError, match="cannot import 'manymodels.processors.txt'"):
        DataPlane(make_config(demo_catalog, **typo))

    async def scenario(client: httpx.AsyncClient, plane: DataPlane) -> None:
        with pytest.raises(ConfigurationError, match="processor 'manymodels.processors.txt:Nope'"):
            await plane.reconfigure(make_config(demo_catalog, **typo, cache={"capacity_bytes": "1Mi"}))
        assert plane.config == config  # nothing of the refused config was applied
        ok = await client.post("/predict", json={"input_data": "a fine day"})
        assert ok.status_code == 200, ok.text

    serve(config, scenario)


class RefusingPostprocessor(Processor):
    def postprocess(self, outputs: dict[str, Any]) -> Any:
        raise InvalidRequest("this model only answers for rows that sum to zero")


def test_a_processor_refusal_in_postprocess_keeps_its_status(demo_catalog: Path) -> None:
    options = {"processor": f"{__name__}:RefusingPostprocessor"}
    config = make_config(demo_catalog, models={"text-sentiment": TEXT_OPTIONS, "mlp-001": options})

    async def scenario(client: httpx.AsyncClient, plane: DataPlane) -> None:
        response = await client.post("/predict", json={"model": "mlp-001", "input_data": ROW})
        assert_error(response, 400, "only answers for rows that sum to zero")

    serve(config, scenario)


# ---- concurrency limits -------------------------------------------------------------------------


def test_full_replica_refuses_inference_with_503_but_answers_health_and_metrics(
    config: ServerConfig,
) -> None:
    """max_ongoing_requests=1, max_queued_requests=1: the test holds the one slot itself, so what
    the app does with each further request is decided by the counts alone."""
    admission = Admission(max_ongoing=1, max_queued=1)
    tensor = {"model": "mlp-001", "input_data": ROW}
    oip = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": ROW}]}

    async def main() -> None:
        plane = DataPlane(config)
        try:
            await plane.start()
            transport = httpx.ASGITransport(app=build_http_app(plane, admission))
            async with httpx.AsyncClient(transport=transport, base_url="http://mm") as client:
                await admission.enter()  # every slot taken
                waiting = asyncio.create_task(client.post("/predict", json=tensor))
                while admission.queued < 1:
                    await asyncio.sleep(0.001)
                # The line is full: refused at once, before the body is read or a model is looked up.
                for response in (
                    await client.post("/predict", json=tensor),
                    await client.post("/v2/models/mlp-001/infer", json=oip),
                    await client.post("/v2/models/mlp-001/versions/1/infer", json=oip),
                ):
                    assert_error(response, 503, "max_ongoing_requests=1")
                    assert response.headers["retry-after"] == "1"
                # Health, metadata and metrics take no slot.
                assert (await client.get("/v2/health/ready")).status_code == 200
                assert (await client.get("/v2/models/mlp-001")).status_code == 200
                page = (await client.get("/metrics")).text
                assert metric(page, "manymodels_requests_inflight", replica="local") == 1
                assert metric(page, "manymodels_requests_queued", replica="local") == 1
                assert (
                    metric(page, "manymodels_requests_rejected_total", replica="local", reason="queue_full")
                    == 3
                )
                assert metric(page, "manymodels_requests_total", replica="local", model="-", code="503") == 3
                assert not waiting.done()

                admission.leave()  # the slot goes to the waiting request, which then completes
                admitted = await waiting
                assert admitted.status_code == 200, admitted.text
                assert (admission.ongoing, admission.queued) == (0, 0)
                again = await client.post("/v2/models/mlp-001/infer", json=oip)
                assert again.status_code == 200, again.text
                assert admission.ongoing == 0
        finally:
            plane.close()

    asyncio.run(main())
