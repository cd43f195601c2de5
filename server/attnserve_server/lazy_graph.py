"""A version's extra graph (its embeddings or explain graph), opened on the first request that needs it.

Never at load time: a server that nobody asks for embeddings or attention maps pays neither memory
nor start-up time for them. Opening runs in a worker pool, once, whoever asks first; a graph that
cannot be opened, or lacks a tensor that ``metadata.json`` names, is FAILED_PRECONDITION for the
request that asked (the version's serving graph keeps serving).

One file, one session: when a version's embeddings and explain entries name the same file (the
exporter's default for GPT, ViT and Swin), both engines share its :class:`LazyGraph`
(:func:`shared_graph`), so its weights are in memory once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import Executor

from attnserve_server.errors import FailedPreconditionError, ModelLoadError
from attnserve_server.runtime import RuntimeSession

logger = logging.getLogger(__name__)


class LazyGraph:
    """One graph file of a version, its session opened on first use."""

    def __init__(
        self, *, name: str, version: str, file: str, open_session: Callable[[], RuntimeSession], executor: Executor
    ) -> None:
        self._name = name
        self._version = version
        self._file = file
        self._open_session = open_session
        self._executor = executor
        self._session: RuntimeSession | None = None
        self._opening: asyncio.Lock | None = None

    @property
    def session(self) -> RuntimeSession | None:
        """The session, or None until a request has opened it."""
        return self._session

    async def open(self, what: str, required: Sequence[str]) -> RuntimeSession:
        """The session, opening the graph first if no request has yet; FAILED_PRECONDITION if the file
        cannot be loaded or lacks one of the ``required`` tensors that the ``what`` entry names."""
        if self._session is None:
            if self._opening is None:
                self._opening = asyncio.Lock()
            async with self._opening:
                if self._session is None:
                    self._session = await asyncio.get_running_loop().run_in_executor(self._executor, self._open, what)
                    logger.info("opened the %s graph of model %s version %s", what, self._name, self._version)
        present = (*self._session.input_names, *self._session.output_names)
        missing = [n for n in required if n not in present]
        if missing:
            raise FailedPreconditionError(
                f"model {self._name!r} version {self._version}: its {what} graph lacks tensors that metadata.json "
                f"names: {', '.join(missing)}"
            )
        return self._session

    def _open(self, what: str) -> RuntimeSession:
        try:
            return self._open_session()
        except ModelLoadError as exc:
            raise FailedPreconditionError(
                f"model {self._name!r} version {self._version}: its {what} graph cannot be loaded: {exc.reason}"
            ) from None


def shared_graph(
    graphs: dict[str, LazyGraph],
    *,
    name: str,
    version: str,
    file: str,
    open_session: Callable[[], RuntimeSession],
    executor: Executor,
) -> LazyGraph:
    """The version's :class:`LazyGraph` of ``file``, made on first ask (``graphs`` is the version's)."""
    if file not in graphs:
        graphs[file] = LazyGraph(name=name, version=version, file=file, open_session=open_session, executor=executor)
    return graphs[file]
