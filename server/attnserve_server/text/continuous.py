"""Continuous batching: an iteration-level scheduler per text model.

Every step of a model's loop

1. drops sequences that were cancelled or whose deadline passed, and frees their cache;
2. admits waiting requests while ``max_active_sequences`` and the KV token budget allow;
3. runs, in a worker thread, up to ``max_prefill_tokens_per_step`` prompt tokens of newly admitted
   sequences, batched into as few model calls as the cache allows (a long prompt is prefilled in
   chunks over several steps, so it never stalls the running streams for long; a prompt that
   completes yields its first token at once), then ONE
   batched decode call for every sequence that has a token to feed, and samples each sequence's
   next token with its own sampler;
4. hands each sequence its chunk; finished and stopped ones leave at once. A consumer that fell
   behind gets the chunks that queued up for it joined into one (several tokens, exact text).

Requests join at the next step. Each sequence keeps its own sampler (and seeded RNG stream), stop
strings and output queue, so what it generates does not depend on what it is batched with.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
import weakref
from collections.abc import AsyncGenerator
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

from attnserve_server.errors import DeadlineExceededError, ResourceExhaustedError
from attnserve_server.text.generator import TextGenerator
from attnserve_server.text.params import GenerationChunk, GenerationParams
from attnserve_server.text.sequence import GenerationSequence

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchingLimits:
    """How much one text model may hold at once (server-wide settings, overridable per model)."""

    max_active_sequences: int = 16
    max_kv_cache_tokens: int = 16384
    max_waiting_sequences: int = 64
    max_prefill_tokens_per_step: int = 128

    def __post_init__(self) -> None:
        for name in ("max_active_sequences", "max_kv_cache_tokens", "max_prefill_tokens_per_step"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.max_waiting_sequences < 0:
            raise ValueError("max_waiting_sequences must be >= 0")


@dataclass
class BatchingStats:
    """Public counters of one scheduler, for metrics and tests. Only touched from the event loop."""

    steps: int = 0
    decode_calls: int = 0
    decoded_tokens: int = 0  # tokens fed in decode calls (the sum of their batch sizes)
    largest_decode_batch: int = 0
    prefill_calls: int = 0  # prompt chunks prefilled
    prefill_batches: int = 0  # steps that prefilled: their chunks went in as few model calls as possible
    messages: int = 0  # chunks handed to consumers after joining those that queued up
    refused: int = 0
    active: int = 0
    waiting: int = 0
    kv_tokens_reserved: int = 0
    decode_batch_sizes: collections.Counter[int] = field(default_factory=collections.Counter)


@dataclass
class _Plan:
    decode: list[GenerationSequence]
    prefill: list[tuple[GenerationSequence, int]]  # sequence, prompt tokens to feed this step
    released: list[int]


@dataclass
class _Sampled:
    sequence: GenerationSequence
    token: int
    logprob: float


class SchedulerObserver(Protocol):
    """Hears what the scheduler does (the server's metrics listen here)."""

    def admitted(self, wait_s: float) -> None:
        """A sequence left the wait queue after ``wait_s`` seconds."""

    def decoded(self, batch_size: int) -> None:
        """One batched decode call ran ``batch_size`` sequences."""

    def finished(self, compute_s: float) -> None:
        """A sequence left the batch ``compute_s`` seconds after its admission."""


class ContinuousBatcher:
    """Admits, schedules and runs every generation of one model version."""

    def __init__(
        self,
        generator: TextGenerator,
        limits: BatchingLimits,
        executor: Executor | None = None,
        *,
        observer: SchedulerObserver | None = None,
    ) -> None:
        self.generator = generator
        self.limits = limits
        self.stats = BatchingStats()
        # Steps run one at a time; without an executor the batcher has its own thread, so its calls
        # never wait behind loading or tokenizing.
        self._own_executor = executor is None
        self._executor = executor or ThreadPoolExecutor(max_workers=1, thread_name_prefix="text-steps")
        self._observer = observer
        self._cache = generator.new_kv_cache(limits.max_active_sequences)
        self._waiting: collections.deque[GenerationSequence] = collections.deque()
        self._active: list[GenerationSequence] = []
        self._released: list[int] = []
        self._reserved = 0
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None

    def submit(
        self, prompt_ids: list[int], params: GenerationParams, max_new_tokens: int, *, deadline: float | None = None
    ) -> AsyncGenerator[GenerationChunk]:
        """Queue a generation; its chunks arrive through the returned iterator.

        Raises ResourceExhaustedError at once when the wait queue is full. ``max_new_tokens`` must
        already fit the context window (``params.fit_context``); ``deadline`` is ``time.monotonic()``.
        """
        free_slots = max(0, self.limits.max_active_sequences - len(self._active))
        if len(self._waiting) >= self.limits.max_waiting_sequences + free_slots:
            self.stats.refused += 1
            raise ResourceExhaustedError(
                f"the model is at capacity ({len(self._active)} generations running, {len(self._waiting)} "
                "waiting, the queue is full); retry later with backoff, or send fewer concurrent requests"
            )
        spec = self.generator.spec
        sequence = GenerationSequence.create(
            prompt_ids,
            params,
            max_new_tokens,
            deadline=deadline,
            tokenizer=self.generator.tokenizer,
            vocab_size=spec.vocab_size,
            eos_token_id=spec.eos_token_id,
            context_ids=self.generator.output_context(prompt_ids),
        )
        self._waiting.append(sequence)
        self._wake()
        stream = self._stream(sequence)
        # A stream dropped before its first iteration never runs its finally (a call cancelled
        # between validation and streaming): its collection still frees the sequence's place.
        weakref.finalize(stream, self._abandon, sequence)
        return stream

    def _abandon(self, sequence: GenerationSequence) -> None:
        if not sequence.finished:
            sequence.cancelled = True
            if self._wakeup is not None:
                self._wakeup.set()

    async def _stream(self, sequence: GenerationSequence) -> AsyncGenerator[GenerationChunk]:
        """The sequence's chunks; those that queued up while the consumer was busy go out as one.

        A consumer that falls behind (a slow client, a busy event loop) then costs one message
        per turn instead of one per token, and catches up; the text and token ids stay exact
        because joining only concatenates them.
        """
        queue = sequence.stream
        try:
            while True:
                items = [await queue.get()]
                while not queue.empty():
                    items.append(queue.get_nowait())
                chunks = [item for item in items if not isinstance(item, BaseException)]
                if chunks:
                    joined = GenerationChunk.join(chunks)
                    self.stats.messages += 1
                    yield joined
                    if joined.finish_reason is not None:
                        return
                errors = [item for item in items if isinstance(item, BaseException)]
                if errors:
                    raise errors[0]
        finally:
            if not sequence.finished:  # the consumer left early: leave the batch at the next step
                sequence.cancelled = True
                self._wake()

    def _wake(self) -> None:
        if self._wakeup is None:
            self._wakeup = asyncio.Event()
        self._wakeup.set()
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="continuous-batcher")

    async def _loop(self) -> None:
        assert self._wakeup is not None
        loop = asyncio.get_running_loop()
        while True:
            self._retire_cancelled_and_expired()
            self._admit()
            self._update_gauges()
            if not self._active and not self._released:
                # Idle: end the task rather than wait, so that nothing but the model entry holds the
                # batcher, and an unloaded or replaced version (its session and KV cache) can be freed.
                # The next submit starts a new task.
                return
            plan = self._plan()
            # Prefill first, in its own call, so that a new request's first token goes out before
            # the batch's decode call rather than after it: the time to first token does not
            # include a whole decode step of the running batch.
            calls = [plan]
            if plan.prefill and plan.decode:
                calls = [
                    _Plan(decode=[], prefill=plan.prefill, released=plan.released),
                    _Plan(decode=plan.decode, prefill=[], released=[]),
                ]
            for call in calls:
                try:
                    sampled = await loop.run_in_executor(self._executor, self._step, call)
                except Exception as exc:  # a failed model call fails the sequences in it, not the loop
                    logger.exception("text generation step failed")
                    for sequence in [*call.decode, *(s for s, _ in call.prefill)]:
                        self._retire(sequence, exc)
                    continue
                self._deliver(call, sampled)

    @property
    def running(self) -> bool:
        """Whether the scheduling task is alive (it ends whenever nothing is waiting or running)."""
        return self._task is not None and not self._task.done()

    def close(self) -> None:
        """Stop the loop and the batcher's own thread (the server calls this after draining)."""
        if self._task is not None:
            self._task.cancel()
        if self._own_executor:
            self._executor.shutdown(wait=False, cancel_futures=True)

    def _update_gauges(self) -> None:
        self.stats.active = len(self._active)
        self.stats.waiting = len(self._waiting)
        self.stats.kv_tokens_reserved = self._reserved

    def _retire(self, sequence: GenerationSequence, error: BaseException | None = None) -> None:
        """Take a sequence out of the batch; its cache is freed at the start of the next step."""
        if sequence in self._active:
            self._active.remove(sequence)
            self._reserved -= sequence.reserved_tokens
            self._released.append(sequence.id)
            if self._observer is not None and sequence.admitted_at is not None:
                self._observer.finished(time.monotonic() - sequence.admitted_at)
        elif sequence in self._waiting:
            self._waiting.remove(sequence)
        if error is not None and not sequence.finished:
            sequence.stream.put_nowait(error)
        sequence.finished = True

    def _retire_cancelled_and_expired(self) -> None:
        now = time.monotonic()
        for sequence in [*self._active, *self._waiting]:
            if sequence.cancelled:
                self._retire(sequence)
            elif sequence.deadline is not None and now >= sequence.deadline:
                self._retire(
                    sequence, DeadlineExceededError(f"deadline exceeded after {sequence.generated} generated tokens")
                )

    def _admit(self) -> None:
        limits = self.limits
        while self._waiting and len(self._active) < limits.max_active_sequences:
            head = self._waiting[0]
            # One sequence larger than the whole budget still runs, alone.
            if self._active and self._reserved + head.reserved_tokens > limits.max_kv_cache_tokens:
                break
            self._waiting.popleft()
            self._active.append(head)
            self._reserved += head.reserved_tokens
            head.admitted_at = time.monotonic()
            if self._observer is not None:
                self._observer.admitted(head.admitted_at - head.submitted_at)

    def _plan(self) -> _Plan:
        decode = [s for s in self._active if s.decoding]
        budget = self.limits.max_prefill_tokens_per_step
        prefill: list[tuple[GenerationSequence, int]] = []
        for sequence in self._active:
            remaining = len(sequence.prompt_ids) - sequence.prefilled
            if remaining <= 0 or budget <= 0:
                continue
            chunk = min(remaining, budget)
            if chunk < remaining and not self.generator.chunked_prefill:
                if prefill:
                    break  # the whole prompt goes in one call: at the next step, first in line
                chunk = remaining  # alone, a prompt over the budget still goes in whole
            prefill.append((sequence, chunk))
            budget -= chunk
        released, self._released = self._released, []
        return _Plan(decode=decode, prefill=prefill, released=released)

    def _step(self, plan: _Plan) -> list[_Sampled]:
        """Model calls and sampling of one step; runs in a worker thread."""
        cache = self._cache
        for seq_id in plan.released:
            cache.release(seq_id)
        sampled: list[_Sampled] = []
        if plan.decode:
            tokens = [s.last_token for s in plan.decode]
            logits = cache.decode([s.id for s in plan.decode], [t for t in tokens if t is not None])
            for sequence, row in zip(plan.decode, logits, strict=True):
                sampled.append(_Sampled(sequence, *sequence.sampler.sample(row)))
        if plan.prefill:
            # Every prompt chunk of the step in one batched call (the cache splits it where it must).
            chunks = [(s.id, s.prompt_ids[s.prefilled : s.prefilled + count]) for s, count in plan.prefill]
            rows = cache.prefill_many(chunks)
            for (sequence, count), logits_row in zip(plan.prefill, rows, strict=True):
                sequence.prefilled += count
                if sequence.prefilled == len(sequence.prompt_ids):  # the prompt is in: its first token
                    sampled.append(_Sampled(sequence, *sequence.sampler.sample(logits_row)))
        return sampled

    def _deliver(self, plan: _Plan, sampled: list[_Sampled]) -> None:
        stats = self.stats
        stats.steps += 1
        if plan.decode:
            size = len(plan.decode)
            stats.decode_calls += 1
            stats.decoded_tokens += size
            stats.largest_decode_batch = max(stats.largest_decode_batch, size)
            stats.decode_batch_sizes[size] += 1
            if self._observer is not None:
                self._observer.decoded(size)
        stats.prefill_calls += len(plan.prefill)
        stats.prefill_batches += bool(plan.prefill)
        for item in sampled:
            sequence = item.sequence
            if sequence.cancelled or sequence.finished:
                self._retire(sequence)
                continue
            chunk = sequence.accept(item.token, item.logprob)
            sequence.stream.put_nowait(chunk)
            if sequence.finished:
                self._retire(sequence)
