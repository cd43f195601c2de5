"""A task: everything that one kind of model (text generation, image classification, ...) brings.

A :class:`Task` is one row of the task table (:mod:`attnserve_server.task_table`). The registry,
the servicers and the v2 data plane look a model's task up there and call what its row names;
none of them branches on the task. Adding a task is one package plus one row: see
``docs/adding-a-task.md``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from attnserve_server.lazy_graph import LazyGraph
from attnserve_server.loaded import Closeable, Engine, Model, ModelLookup, Target
from attnserve_server.metrics import ServerMetrics
from attnserve_server.model_format.config import ModelConfig
from attnserve_server.model_format.metadata import ModelMetadata, TaskSection
from attnserve_server.settings import ServerSettings
from attnserve_server.statistics import Statistics
from attnserve_server.tensor_api import InferRequest, InferResponse, Signature

H = TypeVar("H")


@dataclass(frozen=True)
class LoadContext:
    """What a task's loader gets for one version directory; ``metadata`` is already validated."""

    model: str
    version_dir: Path
    metadata: ModelMetadata
    config: ModelConfig
    settings: ServerSettings
    # Loading and tokenizing run here.
    executor: Executor
    # None in tools and unit tests: engines then report to no metrics.
    metrics: ServerMetrics | None = None
    # The version's lazily opened extra graphs by file, shared by the engines that name the same one.
    graphs: dict[str, LazyGraph] = field(default_factory=dict)


@dataclass(frozen=True)
class HandlerContext:
    """What a task's handler is built with: one per server."""

    models: ModelLookup
    settings: ServerSettings
    statistics: Statistics
    metrics: ServerMetrics


@dataclass(frozen=True)
class Task(Generic[H]):
    """One row of the task table.

    - ``section``: the task's ``metadata.json`` section (its ``TASK`` is the row's name).
    - ``load``: builds the engine of one version, after checking the graph against the metadata;
      raises ``ModelLoadError`` with a reason.
    - ``handler``: builds the task's handler (domain requests in, domain results out).
    - ``signature``: the v2 tensor view of a loaded version.
    - ``infer``: runs one v2 tensor request on the handler; yields one response, or several for a
      decoupled (streaming) model when asked for chunks.
    - ``describe``: the task's part of a model's description (``GetModel``), or None.
    - ``embeddings``: the Embed RPC's engine of one loaded version (an
      ``attnserve_server.embeddings.EmbeddingsEngine``, which loads its graph lazily), or None when
      the version has no embeddings graph or the task offers none.
    - ``explain``: the Explain RPC's engine of one loaded version (an
      ``attnserve_server.explain.ExplainEngine``, which loads its graph lazily), or None.
    """

    section: type[TaskSection]
    load: Callable[[LoadContext], Engine]
    handler: Callable[[HandlerContext], H]
    signature: Callable[[Target], Signature]
    infer: Callable[[H, Target, InferRequest, bool], AsyncIterator[InferResponse]]
    describe: Callable[[Model], Any] = lambda model: None
    embeddings: Callable[[LoadContext, Engine], Closeable | None] = lambda ctx, engine: None
    explain: Callable[[LoadContext, Engine], Closeable | None] = lambda ctx, engine: None

    @property
    def name(self) -> str:
        return self.section.TASK
