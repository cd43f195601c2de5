"""What a loaded model is: its versions, each holding one engine, and the counters it keeps.

These types sit below the task packages and the registry: a task's handler resolves a request
to a :class:`Target` once, through :class:`ModelLookup` (which the registry implements), and keeps it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TypeVar

from attnserve_server.errors import FailedPreconditionError, ModelNotFoundError, shown
from attnserve_server.model_format.config import ModelConfig
from attnserve_server.model_format.metadata import ModelMetadata, TaskSection


@dataclass
class BatchStats:
    """What an engine's batcher has merged: its model calls, the items in them, and those it dropped."""

    batches: int = 0
    items: int = 0
    dropped: int = 0


class Engine(Protocol):
    """What every task's engine offers the registry."""

    def describe(self) -> str:
        """A short description for the load log line (input shape, context length, ...)."""

    def batch_stats(self) -> BatchStats:
        """What its batcher has merged (zeros if it merges nothing)."""

    def close(self) -> None:
        """Free its threads and sessions (after the server has drained)."""


class Closeable(Protocol):
    """Something a version holds besides its engine (its lazily loaded embeddings or explain graph)."""

    def close(self) -> None:
        """Free its threads and sessions (after the server has drained)."""


E = TypeVar("E", bound=Engine)
S = TypeVar("S", bound=TaskSection)


@dataclass
class ModelCounters:
    """Live counters since the server started, over all versions. Only touched from the event loop."""

    requests: int = 0
    tokens_generated: int = 0
    failures: int = 0
    # Images classified (not reported over gRPC: ModelCounters has no field for it).
    images: int = 0


@dataclass
class ModelVersion:
    """One loaded version of a model: its metadata and the one engine that its task built."""

    version: str
    path: Path
    metadata: ModelMetadata
    engine: Engine
    # The Embed RPC's engine (attnserve_server.embeddings), if the version has an embeddings graph.
    embeddings: Closeable | None = None
    # The Explain RPC's engine (attnserve_server.explain), if the version has an explain graph.
    explain: Closeable | None = None

    @property
    def task(self) -> str:
        return self.metadata.task

    def close(self) -> None:
        """Close the engine and the embeddings and explain engines (after the server has drained)."""
        self.engine.close()
        for extra in (self.embeddings, self.explain):
            if extra is not None:
                extra.close()

    def engine_as(self, kind: type[E]) -> E:
        """The engine, checked to be a ``kind`` (a handler asks for its own task's engine)."""
        if not isinstance(self.engine, kind):
            raise TypeError(f"version {self.version} is a {self.task} model, its engine is not a {kind.__name__}")
        return self.engine

    def section_as(self, kind: type[S]) -> S:
        """The task's metadata section, checked to be a ``kind``."""
        section = self.metadata.section
        if not isinstance(section, kind):
            raise TypeError(f"version {self.version} is a {self.task} model, not {kind.TASK}")
        return section


@dataclass
class Model:
    """A named model with its loaded versions (oldest first).

    Never changed once installed in the repository: a reload installs a new ``Model`` in its
    place, so a request that already holds a version finishes on it.
    """

    name: str
    task: str
    config: ModelConfig
    versions: dict[str, ModelVersion]
    default_version: str
    max_new_tokens_limit: int
    max_images_per_request: int = 64
    counters: ModelCounters = field(default_factory=ModelCounters)

    def version(self, version: str = "") -> ModelVersion:
        """The named version, or the default one for ``""``."""
        found = self.versions.get(version or self.default_version)
        if found is None:
            loaded = ", ".join(self.versions)
            raise ModelNotFoundError(f"model {self.name!r} has no loaded version {shown(version)} (loaded: {loaded})")
        return found

    def batch_stats(self) -> BatchStats:
        """What the batchers of all loaded versions have merged."""
        total = BatchStats()
        for version in self.versions.values():
            stats = version.engine.batch_stats()
            total.batches += stats.batches
            total.items += stats.items
            total.dropped += stats.dropped
        return total


@dataclass(frozen=True)
class Target:
    """The model and version that one request runs on, resolved once when it arrives."""

    model: Model
    version: ModelVersion

    @property
    def name(self) -> str:
        return self.model.name


class ModelLookup(Protocol):
    """Finds loaded models by name (the registry)."""

    def get(self, name: str) -> Model:
        """A loaded model; NOT_FOUND (or UNAVAILABLE while starting) otherwise."""


def resolve(models: ModelLookup, name: str, version: str = "", *, task: str | None = None) -> Target:
    """The model and version a request names; with ``task``, FAILED_PRECONDITION for a model of another task."""
    model = models.get(name)
    if task is not None and model.task != task:
        raise FailedPreconditionError(f"model {model.name!r} is a {model.task} model, not {task}")
    return Target(model, model.version(version))


READY = "READY"
LOADING = "LOADING"
UNLOADING = "UNLOADING"
UNAVAILABLE = "UNAVAILABLE"


@dataclass(frozen=True)
class ModelState:
    """A model's load state (``READY``, ``LOADING``, ``UNLOADING``, ``UNAVAILABLE``) and why."""

    state: str
    reason: str = ""


@dataclass(frozen=True)
class IndexEntry:
    """One row of the repository index."""

    name: str
    version: str
    state: str
    reason: str
