"""attnserve.v1.ImageClassificationService."""

from __future__ import annotations

from typing import Any

import grpc

from attnserve_client.pb import image_classification_pb2, image_classification_pb2_grpc
from attnserve_server.api import converters
from attnserve_server.api.status import grpc_errors
from attnserve_server.handlers import deadline_from_timeout
from attnserve_server.vision.handler import ImageClassificationHandler

Context = grpc.aio.ServicerContext[Any, Any]


class ImageClassificationServicer(image_classification_pb2_grpc.ImageClassificationServiceServicer):
    """Classify."""

    def __init__(self, handler: ImageClassificationHandler) -> None:
        self._handler = handler

    @grpc_errors
    async def Classify(  # noqa: N802 (gRPC method name)
        self, request: image_classification_pb2.ClassifyRequest, context: Context
    ) -> image_classification_pb2.ClassifyResponse:
        domain = converters.classification_request_from_proto(request, deadline_from_timeout(context.time_remaining()))
        result = await self._handler.classify(domain)
        return converters.classify_response(result)
