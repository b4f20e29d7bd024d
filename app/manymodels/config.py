"""The application's configuration: one typed object, read from the Serve config file.

The same YAML is used by ``make demo`` (``serve`` on one machine), by the Helm chart (rendered into the
RayService's ``serveConfigV2``) and by the KubeRay operator (PUT to the dashboard). Everything that may
change while serving (catalog location, aliases, cache budget, default model) lives in the
``ModelServer`` deployment's ``user_config`` so that Serve applies it in place through
``reconfigure()`` instead of restarting replicas.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from manymodels.cache import DEFAULT_POLICY, POLICIES
from manymodels.errors import InvalidName
from manymodels.runtimes import RuntimeSettings
from manymodels.store.names import validate_name

APP_IMPORT_PATH = "manymodels.serve.app:build_app"
MODEL_SERVER = "ModelServer"
GATEWAY = "Gateway"

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?)?B?\s*$", re.IGNORECASE)
_UNITS = {
    "": 1,
    "k": 10**3,
    "m": 10**6,
    "g": 10**9,
    "t": 10**12,
    "ki": 2**10,
    "mi": 2**20,
    "gi": 2**30,
    "ti": 2**40,
}


def parse_bytes(value: int | float | str) -> int:
    """``2Gi``, ``512Mi``, ``1.5G`` or a plain number of bytes -> bytes (the Kubernetes quantity style)."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"not a byte size: {value!r} (use e.g. 536870912, 512Mi or 2Gi)")
    if isinstance(value, int | float):
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"byte size must be a finite number >= 0, got {value}")
        return int(value)
    match = _SIZE.match(value)
    if not match:
        raise ValueError(f"not a byte size: {value!r} (use e.g. 536870912, 512Mi or 2Gi)")
    number, unit = match.groups()
    return int(float(number) * _UNITS[(unit or "").lower()])


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StoreConfig(_Strict):
    uri: str = Field(
        description="local directory / PVC mount, or an fsspec URL (s3://, gs://, az://)"
    )
    storage_options: dict[str, Any] = Field(default_factory=dict)
    disk_cache_dir: str | None = Field(
        default=None, description="node-local tier for remote stores"
    )
    disk_cache_bytes: int = 10 * 2**30
    refresh_interval_s: float = Field(
        default=10.0, ge=0, description="0 disables polling for new versions"
    )

    _bytes = field_validator("disk_cache_bytes", mode="before")(parse_bytes)


class CacheConfig(_Strict):
    capacity_bytes: int = 2 * 2**30
    policy: str = DEFAULT_POLICY
    pin: list[str] = Field(default_factory=list, description="model or model:version kept resident")
    prefetch: list[str] = Field(default_factory=list, description="loaded when a replica starts")
    response_cache_bytes: int = Field(
        default=64 * 2**20, description="answers of models with response_cache: true; 0 disables"
    )

    _bytes = field_validator("capacity_bytes", "response_cache_bytes", mode="before")(parse_bytes)

    @field_validator("policy")
    @classmethod
    def _known_policy(cls, value: str) -> str:
        if value not in POLICIES:
            raise ValueError(f"unknown cache policy {value!r}; choose one of {sorted(POLICIES)}")
        return value


class BatchingOptions(_Strict):
    """Dynamic batching of one model's concurrent requests (``manymodels.dataplane.batching``)."""

    max_batch_size: int = Field(ge=2, description="rows per model call at most; a larger request runs alone")
    max_queue_delay_ms: float = Field(
        default=2.0,
        ge=0,
        allow_inf_nan=False,
        description="how long a request may wait for batch-mates while the model is busy (never when idle)",
    )
    preferred_batch_sizes: list[int] = Field(
        default_factory=list, description="batch sizes launched as soon as they can be formed"
    )

    @model_validator(mode="after")
    def _preferred_in_range(self) -> BatchingOptions:
        wrong = [n for n in self.preferred_batch_sizes if not 1 <= n <= self.max_batch_size]
        if wrong:
            raise ValueError(
                f"preferred_batch_sizes {wrong} must each be between 1 and max_batch_size "
                f"({self.max_batch_size})"
            )
        self.preferred_batch_sizes = sorted(set(self.preferred_batch_sizes))
        return self


class ModelOptions(_Strict):
    aliases: dict[str, str] = Field(default_factory=dict)
    processor: str | None = Field(
        default=None, description="'package.module:Class' shipped in the image"
    )
    processor_options: dict[str, Any] = Field(default_factory=dict)
    module: str | None = Field(
        default=None, description="torch_state_dict models: 'package.module:Class' shipped in the image"
    )
    module_options: dict[str, Any] = Field(default_factory=dict, description="the module's kwargs")
    allow_nonfinite: bool = False
    batching: BatchingOptions | None = Field(
        default=None, description="models whose inputs and outputs all have a -1 first dimension"
    )
    response_cache: bool = Field(
        default=False, description="answer repeated inputs from a per-replica cache (same version)"
    )
    deterministic: bool = Field(
        default=True, description="false: the same inputs may give other answers; never cached"
    )

    @model_validator(mode="after")
    def _cache_only_deterministic(self) -> ModelOptions:
        if self.response_cache and not self.deterministic:
            raise ValueError(
                "response_cache: true and deterministic: false conflict: "
                "a non-deterministic model's answers must not be replayed"
            )
        return self


class Limits(_Strict):
    max_body_bytes: int = 8 * 2**20
    max_batch: int = Field(default=4096, ge=1)

    _bytes = field_validator("max_body_bytes", mode="before")(parse_bytes)


class ListenConfig(_Strict):
    """Where each replica's direct HTTP endpoint listens (the Gateway routes to it)."""

    host: str = Field(
        default="127.0.0.1", description="0.0.0.0 in a cluster: the Gateway is remote"
    )
    port: int = Field(default=0, ge=0, le=65535, description="0 = any free port")


class ServerConfig(_Strict):
    """The ``user_config`` of the ModelServer deployment: everything that can change live."""

    store: StoreConfig
    cache: CacheConfig = Field(default_factory=CacheConfig)
    runtime: RuntimeSettings = Field(default_factory=RuntimeSettings)
    default_model: str | None = None
    models: dict[str, ModelOptions] = Field(default_factory=dict)
    limits: Limits = Field(default_factory=Limits)
    http: ListenConfig = Field(default_factory=ListenConfig)
    inline_infer_max_ms: float = Field(
        default=1.0,
        ge=0,
        description="models faster than this run on the event loop, slower in a thread",
    )

    @model_validator(mode="after")
    def _names_are_valid(self) -> ServerConfig:
        names = [("model", m) for m in self.models]
        if self.default_model:
            names.append(("model", self.default_model))
        for options in self.models.values():
            names += [("alias", a) for a in options.aliases]
            names += [("version", v) for v in options.aliases.values()]
        for kind, name in names:
            try:
                validate_name(kind, name)
            except InvalidName as exc:  # pydantic reports ValueErrors with the field path
                raise ValueError(f"invalid model, alias or version name: {exc}") from None
        return self


# Paths HAProxy may match and rewrite to: no spaces, quotes, '#' or braces that would end the rule.
_ROUTE = re.compile(r"^/[A-Za-z0-9._~:@/-]*$")
# Where each extra route leads, and what no extra route may shadow.
READINESS_TARGET = "/v2/health/ready"
SCORING_TARGET = "/predict"
_RESERVED = {"/-/healthz", "/metrics"}


class ExtraRoutes(_Strict):
    """More paths for the Gateway's health and ``/predict``, for a front end with conventions of its own
    (Azure ML's custom-container ``inference_config`` routes, docs/azureml.md). The built-in paths keep
    working beside them."""

    liveness: str | None = Field(
        default=None, description="answered 200 by HAProxy itself: the server process is up"
    )
    readiness: str | None = Field(
        default=None, description=f"served as {READINESS_TARGET} (models servable), 503 with no replica"
    )
    scoring: str | None = Field(
        default=None, description=f"served as {SCORING_TARGET} (same body and errors)"
    )

    @field_validator("liveness", "readiness", "scoring", mode="before")
    @classmethod
    def _path(cls, value: Any) -> Any:
        if value in (None, ""):
            return None
        if not isinstance(value, str) or not _ROUTE.match(value):
            raise ValueError(
                f"route {value!r} must be a path starting with '/' made of letters, digits and ._~:@/-"
            )
        return value

    @model_validator(mode="after")
    def _distinct(self) -> ExtraRoutes:
        given = {k: v for k, v in self.model_dump().items() if v is not None}
        if len(set(given.values())) < len(given):
            raise ValueError(f"routes must differ from each other, got {given}")
        # A route equal to another's target would be rewritten twice (or answered by the wrong rule).
        targets = {"readiness": READINESS_TARGET, "scoring": SCORING_TARGET}
        for kind, path in given.items():
            taken = _RESERVED | {t for k, t in targets.items() if k != kind}
            if path in taken:
                raise ValueError(f"{kind} route {path!r} would shadow the server's own {path}")
        return self


class GatewayConfig(_Strict):
    """The ``user_config`` of the Gateway deployment (the model-aware HAProxy front door)."""

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    routing: Literal["model-hash", "leastconn", "roundrobin"] = Field(
        default="model-hash",
        description="model-hash: sticky per model with spill-over; the others ignore the model id",
    )
    balance_factor: int = Field(
        default=200,
        ge=101,
        description="bounded-load consistent hashing: max load in % of the average (docs/benchmarks.md)",
    )
    max_body_bytes: int = 8 * 2**20
    health_interval_ms: int = Field(default=1000, ge=100)
    routes: ExtraRoutes = Field(default_factory=ExtraRoutes)

    _bytes = field_validator("max_body_bytes", mode="before")(parse_bytes)


class AppSettings(_Strict):
    """What the app reads out of one Serve application entry."""

    server: ServerConfig
    gateway: GatewayConfig = Field(default_factory=GatewayConfig)
    deployments: dict[str, dict[str, Any]] = Field(default_factory=dict)


def app_settings(serve_config: dict[str, Any], app_name: str | None = None) -> AppSettings:
    """Validate a whole Serve config (``serve deploy`` / ``serveConfigV2`` format) and return ours.

    Raises ``ValueError`` naming the offending field; this is the loader the Helm chart's tests run
    against the rendered ``serveConfigV2``.
    """
    apps = serve_config.get("applications") if isinstance(serve_config, dict) else None
    if not isinstance(apps, list) or not apps:
        raise ValueError("serve config: 'applications' must be a non-empty list")
    if not all(isinstance(a, dict) for a in apps):
        raise ValueError("serve config: every entry of 'applications' must be a mapping")
    ours = [a for a in apps if a.get("import_path") == APP_IMPORT_PATH]
    if app_name is not None:
        ours = [a for a in ours if a.get("name") == app_name]
    if len(ours) != 1:
        raise ValueError(
            f"serve config: expected one application with import_path {APP_IMPORT_PATH}"
        )
    entries = ours[0].get("deployments", [])
    if not isinstance(entries, list) or not all(isinstance(d, dict) for d in entries):
        raise ValueError("serve config: 'deployments' must be a list of mappings")
    deployments = {d.get("name"): d for d in entries}
    unknown = set(deployments) - {MODEL_SERVER, GATEWAY}
    if unknown:
        raise ValueError(f"serve config: unknown deployments {sorted(map(str, unknown))}")
    server = deployments.get(MODEL_SERVER, {}).get("user_config")
    if server is None:
        raise ValueError(f"serve config: deployment {MODEL_SERVER} needs a user_config")
    return AppSettings(
        server=ServerConfig.model_validate(server),
        gateway=GatewayConfig.model_validate(deployments.get(GATEWAY, {}).get("user_config") or {}),
        deployments=deployments,
    )


def load_serve_config(path: str | Path) -> dict[str, Any]:
    """Read a Serve config YAML, expanding ``${VAR}`` / ``${VAR:-default}`` from the environment."""
    text = Path(path).read_text()
    text = re.sub(
        r"\$\{(\w+)(?::-([^}]*))?\}",
        lambda m: os.environ.get(m.group(1), m.group(2) or ""),
        text,
    )
    config = yaml.safe_load(text)
    if not isinstance(config, dict):
        raise ValueError(f"{path}: not a YAML mapping")
    app_settings(config)
    return config
