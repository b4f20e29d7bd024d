"""Runs the HTTP app under uvicorn on a dedicated thread and event loop inside a Serve replica.

Requests reach it straight from the Gateway's HAProxy, skipping Ray's proxy -> replica hop (the
measured ~40x cost, docs/benchmarks.md). Everything that touches the DataPlane is scheduled on this loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

import httpx
import uvicorn

from manymodels.admission import Admission
from manymodels.config import ServerConfig
from manymodels.dataplane import DataPlane
from manymodels.http import build_http_app
from manymodels.metrics import Metrics
from manymodels.serve.concurrency import ConcurrencyLimits

T = TypeVar("T")


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop

        return uvloop.new_event_loop()
    except ImportError:  # pragma: no cover - uvloop ships with uvicorn[standard]
        return asyncio.new_event_loop()


class EmbeddedServer:
    def __init__(
        self,
        config: ServerConfig,
        metrics: Metrics,
        host: str,
        port: int,
        limits: ConcurrencyLimits | None = None,
    ) -> None:
        self.plane = DataPlane(config, metrics)
        self.admission = Admission()
        if limits is not None:
            self.admission.configure(limits.max_ongoing, limits.max_queued)
        self._app = build_http_app(self.plane, self.admission)
        self._uvicorn = uvicorn.Server(
            uvicorn.Config(
                self._app,
                host=host,
                port=port,
                log_level="warning",
                access_log=False,
                lifespan="off",
                http="httptools",
                timeout_keep_alive=75,
                backlog=2048,
            )
        )
        self.loop = _new_loop()
        self._thread = threading.Thread(target=self._run, name="mm-http", daemon=True)
        self._started = threading.Event()
        self._error: BaseException | None = None

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._serve())
        except BaseException as exc:  # surfaced by start()
            self._error = exc
            self._started.set()

    async def _serve(self) -> None:
        await self.plane.start()
        # Start-up objects (Ray, onnx, pydantic) never die: keep them out of every GC pass.
        gc.collect()
        gc.freeze()
        serve_task = asyncio.ensure_future(self._uvicorn.serve())
        while not self._uvicorn.started and not serve_task.done():
            await asyncio.sleep(0.01)
        self._started.set()
        await serve_task

    def start(self, timeout: float = 60.0) -> int:
        """Start serving; returns the bound port (useful with port 0)."""
        self._thread.start()
        if not self._started.wait(timeout) or self._error or not self._uvicorn.started:
            raise RuntimeError(f"embedded HTTP server failed to start: {self._error}")
        return self._uvicorn.servers[0].sockets[0].getsockname()[1]

    def set_limits(self, limits: ConcurrencyLimits) -> None:
        """Apply new concurrency limits on the serving loop (callable from any thread)."""
        self.loop.call_soon_threadsafe(self.admission.configure, limits.max_ongoing, limits.max_queued)

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    async def call_asgi(
        self, method: str, path: str, query: str, headers: list[tuple[str, str]], body: bytes
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        transport = httpx.ASGITransport(app=self._app)
        async with httpx.AsyncClient(transport=transport, base_url="http://replica") as client:
            url = path + (f"?{query}" if query else "")
            response = await client.request(method, url, headers=headers, content=body)
        return response.status_code, list(response.headers.items()), response.content

    @property
    def inflight(self) -> int:
        return len(self._uvicorn.server_state.tasks)

    def stop(self, timeout: float = 10.0) -> None:
        self._uvicorn.should_exit = True
        self._thread.join(timeout)
        self.plane.close()
