"""Client and AsyncClient against a real attnserve server serving ``tiny-gpt`` (tests/conftest.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import grpc
import pytest

from attnserve_client import (
    AsyncClient,
    Client,
    FinishReason,
    Generation,
    GenerationChunk,
    InvalidArgumentError,
    ModelInfo,
    ModelNotFoundError,
)

MODEL = "tiny-gpt"
PROMPT = "ROMEO.\nBut soft"


@pytest.fixture(scope="module")
def client(server_address: str) -> Iterator[Client]:
    with Client(server_address, timeout=30) as client:
        yield client


@pytest.fixture
async def aclient(server_address: str) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(server_address, timeout=30) as client:
        yield client


def _joined(chunks: list[GenerationChunk]) -> tuple[str, tuple[int, ...]]:
    return "".join(c.text for c in chunks), tuple(t for c in chunks for t in c.token_ids)


def _check_generation(generation: Generation, *, seed: int, max_new_tokens: int) -> None:
    assert isinstance(generation, Generation)
    assert isinstance(generation.finish_reason, FinishReason)
    assert (generation.model, generation.seed) == (MODEL, seed)
    assert generation.model_version
    assert 1 <= len(generation.token_ids) <= max_new_tokens
    assert generation.usage.completion_tokens == len(generation.token_ids)
    assert generation.usage.prompt_tokens > 0
    assert generation.logprobs is None


def test_generate_returns_a_typed_generation(client: Client) -> None:
    generation = client.generate(PROMPT, model=MODEL, max_new_tokens=8, seed=11)
    _check_generation(generation, seed=11, max_new_tokens=8)


def test_unary_and_stream_give_the_same_text_for_the_same_seed(client: Client) -> None:
    generation = client.generate(PROMPT, model=MODEL, max_new_tokens=16, temperature=1.0, seed=3)
    chunks = list(client.generate_stream(PROMPT, model=MODEL, max_new_tokens=16, temperature=1.0, seed=3))
    assert _joined(chunks) == (generation.text, generation.token_ids)
    assert all(c.finish_reason is None and c.usage is None for c in chunks[:-1])
    assert chunks[-1].finish_reason is generation.finish_reason
    assert chunks[-1].usage == generation.usage
    assert chunks[0].seed == 3


def test_the_seed_the_server_picked_reproduces_the_text(client: Client) -> None:
    first = client.generate(PROMPT, model=MODEL, max_new_tokens=12, temperature=1.0)
    again = client.generate(PROMPT, model=MODEL, max_new_tokens=12, temperature=1.0, seed=first.seed)
    assert (again.text, again.token_ids) == (first.text, first.token_ids)


def test_logprobs_come_one_per_token(client: Client) -> None:
    generation = client.generate(PROMPT, model=MODEL, max_new_tokens=6, seed=1, logprobs=True)
    assert generation.logprobs is not None
    assert len(generation.logprobs) == len(generation.token_ids)
    assert all(lp <= 0 for lp in generation.logprobs)
    chunks = list(client.generate_stream(PROMPT, model=MODEL, max_new_tokens=6, seed=1, logprobs=True))
    assert tuple(lp for c in chunks for lp in c.logprobs or ()) == pytest.approx(generation.logprobs)


def test_the_model_is_chosen_when_the_server_serves_only_one(client: Client) -> None:
    assert client.generate(PROMPT, max_new_tokens=2).model == MODEL


def test_models_and_get_model_are_typed(client: Client) -> None:
    models = client.models()
    assert MODEL in [m.name for m in models]
    info = client.get_model(MODEL)
    assert isinstance(info, ModelInfo)
    assert info.task == "text-generation"
    assert info.default_version in info.versions
    assert info.text_generation is not None
    assert info.text_generation.max_new_tokens_limit == 48
    assert info.text_generation.context_length > 0
    assert info.text_generation.vocab_size > 0
    assert info.text_generation.defaults.max_new_tokens >= 1


def test_the_counters_count_this_tests_requests(client: Client) -> None:
    # The shared server has served other tests: compare before and after (the tests run one at a time).
    before = client.get_model(MODEL).counters
    unary = client.generate(PROMPT, model=MODEL, max_new_tokens=5, temperature=0)
    streamed = list(client.generate_stream(PROMPT, model=MODEL, max_new_tokens=3, temperature=0))
    with pytest.raises(InvalidArgumentError):  # refused before it reaches the model
        client.generate(PROMPT, model=MODEL, max_new_tokens=49)
    after = client.get_model(MODEL).counters
    assert after.requests - before.requests == 2
    # A stream message may carry several tokens (a consumer that fell behind gets them joined).
    streamed_tokens = sum(len(chunk.token_ids) for chunk in streamed)
    assert after.tokens_generated - before.tokens_generated == unary.usage.completion_tokens + streamed_tokens == 8
    assert after.failures == before.failures
    assert (after.batches, after.batched_items) == (0, 0)  # image models only


def test_an_unknown_model_raises_model_not_found(client: Client) -> None:
    with pytest.raises(ModelNotFoundError) as info:
        client.generate(PROMPT, model="no-such-model")
    assert info.value.code == grpc.StatusCode.NOT_FOUND
    with pytest.raises(ModelNotFoundError):
        client.get_model("no-such-model")
    with pytest.raises(ModelNotFoundError):
        next(client.generate_stream(PROMPT, model=MODEL, model_version="999"))


def test_the_server_refuses_what_only_the_model_can_check(client: Client) -> None:
    info = client.get_model(MODEL)
    assert info.text_generation is not None
    too_long = "ROMEO " * (info.text_generation.context_length * 2)
    with pytest.raises(InvalidArgumentError) as too_long_error:
        client.generate(too_long, model=MODEL)
    assert too_long_error.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert too_long_error.value.details
    with pytest.raises(InvalidArgumentError, match="max_new_tokens"):
        client.generate(PROMPT, model=MODEL, max_new_tokens=info.text_generation.max_new_tokens_limit + 1)


def test_health(client: Client) -> None:
    assert client.health() is True
    assert client.health(MODEL) is True
    assert client.health("no-such-model") is False


async def test_async_generate_and_stream_agree(aclient: AsyncClient) -> None:
    generation = await aclient.generate(PROMPT, model=MODEL, max_new_tokens=10, temperature=0.9, seed=21)
    _check_generation(generation, seed=21, max_new_tokens=10)
    chunks = [
        c async for c in aclient.generate_stream(PROMPT, model=MODEL, max_new_tokens=10, temperature=0.9, seed=21)
    ]
    assert _joined(chunks) == (generation.text, generation.token_ids)
    assert chunks[-1].finish_reason is generation.finish_reason


async def test_async_models_health_and_errors(aclient: AsyncClient) -> None:
    assert MODEL in [m.name for m in await aclient.models()]
    assert (await aclient.get_model(MODEL)).name == MODEL
    assert await aclient.health() is True
    assert await aclient.health(MODEL) is True
    with pytest.raises(ModelNotFoundError):
        await aclient.generate(PROMPT, model="no-such-model")
    with pytest.raises(ModelNotFoundError):
        async for _ in aclient.generate_stream(PROMPT, model="no-such-model"):
            pass
