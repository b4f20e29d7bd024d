"""The forwarding mode of a Kubernetes online deployment, over real HTTP: the forwarder under uvicorn in
front of a real replica HTTP server (``EmbeddedServer`` on the demo catalog) or of small stand-ins for a
serve Service that is down, hangs or echoes what it got."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from processes import free_port

from manymodels.azureml.forward import ForwardSettings, build_app
from manymodels.config import ServerConfig
from manymodels.errors import ConfigurationError
from manymodels.metrics import Metrics
from manymodels.serve.embedded import EmbeddedServer

ROUTES = {"MM_LIVENESS_ROUTE": "/live", "MM_READINESS_ROUTE": "/ready", "MM_SCORING_ROUTE": "/score"}
ROW = [0.25] * 64


class Forwarder:
    """``build_app`` served by uvicorn on its own thread and loop, on a free port."""

    def __init__(self, upstream: str, **env: str) -> None:
        settings = ForwardSettings.from_env({"MM_FORWARD_URL": upstream, **ROUTES, **env})
        self.server = uvicorn.Server(
            uvicorn.Config(build_app(settings), host="127.0.0.1", port=0, log_level="warning")
        )
        self.thread = threading.Thread(target=lambda: asyncio.run(self.server.serve()), daemon=True)
        self.thread.start()
        while not self.server.started:
            assert self.thread.is_alive(), "the forwarder did not start"
            self.thread.join(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)

    def close(self) -> None:
        self.client.close()
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture
def replica(demo_catalog: Path) -> Iterator[str]:
    config = ServerConfig.model_validate(
        {"store": {"uri": str(demo_catalog), "refresh_interval_s": 0}, "default_model": "mlp-000"}
    )
    server = EmbeddedServer(config, Metrics("fwd"), "127.0.0.1", 0)
    port = server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


def test_settings_from_the_environment() -> None:
    settings = ForwardSettings.from_env({"MM_FORWARD_URL": "http://mm-manymodels-serve-svc.models.svc:8000/"})
    assert settings.upstream == "http://mm-manymodels-serve-svc.models.svc:8000"
    assert (settings.liveness, settings.readiness, settings.scoring) == (
        "/v2/health/live",
        "/v2/health/ready",
        "/predict",
    )
    assert (settings.host, settings.port) == ("0.0.0.0", 8000)
    empty_routes = {"MM_FORWARD_URL": "http://svc:8000", "MM_SCORING_ROUTE": "", "MM_PORT": "5001"}
    assert (ForwardSettings.from_env(empty_routes).scoring, ForwardSettings.from_env(empty_routes).port) == (
        "/predict",
        5001,
    )


@pytest.mark.parametrize(
    "env, match",
    [
        ({}, "MM_FORWARD_URL\n  Field required"),
        ({"MM_FORWARD_URL": "svc:8000"}, "MM_FORWARD_URL\n  Value error, 'svc:8000' must be an http"),
        ({"MM_FORWARD_URL": "http://svc?x=1"}, "MM_FORWARD_URL"),
        ({"MM_FORWARD_URL": "http://svc", "MM_PORT": "eighty"}, "MM_PORT"),
        ({"MM_FORWARD_URL": "http://svc", "MM_FORWARD_TIMEOUT_S": "0"}, "MM_FORWARD_TIMEOUT_S"),
        ({"MM_FORWARD_URL": "http://svc", "MM_SCORING_ROUTE": "score"}, "must be a path starting with '/'"),
        ({"MM_FORWARD_URL": "http://svc", "MM_LIVENESS_ROUTE": "/predict"}, "routes must differ"),
        (
            {
                "MM_FORWARD_URL": "http://svc",
                "MM_LIVENESS_ROUTE": "/v2/health/ready",
                "MM_READINESS_ROUTE": "/r",
            },
            "liveness route '/v2/health/ready' would shadow",
        ),
    ],
)
def test_bad_settings_name_the_variable(env: dict[str, str], match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        ForwardSettings.from_env(env)


def test_scores_through_a_real_replica(replica: str) -> None:
    forwarder = Forwarder(replica)
    try:
        client = forwarder.client
        assert client.get("/live").json() == {"live": True}
        assert client.get("/ready").json() == {"ready": True}
        for body in ({"model": "mlp-001", "input_data": ROW}, {"input_data": [ROW, ROW]}):
            via = client.post("/score", json=body)
            direct = httpx.post(f"{replica}/predict", json=body, timeout=30)
            assert via.status_code == 200, via.text
            assert via.json() == direct.json() and via.headers["content-type"] == "application/json"
        assert (
            client.post("/score", json={"input_data": ROW}, headers={"x-model": "mlp-002"}).json()["model"]
            == "mlp-002"
        )
        # The replica's own errors come back unchanged: same status, same JSON.
        for content in (b"{not json", json.dumps({"model": "nope", "input_data": ROW}).encode(), b"[]"):
            via = client.post("/score", content=content, headers={"content-type": "application/json"})
            direct = httpx.post(f"{replica}/predict", content=content, timeout=30)
            assert 400 <= via.status_code < 500 and via.status_code == direct.status_code
            assert via.json() == direct.json() and set(via.json()) == {"error"}
        # The forwarder's own routes: only the three, as JSON errors.
        assert client.get("/score").status_code == 405 and "error" in client.get("/score").json()
        missing = client.post("/predict", json={"input_data": ROW})
        assert missing.status_code == 404 and missing.json() == {"error": "no route POST /predict"}
    finally:
        forwarder.close()


def test_not_ready_while_the_service_is_not(tmp_path: Path) -> None:
    empty = ServerConfig.model_validate({"store": {"uri": str(tmp_path), "refresh_interval_s": 0}})
    server = EmbeddedServer(empty, Metrics("fwd"), "127.0.0.1", 0)
    forwarder = Forwarder(f"http://127.0.0.1:{server.start()}")
    try:
        ready = forwarder.client.get("/ready")
        assert ready.status_code == 503 and ready.json()["ready"] is False
        assert "answered 503" in ready.json()["reason"] and "holds no models" in ready.json()["reason"]
        assert forwarder.client.get("/live").status_code == 200  # alive all the same: no restart
    finally:
        forwarder.close()
        server.stop()


def test_service_down_is_a_json_502() -> None:
    forwarder = Forwarder(f"http://127.0.0.1:{free_port()}")  # nothing listens there
    try:
        down = forwarder.client.post("/score", json={"input_data": ROW})
        assert down.status_code == 502 and "could not be reached: ConnectError" in down.json()["error"]
        ready = forwarder.client.get("/ready")
        assert ready.status_code == 503 and "unreachable: ConnectError" in ready.json()["reason"]
    finally:
        forwarder.close()


def test_service_that_never_answers_is_a_json_504() -> None:
    listener = socket.create_server(("127.0.0.1", 0))  # accepts (backlog), never answers
    forwarder = Forwarder(f"http://127.0.0.1:{listener.getsockname()[1]}", MM_FORWARD_TIMEOUT_S="0.5")
    try:
        late = forwarder.client.post("/score", json={"input_data": ROW})
        assert late.status_code == 504, late.text
        assert "did not answer in time: ReadTimeout" in late.json()["error"]
    finally:
        forwarder.close()
        listener.close()


def test_headers_and_body_stream_through() -> None:
    """The request body arrives whole with its length, the endpoint's credentials stay behind, the
    answer's status, headers and bytes come back as sent."""
    seen: dict[str, Any] = {}

    class Echo(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            body = self.rfile.read(int(self.headers["content-length"]))
            seen.update(
                path=self.path, headers={k.lower(): v for k, v in self.headers.items()}, size=len(body)
            )
            answer = b'{"error": "slow down"}' * 5000
            self.send_response(429)
            self.send_header("content-type", "application/json")
            self.send_header("retry-after", "3")
            self.send_header("content-length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args: object) -> None:
            pass

    upstream = ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    forwarder = Forwarder(f"http://127.0.0.1:{upstream.server_address[1]}")
    try:
        payload = b"x" * (3 * 2**20)
        answer = forwarder.client.post(
            "/score?trace=1",
            content=payload,
            headers={"authorization": "Bearer endpoint-key", "x-model": "m", "x-ms-request-id": "r1"},
        )
        assert answer.status_code == 429 and answer.headers["retry-after"] == "3"
        assert answer.content == b'{"error": "slow down"}' * 5000
        assert seen["path"] == "/predict?trace=1" and seen["size"] == len(payload)
        headers = seen["headers"]
        assert headers["content-length"] == str(len(payload)) and "transfer-encoding" not in headers
        assert headers["x-model"] == "m" and headers["x-ms-request-id"] == "r1"
        assert "authorization" not in headers and headers["host"] == f"127.0.0.1:{upstream.server_address[1]}"
    finally:
        forwarder.close()
        upstream.shutdown()
        upstream.server_close()
