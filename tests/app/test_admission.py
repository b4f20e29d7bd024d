"""Admission: at most max_ongoing run, at most max_queued wait in arrival order, the rest are refused."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest

from manymodels.admission import Admission
from manymodels.errors import Overloaded

T = TypeVar("T")


def run(scenario: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(scenario())  # type: ignore[arg-type]


async def settle() -> None:
    """Let every ready task run until it blocks."""
    for _ in range(5):
        await asyncio.sleep(0)


def test_slots_then_a_bounded_line_then_refusal() -> None:
    async def scenario() -> None:
        gate = Admission(max_ongoing=2, max_queued=2)
        await gate.enter()
        await gate.enter()
        order: list[int] = []

        async def waiter(i: int) -> None:
            await gate.enter()
            order.append(i)

        tasks = [asyncio.create_task(waiter(i)) for i in range(2)]
        await settle()
        assert (gate.ongoing, gate.queued, order) == (2, 2, [])
        with pytest.raises(Overloaded) as refused:
            await gate.enter()
        assert refused.value.status == 503 and refused.value.retry_after == 1
        message = str(refused.value)
        assert "max_ongoing_requests=2" in message and "max_queued_requests=2" in message
        assert gate.rejected == 1
        gate.leave()  # the slot goes to the first in line; the count stays at the limit
        await settle()
        assert (gate.ongoing, gate.queued, order) == (2, 1, [0])
        gate.leave()
        await settle()
        assert (gate.ongoing, gate.queued, order) == (2, 0, [0, 1])
        for _ in range(2):
            gate.leave()
        assert gate.ongoing == 0
        await asyncio.gather(*tasks)

    run(scenario)


def test_unbounded_line_never_refuses_and_no_limit_by_default() -> None:
    async def scenario() -> None:
        free = Admission()
        for _ in range(1000):
            await free.enter()
        assert free.ongoing == 1000 and free.queued == 0

        gate = Admission(max_ongoing=1)  # max_queued -1: Serve's "no bound"
        await gate.enter()
        tasks = [asyncio.create_task(gate.enter()) for _ in range(50)]
        await settle()
        assert gate.queued == 50 and gate.rejected == 0
        for _ in range(51):
            gate.leave()
            await settle()
        assert gate.ongoing == 0 and gate.queued == 0
        await asyncio.gather(*tasks)

    run(scenario)


def test_newcomers_do_not_jump_the_line() -> None:
    async def scenario() -> None:
        gate = Admission(max_ongoing=1, max_queued=5)
        await gate.enter()
        first = asyncio.create_task(gate.enter())
        await settle()
        gate.leave()  # handed to `first`, not left free for whoever comes next
        late = asyncio.create_task(gate.enter())
        await settle()
        assert first.done() and not late.done() and gate.queued == 1
        gate.leave()
        await settle()
        assert late.done() and gate.ongoing == 1

    run(scenario)


def test_a_cancelled_waiter_leaves_the_line_and_loses_no_slot() -> None:
    async def scenario() -> None:
        gate = Admission(max_ongoing=1, max_queued=1)
        await gate.enter()
        quitter = asyncio.create_task(gate.enter())
        await settle()
        quitter.cancel()
        await settle()
        assert gate.queued == 0
        stayer = asyncio.create_task(gate.enter())  # the line has room again
        await settle()
        assert gate.queued == 1
        # Cancelled right after being handed the slot: the slot passes on, it is not lost.
        gate.leave()
        stayer.cancel()
        await settle()
        assert (gate.ongoing, gate.queued) == (0, 0)
        await gate.enter()
        assert gate.ongoing == 1

    run(scenario)


def test_new_limits_apply_live() -> None:
    async def scenario() -> None:
        gate = Admission(max_ongoing=1, max_queued=10)
        await gate.enter()
        tasks = [asyncio.create_task(gate.enter()) for _ in range(3)]
        await settle()
        gate.configure(3, 10)  # room for two more: the first two in line go now
        await settle()
        assert (gate.ongoing, gate.queued) == (3, 1)
        gate.configure(1, 0)  # lower: running requests finish, nobody new starts until below
        with pytest.raises(Overloaded):
            await gate.enter()
        gate.leave()
        gate.leave()
        await settle()
        assert (gate.ongoing, gate.queued) == (1, 1)  # still at the limit: the last one waits
        gate.leave()
        await settle()
        assert (gate.ongoing, gate.queued) == (1, 0)
        await asyncio.gather(*tasks)

    run(scenario)


@pytest.mark.parametrize(("ongoing", "queued"), [(0, -1), (-3, 5), (4, -2)])
def test_invalid_limits(ongoing: int, queued: int) -> None:
    with pytest.raises(ValueError):
        Admission(ongoing, queued)
