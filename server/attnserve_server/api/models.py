"""attnserve.v1.ModelService."""

from __future__ import annotations

from typing import Any

import grpc

from attnserve_client.pb import models_pb2, models_pb2_grpc
from attnserve_server.api import converters
from attnserve_server.api.status import grpc_errors
from attnserve_server.handlers import ModelHandler

Context = grpc.aio.ServicerContext[Any, Any]


class ModelServicer(models_pb2_grpc.ModelServiceServicer):
    """ListModels and GetModel."""

    def __init__(self, handler: ModelHandler) -> None:
        self._handler = handler

    @grpc_errors
    async def ListModels(  # noqa: N802 (gRPC method name)
        self, request: models_pb2.ListModelsRequest, context: Context
    ) -> models_pb2.ListModelsResponse:
        return models_pb2.ListModelsResponse(
            models=[converters.model_info(d) for d in self._handler.list_models()],
            unavailable=[converters.model_status(e) for e in self._handler.unavailable()],
        )

    @grpc_errors
    async def GetModel(  # noqa: N802 (gRPC method name)
        self, request: models_pb2.GetModelRequest, context: Context
    ) -> models_pb2.ModelInfo:
        return converters.model_info(self._handler.get_model(request.name))
