"""Dynamic batching for image classifiers: many requests' images, one ONNX Runtime call.

Each model version has one :class:`DynamicBatcher`. A request first *reserves* room for its
images in the bounded queue (:meth:`DynamicBatcher.reserve`), so a full queue refuses it at
once, before any decoding is paid for. Once its images are preprocessed it *submits* them
(:meth:`Reservation.run`) and awaits their logits. One loop per batcher gathers queued
images until ``max_batch_size`` are ready or the oldest has waited ``max_queue_delay``, runs
one call on the batcher's own thread, and hands each request its rows.

- A request with more images than ``max_batch_size`` is split over several calls (its rows
  stay in order), and its tail can share a call with the next request.
- Before each call, requests whose caller has gone (cancelled) or whose deadline has passed
  are dropped, so their images never reach the model.
- With ``adaptive_delay`` (the default) the batcher waits for company only while other requests
  are in flight or recently were, so a lone client pays no batching delay.
- Only one call runs at a time per model: ONNX Runtime already uses every core for one call,
  and while it runs the next batch fills up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from attnserve_server.errors import DeadlineExceededError, InvalidArgumentError, ResourceExhaustedError
from attnserve_server.loaded import BatchStats

logger = logging.getLogger(__name__)

# Rows in, one result row per input row out. Image classification: pixels in, logits out; the
# embeddings engine also batches token lists (object arrays) into hidden states.
Forward = Callable[[npt.NDArray[Any]], npt.NDArray[Any]]
# Told of every call: the model, its batch size, how long each request in it waited in the queue,
# and how long the call took (seconds). The server's metrics listen here.
BatchObserver = Callable[[str, int, Sequence[float], float], None]


@dataclass
class BatchTiming:
    """Where one request's time went: waiting in the queue, then in model calls (seconds)."""

    queue_s: float = 0.0
    compute_s: float = 0.0


@dataclass(frozen=True)
class BatchingConfig:
    """How one model's batcher merges requests.

    Attributes:
        max_batch_size: most images in one ONNX Runtime call.
        max_queue_delay_s: longest the oldest queued image waits for the batch to fill.
        max_queue_size: most images admitted and not yet running (decoding or queued); past it,
            requests are refused with RESOURCE_EXHAUSTED.
        adaptive_delay: wait for the batch to fill only while more requests are expected (another
            admitted request is still being decoded, or the last call merged several requests).
            A lone client then pays no batching delay. False: always wait up to the delay.
    """

    max_batch_size: int = 8
    max_queue_delay_s: float = 0.002
    max_queue_size: int = 256
    adaptive_delay: bool = True

    def __post_init__(self) -> None:
        if self.max_batch_size < 1 or self.max_queue_size < 1 or self.max_queue_delay_s < 0:
            raise ValueError(f"invalid batching config {self}")


@dataclass(eq=False)
class _Pending:
    """One submitted request: its preprocessed images and where their logits go."""

    images: npt.NDArray[np.float32]  # (n, C, H, W)
    deadline: float | None
    future: asyncio.Future[npt.NDArray[np.float32]]
    reservation: Reservation
    enqueued_at: float = field(default_factory=time.monotonic)
    next_row: int = 0  # rows below this have been taken into a batch
    done_rows: int = 0  # rows whose logits are in ``logits``
    logits: npt.NDArray[np.float32] | None = None

    @property
    def rows_left(self) -> int:
        return len(self.images) - self.next_row

    def expired(self, now: float) -> bool:
        return self.deadline is not None and now >= self.deadline


class Reservation:
    """Room for ``count`` images in a batcher's queue, held from admission until they run."""

    def __init__(self, batcher: DynamicBatcher, count: int, timing: BatchTiming) -> None:
        self._batcher = batcher
        self.held = count
        self.timing = timing

    def release(self, count: int) -> None:
        count = min(count, self.held)
        self.held -= count
        self._batcher._reserved -= count

    async def run(self, images: npt.NDArray[np.float32], deadline: float | None = None) -> npt.NDArray[np.float32]:
        """Queue ``images`` ``(n, C, H, W)`` (n at most the reserved count) and await their logits."""
        return await self._batcher._submit(self, images, deadline)


class DynamicBatcher:
    """Merges concurrent requests to one model into batched ONNX Runtime calls (see the module docstring)."""

    def __init__(
        self,
        name: str,
        forward: Forward,
        config: BatchingConfig,
        *,
        observer: BatchObserver | None = None,
        item: str = "images",
    ) -> None:
        self.name = name
        self.item = item  # what a row is, in messages
        self.config = config
        self._observer = observer
        self.stats = BatchStats()
        self._forward = forward
        self._queue: deque[_Pending] = deque()
        self._reserved = 0  # images admitted and not yet taken into a batch
        self._last_batch_requests = 0  # how many requests the last call served
        self._arrived: asyncio.Event | None = None
        self._loop_task: asyncio.Task[None] | None = None
        # The batcher's own thread: its calls never wait behind decoding or text generation in
        # the server's shared pool, and never run two at a time.
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"batch-{name}")

    @contextlib.contextmanager
    def reserve(self, count: int, timing: BatchTiming | None = None) -> Iterator[Reservation]:
        """Admit ``count`` images or raise ResourceExhaustedError at once; release what never ran on exit.

        The batcher adds the images' queue and compute time to ``timing`` (a fresh one if not given).
        """
        if count > self.config.max_queue_size:
            raise InvalidArgumentError(
                f"the request holds {count} {self.item}, more than model {self.name!r} can queue "
                f"(max_queue_size {self.config.max_queue_size}); send at most that many per request"
            )
        if self._reserved + count > self.config.max_queue_size:
            raise ResourceExhaustedError(
                f"model {self.name!r} is overloaded: {self._reserved} {self.item} are already waiting "
                f"(max_queue_size {self.config.max_queue_size}); retry later with backoff, send fewer "
                f"{self.item} at a time, or raise max_queue_size in the model's config.yaml"
            )
        reservation = Reservation(self, count, timing or BatchTiming())
        self._reserved += count
        try:
            yield reservation
        finally:
            reservation.release(reservation.held)

    async def _submit(
        self, reservation: Reservation, images: npt.NDArray[np.float32], deadline: float | None
    ) -> npt.NDArray[np.float32]:
        if len(images) > reservation.held:
            raise ValueError(f"{len(images)} images submitted on a reservation of {reservation.held}")
        loop = asyncio.get_running_loop()
        if deadline is not None and time.monotonic() >= deadline:
            self.stats.dropped += len(images)
            raise DeadlineExceededError("the request's deadline passed before it reached the model")
        if self._loop_task is None or self._loop_task.done():
            self._arrived = asyncio.Event()
            self._loop_task = loop.create_task(self._batch_loop(), name=f"batcher-{self.name}")
        assert self._arrived is not None
        pending = _Pending(images=images, deadline=deadline, future=loop.create_future(), reservation=reservation)
        self._queue.append(pending)
        self._arrived.set()
        return await pending.future

    # --- the loop -----------------------------------------------------------------------

    def _queued_rows(self) -> int:
        return sum(p.rows_left for p in self._queue)

    def _prune(self) -> None:
        """Drop requests whose caller left or whose deadline passed: they must not reach the model."""
        now = time.monotonic()
        kept: deque[_Pending] = deque()
        for pending in self._queue:
            if pending.future.done():  # cancelled by the caller (client left, deadline, shutdown)
                self._drop(pending)
            elif pending.expired(now):
                pending.future.set_exception(
                    DeadlineExceededError("the request's deadline passed while it waited for the model")
                )
                self._drop(pending)
            else:
                kept.append(pending)
        self._queue = kept

    def _drop(self, pending: _Pending) -> None:
        self.stats.dropped += pending.rows_left
        pending.reservation.release(pending.rows_left)
        pending.next_row = len(pending.images)

    def _take_batch(self) -> list[tuple[_Pending, int, int]]:
        """Up to ``max_batch_size`` rows from the head of the queue, as (request, start, stop) slices."""
        space = self.config.max_batch_size
        parts = []
        while self._queue and space > 0:
            pending = self._queue[0]
            start = pending.next_row
            stop = start + min(space, pending.rows_left)
            parts.append((pending, start, stop))
            pending.next_row = stop
            pending.reservation.release(stop - start)
            space -= stop - start
            if pending.rows_left == 0:
                self._queue.popleft()
        return parts

    def _more_expected(self, queued: int) -> bool:
        """Whether waiting is likely to grow the batch: requests are in flight, or were lately."""
        decoding = self._reserved - queued
        return decoding > 0 or self._last_batch_requests > 1

    async def _wait_for_batch(self) -> bool:
        """Return True once a batch should run (full, or the oldest live request has waited long enough),
        False when the queue is empty."""
        assert self._arrived is not None
        while True:
            self._prune()
            if not self._queue:
                return False
            queued = self._queued_rows()
            if queued >= self.config.max_batch_size:
                return True
            if self.config.adaptive_delay and not self._more_expected(queued):
                return True
            wait = self._queue[0].enqueued_at + self.config.max_queue_delay_s - time.monotonic()
            if wait <= 0:
                return True
            self._arrived.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), wait)

    async def _batch_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not await self._wait_for_batch():
                # Idle: end the task rather than wait, so that nothing but the model entry holds the
                # batcher, and an unloaded or replaced version (its session) can be freed. The next
                # submit starts a new task.
                return
            self._prune()  # one last look: a request cancelled during the wait never runs
            parts = self._take_batch()
            if not parts:
                continue
            slices = [p.images[start:stop] for p, start, stop in parts]
            batch = slices[0] if len(slices) == 1 else np.concatenate(slices)  # (B, C, H, W)
            started = time.monotonic()
            try:
                logits = await loop.run_in_executor(self._thread, self._forward, batch)
            except Exception as exc:  # the model failed: every request in the batch fails with it
                logger.exception("batch of %d images for %s failed", len(batch), self.name)
                for pending, _, _ in parts:
                    if not pending.future.done():
                        pending.future.set_exception(exc)
                    self._drop(pending)
                continue
            compute_s = time.monotonic() - started
            self.stats.batches += 1
            self.stats.items += len(batch)
            requests = list({id(p): p for p, _, _ in parts}.values())
            self._last_batch_requests = len(requests)
            waits = []
            for pending in requests:
                timing = pending.reservation.timing
                waits.append(started - pending.enqueued_at)
                timing.queue_s = max(timing.queue_s, waits[-1])
                timing.compute_s += compute_s
            if self._observer is not None:
                self._observer(self.name, len(batch), waits, compute_s)
            offset = 0
            for pending, start, stop in parts:
                rows = logits[offset : offset + stop - start]
                offset += stop - start
                if pending.future.done():
                    continue
                if pending.logits is None:
                    pending.logits = np.empty((len(pending.images), *logits.shape[1:]), dtype=logits.dtype)
                pending.logits[start:stop] = rows
                pending.done_rows += stop - start
                if pending.done_rows == len(pending.images):
                    pending.future.set_result(pending.logits)

    @property
    def running(self) -> bool:
        """Whether the batching task is alive (it ends whenever the queue is empty)."""
        return self._loop_task is not None and not self._loop_task.done()

    def close(self) -> None:
        """Stop the loop and the batcher's thread (the server calls this on shutdown)."""
        if self._loop_task is not None:
            self._loop_task.cancel()
        self._thread.shutdown(wait=False, cancel_futures=True)
