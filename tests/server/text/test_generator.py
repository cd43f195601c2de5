"""Generation with the KV cache against a full recompute, for each positional encoding the exporter offers."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from attnserve_server.text.continuous import BatchingLimits, ContinuousBatcher
from attnserve_server.text.engine import TextEngine
from attnserve_server.text.generator import TextGenerator
from attnserve_server.text.params import FinishReason, GenerationChunk, GenerationParams, SamplingParams

GREEDY = SamplingParams(temperature=0.0)


generator_executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="test-generator")


@pytest.fixture(scope="module")
def executor() -> Iterator[ThreadPoolExecutor]:
    yield generator_executor


@pytest.fixture(
    scope="module",
    params=[("shared_buffer", "learned"), ("shared_buffer", "rotary"), ("concat", "learned"), ("concat", "rotary")],
    ids="-".join,
)
def generator(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    export_text_model: Callable[..., Path],
    tiny_repository: Path,
    load_text_engine: Callable[[Path], TextEngine],
) -> TextGenerator:
    layout, pos_encoding = request.param
    if (layout, pos_encoding) == ("shared_buffer", "learned"):  # the tiny preset as exported by default
        model_dir = tiny_repository / "tiny-gpt"
    else:
        model_dir = export_text_model(
            tmp_path_factory.mktemp(f"{layout}-{pos_encoding}"),
            "gpt",
            kv_cache_layout=layout,
            pos_encoding=pos_encoding,
        )
    return load_text_engine(model_dir).generator


def params(max_new_tokens: int) -> GenerationParams:
    return GenerationParams(
        max_new_tokens=max_new_tokens,
        sampling=GREEDY,
        stop=(),
        seed=0,
        logprobs=True,
        max_new_tokens_explicit=True,
    )


def recompute_greedy(generator: TextGenerator, prompt: list[int], steps: int) -> list[int]:
    """Greedy decoding that runs the whole sequence every step, with no cache."""
    ids = list(prompt)
    for _ in range(steps):
        logits = generator.new_kv_cache(1).prefill(0, ids)  # a fresh, empty cache every time
        ids.append(int(np.argmax(logits)))
    return ids[len(prompt) :]


async def run(generator: TextGenerator, prompt: list[int], p: GenerationParams) -> list[GenerationChunk]:
    batcher = ContinuousBatcher(generator, BatchingLimits(), generator_executor)
    return [chunk async for chunk in batcher.submit(prompt, p, p.max_new_tokens)]


async def collect(generator: TextGenerator, prompt: list[int], p: GenerationParams) -> list[int]:
    return [t for chunk in await run(generator, prompt, p) for t in chunk.token_ids]


async def test_kv_cache_matches_full_recompute(generator: TextGenerator) -> None:
    prompt = generator.tokenizer.encode("ROMEO. But soft")
    steps = 20
    cached = await collect(generator, prompt, params(steps))
    expected = recompute_greedy(generator, prompt, steps)
    # Greedy decoding of this prompt samples no end-of-text: all the steps are compared.
    assert cached == expected
    assert len(cached) == steps


async def test_chunks_carry_their_tokens_and_the_last_one_finishes(generator: TextGenerator) -> None:
    prompt = generator.tokenizer.encode("Grüße")
    chunks = await run(generator, prompt, params(10))
    # One token per chunk, or several when they queued up before the consumer took them.
    assert all(len(c.token_ids) >= 1 and len(c.logprobs) == len(c.token_ids) for c in chunks)
    assert all(c.finish_reason is None and c.usage is None for c in chunks[:-1])
    last = chunks[-1]
    # Greedy and deterministic: this prompt's continuation has no end-of-text, so it runs to the length.
    assert last.finish_reason == FinishReason.LENGTH
    assert sum(len(c.token_ids) for c in chunks) == 10
    assert last.usage is not None
    assert last.usage.prompt_tokens == len(prompt)
    assert last.usage.completion_tokens == 10


async def test_generation_runs_up_to_the_last_position_of_the_context(generator: TextGenerator) -> None:
    context = generator.spec.context_length
    prompt = generator.tokenizer.encode("abc " * 100)[: context - 5]
    tokens = await collect(generator, prompt, params(5))
    # All five fit (the last one at the last position) and are what a full recompute gives; greedy
    # decoding of this prompt samples no end-of-text, so fewer tokens would be a bug.
    assert tokens == recompute_greedy(generator, prompt, 5)
    assert len(tokens) == 5
    assert len(prompt) + len(tokens) == context
