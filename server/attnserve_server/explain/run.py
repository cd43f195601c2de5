"""Running an explain graph on one input and shaping its outputs, per layout (blocking; worker pool).

What each layout returns is described in :mod:`attnserve_server.model_format.explain` (the graph)
and in ``proto/attnserve/v1/explain.proto`` (the maps).
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from attnserve_server.explain.maps import (
    FloatArray,
    QueryWindow,
    attention_rollout,
    class_token_attention,
    select,
    window_query_map,
)
from attnserve_server.model_format.explain import ExplainGraph
from attnserve_server.runtime import RuntimeSession

if TYPE_CHECKING:
    from attnserve_server.explain.engine import ExplainEngine, ExplainInput


@dataclass(frozen=True)
class Selection:
    """What a request asked for, resolved against the model."""

    layers: tuple[int, ...]
    heads: tuple[int, ...]
    stage: int = 0
    query: tuple[int, int] = (0, 0)
    max_new_tokens: int = 0


@dataclass(frozen=True)
class TextMaps:
    tokens: tuple[str, ...]
    attention: FloatArray  # (layers, heads, T, T)


@dataclass(frozen=True)
class Text2TextMaps:
    source_tokens: tuple[str, ...]
    target_tokens: tuple[str, ...]
    generated_tokens: tuple[str, ...]
    output_text: str
    encoder: FloatArray  # (layers, heads, S, S)
    decoder: FloatArray  # (layers, heads, U, U)
    cross: FloatArray  # (layers, heads, U, S)


@dataclass(frozen=True)
class VitMaps:
    grid: tuple[int, int]
    patch_size: int
    class_attention: FloatArray  # (layers, heads, gh, gw)
    rollout: FloatArray  # (gh, gw)


@dataclass(frozen=True)
class SwinMaps:
    stage: int
    query: tuple[int, int]
    grid: tuple[int, int]
    cell_size: int
    attention: FloatArray  # (blocks, heads, gh, gw)
    windows: tuple[tuple[int, QueryWindow], ...]  # (block, where the query's window was)


Maps = TextMaps | Text2TextMaps | VitMaps | SwinMaps


def response_floats(graph: ExplainGraph, selection: Selection, tokens: int) -> int:
    """How many floats the maps of a request hold (an upper bound for an encoder-decoder's)."""
    maps = len(selection.layers) * len(selection.heads)
    if graph.layout == "causal_text":
        return maps * tokens * tokens
    if graph.layout == "encoder_decoder":
        steps = selection.max_new_tokens
        return maps * (tokens * tokens + steps * steps + steps * tokens)
    if graph.layout == "vit":
        assert graph.grid is not None
        cells = graph.grid[0] * graph.grid[1]
        return maps * cells + cells
    window = graph.stage_blocks(selection.stage)[0].window
    assert window is not None
    return maps * window.height * window.width


def run_maps(
    engine: ExplainEngine, session: RuntimeSession, prepared: ExplainInput, selection: Selection, stop: threading.Event
) -> Maps:
    """The maps of one prepared input (blocking)."""
    graph = engine.graph
    if graph.layout == "encoder_decoder":
        return _text2text(engine, session, prepared, selection, stop)
    if graph.layout == "causal_text":
        assert prepared.ids is not None
        ids = prepared.ids[None, :]  # (1, T)
        input_ids, attention_mask = graph.input_names
        feed: dict[str, npt.NDArray[Any]] = {input_ids: ids, attention_mask: np.ones_like(ids)}
    else:
        assert prepared.pixels is not None
        (pixels,) = graph.input_names
        feed = {pixels: prepared.pixels}
    layers = graph.attentions if graph.layout != "swin" else graph.stage_blocks(selection.stage)
    # A ViT's rollout needs every layer, whichever were chosen: the one run asks for them all.
    wanted = range(len(layers)) if graph.layout == "vit" else selection.layers
    names = [layers[i].output for i in wanted]
    outputs = dict(zip(names, session.run(names, feed), strict=True))
    chosen = [outputs[layers[i].output] for i in selection.layers]
    if graph.layout == "causal_text":
        return TextMaps(prepared.token_texts, select(chosen, selection.heads))
    if graph.layout == "vit":
        return _vit(graph, chosen, [outputs[name] for name in names], selection)
    return _swin(graph, chosen, selection)


def _vit(graph: ExplainGraph, chosen: list[FloatArray], every: list[FloatArray], selection: Selection) -> VitMaps:
    assert graph.grid is not None and graph.patch_size is not None
    class_attention = np.stack([class_token_attention(layer, selection.heads, graph.grid) for layer in chosen])
    return VitMaps(graph.grid, graph.patch_size, class_attention, attention_rollout(every, graph.grid))


def _swin(graph: ExplainGraph, chosen: list[FloatArray], selection: Selection) -> SwinMaps:
    blocks = graph.stage_blocks(selection.stage)
    maps, windows = [], []
    for index, raw in zip(selection.layers, chosen, strict=True):
        geometry = blocks[index].window
        assert geometry is not None
        grid_map, window = window_query_map(raw, selection.heads, geometry, selection.query)
        maps.append(grid_map)
        windows.append((index, window))
    first = blocks[0].window
    assert first is not None and graph.patch_size is not None
    return SwinMaps(
        stage=selection.stage,
        query=selection.query,
        grid=(first.height, first.width),
        cell_size=graph.patch_size * 2**selection.stage,
        attention=np.stack(maps),
        windows=tuple(windows),
    )


def _text2text(
    engine: ExplainEngine, session: RuntimeSession, prepared: ExplainInput, selection: Selection, stop: threading.Event
) -> Text2TextMaps:
    """Decode greedily with the explain graph alone (no cache: a run per token, at most max_new_tokens),
    then keep the last run's maps: its decoder input is the start token and every generated token but
    the last, so row i of its maps is the step that produced generated token i."""
    graph = engine.graph
    decoding = engine.decoding
    assert prepared.ids is not None and graph.logits is not None and decoding is not None
    source_ids, source_mask, target_ids = graph.input_names
    source = prepared.ids[None, :]  # (1, S)
    target = [decoding.bos_token_id]
    generated: list[int] = []
    enc = [graph.attentions[i].output for i in selection.layers]
    dec = [graph.decoder_attentions[i].output for i in selection.layers]
    cross = [graph.cross_attentions[i].output for i in selection.layers]
    names = [graph.logits, *enc, *dec, *cross]
    while True:
        if stop.is_set():
            raise asyncio.CancelledError
        feed = {source_ids: source, source_mask: np.ones_like(source), target_ids: np.asarray([target], dtype=np.int64)}
        outputs = dict(zip(names, session.run(names, feed), strict=True))
        token = int(np.argmax(outputs[graph.logits][0, -1]))
        generated.append(token)
        if token == decoding.eos_token_id or len(generated) >= selection.max_new_tokens:
            break
        target.append(token)
    return Text2TextMaps(
        source_tokens=prepared.token_texts,
        target_tokens=tuple(decoding.piece(t) for t in target),
        generated_tokens=tuple(decoding.piece(t) for t in generated),
        output_text=decoding.decode(generated),
        encoder=select([outputs[n] for n in enc], selection.heads),
        decoder=select([outputs[n] for n in dec], selection.heads),
        cross=select([outputs[n] for n in cross], selection.heads),
    )
