"""Admission control for inference requests: at most ``max_ongoing`` run at once, at most
``max_queued`` more wait (first come, first served) for a slot, and the rest are refused at once.

The Serve deployment's ``max_ongoing_requests`` / ``max_queued_requests`` with Serve's meanings
(``max_queued = -1``: no bound). Requests reach a replica from HAProxy, which already caps what it
sends (``maxconn``); this is the limit that still holds when several Gateways, a reload's old and new
HAProxy workers, Ray's proxy path or a direct client all send to one replica. Not thread-safe: used
from the replica's serving loop only.
"""

from __future__ import annotations

import asyncio
import sys
from collections import deque

from manymodels.errors import Overloaded

UNBOUNDED = -1


class Admission:
    def __init__(self, max_ongoing: int | None = None, max_queued: int = UNBOUNDED) -> None:
        self.ongoing = 0
        self.rejected = 0
        self._waiting: deque[asyncio.Future[None]] = deque()
        self.max_ongoing = sys.maxsize
        self.max_queued = UNBOUNDED
        self.configure(max_ongoing, max_queued)

    @property
    def queued(self) -> int:
        return len(self._waiting)

    def configure(self, max_ongoing: int | None, max_queued: int = UNBOUNDED) -> None:
        """New limits; a larger ``max_ongoing`` admits waiting requests now, a smaller one lets the
        running ones finish (new ones wait until the count is below it)."""
        if max_ongoing is not None and max_ongoing < 1:
            raise ValueError(f"max_ongoing must be >= 1, got {max_ongoing}")
        if max_queued < UNBOUNDED:
            raise ValueError(f"max_queued must be -1 (no limit) or >= 0, got {max_queued}")
        self.max_ongoing = sys.maxsize if max_ongoing is None else max_ongoing
        self.max_queued = max_queued
        while self._waiting and self.ongoing < self.max_ongoing:
            if self._hand_over():
                self.ongoing += 1

    def try_enter(self) -> bool:
        """Take a free slot if there is one and nobody waits for it (no await: the hot path)."""
        if self.ongoing < self.max_ongoing and not self._waiting:
            self.ongoing += 1
            return True
        return False

    async def enter(self) -> None:
        """Take a slot, waiting in line if all are taken; raises ``Overloaded`` if the line is full."""
        if self.try_enter():
            return
        if self.max_queued != UNBOUNDED and len(self._waiting) >= self.max_queued:
            self.rejected += 1
            raise Overloaded(
                f"the replica is at its limit: {self.ongoing} requests running "
                f"(max_ongoing_requests={self.max_ongoing}) and {len(self._waiting)} waiting "
                f"(max_queued_requests={self.max_queued}); retry later"
            )
        slot = asyncio.get_running_loop().create_future()
        self._waiting.append(slot)
        try:
            await slot
        except asyncio.CancelledError:
            if slot.done() and not slot.cancelled():
                self.leave()  # handed a slot just as we were cancelled: pass it on
            else:
                self._waiting.remove(slot)
            raise

    def leave(self) -> None:
        """Give a slot back: straight to the first waiting request, if any (the count stays)."""
        if self.ongoing <= self.max_ongoing and self._hand_over():
            return
        self.ongoing -= 1

    def _hand_over(self) -> bool:
        while self._waiting:
            slot = self._waiting.popleft()
            if not slot.done():
                slot.set_result(None)
                return True
        return False
