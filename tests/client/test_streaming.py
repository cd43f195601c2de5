"""Streams yield typed chunks; the last one carries finish_reason and usage (the real server, ``tiny-gpt``).

Every value checked here is one the server computed (the same request's unary result, its counters),
never one a test double made up.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import cast

import pytest

from attnserve_client import AsyncClient, Client, FinishReason, Generation, GenerationChunk, Usage

MODEL = "tiny-gpt"
PROMPT = "ROMEO.\nBut soft"
# Greedy decoding of PROMPT runs to the length (no end-of-text), checked in the tests below.
TOKENS = 8


@pytest.fixture(scope="module")
def client(server_address: str) -> Iterator[Client]:
    with Client(server_address, timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def unary(client: Client) -> Generation:
    """The unary result of the request the streams repeat."""
    generation = client.generate(PROMPT, model=MODEL, max_new_tokens=TOKENS, temperature=0, seed=5)
    assert generation.finish_reason is FinishReason.LENGTH, "premise: the greedy text runs to the length"
    return generation


def _check(chunks: list[GenerationChunk], unary: Generation) -> None:
    assert all(type(c) is GenerationChunk for c in chunks)
    # One token per chunk, unless the client fell behind: then the tokens that queued up come joined.
    assert 1 <= len(chunks) <= TOKENS
    last = chunks[-1]
    assert chunks[0].seed == 5 and all(c.seed is None for c in chunks[1:])
    assert all(c.finish_reason is None and c.usage is None and not c.is_last for c in chunks[:-1])
    assert last.finish_reason is FinishReason.LENGTH and last.is_last
    assert cast(str, last.finish_reason) == "length"  # a str enum
    assert last.usage == Usage(prompt_tokens=unary.usage.prompt_tokens, completion_tokens=TOKENS)
    assert all(c.logprobs is None for c in chunks)  # not asked for
    assert all(isinstance(t, int) for c in chunks for t in c.token_ids)
    assert "".join(c.text for c in chunks) == unary.text
    assert tuple(t for c in chunks for t in c.token_ids) == unary.token_ids


def test_sync_stream_yields_typed_chunks(client: Client, unary: Generation) -> None:
    _check(list(client.generate_stream(PROMPT, model=MODEL, max_new_tokens=TOKENS, temperature=0, seed=5)), unary)


async def test_async_stream_yields_typed_chunks(server_address: str, unary: Generation) -> None:
    async with AsyncClient(server_address, timeout=30) as client:
        stream = client.generate_stream(PROMPT, model=MODEL, max_new_tokens=TOKENS, temperature=0, seed=5)
        _check([chunk async for chunk in stream], unary)


def test_generation_is_typed(client: Client, unary: Generation) -> None:
    generation = client.generate(PROMPT, model=MODEL, max_new_tokens=TOKENS, temperature=0, seed=5, logprobs=True)
    assert isinstance(generation, Generation)
    assert generation.finish_reason is FinishReason.LENGTH
    assert generation.token_ids == unary.token_ids and len(generation.token_ids) == TOKENS
    assert all(isinstance(t, int) for t in generation.token_ids)
    assert isinstance(generation.logprobs, tuple) and len(generation.logprobs) == TOKENS
    assert all(isinstance(lp, float) and lp <= 0 for lp in generation.logprobs)
    assert generation.seed == 5
    assert generation.usage.total_tokens == generation.usage.prompt_tokens + TOKENS
    assert unary.logprobs is None
