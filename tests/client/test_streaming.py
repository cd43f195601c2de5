"""Streams yield typed chunks; the last one carries finish_reason and usage (scripted server)."""

from __future__ import annotations

from typing import Any

from attnserve_client import AsyncClient, Client, FinishReason, GenerationChunk, Usage


def _check(chunks: list[GenerationChunk]) -> None:
    assert [type(c) for c in chunks] == [GenerationChunk, GenerationChunk]
    first, last = chunks
    assert (first.text, first.token_ids, first.seed) == ("hel", (1,), 7)
    assert first.finish_reason is None and first.usage is None and not first.is_last
    assert last.finish_reason is FinishReason.STOP and last.is_last
    assert last.finish_reason == "stop"
    assert last.usage == Usage(prompt_tokens=3, completion_tokens=2)
    assert last.seed is None
    assert all(c.logprobs is None for c in chunks)


def test_sync_stream_yields_typed_chunks(scripted_server: Any) -> None:
    with Client(scripted_server.address) as client:
        _check(list(client.generate_stream("ROMEO:", model="only-gpt")))


async def test_async_stream_yields_typed_chunks(scripted_server: Any) -> None:
    async with AsyncClient(scripted_server.address) as client:
        _check([chunk async for chunk in client.generate_stream("ROMEO:", model="only-gpt")])


def test_generation_is_typed(scripted_server: Any) -> None:
    with Client(scripted_server.address) as client:
        generation = client.generate("ROMEO:", model="only-gpt", logprobs=True, seed=5)
        plain = client.generate("ROMEO:", model="only-gpt")
    assert generation.finish_reason is FinishReason.LENGTH
    assert generation.token_ids == (1, 2)
    assert generation.logprobs == (-0.5, -0.25)
    assert generation.seed == 5
    assert generation.usage.total_tokens == 5
    assert plain.logprobs is None
