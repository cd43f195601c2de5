"""The explain handler: one input's attention maps, for any model whose version has an explain
graph. No protobuf, no status codes.

Everything that costs nothing is checked before any work: the model has a graph, the input is of
the model's kind, the layers, heads, stage and query exist and their count is within the model's
cap. The text is then tokenized (bounded in bytes first) and the response is sized before the
graph runs.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from attnserve_server.errors import (
    DeadlineExceededError,
    FailedPreconditionError,
    InvalidArgumentError,
    ResourceExhaustedError,
)
from attnserve_server.explain.engine import ExplainEngine
from attnserve_server.explain.run import (
    Maps,
    Selection,
    response_floats,
    run_maps,
)
from attnserve_server.loaded import ModelLookup, Target, resolve
from attnserve_server.statistics import Statistics, Timings

# The client's default receive limit: maps past it would fail on the client after all the work.
MAX_RESPONSE_BYTES = 4 * 1024 * 1024
# Room for the envelope (names, tokens' texts are counted apart) under that limit.
RESPONSE_MARGIN_BYTES = 64 * 1024
NOT_MODEL_FAILURES = (InvalidArgumentError, ResourceExhaustedError, DeadlineExceededError, asyncio.CancelledError)


@dataclass(frozen=True)
class ExplainRequest:
    """A text or an encoded image (exactly one) and which maps to return."""

    model: str
    text: str | None = None
    image: bytes | None = None
    layers: tuple[int, ...] = ()  # empty: all; negative counts from the end
    heads: tuple[int, ...] = ()  # empty: all
    stage: int | None = None  # Swin only; None: 0
    query_row: int | None = None  # Swin only; None: the centre
    query_col: int | None = None
    max_new_tokens: int = 0  # encoder-decoder only; 0: the model's cap
    model_version: str = ""
    deadline: float | None = None  # a time.monotonic() instant


@dataclass(frozen=True)
class ExplainResult:
    model: str
    model_version: str
    layers: tuple[int, ...]
    heads: tuple[int, ...]
    maps: Maps
    timings: Timings = field(default_factory=Timings)


def explain_engine(target: Target) -> ExplainEngine:
    """The version's explain engine; FAILED_PRECONDITION for a version exported without the graph."""
    engine = target.version.explain
    if not isinstance(engine, ExplainEngine):
        raise FailedPreconditionError(
            f"model {target.name!r} version {target.version.version} has no explain graph: it was exported before "
            "attention maps existed. Ask for a version that has one, or add one with `attnserve-export explain` "
            "(see docs/attention-maps.md)"
        )
    return engine


def _resolve_indices(requested: tuple[int, ...], count: int, what: str, *, negative: bool) -> tuple[int, ...]:
    if not requested:
        return tuple(range(count))
    low = -count if negative else 0
    resolved = []
    for index in requested:
        if not low <= index < count:
            hint = " (negative counts from the end)" if negative else ""
            raise InvalidArgumentError(f"{what} must be in [{low}, {count - 1}]{hint}; got {index}")
        resolved.append(index % count)
    if len(set(resolved)) != len(resolved):
        raise InvalidArgumentError(f"{what} names the same one twice; name each at most once")
    return tuple(resolved)


def _check_kind(request: ExplainRequest, engine: ExplainEngine) -> str | bytes:
    if request.text is not None and request.image is not None:
        raise InvalidArgumentError("send either a text or an image, not both")
    kind, other = ("a text", "an image") if engine.is_text else ("an image", "a text")
    raw = request.text if engine.is_text else request.image
    if raw is None:
        raise InvalidArgumentError(f"model {engine.name!r} explains {kind}, not {other}; send {kind}")
    if not raw:
        raise InvalidArgumentError(f"the {'text' if engine.is_text else 'image'} is empty; send one")
    return raw


def select_maps(request: ExplainRequest, engine: ExplainEngine) -> Selection:
    """The layers, heads, stage, query and generation length of a request, checked against the model."""
    graph, limits = engine.graph, engine.limits
    swin, seq2seq = graph.layout == "swin", graph.layout == "encoder_decoder"
    if not swin and (request.stage is not None or request.query_row is not None or request.query_col is not None):
        raise InvalidArgumentError(f"stage and query apply to Swin models only; model {engine.name!r} is not one")
    if not seq2seq and request.max_new_tokens:
        raise InvalidArgumentError(
            f"max_new_tokens applies to encoder-decoder models only; model {engine.name!r} is not one"
        )
    stage, query = 0, (0, 0)
    layers = graph.attentions
    if swin:
        stage = 0 if request.stage is None else request.stage
        if not 0 <= stage < graph.stages:
            raise InvalidArgumentError(f"stage must be in [0, {graph.stages - 1}]; got {stage}")
        layers = graph.stage_blocks(stage)
        window = layers[0].window
        assert window is not None  # the metadata validator checks it for swin graphs
        query = (
            window.height // 2 if request.query_row is None else request.query_row,
            window.width // 2 if request.query_col is None else request.query_col,
        )
        if not (0 <= query[0] < window.height and 0 <= query[1] < window.width):
            raise InvalidArgumentError(
                f"the query patch must lie in stage {stage}'s {window.height} x {window.width} grid "
                f"(rows 0..{window.height - 1}, columns 0..{window.width - 1}); got ({query[0]}, {query[1]})"
            )
    num_layers = min(len(layers), len(graph.decoder_attentions)) if seq2seq else len(layers)
    chosen_layers = _resolve_indices(request.layers, num_layers, "layers", negative=True)
    chosen_heads = _resolve_indices(request.heads, layers[0].heads, "heads", negative=False)
    maps = len(chosen_layers) * len(chosen_heads)
    if maps > limits.max_maps:
        raise InvalidArgumentError(
            f"{len(chosen_layers)} layers x {len(chosen_heads)} heads = {maps} maps, over model {engine.name!r}'s cap "
            f"of {limits.max_maps} (explain.max_maps in its config.yaml); choose fewer layers or heads"
        )
    new_tokens = 0
    if seq2seq:
        new_tokens = request.max_new_tokens or limits.max_new_tokens
        if not 0 < new_tokens <= limits.max_new_tokens:
            raise InvalidArgumentError(
                f"max_new_tokens must be in [1, {limits.max_new_tokens}] for model {engine.name!r} "
                f"(explain.max_new_tokens in its config.yaml); got {request.max_new_tokens}"
            )
    return Selection(layers=chosen_layers, heads=chosen_heads, stage=stage, query=query, max_new_tokens=new_tokens)


def check_response_size(engine: ExplainEngine, selection: Selection, tokens: int, text_bytes: int) -> None:
    """Refuse maps that would not fit the client's 4 MiB receive limit, before the graph runs."""
    floats = response_floats(engine.graph, selection, tokens)
    size = 4 * floats + text_bytes + 16 * tokens
    budget = MAX_RESPONSE_BYTES - RESPONSE_MARGIN_BYTES
    if size > budget:
        other = {"causal_text": ", or send a shorter text", "encoder_decoder": ", or send a shorter text or "
                 "fewer max_new_tokens", "swin": ", or choose a later stage"}.get(engine.graph.layout, "")  # fmt: skip
        raise InvalidArgumentError(
            f"the maps of this request ({len(selection.layers)} layers x {len(selection.heads)} heads"
            f"{f' over {tokens} tokens' if tokens else ''}) would take {size / 2**20:.1f} MiB, over the 4 MiB "
            f"response limit; choose fewer layers or heads{other}"
        )


class ExplainHandler:
    """Validates Explain requests, runs them through the version's explain engine, records statistics."""

    def __init__(self, models: ModelLookup, *, statistics: Statistics | None = None) -> None:
        self._models = models
        self._statistics = statistics if statistics is not None else Statistics()

    async def explain(self, request: ExplainRequest) -> ExplainResult:
        target = resolve(self._models, request.model, request.model_version)
        engine = explain_engine(target)
        raw = _check_kind(request, engine)
        selection = select_maps(request, engine)
        started = time.perf_counter_ns()
        try:
            target.model.counters.requests += 1
            prepared = await engine.prepare(raw, request.deadline)
            text_bytes = sum(len(t.encode("utf-8")) for t in prepared.token_texts)
            check_response_size(engine, selection, prepared.num_tokens, text_bytes)
            compute_started = time.perf_counter_ns()
            maps = await engine.call(
                lambda session, stop: run_maps(engine, session, prepared, selection, stop), request.deadline
            )
        except BaseException as exc:
            self._statistics.record_failure(
                target.name, target.version.version, total_ns=time.perf_counter_ns() - started
            )
            if not isinstance(exc, NOT_MODEL_FAILURES):
                target.model.counters.failures += 1
            raise
        finished = time.perf_counter_ns()
        timings = Timings(compute_ns=finished - compute_started)
        self._statistics.record_success(
            target.name,
            target.version.version,
            total_ns=finished - started,
            queue_ns=0,
            compute_ns=timings.compute_ns,
            batch=1,
        )
        return ExplainResult(
            model=target.name,
            model_version=target.version.version,
            layers=selection.layers,
            heads=selection.heads,
            maps=maps,
            timings=timings,
        )
