"""attnserve.v1.TextGenerationService."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import grpc

from attnserve_client.pb import text_generation_pb2, text_generation_pb2_grpc
from attnserve_server.api import converters
from attnserve_server.errors import grpc_errors
from attnserve_server.handlers import GenerationStream, TextGenerationHandler, deadline_from_timeout
from attnserve_server.kserve.statistics import Statistics

Context = grpc.aio.ServicerContext[Any, Any]


class TextGenerationServicer(text_generation_pb2_grpc.TextGenerationServiceServicer):
    """Generate and GenerateStream."""

    def __init__(self, handler: TextGenerationHandler, statistics: Statistics | None = None) -> None:
        self._handler = handler
        # The per-version inference statistics that the v2 API's ModelStatistics reports; the v2
        # API records its own generations, so they are recorded here and not in the shared handler.
        self._statistics = statistics if statistics is not None else Statistics()

    @grpc_errors
    async def Generate(  # noqa: N802 (gRPC method name)
        self, request: text_generation_pb2.GenerateRequest, context: Context
    ) -> text_generation_pb2.GenerateResponse:
        domain = converters.generation_request_from_proto(request, deadline_from_timeout(context.time_remaining()))
        stream = await self._handler.start(domain)
        started = time.perf_counter_ns()
        try:
            result = await self._handler.collect(stream)
        except BaseException:
            self._failed(stream, started)
            raise
        self._succeeded(stream, started)
        return converters.generate_response(result)

    @grpc_errors
    async def GenerateStream(  # noqa: N802 (gRPC method name)
        self, request: text_generation_pb2.GenerateRequest, context: Context
    ) -> AsyncIterator[text_generation_pb2.GenerateStreamResponse]:
        domain = converters.generation_request_from_proto(request, deadline_from_timeout(context.time_remaining()))
        stream = await self._handler.start(domain)
        started = time.perf_counter_ns()
        first = True
        try:
            async for chunk in stream.chunks:
                yield converters.stream_chunk(stream, chunk, first=first)
                first = False
        except BaseException:
            self._failed(stream, started)
            raise
        self._succeeded(stream, started)

    def _failed(self, stream: GenerationStream, started: int) -> None:
        self._statistics.record_failure(stream.model, stream.model_version, total_ns=time.perf_counter_ns() - started)

    def _succeeded(self, stream: GenerationStream, started: int) -> None:
        self._statistics.record_success(
            stream.model,
            stream.model_version,
            total_ns=time.perf_counter_ns() - started,
            queue_ns=stream.timings.queue_ns,
            compute_ns=stream.timings.compute_ns,
            batch=1,
        )
