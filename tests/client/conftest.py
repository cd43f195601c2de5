"""Fixtures of the client tests.

``scripted_server`` is a plain grpc server on a free port that speaks the attnserve.v1
contract and answers what a test scripts (a status code, a stream that breaks after one
chunk). It covers the client behaviour that a healthy real server never shows: retries after
UNAVAILABLE, RESOURCE_EXHAUSTED, a failure mid-stream. Everything else runs against the real
server (``server_address`` from tests/conftest.py).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from attnserve_client.pb import image_classification_pb2, models_pb2, text_generation_pb2


@dataclass
class Script:
    """What the scripted server answers, and what it received."""

    # Status codes to fail the next calls with, one per call, before answering normally.
    failures: list[grpc.StatusCode] = field(default_factory=list)
    # Make GenerateStream fail with this code after its first chunk.
    fail_stream_after_first_chunk: grpc.StatusCode | None = None
    models: list[models_pb2.ModelInfo] = field(default_factory=list)
    # Seconds to wait before answering, to run into the client's deadline.
    delay: float = 0.0
    calls: int = 0
    requests: list[text_generation_pb2.GenerateRequest] = field(default_factory=list)
    # Classify answers this many classifications whatever the request holds (None: one per image).
    classifications: int | None = None
    classify_requests: list[image_classification_pb2.ClassifyRequest] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def begin(self, context: grpc.ServicerContext) -> None:
        with self.lock:
            self.calls += 1
            code = self.failures.pop(0) if self.failures else None
        if code is not None:
            context.abort(code, f"scripted {code.name}")
        if self.delay:
            time.sleep(self.delay)


def text_model(name: str) -> models_pb2.ModelInfo:
    return models_pb2.ModelInfo(
        name=name,
        task="text-generation",
        versions=["1"],
        default_version="1",
        text_generation=models_pb2.TextGenerationInfo(context_length=64, vocab_size=300, max_new_tokens_limit=64),
    )


def _handlers(script: Script) -> list[grpc.GenericRpcHandler]:
    tg = text_generation_pb2

    def generate(request: tg.GenerateRequest, context: grpc.ServicerContext) -> tg.GenerateResponse:
        script.requests.append(request)
        script.begin(context)
        return tg.GenerateResponse(
            model=request.model,
            model_version="1",
            text="hello",
            token_ids=[1, 2],
            logprobs=[-0.5, -0.25] if request.parameters.logprobs else [],
            finish_reason=tg.FINISH_REASON_LENGTH,
            usage=tg.Usage(prompt_tokens=3, completion_tokens=2),
            seed=request.parameters.seed if request.parameters.HasField("seed") else 7,
        )

    def generate_stream(
        request: tg.GenerateRequest, context: grpc.ServicerContext
    ) -> Iterator[tg.GenerateStreamResponse]:
        script.requests.append(request)
        script.begin(context)
        yield tg.GenerateStreamResponse(text="hel", token_ids=[1], model=request.model, model_version="1", seed=7)
        if script.fail_stream_after_first_chunk is not None:
            context.abort(script.fail_stream_after_first_chunk, "scripted failure mid-stream")
        yield tg.GenerateStreamResponse(
            text="lo",
            token_ids=[2],
            finish_reason=tg.FINISH_REASON_STOP,
            usage=tg.Usage(prompt_tokens=3, completion_tokens=2),
            model=request.model,
            model_version="1",
        )

    def list_models(
        request: models_pb2.ListModelsRequest, context: grpc.ServicerContext
    ) -> models_pb2.ListModelsResponse:
        script.begin(context)
        return models_pb2.ListModelsResponse(models=script.models)

    def get_model(request: models_pb2.GetModelRequest, context: grpc.ServicerContext) -> models_pb2.ModelInfo:
        script.begin(context)
        for model in script.models:
            if model.name == request.name:
                return model
        context.abort(grpc.StatusCode.NOT_FOUND, f"no model named {request.name!r}")
        raise AssertionError("unreachable")

    ic = image_classification_pb2

    def classify(request: ic.ClassifyRequest, context: grpc.ServicerContext) -> ic.ClassifyResponse:
        script.classify_requests.append(request)
        script.begin(context)
        count = len(request.images) if script.classifications is None else script.classifications
        one = ic.Classification(predictions=[ic.Prediction(label="seven", index=7, score=0.75)])
        return ic.ClassifyResponse(model=request.model, model_version="1", classifications=[one] * count)

    def unary(fn: Any, req: Any, resp: Any) -> grpc.RpcMethodHandler:
        return grpc.unary_unary_rpc_method_handler(
            fn, request_deserializer=req.FromString, response_serializer=resp.SerializeToString
        )

    return [
        grpc.method_handlers_generic_handler(
            "attnserve.v1.TextGenerationService",
            {
                "Generate": unary(generate, tg.GenerateRequest, tg.GenerateResponse),
                "GenerateStream": grpc.unary_stream_rpc_method_handler(
                    generate_stream,
                    request_deserializer=tg.GenerateRequest.FromString,
                    response_serializer=tg.GenerateStreamResponse.SerializeToString,
                ),
            },
        ),
        grpc.method_handlers_generic_handler(
            "attnserve.v1.ImageClassificationService",
            {"Classify": unary(classify, ic.ClassifyRequest, ic.ClassifyResponse)},
        ),
        grpc.method_handlers_generic_handler(
            "attnserve.v1.ModelService",
            {
                "ListModels": unary(list_models, models_pb2.ListModelsRequest, models_pb2.ListModelsResponse),
                "GetModel": unary(get_model, models_pb2.GetModelRequest, models_pb2.ModelInfo),
            },
        ),
    ]


@dataclass
class ScriptedServer:
    address: str
    script: Script
    health: health.HealthServicer


@pytest.fixture
def scripted_server() -> Iterator[ScriptedServer]:
    script = Script(models=[text_model("only-gpt")])
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers(_handlers(script))
    health_servicer = health.HealthServicer()
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_servicer.set("only-gpt", health_pb2.HealthCheckResponse.NOT_SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield ScriptedServer(f"127.0.0.1:{port}", script, health_servicer)
    finally:
        server.stop(grace=None)


@pytest.fixture
def dead_address() -> str:
    """The address of a port that nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"127.0.0.1:{port}"
