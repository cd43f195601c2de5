"""Leaving a stream early cancels the call, so the server stops decoding.

tiny-gpt decodes its 48 tokens in a few milliseconds, faster than a cancellation can
arrive, so this test exports a model with a long context and lets it decode up to 1,000
tokens. The server's tokens_generated counter (public, through get_model) shows how many it
decoded.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from attnserve_client import AsyncClient, Client, FinishReason

MODEL = "long-gpt"
LIMIT = 1000
PROMPT = "ROMEO."


def _settled_tokens_generated(client: Client) -> int:
    """The model's tokens_generated once it stops moving (no request is decoding any more)."""
    previous = client.get_model(MODEL).counters.tokens_generated
    while True:
        time.sleep(0.2)
        current = client.get_model(MODEL).counters.tokens_generated
        if current == previous:
            return current
        previous = current


@pytest.mark.slow
async def test_leaving_a_stream_early_stops_the_decoding(
    export_text_model: Callable[..., Path], server_launcher: Callable[..., Any], tmp_path: Path
) -> None:
    export_text_model(tmp_path, MODEL, max_new_tokens_limit=LIMIT, context_length=LIMIT + 24)
    server = server_launcher(tmp_path)
    with Client(server.address) as client:
        # Greedy decoding of this model runs to the cap; so must any stream that is not cancelled.
        full = client.generate(PROMPT, model=MODEL, max_new_tokens=LIMIT, temperature=0)
        assert (full.finish_reason, full.usage.completion_tokens) == (FinishReason.LENGTH, LIMIT)

        before = _settled_tokens_generated(client)
        for chunk in client.generate_stream(PROMPT, model=MODEL, max_new_tokens=LIMIT, temperature=0):
            assert chunk.text or chunk.token_ids
            break  # drops the only reference to the generator: it closes and cancels the call
        decoded = _settled_tokens_generated(client) - before
        assert 1 <= decoded < LIMIT // 2

        # The async client stays open while counting: closing its channel would cancel the call too.
        async with AsyncClient(server.address) as aclient:
            before = _settled_tokens_generated(client)
            stream = aclient.generate_stream(PROMPT, model=MODEL, max_new_tokens=LIMIT, temperature=0)
            async for _ in stream:
                break
            await stream.aclose()
            decoded = _settled_tokens_generated(client) - before
            assert 1 <= decoded < LIMIT // 2

            # A bare `break` (no aclose): the event loop closes the dropped generator soon after.
            before = _settled_tokens_generated(client)
            async for _ in aclient.generate_stream(PROMPT, model=MODEL, max_new_tokens=LIMIT, temperature=0):
                break
            await asyncio.sleep(0.1)
            decoded = _settled_tokens_generated(client) - before
            assert 1 <= decoded < LIMIT // 2
