"""The ModelServer deployment: one replica = one model cache + one direct HTTP endpoint.

``user_config`` carries the whole ServerConfig, so catalog, alias and budget changes apply in place
through ``reconfigure`` (no replica restart). The replica announces its HTTP address to the Gateways,
reports its in-flight requests for Serve's autoscaler and enforces the deployment's
``max_ongoing_requests`` / ``max_queued_requests`` on its direct endpoint (``manymodels.admission``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading

import ray
from ray import serve

from manymodels.config import MODEL_SERVER, ServerConfig
from manymodels.errors import ConfigurationError
from manymodels.metrics import Metrics
from manymodels.runtimes import require_device
from manymodels.serve import concurrency, registry
from manymodels.serve.embedded import EmbeddedServer

log = logging.getLogger("manymodels.server")


@serve.deployment(name=MODEL_SERVER, max_ongoing_requests=256)
class ModelServer:
    def __init__(self) -> None:
        context = serve.get_replica_context()
        self._app = context.app_name
        self._replica = context.replica_id.unique_id
        self._server: EmbeddedServer | None = None
        self._endpoint: registry.Endpoint | None = None
        self._stop = threading.Event()
        self._limits = concurrency.of_this_replica()

    async def reconfigure(self, user_config: dict) -> None:
        config = ServerConfig.model_validate(user_config)
        if self._server is None:
            self._start(config)  # a bad first config fails the deploy, loudly
            return
        try:
            self._server.submit(self._server.plane.reconfigure(config)).result()
        except ConfigurationError as exc:
            # Raising here would make Serve restart the replica, which then fails on the same config:
            # refuse it and keep serving the old one, with the reason in the log and the metrics.
            plane = self._server.plane
            plane.metrics.config_rejected.labels(plane.metrics.replica).inc()
            log.error("user_config refused, the previous one keeps serving: %s", exc)

    def _start(self, config: ServerConfig) -> None:
        require_device(config.runtime)  # device: cuda on a host without a GPU fails the deploy here
        server = EmbeddedServer(
            config, Metrics(self._replica), config.http.host, config.http.port, self._limits
        )
        port = server.start()
        host = config.http.host
        if host in ("0.0.0.0", "::"):
            host = ray.util.get_node_ip_address()
        self._server = server
        self._endpoint = registry.Endpoint(self._replica, host, port)
        registry.announce(self._app, self._endpoint)
        threading.Thread(target=self._heartbeat, name="mm-heartbeat", daemon=True).start()
        log.info("replica %s serving on %s:%s", self._replica, host, port)

    def _heartbeat(self) -> None:
        while not self._stop.wait(registry.HEARTBEAT_S):
            try:
                assert self._endpoint is not None and self._server is not None
                registry.announce(self._app, self._endpoint)
                # Serve reconfigures this replica in place when max_ongoing_requests changes,
                # without calling our reconfigure (the user_config did not change): look here.
                limits = concurrency.of_this_replica()
                if limits != self._limits:
                    self._server.set_limits(limits)
                    self._limits = limits
                    log.info("concurrency limits now %s", limits)
            except Exception:
                log.exception("heartbeat failed")

    def check_health(self) -> None:
        if self._server is not None and not self._server.loop.is_running():
            raise RuntimeError("embedded HTTP server stopped")

    async def record_autoscaling_stats(self) -> dict[str, float]:
        """Requests arrive over the direct endpoint, unseen by Serve: report them ourselves."""
        return {"inflight": float(self._server.inflight if self._server else 0)}

    async def handle_http(
        self, method: str, path: str, query: str, headers: list[tuple[str, str]], body: bytes
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        """One request from Ray's proxy path, run through the same ASGI app on the serving loop."""
        assert self._server is not None
        future = self._server.submit(self._server.call_asgi(method, path, query, headers, body))
        return await asyncio.wrap_future(future)

    def __del__(self) -> None:
        self._stop.set()
        if self._endpoint is not None:
            with contextlib.suppress(Exception):  # the GCS may already be gone at shutdown
                registry.withdraw(self._app, self._replica)
        if self._server is not None:
            self._server.stop()
