"""A small, fast closed-loop HTTP/1.1 load generator (asyncio + uvloop, keep-alive, raw sockets).

Every benchmark drives both sides of a comparison with this same client, so client cost cancels out
of the printed ratios.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Result:
    requests: int = 0
    errors: int = 0  # every request without a 200: the 503s and connection errors below included
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)  # last value of each watched header
    rejected: int = 0  # 503s (the server shed load)
    rejected_latencies: list[float] = field(default_factory=list)
    rejected_without_retry_after: int = 0
    connection_errors: int = 0  # no answer at all (reset, closed mid-response)

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def pct(self, q: float) -> float:
        return float(np.percentile(self.latencies, q) * 1000) if self.latencies else float("nan")

    def rejected_pct(self, q: float) -> float:
        """Latency percentile of the 503s, in ms."""
        lat = self.rejected_latencies
        return float(np.percentile(lat, q) * 1000) if lat else float("nan")


def post_request(
    host: str, port: int, path: str, body: bytes, headers: dict[str, str] | None = None
) -> bytes:
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    return (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n{extra}\r\n"
    ).encode() + body


async def _worker(
    host: str,
    port: int,
    requests: Iterator[bytes],
    until: float,
    result: Result,
    watch: str | None,
    record: bool,
    honor_retry_after: bool = False,
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while time.perf_counter() < until:
            started = time.perf_counter()
            try:
                writer.write(next(requests))
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                status = int(lines[0].split(" ", 2)[1])
                length, close, retry_after = 0, False, ""
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    name = name.lower()
                    if name == "content-length":
                        length = int(value)
                    elif name == "connection":
                        close = value.strip().lower() == "close"
                    elif name == "retry-after":
                        retry_after = value.strip()
                    elif watch and name == watch:
                        result.headers[value.strip().split("=")[0]] = value.strip()
                if length:
                    await reader.readexactly(length)
            except (asyncio.IncompleteReadError, ConnectionError):
                # A real failure for the client (the request got no answer): count it, reconnect.
                result.errors += 1
                result.connection_errors += 1
                writer.close()
                reader, writer = await asyncio.open_connection(host, port)
                continue
            if status != 200:
                result.errors += 1
                if status == 503 and record:
                    result.rejected += 1
                    result.rejected_latencies.append(time.perf_counter() - started)
                    result.rejected_without_retry_after += not retry_after
                if status == 503 and honor_retry_after and retry_after.isdigit():
                    # a polite client comes back when told to (not past the end of the run)
                    await asyncio.sleep(max(0.0, min(float(retry_after), until - time.perf_counter())))
            elif record:
                result.requests += 1
                result.latencies.append(time.perf_counter() - started)
            if close:  # the server asked to close (e.g. an HAProxy reload): like any client, reconnect
                writer.close()
                reader, writer = await asyncio.open_connection(host, port)
    finally:
        writer.close()


async def _run(
    host: str,
    port: int,
    make: Callable[[int], Iterator[bytes]],
    clients: int,
    seconds: float,
    warmup: float,
    watch: str | None,
    honor_retry_after: bool = False,
) -> Result:
    if warmup:
        await asyncio.gather(
            *[
                _worker(host, port, make(i), time.perf_counter() + warmup, Result(), None, False)
                for i in range(clients)
            ]
        )
    result = Result()
    started = time.perf_counter()
    await asyncio.gather(
        *[
            _worker(host, port, make(i), started + seconds, result, watch, True, honor_retry_after)
            for i in range(clients)
        ]
    )
    result.seconds = time.perf_counter() - started
    return result


def run_load(
    host: str,
    port: int,
    bodies: list[bytes],
    *,
    clients: int,
    seconds: float,
    warmup: float = 1.0,
    watch: str | None = None,
    honor_retry_after: bool = False,
) -> Result:
    """``bodies`` are whole request bytes; each client cycles through them from its own offset.
    With ``honor_retry_after`` a client answered 503 waits its ``Retry-After`` before the next request
    (else it retries at once, as a plain closed loop does)."""

    def make(i: int) -> Iterator[bytes]:
        offset = (i * len(bodies)) // max(clients, 1)
        return itertools.cycle(bodies[offset:] + bodies[:offset])

    try:
        import uvloop

        return uvloop.run(_run(host, port, make, clients, seconds, warmup, watch, honor_retry_after))
    except ImportError:
        return asyncio.run(_run(host, port, make, clients, seconds, warmup, watch, honor_retry_after))
