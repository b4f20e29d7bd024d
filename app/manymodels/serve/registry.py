"""Where ModelServer replicas announce their direct HTTP address to the Gateways.

Ray's internal KV (in the GCS) is cluster-wide and survives replica restarts; each replica rewrites
its entry every few seconds and Gateways drop entries older than ``STALE_AFTER_S``, so a replica that
died without cleaning up disappears on its own (HAProxy's health check removes it sooner).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from ray.experimental.internal_kv import (
    _internal_kv_del,
    _internal_kv_get,
    _internal_kv_list,
    _internal_kv_put,
)

NAMESPACE = "manymodels"
HEARTBEAT_S = 2.0
STALE_AFTER_S = 10.0


@dataclass(frozen=True, order=True)
class Endpoint:
    replica: str
    host: str
    port: int


def _prefix(app: str, kind: str) -> str:
    return f"{app}/{kind}/"


def announce(app: str, endpoint: Endpoint, kind: str = "replicas") -> None:
    value = json.dumps({"host": endpoint.host, "port": endpoint.port, "ts": time.time()})
    key = _prefix(app, kind) + endpoint.replica
    _internal_kv_put(key, value, overwrite=True, namespace=NAMESPACE)


def withdraw(app: str, replica: str, kind: str = "replicas") -> None:
    _internal_kv_del(_prefix(app, kind) + replica, namespace=NAMESPACE)


def endpoints(app: str, now: float | None = None, kind: str = "replicas") -> list[Endpoint]:
    """Live entries of one kind: ModelServer ``replicas`` or ``gateways``."""
    now = time.time() if now is None else now
    found = []
    for key in _internal_kv_list(_prefix(app, kind), namespace=NAMESPACE):
        key = key.decode() if isinstance(key, bytes) else key
        raw = _internal_kv_get(key, namespace=NAMESPACE)
        if raw is None:
            continue
        entry = json.loads(raw)
        if now - entry["ts"] <= STALE_AFTER_S:
            found.append(Endpoint(key.rsplit("/", 1)[1], entry["host"], int(entry["port"])))
    return sorted(found)
