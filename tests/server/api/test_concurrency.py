"""Many clients at once: every request completes, and results do not depend on the interleaving."""

from __future__ import annotations

import asyncio

import grpc

from attnserve_client.pb import text_generation_pb2, text_generation_pb2_grpc


async def test_concurrent_streams_match_sequential_results(server_address: str) -> None:
    def request(seed: int) -> text_generation_pb2.GenerateRequest:
        return text_generation_pb2.GenerateRequest(
            model="tiny-gpt",
            prompt="Grüße aus",
            parameters=text_generation_pb2.GenerationParameters(max_new_tokens=20, temperature=1.0, seed=seed),
        )

    async with grpc.aio.insecure_channel(server_address) as channel:
        stub = text_generation_pb2_grpc.TextGenerationServiceStub(channel)

        async def run(seed: int) -> list[int]:
            ids: list[int] = []
            async for chunk in stub.GenerateStream(request(seed), timeout=60):
                ids.extend(chunk.token_ids)
            return ids

        sequential = [await run(seed) for seed in range(4)]
        concurrent = await asyncio.gather(*(run(seed % 4) for seed in range(16)))
    assert concurrent == [sequential[seed % 4] for seed in range(16)]
