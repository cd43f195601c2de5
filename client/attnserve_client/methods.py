"""The gRPC methods that the client calls: their paths, read from the generated descriptors, and the stub table.

The client builds its callables with ``channel.unary_unary(path, ...)`` rather than through
the generated ``*_grpc`` stubs: one table (:data:`RPCS`) says how to send and read each
method, and :func:`bind` makes the callables from it on a sync or an asyncio channel alike.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import grpc
import grpc.aio
from google.protobuf.descriptor import FileDescriptor

from attnserve_client.health import HEALTH_CHECK_METHOD, ServingStatus, decode_response, encode_request
from attnserve_client.pb import (
    embeddings_pb2,
    explain_pb2,
    image_classification_pb2,
    models_pb2,
    text_generation_pb2,
)

__all__ = [
    "CLASSIFY",
    "CLASSIFY_RPC",
    "EMBED",
    "EMBED_RPC",
    "EXPLAIN",
    "EXPLAIN_RPC",
    "GENERATE",
    "GENERATE_RPC",
    "GENERATE_STREAM",
    "GENERATE_STREAM_RPC",
    "GET_MODEL",
    "GET_MODEL_RPC",
    "HEALTH_CHECK_RPC",
    "LIST_MODELS",
    "LIST_MODELS_RPC",
    "RPCS",
    "Rpc",
    "bind",
]

_Request = TypeVar("_Request")
_Response = TypeVar("_Response")


def _path(file: FileDescriptor, service: str, method: str) -> str:
    descriptor = file.services_by_name[service]
    return f"/{descriptor.full_name}/{descriptor.methods_by_name[method].name}"


GENERATE = _path(text_generation_pb2.DESCRIPTOR, "TextGenerationService", "Generate")
GENERATE_STREAM = _path(text_generation_pb2.DESCRIPTOR, "TextGenerationService", "GenerateStream")
LIST_MODELS = _path(models_pb2.DESCRIPTOR, "ModelService", "ListModels")
GET_MODEL = _path(models_pb2.DESCRIPTOR, "ModelService", "GetModel")
CLASSIFY = _path(image_classification_pb2.DESCRIPTOR, "ImageClassificationService", "Classify")
EMBED = _path(embeddings_pb2.DESCRIPTOR, "EmbeddingService", "Embed")
EXPLAIN = _path(explain_pb2.DESCRIPTOR, "ExplainService", "Explain")


@dataclass(frozen=True, slots=True)
class Rpc(Generic[_Request, _Response]):
    """How to call one method: its path, how its request is written and its response read."""

    path: str
    serialize: Callable[[_Request], bytes]
    deserialize: Callable[[bytes], _Response]
    streaming: bool = False
    """Whether the server answers with a stream of responses (unary-stream) rather than one."""


_tg, _models, _ic = text_generation_pb2, models_pb2, image_classification_pb2

GENERATE_RPC = Rpc(GENERATE, _tg.GenerateRequest.SerializeToString, _tg.GenerateResponse.FromString)
GENERATE_STREAM_RPC = Rpc(
    GENERATE_STREAM, _tg.GenerateRequest.SerializeToString, _tg.GenerateStreamResponse.FromString, streaming=True
)
LIST_MODELS_RPC = Rpc(LIST_MODELS, _models.ListModelsRequest.SerializeToString, _models.ListModelsResponse.FromString)
GET_MODEL_RPC = Rpc(GET_MODEL, _models.GetModelRequest.SerializeToString, _models.ModelInfo.FromString)
CLASSIFY_RPC = Rpc(CLASSIFY, _ic.ClassifyRequest.SerializeToString, _ic.ClassifyResponse.FromString)
EMBED_RPC = Rpc(EMBED, embeddings_pb2.EmbedRequest.SerializeToString, embeddings_pb2.EmbedResponse.FromString)
EXPLAIN_RPC = Rpc(EXPLAIN, explain_pb2.ExplainRequest.SerializeToString, explain_pb2.ExplainResponse.FromString)
# grpc.health.v1 is written by hand (see attnserve_client.health): the request is the service name.
HEALTH_CHECK_RPC: Rpc[str, ServingStatus] = Rpc(HEALTH_CHECK_METHOD, encode_request, decode_response)

RPCS: tuple[Rpc[Any, Any], ...] = (
    GENERATE_RPC,
    GENERATE_STREAM_RPC,
    LIST_MODELS_RPC,
    GET_MODEL_RPC,
    CLASSIFY_RPC,
    EMBED_RPC,
    EXPLAIN_RPC,
    HEALTH_CHECK_RPC,
)
"""Every method the client calls."""


def bind(channel: grpc.Channel | grpc.aio.Channel) -> dict[str, Callable[..., Any]]:
    """The callable of every method in :data:`RPCS` on ``channel``, by path.

    On a ``grpc.Channel`` a call blocks (or, for a stream, returns an iterator); on a
    ``grpc.aio.Channel`` it returns an awaitable (or an async iterator).
    """
    return {
        rpc.path: (channel.unary_stream if rpc.streaming else channel.unary_unary)(
            rpc.path, request_serializer=rpc.serialize, response_deserializer=rpc.deserialize
        )
        for rpc in RPCS
    }
