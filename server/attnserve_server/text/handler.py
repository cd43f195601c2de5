"""The text-generation handler: domain requests in, a stream of chunks out. No protobuf, no status codes."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field

from attnserve_server.errors import DeadlineExceededError, InvalidArgumentError
from attnserve_server.loaded import Model, ModelLookup, Target, resolve
from attnserve_server.metrics import GenerationTimer, ServerMetrics
from attnserve_server.statistics import Statistics, Timings
from attnserve_server.task import HandlerContext
from attnserve_server.text.engine import TextEngine
from attnserve_server.text.metadata import TEXT_GENERATION, TextGenerationMetadata
from attnserve_server.text.params import (
    FinishReason,
    GenerationChunk,
    GenerationDefaults,
    RequestedParameters,
    Usage,
    fit_context,
    resolve_parameters,
)

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


def generation_defaults(model: Model) -> GenerationDefaults:
    """Request defaults of the model's default version, with max_new_tokens capped by the model's limit."""
    d = model.version().section_as(TextGenerationMetadata).defaults
    return GenerationDefaults(
        max_new_tokens=min(d.max_new_tokens, model.max_new_tokens_limit),
        temperature=d.temperature,
        top_k=d.top_k,
        top_p=d.top_p,
        repetition_penalty=d.repetition_penalty,
    )


class TextGenerationHandler:
    """Validates requests, hands them to the model's continuous batcher, and records counters and statistics."""

    def __init__(
        self, models: ModelLookup, *, metrics: ServerMetrics | None = None, statistics: Statistics | None = None
    ) -> None:
        self._models = models
        self._metrics = metrics if metrics is not None else ServerMetrics()
        # The per-version inference statistics that the v2 API's ModelStatistics reports.
        self._statistics = statistics if statistics is not None else Statistics()

    @classmethod
    def of(cls, ctx: HandlerContext) -> TextGenerationHandler:
        return cls(ctx.models, metrics=ctx.metrics, statistics=ctx.statistics)

    def resolve(self, request: GenerationRequest) -> Target:
        """The text model and version the request names."""
        return resolve(self._models, request.model, request.model_version, task=TEXT_GENERATION)

    async def start(self, request: GenerationRequest, target: Target | None = None) -> GenerationStream:
        """Validate everything and return the (not yet started) stream of chunks.

        ``target`` is the version the caller already resolved, if any. Raises before any model
        work if the request is invalid.
        """
        started = time.perf_counter_ns()
        target = target or self.resolve(request)
        try:
            return await self._start(request, target, started)
        except BaseException:
            self._statistics.record_failure(
                target.name, target.version.version, total_ns=time.perf_counter_ns() - started
            )
            raise

    async def _start(
        self, request: GenerationRequest, target: Target, started: int
    ) -> GenerationStream:
        model, version = target.model, target.version
        engine = version.engine_as(TextEngine)
        if not request.prompt:
            raise InvalidArgumentError("prompt must not be empty")
        params = resolve_parameters(
            request.parameters,
            generation_defaults(model),
            max_new_tokens_limit=model.max_new_tokens_limit,
            seed=secrets.randbits(63),
        )
        generator = engine.generator
        prompt_ids = await generator.encode(request.prompt)
        max_new_tokens = fit_context(params, len(prompt_ids), generator.spec.context_length)
        # Refused here (RESOURCE_EXHAUSTED) when the model's wait queue is full.
        batched = engine.batcher.submit(prompt_ids, params, max_new_tokens, deadline=request.deadline)
        model.counters.requests += 1
        logger.debug(
            "generate %s/%s: %d prompt tokens, up to %d new, seed %d",
            model.name,
            version.version,
            len(prompt_ids),
            max_new_tokens,
            params.seed,
        )
        # perf_counter_ns and perf_counter read the same clock: the arrival, in the timer's seconds.
        timer = self._metrics.generation(model.name, len(prompt_ids), started / 1e9)
        timings = Timings()
        return GenerationStream(
            model=model.name,
            model_version=version.version,
            seed=params.seed,
            prompt_tokens=len(prompt_ids),
            chunks=self._run(target, batched, timer, timings, started),
            timings=timings,
        )

    async def _run(
        self,
        target: Target,
        chunks: AsyncGenerator[GenerationChunk],
        timer: GenerationTimer,
        timings: Timings,
        started: int,
    ) -> AsyncIterator[GenerationChunk]:
        # The batcher's wait queue is inside this time; its queue and compute times go to the metrics
        # from the batcher itself.
        model = target.model
        running = time.perf_counter_ns()
        finished = False
        try:
            async for chunk in chunks:
                timer.tokens(len(chunk.token_ids))
                timings.compute_ns = time.perf_counter_ns() - running
                model.counters.tokens_generated += len(chunk.token_ids)
                if chunk.finish_reason is not None:
                    finished = True
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
            total_ns = time.perf_counter_ns() - started
            if finished:
                self._statistics.record_success(
                    model.name,
                    target.version.version,
                    total_ns=total_ns,
                    queue_ns=timings.queue_ns,
                    compute_ns=timings.compute_ns,
                    batch=1,
                )
            else:
                self._statistics.record_failure(model.name, target.version.version, total_ns=total_ns)

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
