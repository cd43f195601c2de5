"""attnserve.v1.ExplainService: converts Explain requests and results; the handler does the rest."""

from __future__ import annotations

from typing import Any

import grpc
import numpy as np

from attnserve_client.pb import explain_pb2, explain_pb2_grpc
from attnserve_server.api.status import grpc_errors
from attnserve_server.explain.handler import ExplainHandler, ExplainRequest, ExplainResult
from attnserve_server.explain.maps import FloatArray
from attnserve_server.explain.run import SwinMaps, Text2TextMaps, TextMaps, VitMaps
from attnserve_server.handlers import deadline_from_timeout

Context = grpc.aio.ServicerContext[Any, Any]


def explain_request_from_proto(request: explain_pb2.ExplainRequest, deadline: float | None) -> ExplainRequest:
    kind = request.WhichOneof("input")
    return ExplainRequest(
        model=request.model,
        text=request.text if kind == "text" else None,
        image=request.image if kind == "image" else None,
        layers=tuple(request.layers),
        heads=tuple(request.heads),
        stage=request.stage if request.HasField("stage") else None,
        query_row=request.query_row if request.HasField("query_row") else None,
        query_col=request.query_col if request.HasField("query_col") else None,
        max_new_tokens=request.max_new_tokens,
        model_version=request.model_version,
        deadline=deadline,
    )


def _tensor(out: explain_pb2.Tensor, array: FloatArray) -> None:
    out.shape.extend(array.shape)
    out.values.extend(np.ascontiguousarray(array, dtype=np.float32).ravel().tolist())


def explain_response(result: ExplainResult) -> explain_pb2.ExplainResponse:
    response = explain_pb2.ExplainResponse(
        model=result.model, model_version=result.model_version, layers=result.layers, heads=result.heads
    )
    maps = result.maps
    if isinstance(maps, TextMaps):
        response.text.tokens.extend(maps.tokens)
        _tensor(response.text.attention, maps.attention)
    elif isinstance(maps, Text2TextMaps):
        out = response.text2text
        out.source_tokens.extend(maps.source_tokens)
        out.target_tokens.extend(maps.target_tokens)
        out.generated_tokens.extend(maps.generated_tokens)
        out.output_text = maps.output_text
        _tensor(out.encoder_attention, maps.encoder)
        _tensor(out.decoder_attention, maps.decoder)
        _tensor(out.cross_attention, maps.cross)
    elif isinstance(maps, VitMaps):
        vit = response.vit
        vit.grid_height, vit.grid_width = maps.grid
        vit.patch_size = maps.patch_size
        _tensor(vit.class_attention, maps.class_attention)
        _tensor(vit.rollout, maps.rollout)
    else:
        assert isinstance(maps, SwinMaps)
        swin = response.swin
        swin.stage = maps.stage
        swin.query_row, swin.query_col = maps.query
        swin.grid_height, swin.grid_width = maps.grid
        swin.cell_size = maps.cell_size
        _tensor(swin.attention, maps.attention)
        for block, window in maps.windows:
            swin.windows.add(
                block=block,
                shift=window.shift,
                window_size=window.window_size,
                window_row=window.window_row,
                window_col=window.window_col,
                patches=window.patches,
            )
    return response


class ExplainServicer(explain_pb2_grpc.ExplainServiceServicer):
    """Explain."""

    def __init__(self, handler: ExplainHandler) -> None:
        self._handler = handler

    @grpc_errors
    async def Explain(  # noqa: N802 (gRPC method name)
        self, request: explain_pb2.ExplainRequest, context: Context
    ) -> explain_pb2.ExplainResponse:
        domain = explain_request_from_proto(request, deadline_from_timeout(context.time_remaining()))
        return explain_response(await self._handler.explain(domain))
