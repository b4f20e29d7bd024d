"""The Gateway's HAProxy configuration: model-aware routing with bounded-load consistent hashing.

Each request's model id comes from the ``x-model`` header, the OIP path (``/v2/models/<name>/...``)
or the ``model`` field of a ``/predict`` body. HAProxy hashes it onto a consistent-hash ring of
replicas, so a model keeps landing on the replica that holds it (few reloads); ``hash-balance-factor``
caps any replica at that percentage of the average load, so a hot model spills over to the next
replica on the ring instead of queueing on one. Requests without a model id (the default model)
fall back to round robin.
"""

from __future__ import annotations

from manymodels.config import GatewayConfig
from manymodels.serve.registry import Endpoint


def render(
    config: GatewayConfig,
    replicas: list[Endpoint],
    *,
    nbthread: int = 1,
    metrics_port: int | None = None,
) -> str:
    if config.routing == "model-hash":
        balance = (
            "    balance hdr(x-mm-model)\n    hash-type consistent\n"
            f"    hash-balance-factor {config.balance_factor}"
        )
    else:
        balance = f"    balance {config.routing}"
    metrics = ""
    if metrics_port:
        metrics = f"""
backend node_metrics
    server gateway 127.0.0.1:{metrics_port}
"""
    servers = "\n".join(
        # weight 100: more points per server on the hash ring, so models spread evenly
        f"    server {r.replica.replace('#', '_')[-60:]} {r.host}:{r.port} check weight 100" for r in replicas
    )
    return f"""\
global
    maxconn 4096
    nbthread {nbthread}
    # Routing reads the model id from the first 64 KiB of a /predict body (put "model" first or
    # send x-model for larger bodies); bigger buffers would cost memory on every connection.
    tune.bufsize 65536
    hard-stop-after 120s

defaults
    mode http
    # On reload/stop, answer the next request of each idle keep-alive connection with
    # "Connection: close" instead of closing it under a client that is just sending.
    option idle-close-on-response
    option http-keep-alive
    http-reuse always
    timeout connect 5s
    timeout client 120s
    timeout server 600s
    timeout http-keep-alive 75s
    timeout queue 60s

frontend manymodels
    bind {config.host}:{config.port}
    option http-buffer-request
    # /-/healthz is what KubeRay asks (worker readiness probe, head serve label): a node whose Gateway
    # can reach no replica must not be given traffic, e.g. while a new cluster's replicas come up
    acl healthz path /-/healthz
    http-request return status 503 content-type text/plain string "no replica reachable" if healthz !{{ nbsrv(replicas) gt 0 }}
    http-request return status 200 content-type text/plain string success if healthz
    http-request deny deny_status 413 content-type application/json string "{{\\"error\\": \\"request body exceeds the {config.max_body_bytes}-byte limit\\"}}" if {{ req.hdr_val(content-length) gt {config.max_body_bytes} }}
    acl has_model_header req.hdr(x-model) -m found
    acl oip_model path_beg /v2/models/
    acl predict path /predict
    http-request set-var(txn.model) req.hdr(x-model) if has_model_header
    http-request set-var(txn.model) path,field(4,/) if !has_model_header oip_model
    http-request set-var(txn.model) req.body,json_query('$.model') if !has_model_header predict
    http-request set-header x-mm-model %[var(txn.model)] if {{ var(txn.model) -m found }}
    {"use_backend node_metrics if { path /metrics }" if metrics_port else ""}
    default_backend replicas

backend replicas
{balance}
    option httpchk GET /-/healthz
    default-server inter {config.health_interval_ms} fall 2 rise 1
    retry-on conn-failure empty-response
    retries 2
    option redispatch
{servers}
{metrics}"""
