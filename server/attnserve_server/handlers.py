"""Request handlers: domain requests in, domain results out. No protobuf and no status codes here."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from attnserve_server.errors import DeadlineExceededError, InvalidArgumentError, ResourceExhaustedError
from attnserve_server.kserve.statistics import Statistics
from attnserve_server.metrics import GenerationTimer, ServerMetrics
from attnserve_server.repository import READY, IndexEntry, Model, ModelRepository, ModelState
from attnserve_server.text.params import (
    FinishReason,
    GenerationChunk,
    RequestedParameters,
    Usage,
    fit_context,
    resolve_parameters,
)
from attnserve_server.vision.batcher import BatchTiming
from attnserve_server.vision.classifier import Prediction

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GenerationRequest:
    """A text-generation request. ``deadline`` is a ``time.monotonic()`` instant, if any."""

    model: str
    prompt: str
    parameters: RequestedParameters
    model_version: str = ""
    deadline: float | None = None


@dataclass
class Timings:
    """Where one request's time went, in nanoseconds: waiting for a free slot, then running the model."""

    queue_ns: int = 0
    compute_ns: int = 0

    @classmethod
    def of_batch(cls, timing: BatchTiming) -> Timings:
        """The same times as an image model's batcher measured them (in seconds)."""
        return cls(queue_ns=int(timing.queue_s * 1e9), compute_ns=int(timing.compute_s * 1e9))


@dataclass
class GenerationStream:
    """An accepted generation: what runs it, and its chunks as they are decoded."""

    model: str
    model_version: str
    seed: int
    prompt_tokens: int
    chunks: AsyncIterator[GenerationChunk]
    # Filled in as the chunks are consumed.
    timings: Timings = field(default_factory=Timings)


@dataclass(frozen=True)
class GenerationResult:
    """A finished generation."""

    model: str
    model_version: str
    seed: int
    text: str
    token_ids: tuple[int, ...]
    logprobs: tuple[float, ...]
    finish_reason: FinishReason
    usage: Usage
    timings: Timings = field(default_factory=Timings)


class TextGenerationHandler:
    """Validates requests, hands them to the model's continuous batcher and keeps the model's counters."""

    def __init__(self, repository: ModelRepository, *, metrics: ServerMetrics | None = None) -> None:
        self._repository = repository
        self._metrics = metrics if metrics is not None else ServerMetrics()

    async def start(self, request: GenerationRequest) -> GenerationStream:
        """Validate everything and return the (not yet started) stream of chunks.

        Raises before any model work if the request is invalid.
        """
        arrived = time.perf_counter()
        model = self._repository.get_text_model(request.model)
        version = model.version(request.model_version)
        if not request.prompt:
            raise InvalidArgumentError("prompt must not be empty")
        params = resolve_parameters(
            request.parameters,
            model.defaults(),
            max_new_tokens_limit=model.max_new_tokens_limit,
            seed=secrets.randbits(63),
        )
        generator = version.text_generator
        prompt_ids = await generator.encode(request.prompt)
        max_new_tokens = fit_context(params, len(prompt_ids), generator.spec.context_length)
        # Refused here (RESOURCE_EXHAUSTED) when the model's wait queue is full.
        batched = version.text_batcher.submit(prompt_ids, params, max_new_tokens, deadline=request.deadline)
        model.counters.requests += 1
        logger.debug(
            "generate %s/%s: %d prompt tokens, up to %d new, seed %d",
            model.name,
            version.version,
            len(prompt_ids),
            max_new_tokens,
            params.seed,
        )
        timer = self._metrics.generation(model.name, len(prompt_ids), arrived)
        timings = Timings()
        chunks = self._run(model, batched, timer, timings)
        return GenerationStream(
            model=model.name,
            model_version=version.version,
            seed=params.seed,
            prompt_tokens=len(prompt_ids),
            chunks=chunks,
            timings=timings,
        )

    async def _run(
        self, model: Model, chunks: AsyncGenerator[GenerationChunk], timer: GenerationTimer, timings: Timings
    ) -> AsyncIterator[GenerationChunk]:
        # The batcher's wait queue is inside this time; its queue and compute times go to the metrics
        # from the batcher itself.
        started = time.perf_counter_ns()
        try:
            async for chunk in chunks:
                timer.tokens(len(chunk.token_ids))
                timings.compute_ns = time.perf_counter_ns() - started
                model.counters.tokens_generated += len(chunk.token_ids)
                if chunk.finish_reason is not None:
                    logger.debug("finished %s: %s, %s", model.name, chunk.finish_reason.value, chunk.usage)
                yield chunk
        except asyncio.CancelledError:
            logger.debug("generation for %s cancelled (the client left or its deadline passed)", model.name)
            raise  # not a failure of the model
        except DeadlineExceededError:
            raise  # the client's deadline, not a failure of the model
        except Exception:
            model.counters.failures += 1
            raise
        finally:
            await chunks.aclose()  # a client that left early takes its sequence out of the batch

    async def collect(self, stream: GenerationStream) -> GenerationResult:
        """Consume a started generation to its end and return it whole."""
        text: list[str] = []
        token_ids: list[int] = []
        logprobs: list[float] = []
        last: GenerationChunk | None = None
        async for chunk in stream.chunks:
            text.append(chunk.text)
            token_ids.extend(chunk.token_ids)
            logprobs.extend(chunk.logprobs)
            last = chunk
        if last is None or last.finish_reason is None or last.usage is None:
            raise RuntimeError("generation ended without a final chunk")
        return GenerationResult(
            model=stream.model,
            model_version=stream.model_version,
            seed=stream.seed,
            text="".join(text),
            token_ids=tuple(token_ids),
            logprobs=tuple(logprobs),
            finish_reason=last.finish_reason,
            usage=last.usage,
            timings=stream.timings,
        )


DEFAULT_TOP_K = 5
# Errors of an image request that are the client's doing (its images, its deadline, leaving) or
# load: they do not count as failures of the model.
NOT_MODEL_FAILURES = (InvalidArgumentError, ResourceExhaustedError, DeadlineExceededError, asyncio.CancelledError)


def check_image_count(model: Model, count: int, *, empty: str) -> None:
    """Refuse an empty batch (with the message ``empty``), or one above the model's per-request image limit."""
    if count == 0:
        raise InvalidArgumentError(empty)
    if count > model.max_images_per_request:
        raise InvalidArgumentError(
            f"the request holds {count} images, more than the limit of {model.max_images_per_request} per "
            "request; split it into several requests"
        )


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


class ImageClassificationHandler:
    """Validates classification requests, runs them through the model's batcher, keeps counters."""

    def __init__(
        self, repository: ModelRepository, *, max_image_pixels: int, statistics: Statistics | None = None
    ) -> None:
        self._repository = repository
        self._max_image_pixels = max_image_pixels
        # The per-version inference statistics that the v2 API's ModelStatistics reports.
        self._statistics = statistics if statistics is not None else Statistics()

    async def classify(self, request: ClassificationRequest) -> ClassificationResult:
        """Check the request, then decode, preprocess and classify every image (merged with other requests)."""
        model = self._repository.get_image_model(request.model)
        version = model.version(request.model_version)
        classifier = version.image_classifier
        count = len(request.images)
        check_image_count(model, count, empty="images is empty; send at least one encoded image")
        classes = classifier.spec.num_classes
        k = min(DEFAULT_TOP_K, classes) if request.top_k is None else request.top_k
        if not 1 <= k <= classes:
            raise InvalidArgumentError(f"top_k must be in [1, {classes}] (the model's number of classes), got {k}")
        model.counters.requests += 1
        started = time.perf_counter_ns()
        timing = BatchTiming()
        try:
            predictions = await classifier.classify(
                request.images, k, max_pixels=self._max_image_pixels, deadline=request.deadline, timing=timing
            )
        except BaseException as exc:
            self._statistics.record_failure(model.name, version.version, total_ns=time.perf_counter_ns() - started)
            if not isinstance(exc, NOT_MODEL_FAILURES):
                model.counters.failures += 1
            raise
        timings = Timings.of_batch(timing)
        self._statistics.record_success(
            model.name,
            version.version,
            total_ns=time.perf_counter_ns() - started,
            queue_ns=timings.queue_ns,
            compute_ns=timings.compute_ns,
            batch=count,
        )
        model.counters.images += count
        logger.debug("classified %d image(s) with %s/%s", count, model.name, version.version)
        return ClassificationResult(
            model=model.name, model_version=version.version, classifications=predictions, timings=timings
        )


@dataclass(frozen=True)
class LogitsRequest:
    """Raw logits of a batch: either encoded ``images`` (decoded and preprocessed here) or ``pixels``,
    an already preprocessed ``(batch, C, H, W)`` float32 array."""

    model: str
    model_version: str = ""
    images: tuple[bytes, ...] = ()
    pixels: npt.NDArray[np.float32] | None = None
    deadline: float | None = None  # time.monotonic() instant, from the call's deadline


@dataclass(frozen=True)
class LogitsResult:
    """``logits`` is ``(batch, num_classes)``; ``labels`` names the columns."""

    model: str
    model_version: str
    logits: npt.NDArray[np.float32]
    labels: tuple[str, ...]
    timings: Timings


class ImageLogitsHandler:
    """The tensor-level path for image models (the KServe v2 API): logits, not predictions."""

    def __init__(self, repository: ModelRepository, *, max_image_pixels: int) -> None:
        self._repository = repository
        self._max_image_pixels = max_image_pixels

    async def logits(self, request: LogitsRequest) -> LogitsResult:
        """Check the batch, then run it through the model's batcher, merged with other requests."""
        model = self._repository.get_image_model(request.model)
        version = model.version(request.model_version)
        classifier = version.image_classifier
        spec = classifier.spec.input
        if request.pixels is not None:
            expected = (spec.channels, spec.height, spec.width)
            if request.pixels.ndim != 4 or request.pixels.shape[1:] != expected:
                raise InvalidArgumentError(
                    f"pixel tensor has shape {list(request.pixels.shape)}, the model takes [batch, "
                    f"{', '.join(map(str, expected))}]"
                )
            count = request.pixels.shape[0]
        else:
            count = len(request.images)
        check_image_count(model, count, empty="the batch is empty; send at least one image")
        model.counters.requests += 1
        timing = BatchTiming()
        try:
            if request.pixels is not None:
                logits = await classifier.logits_of_pixels(request.pixels, deadline=request.deadline, timing=timing)
            else:
                logits = await classifier.logits_of_images(
                    request.images, max_pixels=self._max_image_pixels, deadline=request.deadline, timing=timing
                )
        except BaseException as exc:
            if not isinstance(exc, NOT_MODEL_FAILURES):
                model.counters.failures += 1
            raise
        model.counters.images += count
        return LogitsResult(model.name, version.version, logits, classifier.spec.labels, Timings.of_batch(timing))


class ModelHandler:
    """Model discovery."""

    def __init__(self, repository: ModelRepository) -> None:
        self._repository = repository

    def list_models(self) -> list[Model]:
        """All loaded models."""
        return self._repository.models()

    def get_model(self, name: str) -> Model:
        """One model by name (NOT_FOUND if unknown)."""
        return self._repository.get(name)

    def state(self, name: str) -> ModelState:
        """A model's load state and its reason."""
        return self._repository.state(name)

    def unavailable(self) -> list[IndexEntry]:
        """Models in the repository (or known to the server) that are not serving."""
        return [e for e in self._repository.index() if e.state != READY]


def deadline_from_timeout(time_remaining: float | None) -> float | None:
    """Turn gRPC's remaining time into a monotonic deadline."""
    return None if time_remaining is None else time.monotonic() + time_remaining
