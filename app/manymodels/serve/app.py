"""The application that a Serve config's ``import_path`` points at: Gateway in front of ModelServer."""

from __future__ import annotations

from typing import Any

from ray.serve import Application

from manymodels.serve.gateway import Gateway
from manymodels.serve.model_server import ModelServer


def build_app(args: dict[str, Any] | None = None) -> Application:
    """Serve's application builder; options come from the config's ``deployments`` entries."""
    return Gateway.bind(ModelServer.bind())
