"""Run a Serve config on this machine the way KubeRay does on a cluster (``deploy_apps``).

Used by ``make demo``, the integration tests and the benchmarks, so all of them exercise the exact
config format the Helm chart renders.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import ray
from ray import serve
from ray.serve._private import api as serve_api
from ray.serve.schema import ServeDeploySchema

from manymodels.config import app_settings

log = logging.getLogger(__name__)


def start_ray(num_cpus: int | None = None) -> None:
    """A local Ray without dashboard (saves ~0.4 GB and seconds of start-up)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if not ray.is_initialized():
        ray.init(
            num_cpus=num_cpus or os.cpu_count(),
            include_dashboard=False,
            log_to_driver=os.environ.get("MM_RAY_LOGS", "0") == "1",
            configure_logging=False,
        )


def deploy(config: dict[str, Any]) -> None:
    """Submit (or update in place) the applications in a Serve config, non-blocking."""
    schema = ServeDeploySchema.model_validate(config)
    client = serve_api.serve_start(
        http_options=schema.http_options.model_dump(), proxy_location=schema.proxy_location
    )
    client.deploy_apps(schema, _blocking=False)


def wait_ready(
    config: dict[str, Any],
    timeout: float = 180.0,
    progress: Callable[[str], None] | None = None,
    stop: threading.Event | None = None,
) -> str:
    """Block until the Gateway answers ``/v2/health/ready`` through a replica; returns its URL.

    A replica that answers but is not ready for a reason of the catalog's (no models yet, the default
    model missing: a JSON 503 with ``reason``) counts as started, its reason logged: the server is up
    and serves what the catalog holds; a catalog filled later makes it ready without a restart.
    Raises ``InterruptedError`` as soon as ``stop`` is set (a stop signal during start-up)."""
    gateway = app_settings(config).gateway
    host = "127.0.0.1" if gateway.host in ("0.0.0.0", "::") else gateway.host
    url = f"http://{host}:{gateway.port}"
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if stop is not None and stop.is_set():
            raise InterruptedError("stopped before the application was ready")
        status = _app_status()
        if status != last and progress:
            progress(status)
            last = status
        if status.startswith(("DEPLOY_FAILED", "UNHEALTHY")):
            raise RuntimeError(f"Serve application failed: {status}")
        try:
            r = httpx.get(url + "/v2/health/ready", timeout=2)
            if r.status_code == 200:
                return url
            reason = _not_ready_reason(r)
            if reason:
                log.warning("serving at %s, not ready yet: %s", url, reason)
                return url
        except httpx.HTTPError:
            pass
        if stop is not None:
            stop.wait(0.5)
        else:
            time.sleep(0.5)
    raise TimeoutError(f"no ready replica behind {url} after {timeout:.0f}s (status {last})")


def _not_ready_reason(r: httpx.Response) -> str | None:
    """The replica's own "not ready" reason (its JSON 503), None for anything else (HAProxy's 503
    while no replica is up has no ``reason``)."""
    if r.status_code != 503:
        return None
    try:
        body = r.json()
    except ValueError:
        return None
    return body.get("reason") if isinstance(body, dict) and body.get("ready") is False else None


def _app_status() -> str:
    try:
        apps = serve.status().applications
    except Exception:  # controller still starting
        return "STARTING"
    if not apps:
        return "STARTING"
    parts = []
    for app in apps.values():
        text = str(app.status.value if hasattr(app.status, "value") else app.status)
        if app.message:
            text += f": {app.message.strip()[:200]}"
        for name, dep in app.deployments.items():
            if dep.message and ("UNHEALTHY" in str(dep.status) or "FAIL" in str(dep.status)):
                text += f" [{name}: {dep.message.strip()[-1500:]}]"
        parts.append(text)
    return "; ".join(parts)


def shutdown() -> None:
    try:
        serve.shutdown()
    finally:
        ray.shutdown()
