"""inference.GRPCInferenceService: the KServe v2 / Open Inference Protocol, as tritonclient speaks it.

RPCs not implemented here (shared memory, trace and log settings) fall through to the generated
base class, which answers UNIMPLEMENTED.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc

from attnserve_server import __version__
from attnserve_server.api.status import MalformedRequest, grpc_errors, stream_error_text
from attnserve_server.errors import InvalidArgumentError, shown
from attnserve_server.handlers import deadline_from_timeout
from attnserve_server.kserve import convert
from attnserve_server.kserve.dataplane import DataPlane
from attnserve_server.kserve.pb import grpc_service_pb2 as pb
from attnserve_server.kserve.pb import grpc_service_pb2_grpc as pb_grpc
from attnserve_server.kserve.pb import model_config_pb2 as config_pb
from attnserve_server.model_control import ModelControl
from attnserve_server.model_format.config import VersionPolicy
from attnserve_server.tensor_api import BACKEND, PLATFORM

Context = grpc.aio.ServicerContext[Any, Any]
logger = logging.getLogger(__name__)

SERVER_NAME = "attnserve"
EXTENSIONS = ("classification", "model_configuration", "model_repository", "parameters", "statistics")
_CONFIG_TYPES = {
    "BOOL": config_pb.TYPE_BOOL,
    "UINT8": config_pb.TYPE_UINT8,
    "INT32": config_pb.TYPE_INT32,
    "INT64": config_pb.TYPE_INT64,
    "FP16": config_pb.TYPE_FP16,
    "FP32": config_pb.TYPE_FP32,
    "BYTES": config_pb.TYPE_STRING,
}


def _duration(count: int, ns: int) -> pb.StatisticDuration:
    return pb.StatisticDuration(count=count, ns=ns)


def _version_policy(policy: VersionPolicy) -> config_pb.ModelVersionPolicy:
    out = config_pb.ModelVersionPolicy()
    if policy.all is not None:
        out.all.SetInParent()
    elif policy.specific is not None:
        out.specific.versions.extend(policy.specific.versions)
    else:
        out.latest.num_versions = policy.latest.num_versions if policy.latest is not None else 1
    return out


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """Health, metadata, inference, statistics and the model repository extension."""

    def __init__(self, dataplane: DataPlane, control: ModelControl) -> None:
        self._dataplane = dataplane
        self._control = control

    @grpc_errors
    async def ServerLive(self, request: pb.ServerLiveRequest, context: Context) -> pb.ServerLiveResponse:  # noqa: N802
        return pb.ServerLiveResponse(live=True)

    @grpc_errors
    async def ServerReady(  # noqa: N802 (gRPC method name)
        self, request: pb.ServerReadyRequest, context: Context
    ) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self._control.server_ready())

    @grpc_errors
    async def ModelReady(self, request: pb.ModelReadyRequest, context: Context) -> pb.ModelReadyResponse:  # noqa: N802
        return pb.ModelReadyResponse(ready=self._control.model_ready(request.name, request.version))

    @grpc_errors
    async def ServerMetadata(  # noqa: N802 (gRPC method name)
        self, request: pb.ServerMetadataRequest, context: Context
    ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name=SERVER_NAME, version=__version__, extensions=EXTENSIONS)

    @grpc_errors
    async def ModelMetadata(  # noqa: N802 (gRPC method name)
        self, request: pb.ModelMetadataRequest, context: Context
    ) -> pb.ModelMetadataResponse:
        target, sig = self._dataplane.resolve(request.name, request.version)
        model = target.model
        tensor = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=model.name,
            versions=list(model.versions),
            platform=PLATFORM,
            inputs=[tensor(name=t.name, datatype=t.datatype, shape=t.shape) for t in sig.inputs],
            outputs=[tensor(name=t.name, datatype=t.datatype, shape=t.shape) for t in sig.outputs],
        )

    @grpc_errors
    async def ModelConfig(self, request: pb.ModelConfigRequest, context: Context) -> pb.ModelConfigResponse:  # noqa: N802
        target, sig = self._dataplane.resolve(request.name, request.version)
        model, version = target.model, target.version
        batched = sig.max_batch_size > 0
        config = config_pb.ModelConfig(
            name=model.name,
            platform=PLATFORM,
            backend=BACKEND,
            max_batch_size=sig.max_batch_size,
            default_model_filename=version.metadata.model_file,
            version_policy=_version_policy(model.config.version_policy),
        )
        config.parameters["task"].string_value = version.metadata.task
        for spec in sig.inputs:
            dims = spec.shape[1:] if batched else spec.shape
            entry = config.input.add(
                name=spec.name, data_type=_CONFIG_TYPES[spec.datatype], dims=dims or (1,), optional=spec.optional
            )
            if not dims:  # [batch] alone: Triton writes dims [1] reshaped to []
                entry.reshape.SetInParent()
        for spec in sig.outputs:
            config.output.add(
                name=spec.name, data_type=_CONFIG_TYPES[spec.datatype], dims=spec.shape[1:] if batched else spec.shape
            )
        if sig.decoupled:
            config.model_transaction_policy.decoupled = True
        return pb.ModelConfigResponse(config=config)

    @grpc_errors
    async def ModelInfer(self, request: pb.ModelInferRequest, context: Context) -> pb.ModelInferResponse:  # noqa: N802
        domain, raw = convert.infer_request(request, deadline_from_timeout(context.time_remaining()))
        response = await self._dataplane.infer(domain)
        return convert.infer_response(response, raw=raw)

    @grpc_errors
    async def ModelStreamInfer(  # noqa: N802 (gRPC method name)
        self, request_iterator: AsyncIterator[pb.ModelInferRequest | MalformedRequest], context: Context
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """Requests on one stream run concurrently; a failed one gets an error_message and the stream goes on."""
        queue: asyncio.Queue[pb.ModelStreamInferResponse | None] = asyncio.Queue()
        tasks: set[asyncio.Task[None]] = set()

        async def run(request: pb.ModelInferRequest | MalformedRequest) -> None:
            request_id = ""
            try:
                if isinstance(request, MalformedRequest):
                    raise request.error()
                request_id = request.id
                domain, raw = convert.infer_request(request, deadline_from_timeout(context.time_remaining()))
                async for response in self._dataplane.stream(domain):
                    await queue.put(
                        pb.ModelStreamInferResponse(infer_response=convert.infer_response(response, raw=raw))
                    )
            except Exception as exc:
                await queue.put(self._stream_error(request_id, exc))

        async def read() -> None:
            try:
                async for request in request_iterator:
                    task = asyncio.create_task(run(request))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                while tasks:
                    await asyncio.gather(*list(tasks))
            finally:
                queue.put_nowait(None)  # end the response loop even if the request stream broke

        reader = asyncio.create_task(read())
        try:
            while (item := await queue.get()) is not None:
                yield item
            await reader  # re-raise a failure of the request stream itself
        finally:
            reader.cancel()
            for task in list(tasks):
                task.cancel()

    @staticmethod
    def _stream_error(request_id: str, exc: Exception) -> pb.ModelStreamInferResponse:
        return pb.ModelStreamInferResponse(
            error_message=stream_error_text(exc), infer_response=pb.ModelInferResponse(id=request_id)
        )

    @grpc_errors
    async def ModelStatistics(  # noqa: N802 (gRPC method name)
        self, request: pb.ModelStatisticsRequest, context: Context
    ) -> pb.ModelStatisticsResponse:
        if request.name:
            target, _ = self._dataplane.resolve(request.name, request.version)
            model = target.model
            selected = [
                (model.name, v) for v in ([target.version.version] if request.version else list(model.versions))
            ]
        else:
            selected = [(m.name, v) for m in self._control.repository.models() for v in m.versions]
        response = pb.ModelStatisticsResponse()
        for name, version_name in selected:
            stats = self._dataplane.statistics.of(name, version_name)
            response.model_stats.add(
                name=name,
                version=version_name,
                last_inference=stats.last_inference_ms,
                inference_count=stats.inference_count,
                execution_count=stats.execution_count,
                inference_stats=pb.InferStatistics(
                    success=_duration(stats.success.count, stats.success.ns),
                    fail=_duration(stats.fail.count, stats.fail.ns),
                    queue=_duration(stats.queue.count, stats.queue.ns),
                    compute_infer=_duration(stats.compute_infer.count, stats.compute_infer.ns),
                ),
            )
        return response

    @grpc_errors
    async def RepositoryIndex(  # noqa: N802 (gRPC method name)
        self, request: pb.RepositoryIndexRequest, context: Context
    ) -> pb.RepositoryIndexResponse:
        entry = pb.RepositoryIndexResponse.ModelIndex
        return pb.RepositoryIndexResponse(
            models=[
                entry(name=e.name, version=e.version, state=e.state, reason=e.reason)
                for e in self._control.index()
                if not request.ready or e.state == "READY"
            ]
        )

    @grpc_errors
    async def RepositoryModelLoad(  # noqa: N802 (gRPC method name)
        self, request: pb.RepositoryModelLoadRequest, context: Context
    ) -> pb.RepositoryModelLoadResponse:
        if request.parameters:
            # Triton loads a model from files or a config sent in these; attnserve only from its
            # repository. Saying OK would tell the client that its override took effect.
            named = ", ".join(shown(key) for key in sorted(request.parameters)[:4])
            raise InvalidArgumentError(
                f"RepositoryModelLoad takes no parameters (got {named}): attnserve loads a model only from "
                "its files in the model repository; 'config' and 'file:' overrides are not supported"
            )
        await self._control.load_from_request(request.model_name)
        return pb.RepositoryModelLoadResponse()

    @grpc_errors
    async def RepositoryModelUnload(  # noqa: N802 (gRPC method name)
        self, request: pb.RepositoryModelUnloadRequest, context: Context
    ) -> pb.RepositoryModelUnloadResponse:
        await self._control.unload_from_request(request.model_name)
        return pb.RepositoryModelUnloadResponse()
