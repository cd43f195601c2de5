"""Model management: which models are loaded when, hot reloads, and the health that follows them.

Control modes (``--model-control-mode``):

- ``none``: every model in the repository is loaded at start; nothing changes afterwards.
- ``explicit``: only the ``--load-model`` models are loaded at start; the repository RPCs load,
  reload and unload models while the server runs.
- ``poll``: every model is loaded at start, then the repository is scanned every
  ``--repository-poll-interval-s`` seconds: new models are loaded, changed ones reloaded and
  removed ones unloaded.

A (re)load builds the new model completely in a worker thread and then swaps it in with one
assignment on the event loop. Requests that already hold the old version finish on it (it is
freed when the last one lets go); requests that arrive after the swap get the new one. A failed
reload leaves the previous load serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from pathlib import Path

from attnserve_server.errors import (
    AttnserveError,
    FailedPreconditionError,
    ModelLoadError,
    RepositoryError,
)
from attnserve_server.loaded import LOADING, READY, UNAVAILABLE, UNLOADING, IndexEntry
from attnserve_server.repository import ModelRepository
from attnserve_server.settings import ControlMode

logger = logging.getLogger(__name__)

# (path relative to the model directory, size, modification time) of every file.
Fingerprint = frozenset[tuple[str, int, int]]
# Called after every change: (model name, whether it serves, whether the server as a whole is ready).
OnChange = Callable[[str, bool, bool], Awaitable[None]]


def fingerprint(model_dir: Path) -> Fingerprint:
    """What changes when any file of the model changes (blocking: it walks the directory)."""
    entries = set()
    for folder, _, files in os.walk(model_dir, followlinks=True):
        for file in files:
            path = Path(folder) / file
            with contextlib.suppress(OSError):  # deleted while we looked: the next scan sees it
                stat = path.stat()
                entries.add((str(path.relative_to(model_dir)), stat.st_size, stat.st_mtime_ns))
    return frozenset(entries)


class ModelControl:
    """Loads, reloads and unloads the repository's models, one operation per model at a time."""

    def __init__(
        self,
        repository: ModelRepository,
        executor: Executor,
        *,
        mode: ControlMode,
        strict_readiness: bool,
        on_change: OnChange | None = None,
    ) -> None:
        self.repository = repository
        self.mode = mode
        self._executor = executor
        self._strict = strict_readiness
        self._on_change = on_change
        self._locks: dict[str, asyncio.Lock] = {}
        # Models that should be serving: what readiness waits for under strict readiness. The startup
        # models, and those loaded later; a load that fails after startup does not take readiness away.
        self._expected: set[str] = set()
        self._fingerprints: dict[str, Fingerprint] = {}

    def server_ready(self) -> bool:
        """Startup is done and (with strict readiness) every model that should serve does."""
        if not self.repository.ready:
            return False
        return not self._strict or all(self.repository.state(n).state == READY for n in self._expected)

    def model_ready(self, name: str, version: str = "") -> bool:
        """Whether the model (and that version, or its default one) is loaded."""
        try:
            self.repository.get(name).version(version)
        except AttnserveError:
            return False
        return True

    def index(self) -> list[IndexEntry]:
        return self.repository.index()

    async def _publish(self, name: str) -> None:
        if self._on_change is not None:
            serving = self.repository.state(name).state == READY if name else self.server_ready()
            await self._on_change(name, serving, self.server_ready())

    async def load(self, model_dir: Path) -> None:
        """Load (or reload) one model; raise ModelLoadError, with the model still serving its previous load."""
        name = model_dir.name
        async with self._locks.setdefault(name, asyncio.Lock()):
            loop = asyncio.get_running_loop()
            reload = self.repository.state(name).state == READY
            if not reload:
                self.repository.set_state(name, LOADING)
                await self._publish(name)
            files = await loop.run_in_executor(self._executor, fingerprint, model_dir)
            try:
                model = await loop.run_in_executor(
                    self._executor, self.repository.build_model, model_dir, self._executor
                )
            except ModelLoadError as exc:
                # Remember the files that failed, so polling retries only once they change.
                self._fingerprints[name] = files
                if reload:
                    self.repository.set_state(
                        name, READY, f"reload failed, the previous load still serves: {exc.reason}"
                    )
                else:
                    self.repository.set_state(name, UNAVAILABLE, exc.reason)
                await self._publish(name)
                raise
            self.repository.install(model)
            self._expected.add(name)
            self._fingerprints[name] = files
            logger.info(
                "%s model %s (versions %s)", "reloaded" if reload else "serving", name, ", ".join(model.versions)
            )
            await self._publish(name)

    async def unload(self, name: str) -> None:
        """Stop serving a model; requests already running on it finish."""
        self._expected.discard(name)
        async with self._locks.setdefault(name, asyncio.Lock()):
            self._fingerprints.pop(name, None)
            if self.repository.state(name).state != READY:
                return
            self.repository.set_state(name, UNLOADING)
            self.repository.remove(name)
            logger.info("unloaded model %s", name)
            await self._publish(name)

    def _require_explicit(self, what: str) -> None:
        if self.mode != "explicit":
            raise FailedPreconditionError(
                f"cannot {what} models: the server runs with --model-control-mode {self.mode}; "
                "start it with --model-control-mode explicit to load and unload models at run time"
            )

    async def load_from_request(self, name: str) -> None:
        """The repository load RPC: the name must stay inside the repository."""
        self._require_explicit("load")
        await self.load(self.repository.model_dir(name))

    async def unload_from_request(self, name: str) -> None:
        """The repository unload RPC."""
        self._require_explicit("unload")
        if self.repository.state(name).state != READY:
            self.repository.model_dir(name)  # an invalid or unknown name is an error, not a no-op
        await self.unload(name)

    async def start(self, model_dirs: list[Path], *, exit_on_error: bool) -> list[ModelLoadError]:
        """Load the startup models; with ``exit_on_error`` the first failure is raised, else all are returned."""
        failures = []
        self._expected.update(d.name for d in model_dirs)
        for model_dir in model_dirs:
            try:
                await self.load(model_dir)
            except ModelLoadError as exc:
                if exit_on_error:
                    raise
                logger.error("failed to load %s", exc)
                failures.append(exc)
        self.repository.ready = True
        await self._publish("")
        return failures

    async def poll_once(self) -> None:
        """Load new models, reload changed ones and unload removed ones."""
        loop = asyncio.get_running_loop()
        try:
            on_disk = {p.name: p for p in self.repository.discover()}
        except RepositoryError as exc:
            logger.error("cannot scan the model repository: %s", exc)
            return
        for name in sorted(set(self._fingerprints) - set(on_disk)):
            await self.unload(name)
        for name, model_dir in on_disk.items():
            files = await loop.run_in_executor(self._executor, fingerprint, model_dir)
            if self._fingerprints.get(name) == files:
                continue
            try:
                await self.load(model_dir)
            except ModelLoadError as exc:
                logger.error("failed to load %s", exc)

    async def poll_forever(self, interval_s: float) -> None:
        """Poll until cancelled."""
        while True:
            await asyncio.sleep(interval_s)
            await self.poll_once()
