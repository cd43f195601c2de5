"""Leaving a stream early cancels the call, and a deadline ends it, so the server stops decoding.

tiny-gpt decodes its 48 tokens in a few milliseconds, faster than a cancellation can arrive, so these
tests use ``long-gpt`` (tests/conftest.py), which decodes up to 1,000 tokens at a few ms each. What the server did is
read from its public signals, never timed: ``attnserve_requests_in_flight`` on /metrics says when the
call has ended on the server, and GetModel's ``tokens_generated`` how many tokens it decoded. The bound
is work: a call that was really stopped decoded fewer tokens than the full run it asked for.
"""

from __future__ import annotations

import asyncio
import re
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest

from attnserve_client import AsyncClient, Client, DeadlineExceededError, FinishReason

MODEL = "long-gpt"
LIMIT = 1000
PROMPT = "ROMEO."
SAMPLE = re.compile(r"^(\w+)\{([^}]*)\} (\S+)$")
SETTLE_TIMEOUT_S = 60.0

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class LongServer:
    address: str
    metrics_url: str
    full_run_s: float  # how long an uncancelled LIMIT-token greedy run took here, just now


@pytest.fixture(scope="module")
def long(long_server: Any) -> LongServer:
    """tests/conftest.py's ``long_server``, its /metrics URL, and how long a full run takes there now."""
    found = re.search(r"metrics on (http://\S+/metrics)", long_server.stderr())
    assert found, long_server.stderr()
    with Client(long_server.address) as client:
        # The premise: greedy decoding of this model runs to the cap, so any stream that is not stopped does.
        started = time.monotonic()
        full = client.generate(PROMPT, model=MODEL, max_new_tokens=LIMIT, temperature=0, timeout=120)
        elapsed = time.monotonic() - started
    assert (full.finish_reason, full.usage.completion_tokens) == (FinishReason.LENGTH, LIMIT)
    return LongServer(long_server.address, found.group(1), elapsed)


def in_flight(url: str) -> float:
    """RPCs of MODEL the server is handling now (all methods), from its /metrics."""
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    total = 0.0
    for line in text.splitlines():
        sample = SAMPLE.match(line)
        if sample and sample.group(1) == "attnserve_requests_in_flight":
            labels = dict(re.findall(r'(\w+)="([^"]*)"', sample.group(2)))
            if labels.get("model") == MODEL:
                total += float(sample.group(3))
    return total


def tokens_generated(server: LongServer) -> int:
    with Client(server.address) as client:
        return client.get_model(MODEL).counters.tokens_generated


def settled(server: LongServer) -> int:
    """tokens_generated once no call of MODEL is in flight on the server (polled, not slept on)."""
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while in_flight(server.metrics_url):
        assert time.monotonic() < deadline, f"a call of {MODEL} was still in flight after {SETTLE_TIMEOUT_S} s"
        time.sleep(0.02)
    return tokens_generated(server)


async def settled_async(server: LongServer) -> int:
    """:func:`settled` without blocking the event loop, which must run to close a dropped async stream."""
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while await asyncio.to_thread(in_flight, server.metrics_url):
        assert time.monotonic() < deadline, f"a call of {MODEL} was still in flight after {SETTLE_TIMEOUT_S} s"
        await asyncio.sleep(0.02)
    return await asyncio.to_thread(tokens_generated, server)


def test_leaving_a_sync_stream_early_stops_the_decoding(long: LongServer) -> None:
    before = settled(long)
    with Client(long.address) as client:
        for chunk in client.generate_stream(PROMPT, model=MODEL, max_new_tokens=LIMIT, temperature=0):
            assert chunk.text or chunk.token_ids
            break  # drops the only reference to the generator: it closes and cancels the call
        decoded = settled(long) - before
    assert 1 <= decoded < LIMIT, f"{decoded} tokens decoded for a stream left after its first chunk"


async def test_leaving_an_async_stream_early_stops_the_decoding(long: LongServer) -> None:
    # The client stays open while counting: closing its channel would cancel the call too.
    async with AsyncClient(long.address) as client:
        before = await settled_async(long)
        stream = client.generate_stream(PROMPT, model=MODEL, max_new_tokens=LIMIT, temperature=0)
        async for _ in stream:
            break
        await stream.aclose()
        decoded = await settled_async(long) - before
        assert 1 <= decoded < LIMIT

        # A bare `break` (no aclose): the event loop closes the dropped generator, which it can while
        # settled_async awaits.
        before = await settled_async(long)
        async for _ in client.generate_stream(PROMPT, model=MODEL, max_new_tokens=LIMIT, temperature=0):
            break
        decoded = await settled_async(long) - before
        assert 1 <= decoded < LIMIT


def test_a_deadline_raises_deadline_exceeded_and_stops_the_decoding(long: LongServer) -> None:
    # A quarter of the time a full run took just now: on a slow machine the call only gets less done.
    timeout = long.full_run_s / 4
    with Client(long.address) as client:
        before = settled(long)
        with pytest.raises(DeadlineExceededError) as unary:
            client.generate(PROMPT, model=MODEL, max_new_tokens=LIMIT, temperature=0, timeout=timeout)
        assert unary.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        assert isinstance(unary.value.__cause__, grpc.RpcError)  # the call's own status, not a client check
        decoded = settled(long) - before
        assert decoded < LIMIT * 3 / 4, f"{decoded} tokens decoded after a {timeout:.2f} s deadline"

        before = settled(long)
        received = 0
        with pytest.raises(DeadlineExceededError):
            for chunk in client.generate_stream(
                PROMPT, model=MODEL, max_new_tokens=LIMIT, temperature=0, timeout=timeout
            ):
                received += len(chunk.token_ids)
        decoded = settled(long) - before
        assert received <= decoded < LIMIT * 3 / 4, f"{decoded} tokens decoded after a {timeout:.2f} s deadline"


async def test_an_async_deadline_raises_deadline_exceeded(long: LongServer) -> None:
    timeout = long.full_run_s / 4
    async with AsyncClient(long.address) as client:
        before = await settled_async(long)
        with pytest.raises(DeadlineExceededError):
            async for _ in client.generate_stream(
                PROMPT, model=MODEL, max_new_tokens=LIMIT, temperature=0, timeout=timeout
            ):
                pass
        assert await settled_async(long) - before < LIMIT * 3 / 4


@pytest.fixture(autouse=True)
def _no_leftover_calls(long: LongServer) -> Iterator[None]:
    """Each test starts and ends with nothing of MODEL in flight, so the counts are this test's alone."""
    settled(long)
    yield
    settled(long)
