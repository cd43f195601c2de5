"""The Embed RPC's engine of one model version: its embeddings graph, loaded on first use, behind a
dynamic batcher.

Each task row builds one (``text/embeddings.py``, ``vision/embeddings.py``) with the task's own
input preparation (tokenizing, or decoding images); everything after that is shared:

- the graph is opened on the first request that needs it, never at load time: a server that
  nobody asks for embeddings pays neither memory nor start-up time for it;
- requests' inputs are merged into one graph call by the same :class:`DynamicBatcher` that the
  image classifier uses. Texts of different lengths are left-padded to the longest one in the
  call and the padding is masked out inside the graph, so a text's vectors do not depend on its
  batch-mates; each row comes back without its padding.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import numpy.typing as npt

from attnserve_server.lazy_graph import LazyGraph
from attnserve_server.loaded import BatchStats
from attnserve_server.model_format.embeddings import EmbeddingsGraph
from attnserve_server.vision.batcher import BatchingConfig, BatchTiming, DynamicBatcher

# Text requests of at most this many characters in all are tokenized on the event loop.
INLINE_PREPARE_BYTES = 2048
# One input's hidden states: one (tokens, dim) array per layer, padding removed.
LayerStates = list[npt.NDArray[np.float32]]


@dataclass(frozen=True)
class PreparedInputs:
    """A request's inputs, ready for the graph.

    ``rows``: images ``(n, C, H, W)`` float32, or texts as an ``(n,)`` object array of int64 id arrays.
    ``token_texts``: for texts, each token's text, per input; None for images.
    """

    rows: npt.NDArray[Any]
    token_texts: tuple[tuple[str, ...], ...] | None = None

    @property
    def token_counts(self) -> list[int]:
        """Tokens per input (text only)."""
        return [len(ids) for ids in self.rows] if self.token_texts is not None else []


# Blocking: turns the request's raw inputs into rows; raises InvalidArgumentError naming a bad input.
# It gives up between inputs once the event is set (the client left) or the deadline passed.
Prepare = Callable[[Sequence[Any], threading.Event, "float | None"], PreparedInputs]


@dataclass(frozen=True)
class EmbeddingsLimits:
    """The Embed RPC's caps for one model (``config.yaml`` ``embeddings``, with defaults)."""

    max_inputs: int = 32
    # Text models only: tokens per text.
    max_tokens_per_text: int = 0


class EmbeddingsEngine:
    """A version's embeddings graph (opened lazily), its batcher, and the task's input preparation."""

    def __init__(
        self,
        *,
        name: str,
        version: str,
        graph: EmbeddingsGraph,
        graph_file: LazyGraph,
        prepare: Prepare,
        prepare_executor: Executor,
        batching: BatchingConfig,
        limits: EmbeddingsLimits,
        pad_id: int = 0,
    ) -> None:
        self.name = name
        self.version = version
        self.graph = graph
        self.limits = limits
        self._graph = graph_file
        self._prepare = prepare
        self._prepare_executor = prepare_executor
        self._batching = batching
        self._pad_id = pad_id
        self._batcher: DynamicBatcher | None = None

    @property
    def is_text(self) -> bool:
        return self.graph.is_text

    @property
    def loaded(self) -> bool:
        """Whether the graph has been opened (the first request that needed it did)."""
        return self._graph.session is not None

    async def _ready(self) -> DynamicBatcher:
        """The batcher, opening the graph first if no request has yet."""
        if self._batcher is None:
            await self._graph.open("embeddings", (*self.graph.input_names, *self.graph.hidden_states))
            if self._batcher is None:  # another request may have made it while the graph opened
                self._batcher = DynamicBatcher(self.name, self.forward, self._batching, item="inputs")
        return self._batcher

    async def prepare(self, inputs: Sequence[Any], deadline: float | None) -> PreparedInputs:
        """Tokenize or decode the inputs: short texts right here, anything else in the preparation pool.

        Tokenizing a few short texts takes tens of microseconds, less than the hop to a worker thread
        and back; past :data:`INLINE_PREPARE_BYTES` the event loop must not wait. Images always go to
        the pool: even a small file can hold a large (compressed) image.
        """
        stop = threading.Event()
        if self.is_text and sum(len(item) for item in inputs) <= INLINE_PREPARE_BYTES:
            return self._prepare(inputs, stop, deadline)
        try:
            return await asyncio.get_running_loop().run_in_executor(
                self._prepare_executor, self._prepare, inputs, stop, deadline
            )
        except asyncio.CancelledError:
            stop.set()  # the thread stops before its next input
            raise

    async def run(
        self, prepared: PreparedInputs, *, deadline: float | None = None, timing: BatchTiming | None = None
    ) -> list[LayerStates]:
        """Every layer's hidden states of each input, merged with other requests' inputs in one call."""
        batcher = await self._ready()
        with batcher.reserve(len(prepared.rows), timing) as reservation:
            rows = await reservation.run(cast(Any, prepared.rows), deadline)
        return [cast(LayerStates, row) for row in rows]

    def forward(self, batch: npt.NDArray[Any]) -> npt.NDArray[Any]:
        """One graph call (blocking, on the batcher's thread): an ``(B,)`` object array of each row's
        per-layer states, without padding."""
        session = self._graph.session
        if session is None:
            raise RuntimeError("the embeddings graph is not open")
        names = list(self.graph.hidden_states)
        out = np.empty(len(batch), dtype=object)
        if self.is_text:
            lengths = [len(ids) for ids in batch]
            width = max(lengths)
            ids = np.full((len(batch), width), self._pad_id, dtype=np.int64)  # (B, T), left-padded
            mask = np.zeros((len(batch), width), dtype=np.int64)  # (B, T): 1 for real tokens
            for row, tokens in enumerate(batch):
                ids[row, width - len(tokens) :] = tokens
                mask[row, width - len(tokens) :] = 1
            input_ids, attention_mask = self.graph.input_names
            states = session.run(names, {input_ids: ids, attention_mask: mask})  # layers x (B, T, D)
            for row, length in enumerate(lengths):
                out[row] = [layer[row, width - length :] for layer in states]  # (T_row, D) each
        else:
            (pixels,) = self.graph.input_names
            states = session.run(names, {pixels: np.ascontiguousarray(batch, dtype=np.float32)})
            for row in range(len(batch)):
                out[row] = [layer[row] for layer in states]
        return out

    def batch_stats(self) -> BatchStats:
        return self._batcher.stats if self._batcher is not None else BatchStats()

    def close(self) -> None:
        """Stop the batcher (after the server has drained); the session goes with the engine."""
        if self._batcher is not None:
            self._batcher.close()
