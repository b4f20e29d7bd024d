"""The Gateway's HAProxy configuration: model-aware routing with bounded-load consistent hashing,
and the ModelServer's concurrency limits.

Each request's model id comes from the ``x-model`` header, the OIP path (``/v2/models/<name>/...``)
or the ``model`` field of a ``/predict`` body. HAProxy hashes it onto a consistent-hash ring of
replicas, so a model keeps landing on the replica that holds it (few reloads); ``hash-balance-factor``
caps any replica at that percentage of the average load, so a hot model spills over to the next
replica on the ring instead of queueing on one. Requests without a model id (the default model)
fall back to round robin.

Inference requests (``/predict``, OIP ``.../infer``) go to backend ``replicas``: at most
``max_ongoing_requests`` at a time per replica (``maxconn``), the rest wait in this Gateway's queue,
which holds at most ``max_queued_requests`` (Serve's per-caller meaning: this Gateway is the caller);
past that a request is answered at once with 503, ``Retry-After`` and a JSON error (backend
``queue_full``, so its count is in the stats). Health, metadata and repository requests go to backend
``control`` (the same replicas, tracking their health checks, no limit), so they never wait behind
inference.
"""

from __future__ import annotations

import json

from manymodels.admission import UNBOUNDED
from manymodels.config import READINESS_TARGET, SCORING_TARGET, ExtraRoutes, GatewayConfig
from manymodels.serve.concurrency import ConcurrencyLimits
from manymodels.serve.registry import Endpoint

RETRY_AFTER_S = 1
QUEUE_FULL = "the model servers are at their limit and this gateway's queue is full; retry later"
# What HAProxy itself answers 503 for: a request that waited `timeout queue` for a slot, or no replica up.
UNAVAILABLE = "no model server could take the request in time (all busy or none reachable); retry later"


def _error_body(message: str) -> str:
    """``{"error": message}`` as a double-quoted HAProxy string."""
    return _json_string({"error": message})


def _json_string(body: dict[str, object]) -> str:
    return '"' + json.dumps(body).replace("\\", "\\\\").replace('"', '\\"') + '"'


def _extra_routes(routes: ExtraRoutes) -> str:
    """Rules for ``GatewayConfig.routes``, placed before any rule that reads the path: liveness is
    answered here (the process is up, nothing else asked), readiness and scoring are rewritten to the
    replicas' own paths, so they take the same backends, limits, queue and errors as those."""
    rules = []
    if routes.liveness:
        rules.append(
            "    http-request return status 200 content-type application/json string "
            f"{_json_string({'live': True})} if {{ path {routes.liveness} }}"
        )
    for route, target in ((routes.readiness, READINESS_TARGET), (routes.scoring, SCORING_TARGET)):
        if route:
            rules.append(f"    http-request set-path {target} if {{ path {route} }}")
    return "".join(line + "\n" for line in rules)


def server_name(endpoint: Endpoint) -> str:
    return endpoint.replica.replace("#", "_")[-60:]


def render(
    config: GatewayConfig,
    replicas: list[Endpoint],
    *,
    nbthread: int = 1,
    metrics_port: int | None = None,
    limits: ConcurrencyLimits | None = None,
    stats_socket: str | None = None,
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
    # weight 100: more points per server on the hash ring, so models spread evenly
    servers = "\n".join(f"    server {server_name(r)} {r.host}:{r.port} check weight 100" for r in replicas)
    tracking = "\n".join(
        f"    server {server_name(r)} {r.host}:{r.port} track replicas/{server_name(r)} weight 100"
        for r in replicas
    )
    maxconn = f" maxconn {limits.max_ongoing}" if limits else ""
    bounded = limits is not None and limits.max_queued != UNBOUNDED
    queue_rule = ""
    if bounded:
        assert limits is not None
        queue_rule = (
            f"    acl queue_is_full queue(replicas) ge {limits.max_queued}\n"
            "    use_backend queue_full if predict queue_is_full or oip_model oip_infer queue_is_full\n"
        )
    stats = f"    stats socket {stats_socket} mode 600 level user\n" if stats_socket else ""
    retry_after = f"hdr retry-after {RETRY_AFTER_S}"
    return f"""\
global
    maxconn 4096
    nbthread {nbthread}
    # Routing reads the model id from the first 64 KiB of a /predict body (put "model" first or
    # send x-model for larger bodies); bigger buffers would cost memory on every connection.
    tune.bufsize 65536
    hard-stop-after 120s
{stats}
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
    http-error status 503 content-type application/json string {_error_body(UNAVAILABLE)} {retry_after}

frontend manymodels
    bind {config.host}:{config.port}
    option http-buffer-request
    # /-/healthz is what KubeRay asks (worker readiness probe, head serve label): a node whose Gateway
    # can reach no replica must not be given traffic, e.g. while a new cluster's replicas come up
    acl healthz path /-/healthz
    http-request return status 503 content-type text/plain string "no replica reachable" if healthz !{{ nbsrv(replicas) gt 0 }}
    http-request return status 200 content-type text/plain string success if healthz
    http-request deny deny_status 413 content-type application/json string "{{\\"error\\": \\"request body exceeds the {config.max_body_bytes}-byte limit\\"}}" if {{ req.hdr_val(content-length) gt {config.max_body_bytes} }}
{_extra_routes(config.routes)}    acl has_model_header req.hdr(x-model) -m found
    acl oip_model path_beg /v2/models/
    acl oip_infer path_end /infer
    acl predict path /predict
    http-request set-var(txn.model) req.hdr(x-model) if has_model_header
    http-request set-var(txn.model) path,field(4,/) if !has_model_header oip_model
    http-request set-var(txn.model) req.body,json_query('$.model') if !has_model_header predict
    http-request set-header x-mm-model %[var(txn.model)] if {{ var(txn.model) -m found }}
    {"use_backend node_metrics if { path /metrics }" if metrics_port else ""}
{queue_rule}    use_backend replicas if predict or oip_model oip_infer
    default_backend control

backend replicas
{balance}
    option httpchk GET /-/healthz
    default-server inter {config.health_interval_ms} fall 2 rise 1{maxconn}
    retry-on conn-failure empty-response
    retries 2
    option redispatch
{servers}

backend control
{balance}
    retry-on conn-failure empty-response
    retries 2
    option redispatch
{tracking}

backend queue_full
    http-request return status 503 content-type application/json string {_error_body(QUEUE_FULL)} {retry_after}
{metrics}"""
