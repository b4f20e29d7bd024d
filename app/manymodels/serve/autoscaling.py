"""Serve autoscaling on the requests replicas really see.

Traffic reaches ModelServer replicas through the Gateway, not through Serve's router, so Serve's own
ongoing-request count misses it. Each replica reports its in-flight requests
(``ModelServer.record_autoscaling_stats``); this policy scales on their sum plus whatever came through
Ray's proxy. Serve wraps it with the usual ``autoscaling_config`` bounds and up/down-scale delays.
Use it with ``autoscaling_config: {policy: {policy_function: manymodels.serve.autoscaling:inflight_policy}}``.
"""

from __future__ import annotations

from typing import Any

from ray.serve.config import AutoscalingContext

METRIC = "inflight"


def desired_replicas(current: int, inflight: float, target_per_replica: float) -> float:
    """Replicas needed so each carries ``target_per_replica`` in-flight requests on average."""
    if target_per_replica <= 0:
        raise ValueError("target_ongoing_requests must be > 0")
    return inflight / target_per_replica if current else 0.0


def inflight_policy(ctx: AutoscalingContext) -> tuple[float, dict[str, Any]]:
    if ctx.current_num_replicas == 0:
        return ctx.target_num_replicas, ctx.policy_state
    reported = (ctx.aggregated_metrics or {}).get(METRIC, {})
    inflight = sum(reported.values()) + ctx.total_num_requests
    target = ctx.config.get_target_ongoing_requests()
    return desired_replicas(ctx.current_num_replicas, inflight, target), ctx.policy_state


def alive_nodes() -> int:
    import ray

    return sum(1 for node in ray.nodes() if node.get("Alive"))


def one_per_node_policy(ctx: AutoscalingContext) -> tuple[float, dict[str, Any]]:
    """For the Gateway: one replica on every Ray node (with ``max_replicas_per_node: 1``), so each
    pod's serve port answers, including workers the Ray autoscaler adds later."""
    return float(alive_nodes()), ctx.policy_state
