"""The Gateway deployment: one per node, it keeps a local HAProxy routing to every ModelServer.

It polls the replica registry and the ModelServer's concurrency limits (``max_ongoing_requests``,
``max_queued_requests``) and reloads HAProxy only when either changes; model rollouts never touch it
(they travel in the ModelServer's ``user_config``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.requests import Request
from starlette.responses import Response

from manymodels.config import GATEWAY, GatewayConfig
from manymodels.serve import concurrency, gateway_metrics, registry
from manymodels.serve.concurrency import ConcurrencyLimits
from manymodels.serve.haproxy_config import render
from manymodels.serve.haproxy_process import HAProxyProcess
from manymodels.serve.metrics_merge import merge_pages

log = logging.getLogger("manymodels.gateway")
POLL_S = 1.0
# How long a replaced Gateway keeps its port served while its successor starts (a new replica can
# take 20 s+ on a busy node); Serve's graceful_shutdown_timeout_s must exceed it.
HANDOVER_S = 45.0
# Serve sleeps graceful_shutdown_wait_loop_s (default 2 s) before it first counts a stopping replica's
# in-flight requests. The Gateway's traffic does not pass Serve's router (HAProxy drains its own in
# __del__), so that sleep only delays every stop. The ModelServer keeps the default: during a rollout
# those 2 s are what keeps an old replica serving until its successor has registered.
SHUTDOWN_WAIT_LOOP_S = 0.2


@serve.deployment(
    name=GATEWAY,
    ray_actor_options={"num_cpus": 0},
    graceful_shutdown_timeout_s=HANDOVER_S + 15,
    graceful_shutdown_wait_loop_s=SHUTDOWN_WAIT_LOOP_S,
)
class Gateway:
    def __init__(self, model_server: DeploymentHandle) -> None:
        self._model_server = model_server
        context = serve.get_replica_context()
        self._app = context.app_name
        self._id = context.replica_id.unique_id
        self._config: GatewayConfig | None = None
        self._haproxy = HAProxyProcess()
        self._replicas: list[registry.Endpoint] = []
        self._limits: ConcurrencyLimits | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._leaving = False
        self._metrics = _MetricsServer(lambda: self._replicas, self._own_metrics)
        self._thread = threading.Thread(target=self._watch, name="mm-gateway", daemon=True)
        self._thread.start()

    def reconfigure(self, user_config: dict) -> None:
        config = GatewayConfig.model_validate(user_config or {})
        with self._lock:
            self._config = config
            self._sync(force=True)

    def _sync(self, force: bool = False) -> None:
        if self._config is None:
            return
        replicas = registry.endpoints(self._app)
        limits = self._current_limits()
        if not force and (replicas, limits) == (self._replicas, self._limits) and self._haproxy.running:
            return
        nbthread = int(os.environ.get("MANYMODELS_HAPROXY_THREADS", "1"))
        self._haproxy.apply(
            render(
                self._config,
                replicas,
                nbthread=nbthread,
                metrics_port=self._metrics.port,
                limits=limits,
                stats_socket=str(self._haproxy.stats_socket),
            )
        )
        if replicas != self._replicas:
            log.info("gateway routes to %d replica(s)", len(replicas))
        if limits != self._limits:
            log.info("gateway applies %s", limits)
        self._replicas, self._limits = replicas, limits
        self._haproxy.wait_listening(self._config.host, self._config.port)

    def _current_limits(self) -> ConcurrencyLimits | None:
        """The ModelServer's limits now; the last known ones while the Serve controller is away
        (e.g. a head restart), none (no limit, as Serve's router would not apply one either) before
        it ever answered."""
        try:
            return concurrency.of_deployment(self._app)
        except Exception as exc:
            if self._limits is not None:
                log.warning("keeping %s: the Serve controller did not answer (%s)", self._limits, exc)
            return self._limits

    def _own_metrics(self) -> str:
        try:
            rows = gateway_metrics.read_stats(str(self._haproxy.stats_socket))
        except OSError:
            return ""  # HAProxy (re)starting: the next scrape has it
        return gateway_metrics.render_page(self._id, rows, self._limits)

    def _watch(self) -> None:
        while not self._stop.wait(POLL_S):
            try:
                with self._lock:
                    self._sync()
                    if self._config is not None and self._haproxy.running and not self._leaving:
                        registry.announce(self._app, self._me(), kind="gateways")
            except Exception:  # keep watching; the next round retries
                log.exception("gateway sync failed")

    def _me(self) -> registry.Endpoint:
        assert self._config is not None
        return registry.Endpoint(self._id, _node_ip(), self._config.port)

    def _await_successor(self, timeout: float = HANDOVER_S) -> None:
        """When Serve replaces this Gateway (a new app version), keep the port served until the
        successor's HAProxy listens beside ours (SO_REUSEPORT), so no connection is refused.

        Only then: when the application is deleted, Serve shuts down or the Gateway scales down, no
        successor can come and the replica stops at once."""
        if self._config is None or not self._successor_expected():
            return
        me = self._me()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            successors = [
                g for g in registry.endpoints(self._app, kind="gateways")
                if g.replica != me.replica and (g.host, g.port) == (me.host, me.port)
            ]
            if successors or not self._successor_expected():
                return
            time.sleep(0.2)

    def check_health(self) -> None:
        if self._config is not None and not self._haproxy.running:
            raise RuntimeError("haproxy is not running")

    async def __call__(self, request: Request) -> Response:
        """Ray's own proxy lands here (the slow path, kept for Serve-native clients): forward it."""
        status, headers, body = await self._model_server.handle_http.remote(
            request.method,
            request.url.path,
            request.url.query,
            list(request.headers.items()),
            await request.body(),
        )
        return Response(body, status_code=status, headers=dict(headers))

    def _successor_expected(self) -> bool:
        """True only while Serve rolls the Gateway out to a new version (the app deploying or
        running, the Gateway deployment UPDATING); a deleted app, a Serve shutdown (controller
        gone or deleting) or a scale-down (a node left) brings no successor."""
        try:
            app = serve.status().applications.get(self._app)
        except Exception:  # controller gone: the whole app is shutting down
            return False
        if app is None or _name(app.status) not in ("DEPLOYING", "RUNNING"):
            return False
        deployment = app.deployments.get(GATEWAY)
        return deployment is not None and _name(deployment.status) == "UPDATING"

    def __del__(self) -> None:
        self._leaving = True
        with contextlib.suppress(Exception):
            registry.withdraw(self._app, self._id, kind="gateways")
            self._await_successor()  # the watch thread keeps our routes current meanwhile
        self._stop.set()
        with self._lock:
            self._haproxy.stop()
        self._metrics.close()


def _name(status: object) -> str:
    """A Serve status enum's name, whichever way this Ray version spells it."""
    return str(getattr(status, "value", status)).rsplit(".", 1)[-1]


def _node_ip() -> str:
    import ray

    return ray.util.get_node_ip_address()


class _MetricsServer:
    """``/metrics`` for the whole node: every replica's page, fetched directly, and the Gateway's own
    series (``own``), merged."""

    def __init__(self, replicas: Callable[[], list[registry.Endpoint]], own: Callable[[], str]) -> None:
        def fetch(endpoint: registry.Endpoint) -> str:
            try:
                return httpx.get(f"http://{endpoint.host}:{endpoint.port}/metrics", timeout=5).text
            except httpx.HTTPError:
                return ""  # a replica that is going away; the others still count

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                body = merge_pages([own()] + [fetch(e) for e in replicas()]).encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, name="mm-metrics", daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
