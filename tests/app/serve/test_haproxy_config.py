"""The Gateway's HAProxy: the rendered configuration passes ``haproxy -c``, and a real HAProxy in
front of tiny HTTP servers routes each model to one server while spreading models across both, and
enforces the ModelServer's concurrency limits (maxconn per replica, a bounded queue, quick 503s).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from processes import free_port
from prometheus_client.parser import text_string_to_metric_families

from manymodels.config import GatewayConfig
from manymodels.serve import gateway_metrics
from manymodels.serve.concurrency import ConcurrencyLimits
from manymodels.serve.haproxy_config import QUEUE_FULL, UNAVAILABLE, render
from manymodels.serve.haproxy_process import HAProxyProcess, haproxy_binary
from manymodels.serve.registry import Endpoint

try:
    haproxy_binary()
except FileNotFoundError:  # pragma: no cover - ray[serve] ships one
    pytest.skip("no haproxy binary", allow_module_level=True)

HASH_LINES = ("balance hdr(x-mm-model)", "hash-type consistent", "hash-balance-factor 150")
MODELS = [f"model-{i:02d}" for i in range(24)]


def endpoints(n: int) -> list[Endpoint]:
    # Replica ids as Ray Serve makes them (unique_id), one with a '#' as in full replica tags.
    names = ["t5n9x2aq", "app#ModelServer#b81kz0", "qq0p3m1c"]
    return [Endpoint(names[i], "127.0.0.1", 20000 + i) for i in range(n)]


@pytest.fixture
def checker(tmp_path: Path) -> HAProxyProcess:
    return HAProxyProcess(workdir=str(tmp_path / "haproxy"))


@pytest.mark.parametrize("n", [0, 1, 3])
def test_render_passes_haproxy_check(checker: HAProxyProcess, n: int) -> None:
    config = GatewayConfig(port=8123, balance_factor=150)
    text = render(config, endpoints(n))
    checker.check(text)
    lines = [line.strip() for line in text.splitlines()]
    for expected in HASH_LINES:
        assert lines.count(expected) == 2  # inference and control backends
    servers = [line for line in lines if line.startswith("server ") and " check " in line]
    assert len(servers) == n
    for line, endpoint in zip(servers, endpoints(n), strict=True):
        assert line.endswith(f"{endpoint.host}:{endpoint.port} check weight 100")
        assert "#" not in line
        name = line.split()[1]
        assert f"server {name} {endpoint.host}:{endpoint.port} track replicas/{name} weight 100" in lines
    assert "bind 127.0.0.1:8123" in lines
    # No limits known: nothing capped, nothing refused.
    assert "maxconn" not in text.split("defaults")[1] and "queue(replicas)" not in text


def test_render_settings(checker: HAProxyProcess) -> None:
    config = GatewayConfig(
        host="0.0.0.0", port=9000, balance_factor=125, max_body_bytes="1Mi", health_interval_ms=250
    )
    text = render(config, endpoints(3), nbthread=4)
    checker.check(text)
    assert "hash-balance-factor 125" in text
    assert "nbthread 4" in text
    assert "default-server inter 250 " in text
    assert "gt 1048576" in text and "1048576-byte limit" in text


@pytest.mark.parametrize("routing", ["leastconn", "roundrobin"])
def test_render_other_routing(checker: HAProxyProcess, routing: str) -> None:
    text = render(GatewayConfig(routing=routing), endpoints(3))
    checker.check(text)
    assert f"balance {routing}" in text
    assert "hash-type consistent" not in text


def test_render_with_the_metrics_backend(checker: HAProxyProcess) -> None:
    text = render(GatewayConfig(), endpoints(1), metrics_port=9100)
    checker.check(text)
    assert "server gateway 127.0.0.1:9100" in text
    assert "use_backend node_metrics if { path /metrics }" in text


def backend_section(text: str, name: str) -> str:
    return text.split(f"backend {name}\n")[1].split("\nbackend ")[0]


def test_render_concurrency_limits(checker: HAProxyProcess) -> None:
    text = render(GatewayConfig(), endpoints(2), limits=ConcurrencyLimits(8, 4), stats_socket="/tmp/mm.sock")
    checker.check(text)
    assert "default-server inter 1000 fall 2 rise 1 maxconn 8" in backend_section(text, "replicas")
    assert "maxconn" not in backend_section(text, "control")
    assert "acl queue_is_full queue(replicas) ge 4" in text
    assert "use_backend queue_full if predict queue_is_full or oip_model oip_infer queue_is_full" in text
    assert text.index("use_backend queue_full") < text.index("use_backend replicas")
    assert json.dumps({"error": QUEUE_FULL}).replace('"', '\\"') in backend_section(text, "queue_full")
    assert "hdr retry-after 1" in backend_section(text, "queue_full")
    assert "stats socket /tmp/mm.sock mode 600 level user" in text
    # Serve's default max_queued_requests (-1): capped per replica, the queue unbounded.
    unbounded = render(GatewayConfig(), endpoints(2), limits=ConcurrencyLimits(16))
    checker.check(unbounded)
    assert "maxconn 16" in backend_section(unbounded, "replicas")
    assert "queue(replicas)" not in unbounded


def test_render_extra_routes(checker: HAProxyProcess) -> None:
    routes = {"liveness": "/live", "readiness": "/ready", "scoring": "/v1/models/x:score"}
    text = render(GatewayConfig(routes=routes), endpoints(2))
    checker.check(text)
    lines = [line.strip() for line in text.splitlines()]
    assert "http-request set-path /predict if { path /v1/models/x:score }" in lines
    assert "http-request set-path /v2/health/ready if { path /ready }" in lines
    # Rewritten before the model id is read from the path or the /predict body.
    assert lines.index("http-request set-path /predict if { path /v1/models/x:score }") < lines.index(
        "acl predict path /predict"
    )
    assert "set-path" not in render(GatewayConfig(), endpoints(2))


def test_check_refuses_a_broken_configuration(checker: HAProxyProcess) -> None:
    with pytest.raises(ValueError, match="invalid HAProxy configuration"):
        checker.check(render(GatewayConfig(), endpoints(1)).replace("hash-type", "hash-kind"))


# ---- a real HAProxy -----------------------------------------------------------------------------


def backend(
    server_id: str, hold: threading.Event | None = None, echo_path: bool = False
) -> ThreadingHTTPServer:
    """Answers who it is (and with ``echo_path`` the path it was asked); with ``hold``, POSTs
    (inference) wait until it is set."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True
        wbufsize = 1 << 16  # headers and body in one write (no delayed-ACK stalls)

        def _answer(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            if length:
                self.rfile.read(length)
            if hold is not None and self.command == "POST":
                hold.wait(60)
            if self.path == "/-/healthz":
                body = b"success"
            else:
                answer = {"server": server_id, "model": self.headers.get("x-mm-model")}
                body = json.dumps(answer | ({"path": self.path} if echo_path else {})).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = _answer  # noqa: N815

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    return server


@pytest.fixture
def backends() -> Iterator[dict[str, Endpoint]]:
    servers = {name: backend(name) for name in ("a", "b")}
    yield {name: Endpoint(f"replica-{name}", "127.0.0.1", s.server_address[1]) for name, s in servers.items()}
    for server in servers.values():
        server.shutdown()
        server.server_close()


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), 0.2):
            return True
    except OSError:
        return False


def test_haproxy_routes_each_model_to_one_replica(tmp_path: Path, backends: dict[str, Endpoint]) -> None:
    port = free_port()
    config = GatewayConfig(host="127.0.0.1", port=port, health_interval_ms=100, max_body_bytes="4Ki")
    proc = HAProxyProcess(workdir=str(tmp_path / "haproxy"))
    try:
        proc.apply(render(config, sorted(backends.values())))
        proc.wait_listening("127.0.0.1", port)
        assert proc.running
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5.0) as client:

            def ask(path: str = "/v2/health/ready", **kwargs: object) -> dict[str, str]:
                method = "POST" if "json" in kwargs or "content" in kwargs else "GET"
                response = client.request(method, path, **kwargs)  # type: ignore[arg-type]
                assert response.status_code == 200, response.text
                return response.json()

            placement: dict[str, str] = {}
            for model in MODELS:
                answers = [ask(headers={"x-model": model}) for _ in range(3)]
                assert {a["model"] for a in answers} == {model}
                servers = {a["server"] for a in answers}
                assert len(servers) == 1, f"{model} landed on {servers}"
                placement[model] = servers.pop()
            assert set(placement.values()) == {"a", "b"}, placement

            # The model id also comes from the OIP path and from the /predict body.
            for model in MODELS[:6]:
                oip = ask(f"/v2/models/{model}/versions/1/infer", json={"inputs": []})
                assert oip == {"server": placement[model], "model": model}
                predict = ask("/predict", json={"model": model, "input_data": [1, 2]})
                assert predict == {"server": placement[model], "model": model}

            # Without a model id: round robin over both.
            anonymous = {ask("/predict", json={"input_data": "x"})["server"] for _ in range(6)}
            assert anonymous == {"a", "b"}

            assert client.get("/-/healthz").text == "success"
            too_big = client.post("/predict", content=b"x" * 5000)
            assert too_big.status_code == 413
            assert too_big.json() == {"error": "request body exceeds the 4096-byte limit"}

            # A reload with one replica left sends every model there.
            proc.apply(render(config, [backends["b"]]))
            moved = [m for m, s in placement.items() if s == "a"]
            deadline = time.monotonic() + 10
            while ask(headers={"x-model": moved[0]})["server"] != "b":
                assert time.monotonic() < deadline, "the reload never took effect"
                time.sleep(0.05)
            assert {ask(headers={"x-model": m})["server"] for m in MODELS} == {"b"}

            # A Gateway that can reach no replica says so on /-/healthz (KubeRay's readiness question),
            # so Kubernetes sends the node no traffic it would answer with 503.
            proc.apply(render(config, [Endpoint("replica-gone", "127.0.0.1", free_port())]))
            deadline = time.monotonic() + 10
            while (health := client.get("/-/healthz")).status_code != 503:
                assert time.monotonic() < deadline, "healthz still passes with no replica up"
                time.sleep(0.05)
            assert health.text == "no replica reachable"

        assert proc._proc is not None
        pid = proc._proc.pid
    finally:
        proc.stop()

    assert not proc.running
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    deadline = time.monotonic() + 5
    while port_open(port):
        assert time.monotonic() < deadline, "haproxy still listens after stop()"
        time.sleep(0.05)
    proc.stop()  # idempotent


def test_haproxy_enforces_the_concurrency_limits() -> None:
    """max_ongoing_requests=2 per replica, max_queued_requests=2: of 8 concurrent inference requests
    to a replica that holds them, 2 run, 2 wait in the Gateway's queue and 4 get a quick JSON 503 with
    Retry-After; health, metadata and metrics are answered meanwhile; the stats say so."""
    hold = threading.Event()
    server = backend("slow", hold)
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="mm-")  # short: a unix socket path has ~100 bytes
    proc = HAProxyProcess(workdir=workdir)
    replica = Endpoint("replica-slow", "127.0.0.1", server.server_address[1])
    limits = ConcurrencyLimits(max_ongoing=2, max_queued=2)
    config = GatewayConfig(host="127.0.0.1", port=port, health_interval_ms=100)
    url = f"http://127.0.0.1:{port}"

    def stats() -> dict[str, float]:
        page = gateway_metrics.render_page("gw", gateway_metrics.read_stats(str(proc.stats_socket)), limits)
        return {
            f"{s.name}{'/' + s.labels['reason'] if 'reason' in s.labels else ''}": s.value
            for family in text_string_to_metric_families(page)
            for s in family.samples
        }

    def infer(i: int) -> httpx.Response:
        path, body = ("/predict", {"model": "m", "input_data": [i]}) if i % 2 else ("/v2/models/m/infer", {})
        return httpx.post(url + path, json=body, timeout=60)

    try:
        proc.apply(render(config, [replica], limits=limits, stats_socket=str(proc.stats_socket)))
        proc.wait_listening("127.0.0.1", port)
        with ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(infer, i) for i in range(8)]
            # The refused ones come back while the admitted ones are still held.
            deadline = time.monotonic() + 30
            while sum(f.done() for f in futures) < 4:
                assert time.monotonic() < deadline, "no quick refusals"
                time.sleep(0.01)
            time.sleep(0.2)  # nothing else comes back while the replica holds its requests
            refused = [f.result() for f in futures if f.done()]
            assert len(refused) == 4
            for response in refused:
                assert response.status_code == 503
                assert response.headers["retry-after"] == "1"
                assert response.json() == {"error": QUEUE_FULL}
            now = stats()
            assert now["manymodels_gateway_inflight"] == 2
            assert now["manymodels_gateway_queued"] == 2
            assert now["manymodels_gateway_rejected_total/queue_full"] == 4
            assert now["manymodels_gateway_rejected_total/unavailable"] == 0
            assert now["manymodels_gateway_max_ongoing_requests"] == 2
            assert now["manymodels_gateway_max_queued_requests"] == 2
            # Neither health checks nor metadata wait behind inference.
            with httpx.Client(base_url=url, timeout=5) as client:
                assert client.get("/-/healthz").text == "success"
                assert client.get("/v2/health/ready").status_code == 200
                assert client.get("/v2/models/m").status_code == 200
            hold.set()
            statuses = Counter(f.result().status_code for f in futures)
        assert statuses == {200: 4, 503: 4}
        after = stats()
        assert (after["manymodels_gateway_inflight"], after["manymodels_gateway_queued"]) == (0, 0)

        # HAProxy's own 503 (no replica could take the request) is JSON with Retry-After too.
        gone = Endpoint("replica-gone", "127.0.0.1", free_port())
        proc.apply(render(config, [gone], limits=limits, stats_socket=str(proc.stats_socket)))
        deadline = time.monotonic() + 10
        while (response := httpx.post(url + "/predict", json={"input_data": [1]}, timeout=30)).json() != {
            "error": UNAVAILABLE
        }:
            assert time.monotonic() < deadline, response.text
            time.sleep(0.05)
        assert response.status_code == 503 and response.headers["retry-after"] == "1"
        assert stats()["manymodels_gateway_rejected_total/unavailable"] >= 1
    finally:
        hold.set()
        proc.stop()
        server.shutdown()
        server.server_close()
        shutil.rmtree(workdir, ignore_errors=True)


def test_haproxy_extra_routes_reach_the_replicas_paths() -> None:
    """Azure ML's routes (docs/azureml.md): liveness answered by HAProxy even with no replica up,
    readiness asked of a replica's /v2/health/ready (control backend: never behind inference), scoring
    served as /predict with its model routing, concurrency limits and queue."""
    hold = threading.Event()
    server = backend("a", hold, echo_path=True)
    port = free_port()
    proc = HAProxyProcess(workdir=tempfile.mkdtemp(prefix="mm-"))
    replica = Endpoint("replica-a", "127.0.0.1", server.server_address[1])
    limits = ConcurrencyLimits(max_ongoing=1, max_queued=1)
    routes = {"liveness": "/live", "readiness": "/ready", "scoring": "/score"}
    config = GatewayConfig(host="127.0.0.1", port=port, health_interval_ms=100, routes=routes)
    url = f"http://127.0.0.1:{port}"
    try:
        proc.apply(render(config, [replica], limits=limits))
        proc.wait_listening("127.0.0.1", port)
        with ThreadPoolExecutor(3) as pool, httpx.Client(base_url=url, timeout=10) as client:
            scored = [
                pool.submit(
                    httpx.post, f"{url}/score", json={"model": f"m{i}", "input_data": [i]}, timeout=60
                )
                for i in range(3)
            ]
            deadline = time.monotonic() + 30
            while not any(f.done() for f in scored):  # one runs, one waits, one is refused at once
                assert time.monotonic() < deadline, "no quick refusal: /score bypasses the queue limit"
                time.sleep(0.01)
            [refused] = [f.result() for f in scored if f.done()]
            assert refused.status_code == 503 and refused.json() == {"error": QUEUE_FULL}
            ready = client.get("/ready")  # answered while inference is held
            assert ready.status_code == 200 and ready.json()["path"] == "/v2/health/ready"
            live = client.get("/live")
            assert live.status_code == 200 and live.json() == {"live": True}
            hold.set()
            answers = [f.result().json() for f in scored if f.result().status_code == 200]
        assert len(answers) == 2
        assert {a["path"] for a in answers} == {"/predict"}
        assert {a["model"] for a in answers} < {"m0", "m1", "m2"}  # read from the body, as for /predict
        assert httpx.get(url + "/score", timeout=5).json()["path"] == "/predict"  # the replica says 405

        # No replica reachable: not ready (JSON 503), still live.
        gone = Endpoint("replica-gone", "127.0.0.1", free_port())
        proc.apply(render(config, [gone], limits=limits))
        deadline = time.monotonic() + 10
        while (ready := httpx.get(url + "/ready", timeout=30)).status_code != 503:
            assert time.monotonic() < deadline, ready.text
            time.sleep(0.05)
        assert ready.json() == {"error": UNAVAILABLE}
        assert httpx.get(url + "/live", timeout=5).json() == {"live": True}
    finally:
        hold.set()
        proc.stop()
        server.shutdown()
        server.server_close()
