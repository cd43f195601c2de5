"""Embeddings over the KServe v2 API: the output tensor ``embeddings``, requested by name.

Any model whose version has an embeddings graph offers it, besides its task's own outputs:

- inputs: ``text_input`` (BYTES, one text per element, shape ``[n]`` or ``[n, 1]``) for a text
  model, ``image`` (BYTES, one encoded image per element) for an image model;
- parameters: ``pooling`` (``mean``, ``last``, ``cls`` or ``none``), ``layer`` (int, negative
  from the end) and ``normalize`` (bool), as in EmbeddingService.Embed;
- output ``embeddings``: FP32 ``[n, dim]``; with ``pooling: none``, ``[n, tokens, dim]``, which
  needs every input to have the same number of tokens (always so for images).

ModelMetadata and ModelConfig do not list it: it takes other inputs than the model's own outputs
do, and a generic client that asks for every listed output at once would otherwise break.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from attnserve_server.embeddings.handler import EmbeddingsHandler, EmbedRequest
from attnserve_server.errors import InvalidArgumentError, shown, shown_shape
from attnserve_server.loaded import Target
from attnserve_server.model_format.embeddings import POOLINGS, Pooling
from attnserve_server.tensor_api import (
    FINAL_RESPONSE,
    InferRequest,
    InferResponse,
    ParameterValue,
    int_parameter,
)

EMBEDDINGS_OUTPUT = "embeddings"
TEXT_INPUT = "text_input"
IMAGE_INPUT = "image"


def wants_embeddings(request: InferRequest) -> bool:
    """Whether the request asks for the ``embeddings`` output (then it must ask for nothing else)."""
    names = [output.name for output in request.outputs]
    if EMBEDDINGS_OUTPUT not in names:
        return False
    if len(names) > 1:
        raise InvalidArgumentError(f"request the {EMBEDDINGS_OUTPUT!r} output alone, not with other outputs")
    return True


def _pooling(parameters: dict[str, ParameterValue]) -> Pooling | None:
    value = parameters.get("pooling")
    if value is None:
        return None
    if value not in POOLINGS:
        raise InvalidArgumentError(f"parameter 'pooling' must be one of {', '.join(POOLINGS)}, got {shown(value)}")
    return value  # one of POOLINGS: checked above


def _normalize(parameters: dict[str, ParameterValue]) -> bool:
    value = parameters.get("normalize", False)
    if not isinstance(value, bool):
        raise InvalidArgumentError(f"parameter 'normalize' must be a bool, got {shown(value)}")
    return value


def embed_request(request: InferRequest, target: Target) -> EmbedRequest:
    """The one BYTES input as texts or encoded images (the handler checks that the model takes them)."""
    if len(request.inputs) != 1 or request.inputs[0].name not in (TEXT_INPUT, IMAGE_INPUT):
        raise InvalidArgumentError(
            f"the {EMBEDDINGS_OUTPUT!r} output takes exactly one input: {TEXT_INPUT!r} (BYTES texts) or "
            f"{IMAGE_INPUT!r} (BYTES encoded images)"
        )
    tensor = request.inputs[0]
    if tensor.datatype != "BYTES":
        raise InvalidArgumentError(f"input {tensor.name!r} must be BYTES, got {shown(tensor.datatype)}")
    if tensor.array.ndim not in (1, 2) or (tensor.array.ndim == 2 and tensor.array.shape[1] != 1):
        raise InvalidArgumentError(
            f"input {tensor.name!r} must have shape [batch] or [batch, 1], got {shown_shape(tensor.array.shape)}"
        )
    values: list[bytes] = tensor.array.reshape(-1).tolist()
    texts: tuple[str, ...] = ()
    if tensor.name == TEXT_INPUT:
        try:
            texts = tuple(value.decode("utf-8") for value in values)
        except UnicodeDecodeError as exc:
            raise InvalidArgumentError(f"input {TEXT_INPUT!r} is not valid UTF-8: {exc}") from None
    return EmbedRequest(
        model=target.name,
        texts=texts,
        images=tuple(values) if tensor.name == IMAGE_INPUT else (),
        pooling=_pooling(request.parameters),
        layer=int_parameter(request.parameters, "layer"),
        normalize=_normalize(request.parameters),
        model_version=target.version.version,
        deadline=request.deadline,
    )


async def infer_embeddings(handler: EmbeddingsHandler, target: Target, request: InferRequest) -> InferResponse:
    """The ``embeddings`` tensor of one request."""
    result = await handler.embed(embed_request(request, target))
    array: npt.NDArray[Any]
    if result.token_wise:
        counts = {len(e.tokens) for e in result.embeddings if e.tokens is not None}
        if len(counts) != 1:
            raise InvalidArgumentError(
                f"pooling none returns a [batch, tokens, dim] tensor, which needs inputs of one token count (got "
                f"{', '.join(map(str, sorted(counts)))}); send one text per request, or use EmbeddingService.Embed"
            )
        array = np.stack([e.tokens for e in result.embeddings if e.tokens is not None])  # (n, T, D)
    else:
        array = np.stack([e.vector for e in result.embeddings])  # (n, D)
    response = InferResponse(target.name, target.version.version, request.id, parameters={FINAL_RESPONSE: True})
    response.outputs.append((EMBEDDINGS_OUTPUT, array.astype(np.float32)))
    return response
