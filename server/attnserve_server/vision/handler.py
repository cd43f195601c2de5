"""The image-classification handler: predictions (typed API) or logits (tensor API) of encoded or
preprocessed images, merged with other requests by the model's batcher. No protobuf, no status codes."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from attnserve_server.errors import DeadlineExceededError, InvalidArgumentError, ResourceExhaustedError
from attnserve_server.loaded import Model, ModelLookup, Target, resolve
from attnserve_server.statistics import Statistics, Timings
from attnserve_server.task import HandlerContext
from attnserve_server.vision.batcher import BatchTiming
from attnserve_server.vision.classifier import ImageClassifier, Prediction
from attnserve_server.vision.metadata import IMAGE_CLASSIFICATION

logger = logging.getLogger(__name__)

DEFAULT_TOP_K = 5
# Errors of an image request that are the client's doing (its images, its deadline, leaving) or
# load: they do not count as failures of the model.
NOT_MODEL_FAILURES = (InvalidArgumentError, ResourceExhaustedError, DeadlineExceededError, asyncio.CancelledError)
T = TypeVar("T")


@dataclass(frozen=True)
class ClassificationRequest:
    """A request to classify encoded images."""

    model: str
    images: tuple[bytes, ...]
    top_k: int | None = None
    model_version: str = ""
    deadline: float | None = None  # a time.monotonic() instant


@dataclass(frozen=True)
class ClassificationResult:
    """One list of predictions (best first) per request image, in order."""

    model: str
    model_version: str
    classifications: list[list[Prediction]]
    timings: Timings = field(default_factory=Timings)


@dataclass(frozen=True)
class LogitsRequest:
    """Raw logits of a batch: either encoded ``images`` (decoded and preprocessed here) or ``pixels``,
    an already preprocessed ``(batch, C, H, W)`` array of floats (converted to float32 once, here)."""

    model: str
    model_version: str = ""
    images: tuple[bytes, ...] = ()
    pixels: npt.NDArray[Any] | None = None
    deadline: float | None = None  # time.monotonic() instant, from the call's deadline


@dataclass(frozen=True)
class LogitsResult:
    """``logits`` is ``(batch, num_classes)``; ``labels`` names the columns."""

    model: str
    model_version: str
    logits: npt.NDArray[np.float32]
    labels: tuple[str, ...]
    timings: Timings


def timings_of(timing: BatchTiming) -> Timings:
    """The times the batcher measured (in seconds), in nanoseconds."""
    return Timings(queue_ns=int(timing.queue_s * 1e9), compute_ns=int(timing.compute_s * 1e9))


def check_image_count(model: Model, count: int, *, empty: str) -> None:
    """Refuse an empty batch (with the message ``empty``), or one above the model's per-request image limit."""
    if count == 0:
        raise InvalidArgumentError(empty)
    if count > model.max_images_per_request:
        raise InvalidArgumentError(
            f"the request holds {count} images, more than the limit of {model.max_images_per_request} per "
            "request; split it into several requests"
        )


class ImageClassificationHandler:
    """Validates image requests, runs them through the model's batcher, and records counters and statistics."""

    def __init__(self, models: ModelLookup, *, max_image_pixels: int, statistics: Statistics | None = None) -> None:
        self._models = models
        self._max_image_pixels = max_image_pixels
        # The per-version inference statistics that the v2 API's ModelStatistics reports.
        self._statistics = statistics if statistics is not None else Statistics()

    @classmethod
    def of(cls, ctx: HandlerContext) -> ImageClassificationHandler:
        return cls(ctx.models, max_image_pixels=ctx.settings.max_image_pixels, statistics=ctx.statistics)

    def resolve(self, model: str, version: str = "") -> Target:
        """The image model and version a request names."""
        return resolve(self._models, model, version, task=IMAGE_CLASSIFICATION)

    async def classify(self, request: ClassificationRequest, target: Target | None = None) -> ClassificationResult:
        """Check the request, then decode, preprocess and classify every image (merged with other requests)."""
        target = target or self.resolve(request.model, request.model_version)
        classifier = target.version.engine_as(ImageClassifier)
        count = len(request.images)

        async def run(timing: BatchTiming) -> list[list[Prediction]]:
            check_image_count(target.model, count, empty="images is empty; send at least one encoded image")
            classes = classifier.spec.num_classes
            k = min(DEFAULT_TOP_K, classes) if request.top_k is None else request.top_k
            if not 1 <= k <= classes:
                raise InvalidArgumentError(f"top_k must be in [1, {classes}] (the model's number of classes), got {k}")
            target.model.counters.requests += 1
            return await classifier.classify(
                request.images, k, max_pixels=self._max_image_pixels, deadline=request.deadline, timing=timing
            )

        predictions, timings = await self._recorded(target, count, run)
        logger.debug("classified %d image(s) with %s/%s", count, target.name, target.version.version)
        return ClassificationResult(target.name, target.version.version, predictions, timings)

    async def logits(self, request: LogitsRequest, target: Target | None = None) -> LogitsResult:
        """Check the batch, then run it through the model's batcher, merged with other requests."""
        target = target or self.resolve(request.model, request.model_version)
        classifier = target.version.engine_as(ImageClassifier)
        pixels = request.pixels
        count = len(request.images) if pixels is None else (pixels.shape[0] if pixels.ndim else 0)

        async def run(timing: BatchTiming) -> npt.NDArray[np.float32]:
            if pixels is not None:
                spec = classifier.spec.input
                expected = (spec.channels, spec.height, spec.width)
                if pixels.ndim != 4 or pixels.shape[1:] != expected:
                    raise InvalidArgumentError(
                        f"input {classifier.spec.input_name!r} has shape {list(pixels.shape)}, the model takes "
                        f"[-1, {', '.join(map(str, expected))}] (-1: any batch size)"
                    )
            check_image_count(target.model, count, empty="the batch is empty; send at least one image")
            target.model.counters.requests += 1
            if pixels is not None:
                return await classifier.logits_of_pixels(pixels, deadline=request.deadline, timing=timing)
            return await classifier.logits_of_images(
                request.images, max_pixels=self._max_image_pixels, deadline=request.deadline, timing=timing
            )

        logits, timings = await self._recorded(target, count, run)
        return LogitsResult(target.name, target.version.version, logits, classifier.spec.labels, timings)

    async def _recorded(
        self, target: Target, count: int, run: Callable[[BatchTiming], Awaitable[T]]
    ) -> tuple[T, Timings]:
        """Run ``run`` and record its outcome once: statistics, the model's counters, its failures."""
        started = time.perf_counter_ns()
        timing = BatchTiming()
        try:
            result = await run(timing)
        except BaseException as exc:
            self._statistics.record_failure(
                target.name, target.version.version, total_ns=time.perf_counter_ns() - started
            )
            if not isinstance(exc, NOT_MODEL_FAILURES):
                target.model.counters.failures += 1
            raise
        timings = timings_of(timing)
        self._statistics.record_success(
            target.name,
            target.version.version,
            total_ns=time.perf_counter_ns() - started,
            queue_ns=timings.queue_ns,
            compute_ns=timings.compute_ns,
            batch=count,
        )
        target.model.counters.images += count
        return result, timings
