from __future__ import annotations

import asyncio

import pytest

from attnserve_server.errors import ResourceExhaustedError
from attnserve_server.text.scheduler import ConcurrencyLimiter


async def test_runs_at_most_max_concurrent_and_queues_the_rest() -> None:
    limiter = ConcurrencyLimiter(max_concurrent=2, max_queued=2)
    running = 0
    peak = 0
    release = asyncio.Event()

    async def job() -> None:
        nonlocal running, peak
        async with limiter.slot():
            running += 1
            peak = max(peak, running)
            await release.wait()
            running -= 1

    tasks = [asyncio.create_task(job()) for _ in range(4)]
    await asyncio.sleep(0.05)
    assert running == 2  # two run, two wait

    with pytest.raises(ResourceExhaustedError, match="busy"):
        async with limiter.slot():
            pass

    release.set()
    await asyncio.gather(*tasks)
    assert peak == 2

    async with limiter.slot():  # free again
        pass


async def test_cancelled_waiter_frees_its_queue_place() -> None:
    limiter = ConcurrencyLimiter(max_concurrent=1, max_queued=1)
    hold = asyncio.Event()

    async def holder() -> None:
        async with limiter.slot():
            await hold.wait()

    first = asyncio.create_task(holder())
    await asyncio.sleep(0.01)
    waiter = asyncio.create_task(holder())
    await asyncio.sleep(0.01)
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)
    second = asyncio.create_task(holder())  # takes the freed queue place instead of being refused
    await asyncio.sleep(0.01)
    hold.set()
    await asyncio.gather(first, second)
