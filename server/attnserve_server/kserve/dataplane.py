"""The KServe v2 data plane: a tensor request resolved once, then run by its task's row.

Nothing here knows a task: the row of the model's task gives its signature and turns the request
into a call of the task's handler, which validates it and records its statistics. Nothing here
knows protobuf either; :mod:`attnserve_server.kserve.convert` does the wire format.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping

from attnserve_server.embeddings.handler import EmbeddingsHandler
from attnserve_server.kserve.embeddings import infer_embeddings, wants_embeddings
from attnserve_server.loaded import ModelLookup, Target, resolve
from attnserve_server.statistics import Statistics
from attnserve_server.task_table import TaskTable
from attnserve_server.tensor_api import InferRequest, InferResponse, Signature


class DataPlane:
    """ModelInfer and ModelStreamInfer over the task handlers."""

    def __init__(
        self,
        models: ModelLookup,
        tasks: TaskTable,
        handlers: Mapping[str, object],
        statistics: Statistics,
        embeddings: EmbeddingsHandler | None = None,
    ) -> None:
        self._models = models
        # Every task's: a request that asks for the ``embeddings`` output goes here (kserve/embeddings.py).
        self._embeddings = embeddings or EmbeddingsHandler(models, statistics=statistics)
        self._tasks = tasks
        self._handlers = handlers
        self.statistics = statistics

    def resolve(self, name: str, version: str) -> tuple[Target, Signature]:
        """The model version a request means, and its v2 signature."""
        target = resolve(self._models, name, version)
        return target, self._tasks[target.model.task].signature(target)

    async def infer(self, request: InferRequest) -> InferResponse:
        """One request, one response (text generations are returned whole)."""
        final: InferResponse | None = None
        async for response in self.stream(request, chunked=False):
            final = response
        if final is None:
            raise RuntimeError(f"task of model {request.model!r} answered a request with no response")
        return final

    async def stream(self, request: InferRequest, *, chunked: bool = True) -> AsyncIterator[InferResponse]:
        """The responses of one request: one for most tasks, one per chunk of a streamed generation.

        The last carries ``triton_final_response``. With ``triton_enable_empty_final_response``
        a text stream ends with an extra response that has no outputs and only that flag.
        """
        target = resolve(self._models, request.model, request.version)
        if wants_embeddings(request):
            yield await infer_embeddings(self._embeddings, target, request)
            return
        task = self._tasks[target.model.task]
        async for response in task.infer(self._handlers[task.name], target, request, chunked):
            yield response
