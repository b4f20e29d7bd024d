"""Forwarding mode: Azure ML's container routes in front of a manymodels serve Service elsewhere.

A Kubernetes online deployment always runs pods of its own (Azure ML cannot route to an existing
Service), so on the AKS cluster that runs the chart it runs this image with ``MM_FORWARD_URL`` set
(``http://<release>-manymodels-serve-svc.<namespace>.svc:8000``): no Ray, no models, one small process
that answers liveness itself, is ready only while the serve Service is, and streams each scoring
request to the Service's ``/predict`` and the answer back unchanged (same JSON, same 4xx errors).
The Service's own failures become JSON too: 502 when it cannot be reached, 504 when it does not answer
in time. Settings come from the environment (``ForwardSettings``), invalid ones fail at start naming
the variable.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Mapping
from typing import Any

import httpx
import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from manymodels.config import READINESS_TARGET, SCORING_TARGET, ExtraRoutes
from manymodels.errors import ConfigurationError

log = logging.getLogger("manymodels.forward")

# Headers that describe one hop, not the message (RFC 9110 7.6.1), plus the endpoint's own credentials
# (Azure ML checks them; the serve Service never needs them) and the Host of the Azure ML front end.
_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
}
_DROP_REQUEST = _HOP | {"host", "authorization"}


class ForwardSettings(BaseModel):
    """Read from the environment; each field's alias is the variable that sets it."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    upstream: str = Field(validation_alias="MM_FORWARD_URL", description="the serve Service's base URL")
    host: str = Field(default="0.0.0.0", validation_alias="MM_HOST")
    port: int = Field(default=8000, ge=1, le=65535, validation_alias="MM_PORT")
    liveness: str = Field(default="/v2/health/live", validation_alias="MM_LIVENESS_ROUTE")
    readiness: str = Field(default=READINESS_TARGET, validation_alias="MM_READINESS_ROUTE")
    scoring: str = Field(default=SCORING_TARGET, validation_alias="MM_SCORING_ROUTE")
    timeout_s: float = Field(
        default=90.0,
        gt=0,
        allow_inf_nan=False,
        validation_alias="MM_FORWARD_TIMEOUT_S",
        description="for the whole answer to start, and between its chunks",
    )
    connect_timeout_s: float = Field(
        default=5.0, gt=0, allow_inf_nan=False, validation_alias="MM_FORWARD_CONNECT_TIMEOUT_S"
    )

    @field_validator("upstream")
    @classmethod
    def _http_url(cls, value: str) -> str:
        url = httpx.URL(value)
        if url.scheme not in ("http", "https") or not url.host or url.query or url.fragment:
            raise ValueError(f"{value!r} must be an http(s)://host[:port][/path] URL")
        return value.rstrip("/")

    @field_validator("liveness", "readiness", "scoring", mode="before")
    @classmethod
    def _unset_is_default(cls, value: Any, info: Any) -> Any:
        return cls.model_fields[info.field_name].default if value == "" else value

    @model_validator(mode="after")
    def _routes(self) -> ForwardSettings:
        # The Gateway's rules for these paths (shape, distinct), so both modes accept the same values.
        ExtraRoutes(liveness=self.liveness, readiness=self.readiness, scoring=self.scoring)
        return self

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> ForwardSettings:
        try:
            return cls.model_validate(dict(environ))
        except ValidationError as exc:
            raise ConfigurationError(f"forwarding mode: invalid environment: {exc}") from None


def _json(body: dict[str, Any], status: int) -> Response:
    return Response(orjson.dumps(body), status, media_type="application/json")


def build_app(settings: ForwardSettings, transport: httpx.AsyncBaseTransport | None = None) -> Starlette:
    upstream = settings.upstream
    timeout = httpx.Timeout(settings.timeout_s, connect=settings.connect_timeout_s)
    client: httpx.AsyncClient | None = None

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        nonlocal client
        # trust_env=False: a proxy configured for the pod's egress must not sit between it and the Service
        async with httpx.AsyncClient(timeout=timeout, transport=transport, trust_env=False) as client:
            log.info("forwarding %s to %s%s", settings.scoring, upstream, SCORING_TARGET)
            yield

    async def live(request: Request) -> Response:
        return _json({"live": True}, 200)

    async def ready(request: Request) -> Response:
        """Ready only while the serve Service is (its replicas can serve models)."""
        assert client is not None
        url = upstream + READINESS_TARGET
        try:
            answer = await client.get(url, timeout=min(settings.timeout_s, 5.0))
        except httpx.HTTPError as exc:
            return _json({"ready": False, "reason": f"{url} unreachable: {_describe(exc)}"}, 503)
        if answer.status_code != 200:
            reason = f"{url} answered {answer.status_code}: {answer.text[:300]}"
            return _json({"ready": False, "reason": reason}, 503)
        return _json({"ready": True}, 200)

    async def score(request: Request) -> Response:
        assert client is not None
        headers = [(k, v) for k, v in request.headers.items() if k not in _DROP_REQUEST]
        outgoing = client.build_request(
            "POST",
            upstream + SCORING_TARGET,
            params=request.query_params,
            headers=headers,
            content=request.stream(),
        )
        try:
            answer = await client.send(outgoing, stream=True)
        except httpx.TimeoutException as exc:
            return _json({"error": f"{upstream} did not answer in time: {_describe(exc)}"}, 504)
        except httpx.HTTPError as exc:
            return _json({"error": f"{upstream} could not be reached: {_describe(exc)}"}, 502)
        return StreamingResponse(
            _relay(answer),
            status_code=answer.status_code,
            headers={k: v for k, v in answer.headers.items() if k.lower() not in _HOP},
            background=BackgroundTask(answer.aclose),
        )

    routes = [
        Route(settings.liveness, live, methods=["GET"]),
        Route(settings.readiness, ready, methods=["GET"]),
        Route(settings.scoring, score, methods=["POST"]),
    ]
    return Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={
            404: lambda request, exc: _json({"error": f"no route {request.method} {request.url.path}"}, 404),
            405: lambda request, exc: _json({"error": f"{request.method} not allowed here"}, 405),
        },
    )


async def _relay(answer: httpx.Response) -> AsyncIterator[bytes]:
    """The upstream body as it arrives, bytes untouched (its Content-Length/-Encoding still hold). If
    the upstream fails mid-body the status is already sent: the client sees a cut connection."""
    try:
        async for chunk in answer.aiter_raw():
            yield chunk
    except httpx.HTTPError as exc:
        log.warning("upstream answer cut short: %s", _describe(exc))
        raise


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def run(environ: Mapping[str, str]) -> int:
    """``python -m manymodels forward``: serve until SIGTERM/SIGINT (uvicorn finishes open requests)."""
    import uvicorn

    settings = ForwardSettings.from_env(environ)
    uvicorn.run(build_app(settings), host=settings.host, port=settings.port, log_level="info")
    return 0
