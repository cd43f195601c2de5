"""The Explain RPC's engine of one model version: its explain graph, opened on first use.

Each task row builds one (``text/explain.py``, ``vision/explain.py``) with the task's own input
preparation, which runs in the pool the task gives it. The graph runs one input at a time in a
thread of its own, started on first use: attention maps are a diagnostic, a run holds every
layer's probabilities in memory, and it must never hold up the pools that tokenize prompts or load
models. At most :data:`MAX_WAITING` requests wait for it; more get RESOURCE_EXHAUSTED at once.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from attnserve_server.errors import (
    DeadlineExceededError,
    ResourceExhaustedError,
)
from attnserve_server.lazy_graph import LazyGraph
from attnserve_server.model_format.explain import ExplainGraph
from attnserve_server.runtime import RuntimeSession

MAX_WAITING = 16
T = TypeVar("T")


@dataclass(frozen=True)
class ExplainLimits:
    """The Explain RPC's caps for one model (``config.yaml`` ``explain``, with defaults)."""

    # Tokens of the text (text models; 0 for images).
    max_tokens: int = 0
    # Chosen layers x heads per response (per stack for an encoder-decoder).
    max_maps: int = 64
    # Encoder-decoder: tokens generated for the cross-attention maps.
    max_new_tokens: int = 0


@dataclass(frozen=True)
class ExplainInput:
    """One prepared input: a text's ids ``(T,)`` and each token's text, or an image's pixels ``(1, C, H, W)``."""

    ids: npt.NDArray[np.int64] | None = None
    token_texts: tuple[str, ...] = ()
    pixels: npt.NDArray[np.float32] | None = None

    @property
    def num_tokens(self) -> int:
        return 0 if self.ids is None else len(self.ids)


@dataclass(frozen=True)
class Decoding:
    """An encoder-decoder's tokenizer and its decoder's start and end tokens."""

    decode: Callable[[list[int]], str]  # ids -> text, special tokens left out
    piece: Callable[[int], str]  # one token's text, special tokens shown
    bos_token_id: int
    eos_token_id: int


# Blocking: turns the raw text or image into an ExplainInput; raises InvalidArgumentError naming what is wrong.
Prepare = Callable[[Any, "float | None"], ExplainInput]


class ExplainEngine:
    """A version's explain graph (opened lazily) and the task's input preparation."""

    def __init__(
        self,
        *,
        name: str,
        version: str,
        graph: ExplainGraph,
        graph_file: LazyGraph,
        prepare: Prepare,
        executor: Executor,
        limits: ExplainLimits,
        decoding: Decoding | None = None,
    ) -> None:
        self.name = name
        self.version = version
        self.graph = graph
        self.limits = limits
        self.decoding = decoding
        self._graph = graph_file
        self._prepare = prepare
        self._executor = executor
        self._runner: ThreadPoolExecutor | None = None
        self._waiting = 0

    @property
    def is_text(self) -> bool:
        return self.graph.layout in ("causal_text", "encoder_decoder")

    @property
    def loaded(self) -> bool:
        """Whether the graph has been opened (the first request that needed it did)."""
        return self._graph.session is not None

    async def prepare(self, raw: Any, deadline: float | None) -> ExplainInput:
        """Tokenize or decode in the worker pool (even a small file can hold a large image)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._prepare, raw, deadline)

    async def call(self, function: Callable[[RuntimeSession, threading.Event], T], deadline: float | None) -> T:
        """``function(session, stop)`` in the worker pool, the graph opened first if no request has yet.

        ``stop`` is set when the caller goes away (a client that cancelled), for functions that run
        the graph several times (an encoder-decoder's greedy decoding) to give up between runs.
        """
        if self._waiting >= MAX_WAITING:
            raise ResourceExhaustedError(
                f"{self._waiting} Explain requests already wait for model {self.name!r}; retry later"
            )
        self._waiting += 1
        stop = threading.Event()
        try:
            session = await self._graph.open("explain", (*self.graph.input_names, *self.graph.outputs()))
            if self._runner is None:
                self._runner = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"explain-{self.name}")
            run = asyncio.get_running_loop().run_in_executor(self._runner, function, session, stop)
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            return await asyncio.wait_for(run, timeout)
        except asyncio.TimeoutError:  # not the builtin TimeoutError before Python 3.11
            stop.set()
            raise DeadlineExceededError("the deadline passed while computing the attention maps") from None
        except asyncio.CancelledError:
            stop.set()  # a run not yet started never starts; a running one stops between graph calls
            raise
        finally:
            self._waiting -= 1

    def close(self) -> None:
        """Stop the graph's thread (after the server has drained); the session goes with the engine."""
        if self._runner is not None:
            self._runner.shutdown(wait=False, cancel_futures=True)
