"""attnserve.v1.TextGenerationService."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from attnserve_client.pb import text_generation_pb2, text_generation_pb2_grpc
from attnserve_server.api import converters
from attnserve_server.api.status import grpc_errors
from attnserve_server.handlers import deadline_from_timeout
from attnserve_server.text.handler import TextGenerationHandler

Context = grpc.aio.ServicerContext[Any, Any]


class TextGenerationServicer(text_generation_pb2_grpc.TextGenerationServiceServicer):
    """Generate and GenerateStream."""

    def __init__(self, handler: TextGenerationHandler) -> None:
        self._handler = handler

    @grpc_errors
    async def Generate(  # noqa: N802 (gRPC method name)
        self, request: text_generation_pb2.GenerateRequest, context: Context
    ) -> text_generation_pb2.GenerateResponse:
        domain = converters.generation_request_from_proto(request, deadline_from_timeout(context.time_remaining()))
        stream = await self._handler.start(domain)
        return converters.generate_response(await self._handler.collect(stream))

    @grpc_errors
    async def GenerateStream(  # noqa: N802 (gRPC method name)
        self, request: text_generation_pb2.GenerateRequest, context: Context
    ) -> AsyncIterator[text_generation_pb2.GenerateStreamResponse]:
        domain = converters.generation_request_from_proto(request, deadline_from_timeout(context.time_remaining()))
        stream = await self._handler.start(domain)
        first = True
        async for chunk in stream.chunks:
            yield converters.stream_chunk(stream, chunk, first=first)
            first = False
