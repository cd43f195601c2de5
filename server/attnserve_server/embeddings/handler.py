"""The embeddings handler: input-wise (and, with pooling ``none``, token-wise) vectors of texts or
images, for any model whose version has an embeddings graph. No protobuf, no status codes.

Every check that costs nothing runs before any work: the model has a graph, the inputs are of
the model's kind and within its caps, the pooling and the layer exist. Texts are then tokenized
(each one bounded in bytes first) and the token-wise response is sized before the graph runs.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from attnserve_server.embeddings.engine import EmbeddingsEngine, PreparedInputs
from attnserve_server.embeddings.pooling import l2_normalize, pool
from attnserve_server.errors import (
    DeadlineExceededError,
    FailedPreconditionError,
    InvalidArgumentError,
    ResourceExhaustedError,
)
from attnserve_server.loaded import ModelLookup, Target, resolve
from attnserve_server.model_format.embeddings import POOLINGS, Pooling
from attnserve_server.statistics import Statistics, Timings
from attnserve_server.vision.batcher import BatchTiming

# The client's default receive limit. Token-wise vectors past it would fail on the client after all
# the work was done, so the request is refused up front instead.
MAX_RESPONSE_BYTES = 4 * 1024 * 1024
# Room for the response's envelope (names, input-wise vectors' framing) under that limit.
RESPONSE_MARGIN_BYTES = 64 * 1024
# Protobuf framing per token (field tags and lengths), over-estimated.
TOKEN_OVERHEAD_BYTES = 12
NOT_MODEL_FAILURES = (InvalidArgumentError, ResourceExhaustedError, DeadlineExceededError, asyncio.CancelledError)


@dataclass(frozen=True)
class EmbedRequest:
    """Texts or encoded images (exactly one of the two) and how to turn them into vectors."""

    model: str
    texts: tuple[str, ...] = ()
    images: tuple[bytes, ...] = ()
    pooling: Pooling | None = None  # None: the model's default
    layer: int | None = None  # None: the last; negative counts from the end
    normalize: bool = False
    model_version: str = ""
    deadline: float | None = None  # a time.monotonic() instant


@dataclass(frozen=True)
class InputEmbedding:
    """One input's vector ``(D,)``; with pooling ``none`` also its token vectors ``(T, D)`` and, for
    text, each token's text."""

    vector: npt.NDArray[np.float32]
    tokens: npt.NDArray[np.float32] | None = None
    token_texts: tuple[str, ...] = ()


@dataclass(frozen=True)
class EmbedResult:
    model: str
    model_version: str
    pooling: Pooling  # the pooling of the input-wise vectors (the default one under ``none``)
    token_wise: bool
    layer: int  # resolved: 0 .. num_layers - 1
    dim: int
    embeddings: list[InputEmbedding]
    timings: Timings = field(default_factory=Timings)


def embeddings_engine(target: Target) -> EmbeddingsEngine:
    """The version's embeddings engine; FAILED_PRECONDITION for a version exported without the graph."""
    engine = target.version.embeddings
    if not isinstance(engine, EmbeddingsEngine):
        raise FailedPreconditionError(
            f"model {target.name!r} version {target.version.version} has no embeddings graph: it was exported "
            "before embeddings existed. Ask for a version that has one, or add one with `attnserve-export "
            "embeddings` (see docs/embeddings.md)"
        )
    return engine


def resolve_layer(requested: int | None, num_layers: int) -> int:
    """The layer index in ``[0, num_layers)``; negative counts from the end, None is the last."""
    if requested is None:
        return num_layers - 1
    if not -num_layers <= requested < num_layers:
        raise InvalidArgumentError(
            f"layer must be in [{-num_layers}, {num_layers - 1}] (this model has {num_layers} layers: 0 is the "
            f"input embedding, {num_layers - 1} the last; negative counts from the end), got {requested}"
        )
    return requested % num_layers


def resolve_pooling(requested: Pooling | None, engine: EmbeddingsEngine) -> Pooling:
    valid = engine.graph.poolings()
    if requested is None:
        return engine.graph.default_pooling
    if requested not in valid:
        if requested not in POOLINGS:
            raise InvalidArgumentError(f"unknown pooling {requested!r}; this model takes one of {', '.join(valid)}")
        raise InvalidArgumentError(
            f"pooling {requested!r} does not apply to model {engine.name!r}; it takes one of {', '.join(valid)}"
        )
    return requested


def check_response_size(engine: EmbeddingsEngine, prepared: PreparedInputs, layer: int) -> None:
    """Refuse token-wise vectors that would not fit the client's 4 MiB receive limit."""
    dim = engine.graph.dims[layer]
    if prepared.token_texts is not None:
        counts = prepared.token_counts
        text_bytes = sum(len(t.encode("utf-8")) for texts in prepared.token_texts for t in texts)
    else:
        assert engine.graph.num_tokens is not None  # image graphs declare it (checked at load)
        counts = [engine.graph.num_tokens[layer]] * len(prepared.rows)
        text_bytes = 0
    tokens = sum(counts)
    size = tokens * (4 * dim + TOKEN_OVERHEAD_BYTES) + text_bytes + len(counts) * 4 * dim
    budget = MAX_RESPONSE_BYTES - RESPONSE_MARGIN_BYTES
    if size > budget:
        fits = max(1, (budget - len(counts) * 4 * dim) // (4 * dim + TOKEN_OVERHEAD_BYTES))
        raise InvalidArgumentError(
            f"the token-wise vectors of this request ({tokens} tokens x {dim} floats at layer {layer}) would take "
            f"{size / 2**20:.1f} MiB, over the 4 MiB response limit; send fewer or shorter inputs (about {fits} "
            "tokens fit), or ask for a pooling other than none"
        )


class EmbeddingsHandler:
    """Validates Embed requests, runs them through the version's embeddings engine, records statistics."""

    def __init__(self, models: ModelLookup, *, statistics: Statistics | None = None) -> None:
        self._models = models
        self._statistics = statistics if statistics is not None else Statistics()

    async def embed(self, request: EmbedRequest) -> EmbedResult:
        target = resolve(self._models, request.model, request.model_version)
        engine = embeddings_engine(target)
        inputs = self._check_inputs(request, engine)
        pooling = resolve_pooling(request.pooling, engine)
        layer = resolve_layer(request.layer, engine.graph.num_layers)
        started = time.perf_counter_ns()
        timing = BatchTiming()
        try:
            target.model.counters.requests += 1
            prepared = await engine.prepare(inputs, request.deadline)
            if pooling == "none":
                check_response_size(engine, prepared, layer)
            states = await engine.run(prepared, deadline=request.deadline, timing=timing)
        except BaseException as exc:
            self._statistics.record_failure(
                target.name, target.version.version, total_ns=time.perf_counter_ns() - started
            )
            if not isinstance(exc, NOT_MODEL_FAILURES):
                target.model.counters.failures += 1
            raise
        embeddings = self._pooled(engine, states, prepared, pooling, layer, request.normalize)
        timings = Timings(queue_ns=int(timing.queue_s * 1e9), compute_ns=int(timing.compute_s * 1e9))
        self._statistics.record_success(
            target.name,
            target.version.version,
            total_ns=time.perf_counter_ns() - started,
            queue_ns=timings.queue_ns,
            compute_ns=timings.compute_ns,
            batch=len(inputs),
        )
        return EmbedResult(
            model=target.name,
            model_version=target.version.version,
            pooling=engine.graph.default_pooling if pooling == "none" else pooling,
            token_wise=pooling == "none",
            layer=layer,
            dim=engine.graph.dims[layer],
            embeddings=embeddings,
            timings=timings,
        )

    @staticmethod
    def _check_inputs(request: EmbedRequest, engine: EmbeddingsEngine) -> tuple[str, ...] | tuple[bytes, ...]:
        if request.texts and request.images:
            raise InvalidArgumentError("send either texts or images, not both")
        kind, other = ("texts", "images") if engine.is_text else ("images", "texts")
        inputs = request.texts if engine.is_text else request.images
        if (request.images if engine.is_text else request.texts) and not inputs:
            raise InvalidArgumentError(f"model {engine.name!r} embeds {kind}, not {other}; send {kind}")
        if not inputs:
            raise InvalidArgumentError(f"{kind} is empty; send at least one")
        if len(inputs) > engine.limits.max_inputs:
            raise InvalidArgumentError(
                f"the request holds {len(inputs)} {kind}, more than model {engine.name!r} embeds per request "
                f"({engine.limits.max_inputs}, embeddings.max_inputs in its config.yaml); split it into several "
                "requests"
            )
        return inputs

    @staticmethod
    def _pooled(  # noqa: PLR0917 (a private helper of embed)
        engine: EmbeddingsEngine,
        states: list[list[npt.NDArray[np.float32]]],
        prepared: PreparedInputs,
        pooling: Pooling,
        layer: int,
        normalize: bool,
    ) -> list[InputEmbedding]:
        vector_pooling = engine.graph.default_pooling if pooling == "none" else pooling
        results = []
        for index, layers in enumerate(states):
            tokens = layers[layer]  # (T, D)
            vector = pool(tokens, vector_pooling, class_token=engine.graph.class_token)
            if normalize:
                vector = l2_normalize(vector)
            if pooling != "none":
                results.append(InputEmbedding(vector))
                continue
            texts = prepared.token_texts[index] if prepared.token_texts is not None else ()
            results.append(InputEmbedding(vector, l2_normalize(tokens) if normalize else tokens, texts))
        return results
