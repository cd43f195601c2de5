"""A version's extra graph (its embeddings or explain graph), opened on the first request that needs it.

Never at load time: a server that nobody asks for embeddings or attention maps pays neither memory
nor start-up time for them. Opening runs in a worker pool, once, whoever asks first; a graph that
cannot be opened, or lacks a tensor that ``metadata.json`` names, is FAILED_PRECONDITION for the
request that asked (the version's serving graph keeps serving).
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
        self,
        *,
        name: str,
        version: str,
        what: str,
        open_session: Callable[[], RuntimeSession],
        required: Sequence[str],
        executor: Executor,
    ) -> None:
        self._name = name
        self._version = version
        self._what = what
        self._open_session = open_session
        self._required = tuple(required)
        self._executor = executor
        self._session: RuntimeSession | None = None
        self._opening: asyncio.Lock | None = None

    @property
    def session(self) -> RuntimeSession | None:
        """The session, or None until a request has opened it."""
        return self._session

    async def open(self) -> RuntimeSession:
        """The session, opening the graph first if no request has yet."""
        if self._session is not None:
            return self._session
        if self._opening is None:
            self._opening = asyncio.Lock()
        async with self._opening:
            if self._session is None:
                self._session = await asyncio.get_running_loop().run_in_executor(self._executor, self._open)
                logger.info("opened the %s graph of model %s version %s", self._what, self._name, self._version)
        return self._session

    def _open(self) -> RuntimeSession:
        """Open and check the graph (blocking); FAILED_PRECONDITION says what is wrong with the model."""
        problem = f"model {self._name!r} version {self._version}: its {self._what} graph"
        try:
            session = self._open_session()
        except ModelLoadError as exc:
            raise FailedPreconditionError(f"{problem} cannot be loaded: {exc.reason}") from None
        present = (*session.input_names, *session.output_names)
        missing = [n for n in self._required if n not in present]
        if missing:
            raise FailedPreconditionError(f"{problem} lacks tensors that metadata.json names: {', '.join(missing)}")
        return session
