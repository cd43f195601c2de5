"""Admission control: a bounded number of generations run at once, a bounded number wait.

Each running generation occupies one worker thread for its ONNX Runtime calls, so this cap is
also what keeps many clients from spawning unbounded threads or thrashing the cores.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from attnserve_server.errors import ResourceExhaustedError


class ConcurrencyLimiter:
    """``async with limiter.slot():`` runs at most ``max_concurrent`` bodies; ``max_queued`` more may wait."""

    def __init__(self, max_concurrent: int, max_queued: int) -> None:
        self.max_concurrent = max_concurrent
        self.max_queued = max_queued
        self._semaphore = asyncio.Semaphore(max_concurrent)
        self._waiting = 0

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one generation slot for the body; raise ResourceExhaustedError if the queue is full."""
        if self._semaphore.locked() and self._waiting >= self.max_queued:
            raise ResourceExhaustedError(
                f"server is busy ({self.max_concurrent} generations running, {self._waiting} waiting); retry later"
            )
        self._waiting += 1
        try:
            await self._semaphore.acquire()
        finally:
            self._waiting -= 1
        try:
            yield
        finally:
            self._semaphore.release()
