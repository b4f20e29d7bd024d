"""The HTTP ingress: ``/predict``, Open Inference Protocol v2 and ``/metrics`` over starlette + orjson.

Translates HTTP to plain Python and back, and maps every error to a 4xx/5xx JSON body
``{"error": "..."}``; model logic lives in ``manymodels.dataplane``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from manymodels.admission import Admission
from manymodels.codec import (
    BINARY_HEADER,
    NUMPY_TO_OIP,
    decode_input_data,
    decode_oip_inputs,
    encode_oip_output,
    encode_outputs,
    parameters,
    split_binary,
)
from manymodels.dataplane import DataPlane, ServedModel
from manymodels.errors import (
    InferenceError,
    InvalidName,
    InvalidRequest,
    ManyModelsError,
    ModelNotFound,
    Overloaded,
    PayloadTooLarge,
)
from manymodels.store import validate_name

log = logging.getLogger("manymodels.http")

JSON = "application/json"


def json_response(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY), status, media_type=JSON)


def error_reply(exc: BaseException, where: str) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
    """The one place an exception becomes a status, a JSON body and headers (``Retry-After``)."""
    if not isinstance(exc, ManyModelsError):  # never take the server down
        log.error("unhandled error on %s", where, exc_info=exc)
        return 500, orjson.dumps({"error": f"internal error: {type(exc).__name__}: {exc}"}), []
    headers = [] if exc.retry_after is None else [(b"retry-after", str(exc.retry_after).encode())]
    return exc.status, orjson.dumps({"error": str(exc)}), headers


def error_response(exc: BaseException, where: str) -> Response:
    status, body, headers = error_reply(exc, where)
    return Response(body, status, {k.decode(): v.decode() for k, v in headers}, media_type=JSON)


async def receive_body(headers: list[tuple[bytes, bytes]], receive: Any, limit: int) -> bytes | None:
    """An ASGI request body, refused (413) past ``limit``; None if the client went away."""
    for name, value in headers:
        if name == b"content-length" and value.isdigit() and int(value) > limit:
            raise PayloadTooLarge(f"request body of {value.decode()} bytes exceeds the {limit}-byte limit")
    chunks, size, more = [], 0, True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body exceeds the {limit}-byte limit")
        chunks.append(chunk)
        more = message.get("more_body", False)
    return b"".join(chunks)


async def read_body(request: Request, limit: int) -> bytes:
    raw = await receive_body(request.scope["headers"], request.receive, limit)
    if raw is None:
        raise InvalidRequest("the client disconnected before sending the whole body")
    return raw


def parse_json(raw: bytes) -> dict[str, Any]:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"malformed JSON: {exc}") from None
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object")
    return body


def _optional_name(kind: str, value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidRequest(f"'{kind}' must be a string")
    return validate_name(kind, value)


Handler = Callable[[Request], Awaitable[Response]]
Headers = list[tuple[bytes, bytes]]


def build_http_app(plane: DataPlane, admission: Admission | None = None) -> FastPath:
    """The replica's ASGI app. Inference requests (``/predict``, OIP ``infer``) take a slot from
    ``admission`` (no limit by default); health, metadata and ``/metrics`` never wait for one."""
    admission = admission or Admission()
    plane.metrics.watch_admission(lambda: admission.ongoing, lambda: admission.queued)

    def limit() -> int:
        return plane.config.limits.max_body_bytes

    def guarded(handler: Handler) -> Handler:
        async def endpoint(request: Request) -> Response:
            try:
                return await handler(request)
            except Exception as exc:
                return error_response(exc, request.url.path)

        return endpoint

    def path_model(request: Request) -> tuple[str, str | None]:
        params = request.path_params
        return (
            validate_name("model", params["name"]),
            _optional_name("version", params.get("version")),
        )

    # ---- OIP v2 ----------------------------------------------------------------------------

    async def live(request: Request) -> Response:
        return json_response({"live": True})

    async def ready(request: Request) -> Response:
        # Probes ask this (Kubernetes, Azure ML's readiness route): true only once models can be served.
        reason = await asyncio.get_running_loop().run_in_executor(None, plane.unready_reason)
        if reason is not None:
            return json_response({"ready": False, "reason": reason}, 503)
        return json_response({"ready": True})

    async def server_metadata(request: Request) -> Response:
        return json_response(plane.server_metadata())

    async def model_metadata(request: Request) -> Response:
        model, ref = path_model(request)
        manifest = plane.manifest(model, ref)
        return json_response(
            {
                "name": model,
                "versions": plane.catalog.versions(model),
                "platform": manifest.platform,
                "inputs": [_tensor_meta(t) for t in manifest.inputs],
                "outputs": [_tensor_meta(t) for t in manifest.outputs],
            }
        )

    async def model_ready(request: Request) -> Response:
        model, ref = path_model(request)
        is_ready = plane.is_ready(model, ref)
        return json_response({"name": model, "ready": is_ready}, 200 if is_ready else 400)

    async def infer(request: Request) -> Response:
        started = time.perf_counter()
        model, ref = path_model(request)
        try:
            await admission.enter()
        except Overloaded as exc:
            return refused(plane, exc, request.url.path)
        try:
            response = await _infer(request, model, ref)
        except Exception as exc:
            response = error_response(exc, request.url.path)
            model = _label(model, exc)
        finally:
            admission.leave()
        plane.metrics.observe(model, response.status_code, time.perf_counter() - started)
        return response

    async def _infer(request: Request, model: str, ref: str | None) -> Response:
        raw, binary = split_binary(await read_body(request, limit()), request.headers.get(BINARY_HEADER))
        body = parse_json(raw)
        served = await plane.acquire(model, ref)
        try:
            inputs = decode_oip_inputs(body, binary, served.manifest.inputs)
            outputs = await plane.infer(served, inputs)
        finally:
            served.release()
        return _oip_response(body, model, served.manifest.version, outputs)

    # ---- repository extension --------------------------------------------------------------

    async def repository_index(request: Request) -> Response:
        return json_response(plane.repository_index())

    async def repository_load(request: Request) -> Response:
        model, _ = path_model(request)
        await plane.load(model)
        return json_response({})

    async def repository_unload(request: Request) -> Response:
        model, _ = path_model(request)
        plane.unload(model)
        return json_response({})

    async def metrics(request: Request) -> Response:
        return Response(plane.metrics.render(), media_type="text/plain; version=0.0.4")

    async def healthz(request: Request) -> Response:
        return Response(b"success", media_type="text/plain")

    v = "/v2/models/{name}/versions/{version}"
    m = "/v2/models/{name}"
    routes = [
        Route(m + "/infer", guarded(infer), methods=["POST"]),
        Route(v + "/infer", guarded(infer), methods=["POST"]),
        Route("/v2/health/live", live),
        Route("/v2/health/ready", ready),
        Route("/v2", server_metadata),
        Route(m, guarded(model_metadata)),
        Route(v, guarded(model_metadata)),
        Route(m + "/ready", guarded(model_ready)),
        Route(v + "/ready", guarded(model_ready)),
        Route("/v2/repository/index", guarded(repository_index), methods=["POST"]),
        Route("/v2/repository/models/{name}/load", guarded(repository_load), methods=["POST"]),
        Route("/v2/repository/models/{name}/unload", guarded(repository_unload), methods=["POST"]),
        Route("/metrics", metrics),
        Route("/-/healthz", healthz),
    ]
    routed = Starlette(
        routes=routes,
        exception_handlers={
            404: lambda request, exc: json_response(
                {"error": f"no route {request.method} {request.url.path}"}, 404
            ),
            405: lambda request, exc: json_response({"error": f"{request.method} not allowed here"}, 405),
        },
    )
    return FastPath(plane, routed, admission)


def refused(plane: DataPlane, exc: Overloaded, where: str) -> Response:
    """503 + ``Retry-After`` for a request the replica has no room for (counted, never run)."""
    plane.metrics.rejected.labels(plane.metrics.replica, "queue_full").inc()
    plane.metrics.observe("-", exc.status, 0.0)
    return error_response(exc, where)


async def predict_bytes(plane: DataPlane, raw: bytes, x_model: str | None) -> tuple[int, bytes, Headers]:
    """``POST /predict``: request bytes -> (status, JSON bytes, headers); records its metrics."""
    started = time.perf_counter()
    model_label = "-"
    try:
        body = parse_json(raw)
        if "input_data" not in body:
            raise InvalidRequest("missing 'input_data'")
        model = _optional_name("model", body.get("model") or x_model)
        version = _optional_name("version", body.get("version"))
        model_label = plane.model_name(model)
        served = await plane.acquire(model_label, version)
        try:
            outputs = await _predict(plane, served, body["input_data"])
        finally:
            served.release()
        payload = {"model": model_label, "version": served.manifest.version, "outputs": outputs}
        status, reply, headers = 200, orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY), []
    except Exception as exc:
        status, reply, headers = error_reply(exc, "/predict")
        model_label = _label(model_label, exc)
    plane.metrics.observe(model_label, status, time.perf_counter() - started)
    return status, reply, headers


async def _predict(plane: DataPlane, served: ServedModel, input_data: Any) -> Any:
    """``input_data`` through the model's processor, or the plain JSON-array codec."""
    processor = served.processor
    if processor is None:
        inputs, single = decode_input_data(input_data, served.manifest.inputs)
        return encode_outputs(await plane.infer(served, inputs), single)
    try:
        inputs = processor.preprocess(input_data)
    except ManyModelsError:
        raise
    except Exception as exc:
        raise InvalidRequest(f"pre-processing failed: {exc}") from exc
    outputs = await plane.infer(served, inputs)
    try:
        return processor.postprocess(outputs)
    except ManyModelsError:
        raise
    except Exception as exc:
        where = f"model {served.manifest.name} version {served.manifest.version}"
        raise InferenceError(f"{where}: post-processing failed: {type(exc).__name__}: {exc}") from exc


class FastPath:
    """ASGI entry: ``POST /predict`` is answered without Starlette's request/routing machinery
    (measured ~25% more throughput for small models); every other route goes to Starlette."""

    def __init__(self, plane: DataPlane, routed: Starlette, admission: Admission) -> None:
        self.plane = plane
        self.routed = routed
        self.admission = admission

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] != "/predict":
            await self.routed(scope, receive, send)
            return
        headers = scope["headers"]
        if scope["method"] != "POST":
            status, body, extra = 405, orjson.dumps({"error": f"{scope['method']} not allowed here"}), []
        else:
            admission = self.admission
            if not admission.try_enter():  # every slot taken: wait in line, or be refused
                try:
                    await admission.enter()
                except Overloaded as exc:
                    await refused(self.plane, exc, "/predict")(scope, receive, send)
                    return
            x_model = next((v.decode("latin-1") for k, v in headers if k == b"x-model"), None)
            try:
                raw = await receive_body(headers, receive, self.plane.config.limits.max_body_bytes)
                if raw is None:
                    return
                status, body, extra = await predict_bytes(self.plane, raw, x_model)
            except Exception as exc:  # PayloadTooLarge, or anything unforeseen
                status, body, extra = error_reply(exc, "/predict")
                self.plane.metrics.observe("-", status, 0.0)
            finally:
                admission.leave()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    *extra,
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def _label(model: str, exc: BaseException) -> str:
    """Unknown model names share one series, so clients cannot mint unbounded label values."""
    return "-" if type(exc) is ModelNotFound or isinstance(exc, InvalidName) else model


def _tensor_meta(spec: Any) -> dict[str, Any]:
    return {"name": spec.name, "datatype": NUMPY_TO_OIP[spec.dtype], "shape": spec.shape}


def _oip_response(body: dict[str, Any], model: str, version: str, outputs: dict[str, Any]) -> Response:
    requested = body.get("outputs")
    default_binary = bool(parameters(body).get("binary_data_output", False))
    wanted: dict[str, bool] = {}
    if isinstance(requested, list) and requested:
        for item in requested:
            name = item.get("name") if isinstance(item, dict) else None
            if not isinstance(name, str) or name not in outputs:
                raise InvalidRequest(f"unknown output {name!r}; the model has {sorted(outputs)}")
            wanted[name] = bool(parameters(item).get("binary_data", default_binary))
    else:
        wanted = dict.fromkeys(outputs, default_binary)
    entries, payloads = [], []
    for name, binary in wanted.items():
        entry, payload = encode_oip_output(name, outputs[name], binary)
        entries.append(entry)
        payloads.append(payload)
    result: dict[str, Any] = {"model_name": model, "model_version": version, "outputs": entries}
    if "id" in body:
        result["id"] = body["id"]
    header = orjson.dumps(result, option=orjson.OPT_SERIALIZE_NUMPY)
    if not any(payloads):
        return Response(header, media_type=JSON)
    return Response(
        header + b"".join(payloads),
        media_type="application/octet-stream",
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
