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
import threading
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


# Decode steps one worker call may run back to back before the event loop's bookkeeping runs again
# (admissions and cancellations end a run at once; this bounds it otherwise).
MAX_STEPS_PER_CALL = 256


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
        # Set from the event loop (a new request, a cancellation) to end the worker's run of steps.
        self._interrupt = threading.Event()
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
            self._interrupt.set()
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
        self._interrupt.set()
        if self._wakeup is None:
            self._wakeup = asyncio.Event()
        self._wakeup.set()
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="continuous-batcher")

    async def _loop(self) -> None:
        assert self._wakeup is not None
        loop = asyncio.get_running_loop()
        while True:
            # Cleared before the bookkeeping: whatever arrives after it sets it again, and ends the
            # worker's run of steps at the next step boundary.
            self._interrupt.clear()
            self._retire_cancelled_and_expired()
            self._admit()
            self._update_gauges()
            if not self._active and not self._released:
                # Idle: end the task rather than wait, so that nothing but the model entry holds the
                # batcher, and an unloaded or replaced version (its session and KV cache) can be freed.
                # The next submit starts a new task.
                return
            plan = self._plan()
            try:
                await loop.run_in_executor(self._executor, self._run_steps, plan, loop)
            except Exception as exc:  # a failed model call fails the sequences in it, not the loop
                logger.exception("text generation step failed")
                for sequence in [*plan.decode, *(s for s, _ in plan.prefill)]:
                    self._retire(sequence, exc)
                continue
            for sequence in [*plan.decode, *(s for s, _ in plan.prefill)]:
                if sequence.finished:
                    self._retire(sequence)

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

    def _run_steps(self, plan: _Plan, loop: asyncio.AbstractEventLoop) -> None:
        """Model calls, sampling and detokenizing of one or more steps; runs in the worker thread.

        The plan's prefill goes first, and its first tokens go out at once, so a new request's
        time to first token includes no decode step of the running batch. Then decode steps run
        back to back, each step's chunks handed to the event loop as soon as it ends, without
        waiting for the loop between steps, until something needs the loop's bookkeeping: a new
        request or a cancellation (``_interrupt``), a sequence whose prompt has chunks left, a
        finished sequence while requests wait, a passed deadline, or MAX_STEPS_PER_CALL.
        """
        cache = self._cache
        for seq_id in plan.released:
            cache.release(seq_id)
        decode = list(plan.decode)
        pending_prompt = False
        if plan.prefill:
            # Every prompt chunk of the step in one batched call (the cache splits it where it must).
            chunks = [(s.id, s.prompt_ids[s.prefilled : s.prefilled + count]) for s, count in plan.prefill]
            rows = cache.prefill_many(chunks)
            out = []
            for (sequence, count), logits_row in zip(plan.prefill, rows, strict=True):
                sequence.prefilled += count
                if sequence.prefilled < len(sequence.prompt_ids):
                    pending_prompt = True
                    continue
                token, logprob = sequence.sampler.sample(logits_row)  # the prompt is in: its first token
                if not sequence.cancelled:
                    out.append((sequence, sequence.accept(token, logprob)))
                    decode += [] if sequence.finished else [sequence]
            loop.call_soon_threadsafe(self._publish, out, 0, len(plan.prefill))
        for _ in range(MAX_STEPS_PER_CALL):
            if not decode:
                return
            tokens = [s.last_token for s in decode]
            logits = cache.decode([s.id for s in decode], [t for t in tokens if t is not None])
            out = []
            for sequence, row in zip(decode, logits, strict=True):
                token, logprob = sequence.sampler.sample(row)
                if not sequence.cancelled:
                    out.append((sequence, sequence.accept(token, logprob)))
            loop.call_soon_threadsafe(self._publish, out, len(decode), 0)
            finished = any(s.finished or s.cancelled for s in decode)
            decode = [s for s in decode if not (s.finished or s.cancelled)]
            now = time.monotonic()
            if (
                pending_prompt
                or self._interrupt.is_set()
                or (finished and self._waiting)
                or any(s.deadline is not None and now >= s.deadline for s in decode)
            ):
                return

    def _publish(self, out: list[tuple[GenerationSequence, GenerationChunk]], decoded: int, prefilled: int) -> None:
        """On the event loop: one step's chunks to their streams, and the step's counters."""
        stats = self.stats
        stats.steps += 1
        if decoded:
            stats.decode_calls += 1
            stats.decoded_tokens += decoded
            stats.largest_decode_batch = max(stats.largest_decode_batch, decoded)
            stats.decode_batch_sizes[decoded] += 1
            if self._observer is not None:
                self._observer.decoded(decoded)
        stats.prefill_calls += prefilled
        stats.prefill_batches += bool(prefilled)
        for sequence, chunk in out:
            if not sequence.cancelled:
                sequence.stream.put_nowait(chunk)
                if sequence.finished:  # its place in the batch and its KV budget are free from now on
                    self._retire(sequence)
        self._update_gauges()
