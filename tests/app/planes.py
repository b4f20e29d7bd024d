"""Running a test scenario against a started DataPlane on a fresh event loop: alone, or behind the
real ASGI app through an in-process httpx client. Shared by the data-plane and HTTP tests."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import httpx

from manymodels.config import ServerConfig
from manymodels.dataplane import DataPlane
from manymodels.http import build_http_app

T = TypeVar("T")


def run(config: ServerConfig, scenario: Callable[[DataPlane], Awaitable[T]]) -> T:
    """``scenario(plane)`` against a started DataPlane, closed afterwards."""

    async def main() -> T:
        plane = DataPlane(config)
        try:
            await plane.start()
            return await scenario(plane)
        finally:
            plane.close()

    return asyncio.run(main())


def serve(config: ServerConfig, scenario: Callable[[httpx.AsyncClient, DataPlane], Awaitable[T]]) -> T:
    """``scenario(client, plane)``: ``client`` speaks HTTP to the plane's ASGI app, in process."""

    async def plane_scenario(plane: DataPlane) -> T:
        transport = httpx.ASGITransport(app=build_http_app(plane))
        async with httpx.AsyncClient(transport=transport, base_url="http://mm") as client:
            return await scenario(client, plane)

    return run(config, plane_scenario)
