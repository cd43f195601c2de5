"""attnserve.v1.EmbeddingService: converts Embed requests and results; the handler does the rest."""

from __future__ import annotations

from typing import Any

import grpc

from attnserve_client.pb import embeddings_pb2, embeddings_pb2_grpc
from attnserve_server.api.status import grpc_errors
from attnserve_server.embeddings.handler import EmbeddingsHandler, EmbedRequest, EmbedResult
from attnserve_server.errors import InvalidArgumentError
from attnserve_server.handlers import deadline_from_timeout
from attnserve_server.model_format.embeddings import Pooling

Context = grpc.aio.ServicerContext[Any, Any]

POOLING_FROM_PROTO: dict[int, Pooling | None] = {
    embeddings_pb2.POOLING_UNSPECIFIED: None,
    embeddings_pb2.POOLING_MEAN: "mean",
    embeddings_pb2.POOLING_LAST: "last",
    embeddings_pb2.POOLING_CLS: "cls",
    embeddings_pb2.POOLING_NONE: "none",
}
POOLING_TO_PROTO = {name: number for number, name in POOLING_FROM_PROTO.items() if name is not None}


def embed_request_from_proto(request: embeddings_pb2.EmbedRequest, deadline: float | None) -> EmbedRequest:
    if request.pooling not in POOLING_FROM_PROTO:
        raise InvalidArgumentError(f"unknown pooling enum value {request.pooling}; use MEAN, LAST, CLS or NONE")
    return EmbedRequest(
        model=request.model,
        texts=tuple(request.texts),
        images=tuple(request.images),
        pooling=POOLING_FROM_PROTO[request.pooling],
        layer=request.layer if request.HasField("layer") else None,
        normalize=request.normalize,
        model_version=request.model_version,
        deadline=deadline,
    )


def embed_response(result: EmbedResult) -> embeddings_pb2.EmbedResponse:
    response = embeddings_pb2.EmbedResponse(
        model=result.model,
        model_version=result.model_version,
        pooling=POOLING_TO_PROTO[result.pooling],  # type: ignore[arg-type]  # an enum value
        layer=result.layer,
        dim=result.dim,
        token_wise=result.token_wise,
    )
    for item in result.embeddings:
        entry = response.embeddings.add()
        entry.vector.extend(item.vector.tolist())
        if item.tokens is not None:
            texts = item.token_texts or ("",) * len(item.tokens)
            for text, vector in zip(texts, item.tokens, strict=True):
                entry.tokens.add(text=text, vector=vector.tolist())
    return response


class EmbeddingServicer(embeddings_pb2_grpc.EmbeddingServiceServicer):
    """Embed."""

    def __init__(self, handler: EmbeddingsHandler) -> None:
        self._handler = handler

    @grpc_errors
    async def Embed(  # noqa: N802 (gRPC method name)
        self, request: embeddings_pb2.EmbedRequest, context: Context
    ) -> embeddings_pb2.EmbedResponse:
        domain = embed_request_from_proto(request, deadline_from_timeout(context.time_remaining()))
        return embed_response(await self._handler.embed(domain))
