"""The Gateway's own series for the node's ``/metrics``, read from its HAProxy's stats socket.

Inference requests queued in this Gateway and running on the replicas through it, the limits it
applies, and the 503s it answered itself: ``queue_full`` (its queue was at ``max_queued_requests``)
and ``unavailable`` (a request waited ``timeout queue`` for a slot, or no replica was up; HAProxy's
rare 502/504 for a replica that broke a response count here too). A replica's
own refusals are ``manymodels_requests_rejected_total``. Counters restart when HAProxy reloads (a
new worker), which Prometheus' ``rate()`` handles.
"""

from __future__ import annotations

import csv
import io
import socket
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from manymodels.serve.concurrency import ConcurrencyLimits

INFERENCE_BACKEND = "replicas"
QUEUE_FULL_BACKEND = "queue_full"


def read_stats(path: str, timeout: float = 2.0) -> list[dict[str, str]]:
    """HAProxy's ``show stat``: one row per frontend, backend and server."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        sock.sendall(b"show stat\n")
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    text = b"".join(chunks).decode().removeprefix("# ")
    return list(csv.DictReader(io.StringIO(text)))


def _number(row: dict[str, str], field: str) -> int:
    value = row.get(field) or ""
    return int(value) if value.isdigit() else 0


class _GatewayCollector(Collector):
    def __init__(self, gateway: str, rows: list[dict[str, str]], limits: ConcurrencyLimits | None) -> None:
        self._gateway = gateway
        self._rows = rows
        self._limits = limits

    def collect(self) -> Iterator[Metric]:
        backend = {r["pxname"]: r for r in self._rows if r.get("svname") == "BACKEND"}
        servers = [
            r for r in self._rows if r.get("pxname") == INFERENCE_BACKEND and r.get("svname") != "BACKEND"
        ]
        inference = backend.get(INFERENCE_BACKEND, {})
        labels = ["gateway"]

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            family = GaugeMetricFamily(f"manymodels_gateway_{name}", doc, labels=labels)
            family.add_metric([self._gateway], value)
            return family

        # A request waits in its server's queue (consistent hashing picked it) or the backend's.
        yield gauge(
            "queued",
            "inference requests waiting in this gateway for a model server slot",
            _number(inference, "qcur") + sum(_number(r, "qcur") for r in servers),
        )
        yield gauge(
            "inflight",
            "inference requests running on model servers through this gateway",
            sum(_number(r, "scur") for r in servers),
        )
        if self._limits is not None:
            yield gauge("max_ongoing_requests", "requests per model server at once", self._limits.max_ongoing)
            yield gauge(
                "max_queued_requests", "queue bound of this gateway (-1: none)", self._limits.max_queued
            )
        rejected = CounterMetricFamily(
            "manymodels_gateway_rejected",
            "inference requests this gateway answered with 503 itself, by reason",
            labels=[*labels, "reason"],
        )
        queue_full = _number(backend.get(QUEUE_FULL_BACKEND, {}), "hrsp_5xx")
        # HAProxy's own 5xx on the inference backend: its total less what the replicas answered.
        own = _number(inference, "hrsp_5xx") - sum(_number(r, "hrsp_5xx") for r in servers)
        rejected.add_metric([self._gateway, "queue_full"], queue_full)
        rejected.add_metric([self._gateway, "unavailable"], max(own, 0))
        yield rejected


def render_page(gateway: str, rows: list[dict[str, str]], limits: ConcurrencyLimits | None) -> str:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_GatewayCollector(gateway, rows, limits))
    return generate_latest(registry).decode()
