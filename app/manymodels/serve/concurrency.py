"""The ModelServer deployment's ``max_ongoing_requests`` / ``max_queued_requests``, where each side
reads them.

Traffic reaches replicas through the Gateway, not Serve's router, so Serve enforces neither; the
Gateway's HAProxy (``maxconn`` per replica, a bounded queue) and each replica (``Admission``) do.

* A replica reads its own deployment config (``ReplicaContext``): Serve reconfigures replicas in place
  when ``max_ongoing_requests`` changes. A change of ``max_queued_requests`` alone is a "lightweight"
  update that Serve does not push to replicas; the replica picks it up at its next reconfigure.
* A Gateway asks the Serve controller for the deployment's current target config, so it sees both
  values as soon as a new Serve config is applied.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from manymodels.admission import UNBOUNDED
from manymodels.config import MODEL_SERVER


@dataclass(frozen=True)
class ConcurrencyLimits:
    max_ongoing: int
    max_queued: int = UNBOUNDED  # Serve's meaning: -1 = no bound

    @classmethod
    def of(cls, deployment_config: Any) -> ConcurrencyLimits:
        return cls(int(deployment_config.max_ongoing_requests), int(deployment_config.max_queued_requests))


def of_this_replica() -> ConcurrencyLimits:
    """Inside a replica: its deployment's limits as Serve last configured this replica."""
    from ray import serve

    return ConcurrencyLimits.of(serve.get_replica_context()._deployment_config)


_controller: Any = None


def of_deployment(app: str, deployment: str = MODEL_SERVER, timeout_s: float = 5.0) -> ConcurrencyLimits:
    """The deployment's current target limits, from the Serve controller (raises if unreachable)."""
    global _controller
    import ray
    from ray.serve._private.common import DeploymentID
    from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

    if _controller is None:
        _controller = ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
    try:
        config = ray.get(
            _controller.get_deployment_config.remote(DeploymentID(name=deployment, app_name=app)),
            timeout=timeout_s,
        )
    except Exception:
        _controller = None  # a restarted controller is a new actor: look it up again next time
        raise
    if config is None:
        raise LookupError(f"no deployment {deployment!r} in application {app!r}")
    return ConcurrencyLimits.of(config)
