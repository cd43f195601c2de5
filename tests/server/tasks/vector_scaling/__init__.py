"""A test-only third task, ``vector-scaling``: proof that a task is one package plus one table row.

Its models are ONNX graphs that take a float32 ``(batch, width)`` tensor and return another of
the same shape. The server gets this row through ``--task-plugin vector_scaling:TASK``; nothing
in the server is edited for it. It serves over the v2 tensor API and is described by ModelService.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import numpy.typing as npt

from attnserve_server.errors import InvalidArgumentError, ModelLoadError
from attnserve_server.loaded import BatchStats, ModelLookup, Target
from attnserve_server.loading import open_session
from attnserve_server.model_format.metadata import TaskSection
from attnserve_server.runtime import RuntimeSession
from attnserve_server.statistics import Statistics
from attnserve_server.task import HandlerContext, LoadContext, Task
from attnserve_server.tensor_api import (
    FINAL_RESPONSE,
    InferRequest,
    InferResponse,
    Signature,
    TensorSpec,
    check_outputs,
    inputs_by_name,
)

TASK_NAME = "vector-scaling"


class VectorScalingMetadata(TaskSection):
    """The ``vector_scaling`` section of metadata.json."""

    TASK: ClassVar[str] = TASK_NAME

    input_name: str
    output_name: str
    width: int


@dataclass
class VectorEngine:
    session: RuntimeSession
    meta: VectorScalingMetadata

    def run(self, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        (y,) = self.session.run([self.meta.output_name], {self.meta.input_name: x})
        return y

    def describe(self) -> str:
        return f"width {self.meta.width}"

    def batch_stats(self) -> BatchStats:
        return BatchStats()

    def close(self) -> None:
        pass


def load(ctx: LoadContext) -> VectorEngine:
    meta = ctx.metadata.section
    assert isinstance(meta, VectorScalingMetadata)
    session = open_session(ctx, ctx.metadata.model_file)
    if meta.input_name not in session.input_names:
        raise ModelLoadError(ctx.model, f"model.onnx has no input {meta.input_name!r}")
    return VectorEngine(session, meta)


class VectorHandler:
    def __init__(self, models: ModelLookup, statistics: Statistics) -> None:
        self.models = models
        self.statistics = statistics

    def scale(self, target: Target, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        engine = target.version.engine_as(VectorEngine)
        started = time.perf_counter_ns()
        if x.ndim != 2 or x.shape[1] != engine.meta.width:
            self.statistics.record_failure(target.name, target.version.version, total_ns=0)
            raise InvalidArgumentError(f"x must have shape [batch, {engine.meta.width}], got {list(x.shape)}")
        y = engine.run(np.ascontiguousarray(x, dtype=np.float32))
        elapsed = time.perf_counter_ns() - started
        self.statistics.record_success(
            target.name, target.version.version, total_ns=elapsed, queue_ns=0, compute_ns=elapsed, batch=len(x)
        )
        target.model.counters.requests += 1
        return y


def make_handler(ctx: HandlerContext) -> VectorHandler:
    return VectorHandler(ctx.models, ctx.statistics)


def signature(target: Target) -> Signature:
    meta = target.version.section_as(VectorScalingMetadata)
    return Signature(
        inputs=(TensorSpec(meta.input_name, "FP32", (-1, meta.width)),),
        outputs=(TensorSpec(meta.output_name, "FP32", (-1, meta.width)),),
        max_batch_size=64,
    )


async def infer(
    handler: VectorHandler, target: Target, request: InferRequest, chunked: bool
) -> AsyncIterator[InferResponse]:
    sig = signature(target)
    check_outputs(request.outputs, sig)
    meta = target.version.section_as(VectorScalingMetadata)
    tensor = inputs_by_name(request.inputs, sig).get(meta.input_name)
    if tensor is None:
        raise InvalidArgumentError(f"missing input {meta.input_name!r}")
    y = handler.scale(target, tensor.array)
    response = InferResponse(target.name, target.version.version, request.id, parameters={FINAL_RESPONSE: True})
    response.outputs.append((meta.output_name, y))
    yield response


@dataclass(frozen=True)
class VectorScalingInfo:
    width: int


TASK: Task[VectorHandler] = Task(
    section=VectorScalingMetadata,
    load=load,
    handler=make_handler,
    signature=signature,
    infer=infer,
    describe=lambda model: VectorScalingInfo(model.version().section_as(VectorScalingMetadata).width),
)
