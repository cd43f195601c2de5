"""Leaving a stream early cancels the call, and a deadline ends it, so the server stops decoding.

tiny-gpt decodes its 48 tokens in a few milliseconds, faster than a cancellation can arrive, so these
tests use ``long-gpt`` (tests/conftest.py), which decodes up to 1,000 tokens at a few ms each. What the
server did is read from its public signals, never timed: ``long_decoding`` waits until /metrics shows
no call in flight and no sequence left in the batch, and counts the tokens the batcher decoded. The
bound is work: a call that was really stopped decoded well under the full run it asked for (3/4 of it).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from attnserve_client import AsyncClient, Client, DeadlineExceededError, FinishReason

MODEL = "long-gpt"
LIMIT = 1000
PROMPT = "ROMEO."

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def address(long_server_address: str) -> str:
    with Client(long_server_address) as client:
        # The premise: greedy decoding of this model runs to the cap, so any stream that is not stopped does.
        full = client.generate(PROMPT, model=MODEL, max_new_tokens=LIMIT, temperature=0, timeout=120)
    assert (full.finish_reason, full.usage.completion_tokens) == (FinishReason.LENGTH, LIMIT)
    return long_server_address


@pytest.fixture(scope="module")
def full_run_s(address: str) -> float:
    """How long an uncancelled LIMIT-token greedy run takes here, now."""
    with Client(address) as client:
        started = time.monotonic()
        client.generate(PROMPT, model=MODEL, max_new_tokens=LIMIT, temperature=0, timeout=120)
        return time.monotonic() - started


@pytest.fixture
def settled(long_decoding: Any) -> Iterator[Any]:
    """``settled()``: the tokens long-gpt's batcher has decoded, once nothing of it runs; the test starts
    and ends with nothing running, so the differences are its own."""
    long_decoding.settled()
    yield long_decoding.settled
    long_decoding.settled()


def test_leaving_a_sync_stream_early_stops_the_decoding(address: str, settled: Any) -> None:
    before = settled()
    with Client(address) as client:
        for chunk in client.generate_stream(PROMPT, model=MODEL, max_new_tokens=LIMIT, temperature=0):
            assert chunk.text or chunk.token_ids
            break  # drops the only reference to the generator: it closes and cancels the call
        decoded = settled() - before
    assert decoded < LIMIT * 3 / 4, f"{decoded} tokens decoded for a stream left after its first chunk"


async def test_leaving_an_async_stream_early_stops_the_decoding(address: str, settled: Any) -> None:
    # The client stays open while counting: closing its channel would cancel the call too.
    async with AsyncClient(address) as client:
        before = await asyncio.to_thread(settled)
        stream = client.generate_stream(PROMPT, model=MODEL, max_new_tokens=LIMIT, temperature=0)
        async for _ in stream:
            break
        await stream.aclose()
        decoded = await asyncio.to_thread(settled) - before
        assert decoded < LIMIT * 3 / 4

        # A bare `break` (no aclose): the event loop closes the dropped generator, which it can while
        # the settle awaits (in a thread).
        before = await asyncio.to_thread(settled)
        async for _ in client.generate_stream(PROMPT, model=MODEL, max_new_tokens=LIMIT, temperature=0):
            break
        decoded = await asyncio.to_thread(settled) - before
        assert decoded < LIMIT * 3 / 4


def test_a_deadline_raises_deadline_exceeded_and_stops_the_decoding(
    address: str, settled: Any, full_run_s: float
) -> None:
    # A quarter of the time a full run took just now: on a slow machine the call only gets less done.
    timeout = full_run_s / 4
    with Client(address) as client:
        before = settled()
        with pytest.raises(DeadlineExceededError) as unary:
            client.generate(PROMPT, model=MODEL, max_new_tokens=LIMIT, temperature=0, timeout=timeout)
        assert unary.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        assert isinstance(unary.value.__cause__, grpc.RpcError)  # the call's own status, not a client check
        decoded = settled() - before
        assert decoded < LIMIT * 3 / 4, f"{decoded} tokens decoded after a {timeout:.2f} s deadline"

        before = settled()
        received = 0
        with pytest.raises(DeadlineExceededError):
            for chunk in client.generate_stream(
                PROMPT, model=MODEL, max_new_tokens=LIMIT, temperature=0, timeout=timeout
            ):
                received += len(chunk.token_ids)
        decoded = settled() - before
        # The first token comes from the prefill, every later one from a decode step.
        assert received - 1 <= decoded < LIMIT * 3 / 4, f"{decoded} tokens decoded after a {timeout:.2f} s deadline"


async def test_an_async_deadline_raises_deadline_exceeded(address: str, settled: Any, full_run_s: float) -> None:
    timeout = full_run_s / 4
    async with AsyncClient(address) as client:
        before = await asyncio.to_thread(settled)
        with pytest.raises(DeadlineExceededError):
            async for _ in client.generate_stream(
                PROMPT, model=MODEL, max_new_tokens=LIMIT, temperature=0, timeout=timeout
            ):
                pass
        assert await asyncio.to_thread(settled) - before < LIMIT * 3 / 4
