"""Continuous batching on a real (tiny, random-weight) model: join, leave, cancel, seeds, limits.

Each test drives a :class:`ContinuousBatcher` over a model loaded by the repository, the same
object the server uses, and compares batched runs with the same requests run alone.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from attnserve_server.errors import DeadlineExceededError, ResourceExhaustedError
from attnserve_server.text.continuous import BatchingLimits, ContinuousBatcher
from attnserve_server.text.engine import TextEngine
from attnserve_server.text.generator import TextGenerator
from attnserve_server.text.params import FinishReason, GenerationChunk, GenerationParams, SamplingParams

# Prompts of different lengths, so batched sequences sit at different positions.
PROMPTS = ("ROMEO.", "To be, or not to be, that is", "Grüße aus München", "日本語", "O Romeo, Romeo, wherefore art")
STEPS = 12


@pytest.fixture(scope="module")
def executor() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="test-continuous") as pool:
        yield pool


@pytest.fixture(scope="module", params=["shared_buffer", "concat"])
def generator(
    request: pytest.FixtureRequest,
    tiny_repository: Path,
    tmp_path_factory: pytest.TempPathFactory,
    export_text_model: Callable[..., Path],
    load_text_engine: Callable[[Path], TextEngine],
) -> TextGenerator:
    if request.param == "shared_buffer":  # how the tiny model is exported by default
        model_dir = tiny_repository / "tiny-gpt"
    else:
        model_dir = export_text_model(tmp_path_factory.mktemp("concat"), "tiny-gpt", kv_cache_layout=request.param)
    generator = load_text_engine(model_dir).generator
    assert generator.spec.kv_cache_layout == request.param
    return generator


@pytest.fixture
def make_batcher(generator: TextGenerator, executor: ThreadPoolExecutor) -> Callable[..., ContinuousBatcher]:
    def make(**limits: int) -> ContinuousBatcher:
        return ContinuousBatcher(generator, BatchingLimits(**limits), executor)

    return make


def params(
    steps: int = STEPS, *, temperature: float = 0.0, seed: int = 0, stop: tuple[str, ...] = ()
) -> GenerationParams:
    return GenerationParams(
        max_new_tokens=steps,
        sampling=SamplingParams(temperature=temperature),
        stop=stop,
        seed=seed,
        logprobs=True,
        max_new_tokens_explicit=True,
    )


def encode(generator: TextGenerator, prompt: str) -> list[int]:
    return generator.tokenizer.encode(prompt)


async def drain(chunks: AsyncIterator[GenerationChunk]) -> list[GenerationChunk]:
    return [chunk async for chunk in chunks]


def tokens(chunks: list[GenerationChunk]) -> list[int]:
    return [t for c in chunks for t in c.token_ids]


async def alone(
    make_batcher: Callable[..., ContinuousBatcher], prompt_ids: list[int], p: GenerationParams
) -> list[GenerationChunk]:
    return await drain(make_batcher().submit(prompt_ids, p, p.max_new_tokens))


async def test_greedy_output_is_the_same_alone_and_batched(
    generator: TextGenerator, make_batcher: Callable[..., ContinuousBatcher]
) -> None:
    prompts = [encode(generator, p) for p in PROMPTS]
    expected = [await alone(make_batcher, ids, params()) for ids in prompts]
    batcher = make_batcher()
    batched = await asyncio.gather(*(drain(batcher.submit(ids, params(), STEPS)) for ids in prompts))
    assert [tokens(c) for c in batched] == [tokens(c) for c in expected]
    assert ["".join(x.text for x in c) for c in batched] == ["".join(x.text for x in c) for c in expected]
    assert batcher.stats.largest_decode_batch == len(PROMPTS)
    # One decode call per step for the whole batch, not one per sequence.
    assert batcher.stats.decode_calls < batcher.stats.decoded_tokens
    # The prompts, admitted in the same step, were prefilled together (in one step's batched call).
    assert batcher.stats.prefill_batches < batcher.stats.prefill_calls == len(PROMPTS)


async def test_batched_prefill_gives_the_tokens_of_one_by_one_prefill(
    generator: TextGenerator, make_batcher: Callable[..., ContinuousBatcher]
) -> None:
    """Prompts of different lengths and of equal lengths, prefilled in one step, against each one
    prefilled alone; a sequence already decoding keeps its tokens while they are prefilled beside it."""
    prompts = [encode(generator, p) for p in (*PROMPTS, PROMPTS[0], PROMPTS[3])]  # two lengths repeat
    expected = [tokens(await alone(make_batcher, ids, params(6))) for ids in prompts]
    running_prompt = encode(generator, PROMPTS[1])
    running_expected = tokens(await alone(make_batcher, running_prompt, params(30)))
    batcher = make_batcher()
    running = batcher.submit(running_prompt, params(30), 30)
    head = [await anext(running)]  # decoding by now: the new prompts join a running batch
    batched = await asyncio.gather(*(drain(batcher.submit(ids, params(6), 6)) for ids in prompts))
    assert [tokens(c) for c in batched] == expected
    assert tokens([*head, *await drain(running)]) == running_expected
    assert batcher.stats.prefill_batches < batcher.stats.prefill_calls


async def test_a_consumer_that_falls_behind_gets_the_queued_tokens_in_one_chunk(
    generator: TextGenerator, make_batcher: Callable[..., ContinuousBatcher]
) -> None:
    """Coalescing: the chunks that queued up while the consumer was away arrive joined, with exactly
    the text, token ids and log-probabilities of the chunks one at a time."""
    prompt = encode(generator, PROMPTS[2])
    expected = await alone(make_batcher, prompt, params(20))
    assert len(tokens(expected)) == 20
    batcher = make_batcher()
    stream = batcher.submit(prompt, params(20), 20)
    deadline = time.monotonic() + 30
    while batcher.running and time.monotonic() < deadline:
        await asyncio.sleep(0.01)  # the consumer is away until the whole generation has queued up
    got = await drain(stream)
    assert len(got) == 1 and len(got[0].token_ids) == 20
    assert tokens(got) == tokens(expected)
    assert "".join(c.text for c in got) == "".join(c.text for c in expected)
    assert [p for c in got for p in c.logprobs] == [p for c in expected for p in c.logprobs]
    assert got[-1].finish_reason is expected[-1].finish_reason and got[-1].usage == expected[-1].usage
    assert all(c.finish_reason is None and c.usage is None for c in got[:-1])


async def test_seeded_sampling_is_the_same_alone_and_batched(
    generator: TextGenerator, make_batcher: Callable[..., ContinuousBatcher]
) -> None:
    prompt = encode(generator, PROMPTS[1])
    seeds = (1, 2, 3)
    expected = [tokens(await alone(make_batcher, prompt, params(temperature=1.0, seed=s))) for s in seeds]
    batcher = make_batcher()
    batched = await asyncio.gather(
        *(drain(batcher.submit(prompt, params(temperature=1.0, seed=s), STEPS)) for s in seeds)
    )
    assert [tokens(c) for c in batched] == expected
    assert len({tuple(t) for t in expected}) > 1, "different seeds should give different samples"


@pytest.fixture(scope="module")
def long_generator(long_repository: Path, load_text_engine: Callable[[Path], TextEngine]) -> TextGenerator:
    """``long-gpt`` (a few ms per token): slow enough that a stream is reliably still running when the
    test acts. The tiny model's worker decodes 40 tokens faster than the event loop turns round."""
    return load_text_engine(long_repository / "long-gpt").generator


async def test_a_request_joins_a_running_batch_at_the_next_step(
    long_generator: TextGenerator, executor: ThreadPoolExecutor
) -> None:
    def make_batcher() -> ContinuousBatcher:
        return ContinuousBatcher(long_generator, BatchingLimits(), executor)

    first, second = encode(long_generator, PROMPTS[0]), encode(long_generator, PROMPTS[2])
    expected_second = tokens(await alone(make_batcher, second, params(8)))
    batcher = make_batcher()
    running = batcher.submit(first, params(200), 200)
    seen = [await anext(running)]  # the first stream is under way (its first chunk: it is decoding)
    joined = await drain(batcher.submit(second, params(8), 8))
    rest = await drain(running)
    assert tokens(joined) == expected_second
    assert batcher.stats.largest_decode_batch == 2
    assert len(tokens([*seen, *rest])) == 200  # the first stream went on (its waiting chunks may come joined)


async def test_finished_sequences_leave_and_the_rest_go_on(
    generator: TextGenerator, make_batcher: Callable[..., ContinuousBatcher]
) -> None:
    short, long = encode(generator, PROMPTS[3]), encode(generator, PROMPTS[4])
    expected_long = tokens(await alone(make_batcher, long, params(30)))
    batcher = make_batcher()
    short_chunks, long_chunks = await asyncio.gather(
        drain(batcher.submit(short, params(2), 2)), drain(batcher.submit(long, params(30), 30))
    )
    # Greedy decoding is deterministic: both continuations run to their lengths (no end-of-text).
    assert len(expected_long) == 30, "premise: the long prompt's greedy continuation has no end-of-text"
    assert len(tokens(short_chunks)) == 2
    assert short_chunks[-1].finish_reason == FinishReason.LENGTH
    assert tokens(long_chunks) == expected_long
    # Both decoded together, then the long one alone once the short one left.
    assert batcher.stats.decode_batch_sizes[2] >= 1
    assert batcher.stats.decode_batch_sizes[1] >= 1


async def test_cancel_in_the_middle_of_a_batch(
    generator: TextGenerator, make_batcher: Callable[..., ContinuousBatcher]
) -> None:
    prompts = [encode(generator, p) for p in PROMPTS[:3]]
    expected = [tokens(await alone(make_batcher, ids, params(30))) for ids in prompts]
    batcher = make_batcher()
    streams = [batcher.submit(ids, params(30), 30) for ids in prompts]
    heads = [[await anext(s)] for s in streams]
    await streams[1].aclose()  # the middle sequence's client goes away
    rest = await asyncio.gather(drain(streams[0]), drain(streams[2]))
    assert tokens(heads[0] + rest[0]) == expected[0]
    assert tokens(heads[2] + rest[1]) == expected[2]
    await asyncio.sleep(0)
    assert batcher.stats.active == 0 and batcher.stats.kv_tokens_reserved == 0


async def test_a_stream_dropped_before_it_starts_leaves_the_batch(
    generator: TextGenerator, make_batcher: Callable[..., ContinuousBatcher]
) -> None:
    prompt = encode(generator, PROMPTS[0])
    batcher = make_batcher(max_active_sequences=1, max_waiting_sequences=0)
    abandoned = batcher.submit(prompt, params(40), 40)
    del abandoned  # never iterated, as when a call is cancelled between validation and streaming
    gc.collect()
    # The abandoned sequence gave its only slot back: the next request runs to the end.
    for _ in range(100):
        try:
            chunks = await drain(batcher.submit(prompt, params(3), 3))
            break
        except ResourceExhaustedError:
            await asyncio.sleep(0.01)
    else:
        pytest.fail("the abandoned sequence kept its slot")
    assert chunks[-1].finish_reason is not None
    # It left before decoding: only the second request's tokens were fed (not 40 more).
    assert batcher.stats.decoded_tokens <= 3


async def test_a_full_wait_queue_refuses_at_once(
    generator: TextGenerator, make_batcher: Callable[..., ContinuousBatcher]
) -> None:
    prompt = encode(generator, PROMPTS[0])
    batcher = make_batcher(max_active_sequences=1, max_waiting_sequences=1)
    # Submitted back to back, before the scheduler runs: one takes the free slot, one the wait queue.
    # (Once admitted, the tiny model would finish 30 tokens faster than the test could queue more.)
    running = batcher.submit(prompt, params(30), 30)
    waiting = batcher.submit(prompt, params(3), 3)
    with pytest.raises(ResourceExhaustedError, match="retry later"):
        batcher.submit(prompt, params(3), 3)
    assert batcher.stats.refused == 1
    await running.aclose()
    assert len(tokens(await drain(waiting))) >= 1  # the waiting one still runs once a slot frees


async def test_the_kv_token_bound_holds_requests_back(
    generator: TextGenerator, make_batcher: Callable[..., ContinuousBatcher]
) -> None:
    prompt = encode(generator, PROMPTS[1])
    reserve = len(prompt) + 10
    # Room for one sequence's prompt + max_new_tokens, not two: they run one after the other.
    batcher = make_batcher(max_kv_cache_tokens=reserve + reserve // 2)
    results = await asyncio.gather(*(drain(batcher.submit(prompt, params(10), 10)) for _ in range(3)))
    assert all(r[-1].finish_reason is not None for r in results)
    assert batcher.stats.largest_decode_batch == 1
    # With room for all three they are batched.
    roomy = make_batcher(max_kv_cache_tokens=3 * reserve)
    await asyncio.gather(*(drain(roomy.submit(prompt, params(10), 10)) for _ in range(3)))
    assert roomy.stats.largest_decode_batch == 3


async def test_max_active_sequences_caps_the_batch(
    generator: TextGenerator, make_batcher: Callable[..., ContinuousBatcher]
) -> None:
    prompts = [encode(generator, p) for p in PROMPTS]
    batcher = make_batcher(max_active_sequences=2)
    results = await asyncio.gather(*(drain(batcher.submit(ids, params(6), 6)) for ids in prompts))
    assert all(r[-1].finish_reason is not None for r in results)
    assert batcher.stats.largest_decode_batch == 2


async def test_chunked_prefill_gives_the_same_tokens(
    generator: TextGenerator, make_batcher: Callable[..., ContinuousBatcher]
) -> None:
    prompt = encode(generator, "JULIET.\nO Romeo, Romeo, wherefore art thou Romeo? Deny thy father")
    whole = tokens(await drain(make_batcher().submit(prompt, params(), STEPS)))
    chunked_batcher = make_batcher(max_prefill_tokens_per_step=3)
    chunked = tokens(await drain(chunked_batcher.submit(prompt, params(), STEPS)))
    assert chunked == whole
    assert chunked_batcher.stats.prefill_calls >= len(prompt) // 3


async def test_stop_strings_are_per_sequence(
    generator: TextGenerator, make_batcher: Callable[..., ContinuousBatcher]
) -> None:
    prompt = encode(generator, PROMPTS[0])
    plain = await alone(make_batcher, prompt, params(20))
    text = "".join(c.text for c in plain)
    # Greedy decoding is deterministic; this prompt's 20 tokens make far more than 4 characters.
    assert len(text) >= 4, f"premise: a long enough greedy text to take a stop string from, got {text!r}"
    stop = text[2:4]
    batcher = make_batcher()
    stopped, unstopped = await asyncio.gather(
        drain(batcher.submit(prompt, params(20, stop=(stop,)), 20)), drain(batcher.submit(prompt, params(20), 20))
    )
    assert stopped[-1].finish_reason == FinishReason.STOP
    assert "".join(c.text for c in stopped) == text[: text.index(stop)]
    assert tokens(unstopped) == tokens(plain)


async def test_a_passed_deadline_ends_the_sequence_with_deadline_exceeded(
    generator: TextGenerator, make_batcher: Callable[..., ContinuousBatcher]
) -> None:
    prompt = encode(generator, PROMPTS[0])
    batcher = make_batcher()
    expired = batcher.submit(prompt, params(30), 30, deadline=time.monotonic() - 1.0)
    with pytest.raises(DeadlineExceededError):
        await drain(expired)
    assert len(tokens(await drain(batcher.submit(prompt, params(3), 3)))) >= 1  # the batcher keeps serving


async def test_an_idle_batcher_ends_its_task_and_the_next_request_restarts_it(
    generator: TextGenerator, make_batcher: Callable[..., ContinuousBatcher]
) -> None:
    # A task waiting forever would keep an unloaded or replaced version (session, KV cache) alive.
    prompt = encode(generator, PROMPTS[0])
    batcher = make_batcher()
    first = tokens(await drain(batcher.submit(prompt, params(4), 4)))
    for _ in range(100):
        if not batcher.running:
            break
        await asyncio.sleep(0.01)
    assert not batcher.running
    again = tokens(await drain(batcher.submit(prompt, params(4), 4)))
    assert again == first
