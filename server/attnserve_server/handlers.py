"""Request handlers: domain requests in, domain results out. No protobuf and no status codes here."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass

from attnserve_server.errors import DeadlineExceededError, InvalidArgumentError
from attnserve_server.repository import Model, ModelRepository
from attnserve_server.text.params import (
    FinishReason,
    GenerationChunk,
    RequestedParameters,
    Usage,
    fit_context,
    resolve_parameters,
)
from attnserve_server.text.scheduler import ConcurrencyLimiter
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
class GenerationStream:
    """An accepted generation: what runs it, and its chunks as they are decoded."""

    model: str
    model_version: str
    seed: int
    prompt_tokens: int
    chunks: AsyncIterator[GenerationChunk]


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


class TextGenerationHandler:
    """Validates requests, hands them to the model's continuous batcher and keeps the model's counters."""

    def __init__(self, repository: ModelRepository) -> None:
        self._repository = repository

    async def start(self, request: GenerationRequest) -> GenerationStream:
        """Validate everything and return the (not yet started) stream of chunks.

        Raises before any model work if the request is invalid.
        """
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
        chunks = self._run(model, batched)
        return GenerationStream(
            model=model.name,
            model_version=version.version,
            seed=params.seed,
            prompt_tokens=len(prompt_ids),
            chunks=chunks,
        )

    async def _run(self, model: Model, chunks: AsyncGenerator[GenerationChunk]) -> AsyncIterator[GenerationChunk]:
        try:
            async for chunk in chunks:
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

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        """Run a generation to the end and return it whole."""
        stream = await self.start(request)
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
        )


DEFAULT_TOP_K = 5


@dataclass(frozen=True)
class ClassificationRequest:
    """A request to classify encoded images."""

    model: str
    images: tuple[bytes, ...]
    top_k: int | None = None
    model_version: str = ""


@dataclass(frozen=True)
class ClassificationResult:
    """One list of predictions (best first) per request image, in order."""

    model: str
    model_version: str
    classifications: list[list[Prediction]]


class ImageClassificationHandler:
    """Validates classification requests, runs them under the server's concurrency limit, keeps counters."""

    def __init__(self, repository: ModelRepository, limiter: ConcurrencyLimiter, *, max_image_pixels: int) -> None:
        self._repository = repository
        self._limiter = limiter
        self._max_image_pixels = max_image_pixels

    async def classify(self, request: ClassificationRequest) -> ClassificationResult:
        """Check the request, then decode, preprocess and classify every image in one model call."""
        model = self._repository.get_image_model(request.model)
        version = model.version(request.model_version)
        classifier = version.image_classifier
        count = len(request.images)
        if count == 0:
            raise InvalidArgumentError("images is empty; send at least one encoded image")
        if count > model.max_images_per_request:
            raise InvalidArgumentError(
                f"the request holds {count} images, more than the limit of {model.max_images_per_request} per "
                "request; split it into several requests"
            )
        classes = classifier.spec.num_classes
        k = min(DEFAULT_TOP_K, classes) if request.top_k is None else request.top_k
        if not 1 <= k <= classes:
            raise InvalidArgumentError(f"top_k must be in [1, {classes}] (the model's number of classes), got {k}")
        model.counters.requests += 1
        try:
            async with self._limiter.slot():
                predictions = await classifier.classify(request.images, k, max_pixels=self._max_image_pixels)
        except InvalidArgumentError:
            raise  # the client's images, not a failure of the model
        except asyncio.CancelledError:
            raise
        except Exception:
            model.counters.failures += 1
            raise
        model.counters.images += count
        logger.debug("classified %d image(s) with %s/%s", count, model.name, version.version)
        return ClassificationResult(model=model.name, model_version=version.version, classifications=predictions)


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


def deadline_from_timeout(time_remaining: float | None) -> float | None:
    """Turn gRPC's remaining time into a monotonic deadline."""
    return None if time_remaining is None else time.monotonic() + time_remaining
