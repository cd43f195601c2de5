"""The image classifier engine: decode and preprocess a request's images, batched ORT calls, softmax, top-k."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from attnserve_server.errors import DeadlineExceededError, InvalidArgumentError
from attnserve_server.loaded import BatchStats
from attnserve_server.model_format.preprocess import InputSpec, preprocess
from attnserve_server.runtime import RuntimeSession, available_cpus, describe_runtime
from attnserve_server.vision.batcher import BatchingConfig, BatchObserver, BatchTiming, DynamicBatcher
from attnserve_server.vision.decode import decode_image


@dataclass(frozen=True)
class ImageModelSpec:
    """Everything the classifier needs to know about one model version."""

    input_name: str
    output_name: str
    labels: tuple[str, ...]
    input: InputSpec

    @property
    def num_classes(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class Prediction:
    """One class of one image: its label, output index and softmax probability."""

    label: str
    index: int
    score: float


def softmax(logits: npt.NDArray[np.floating]) -> npt.NDArray[np.float64]:
    """Row-wise softmax of ``(batch, classes)`` logits, computed in float64 so the rows sum to 1."""
    z = logits.astype(np.float64)
    z -= z.max(axis=-1, keepdims=True)  # stable: the largest exponent is 0
    e = np.exp(z)
    probs: npt.NDArray[np.float64] = e / e.sum(axis=-1, keepdims=True)
    return probs


def top_k(probs: npt.NDArray[np.float64], k: int, labels: Sequence[str]) -> list[list[Prediction]]:
    """The ``k`` most probable classes of each row, best first (ties: lower index first)."""
    order = np.argsort(-probs, axis=-1, kind="stable")[:, :k]  # (batch, k)
    return [
        [Prediction(labels[int(i)], int(i), float(row[i])) for i in idx] for row, idx in zip(probs, order, strict=True)
    ]


class ImageClassifier:
    """A loaded image-classification model version."""

    def __init__(
        self,
        spec: ImageModelSpec,
        session: RuntimeSession,
        *,
        name: str = "",
        batching: BatchingConfig | None = None,
        decode_threads: int = 0,
        observer: BatchObserver | None = None,
    ) -> None:
        self.spec = spec
        self._session = session
        # Decoding has its own pool: a burst of image requests must not queue ahead of text
        # generation in the server's shared pool, and the batcher's queue already bounds the burst.
        self._decode_pool = ThreadPoolExecutor(
            max_workers=decode_threads or available_cpus(), thread_name_prefix=f"decode-{name}"
        )
        # The batcher owns this model's ORT calls, so concurrent requests merge into one call.
        self.batcher = DynamicBatcher(name, self.forward, batching or BatchingConfig(), observer=observer)

    @property
    def decode_pool(self) -> ThreadPoolExecutor:
        """Where this model's images are decoded (its embeddings engine decodes there too)."""
        return self._decode_pool

    def forward(self, batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Logits ``(batch, num_classes)`` of a preprocessed ``(batch, C, H, W)`` array (blocking)."""
        (logits,) = self._session.run([self.spec.output_name], {self.spec.input_name: batch})
        return logits

    def prepare(
        self,
        images: Sequence[bytes],
        max_pixels: int,
        stop: threading.Event | None = None,
        deadline: float | None = None,
    ) -> npt.NDArray[np.float32]:
        """Decode and preprocess every image into one ``(batch, C, H, W)`` array (blocking).

        Raises InvalidArgumentError naming the first bad image. Images are decoded one at a time
        and dropped once resized, so at most one full-size image is in memory per request. Between
        images it gives up once ``stop`` is set (the client left) or ``deadline`` has passed.
        """
        arrays = []
        for index, data in enumerate(images):
            if stop is not None and stop.is_set():
                raise asyncio.CancelledError
            if deadline is not None and time.monotonic() > deadline:
                raise DeadlineExceededError(f"the deadline passed while decoding image {index}")
            with decode_image(data, index=index, max_pixels=max_pixels) as image:
                try:
                    arrays.append(preprocess(image, self.spec.input))
                except (OSError, ValueError) as exc:  # a pixel mode Pillow cannot convert, say
                    raise InvalidArgumentError(
                        f"image {index} ({image.format}, mode {image.mode}) cannot be converted to the model's "
                        f"input: {exc}"
                    ) from None
        return np.stack(arrays)  # (B, C, H, W)

    async def classify(
        self,
        images: Sequence[bytes],
        k: int,
        *,
        max_pixels: int,
        deadline: float | None = None,
        timing: BatchTiming | None = None,
    ) -> list[list[Prediction]]:
        """The top ``k`` predictions of each image.

        Room in the batcher's queue is reserved first, so an overloaded model refuses the request
        (ResourceExhaustedError) before decoding it; decoding runs in the decode pool, and the model
        call in the batcher, merged with other requests'. ``deadline`` is a ``time.monotonic()`` instant.
        """
        logits = await self.logits_of_images(images, max_pixels=max_pixels, deadline=deadline, timing=timing)
        return top_k(softmax(logits), k, self.spec.labels)

    async def logits_of_images(
        self,
        images: Sequence[bytes],
        *,
        max_pixels: int,
        deadline: float | None = None,
        timing: BatchTiming | None = None,
    ) -> npt.NDArray[np.float32]:
        """Logits ``(batch, num_classes)`` of encoded images, decoded in the decode pool and run in the
        batcher; ``timing``, if given, learns how long they queued and computed."""
        loop = asyncio.get_running_loop()
        stop = threading.Event()
        with self.batcher.reserve(len(images), timing) as reservation:
            try:
                batch = await loop.run_in_executor(self._decode_pool, self.prepare, images, max_pixels, stop, deadline)
            except asyncio.CancelledError:
                stop.set()  # the thread cannot be interrupted, but it stops before the next image
                raise
            return await reservation.run(batch, deadline)

    async def logits_of_pixels(
        self, batch: npt.NDArray[np.float32], *, deadline: float | None = None, timing: BatchTiming | None = None
    ) -> npt.NDArray[np.float32]:
        """Logits of an already preprocessed ``(batch, C, H, W)`` array, run in the batcher with other requests."""
        with self.batcher.reserve(len(batch), timing) as reservation:
            return await reservation.run(np.ascontiguousarray(batch, dtype=np.float32), deadline)

    def describe(self) -> str:
        spec = self.spec.input
        return (
            f"input {spec.channels}x{spec.height}x{spec.width}, {self.spec.num_classes} classes, "
            f"{describe_runtime(self._session)}, batches of at most {self.batcher.config.max_batch_size}"
        )

    def batch_stats(self) -> BatchStats:
        return self.batcher.stats

    def close(self) -> None:
        """Stop the batcher and the decode pool (after the server has drained)."""
        self.batcher.close()
        self._decode_pool.shutdown(wait=False, cancel_futures=True)
