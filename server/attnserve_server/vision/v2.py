"""Image classifiers as tensors (the KServe v2 API).

A classifier takes exactly one of two inputs: the preprocessed pixel tensor (FP32, the ONNX
graph's own input; FP16 and FP64 are converted) or ``image`` (BYTES, one encoded image per
element, decoded and preprocessed on the server). Its output is the graph's logits, or with the
classification extension the top-k classes as ``"score:index:label"`` strings.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import numpy.typing as npt

from attnserve_server.errors import InvalidArgumentError, shown, shown_shape
from attnserve_server.loaded import Target
from attnserve_server.tensor_api import (
    FINAL_RESPONSE,
    InferRequest,
    InferResponse,
    RequestedOutput,
    Signature,
    TensorSpec,
    check_outputs,
    inputs_by_name,
)
from attnserve_server.vision.handler import ImageClassificationHandler, LogitsRequest
from attnserve_server.vision.metadata import ImageClassificationMetadata

ENCODED_IMAGE = "image"
# Pixel tensors of these datatypes are converted to the graph's FP32.
PIXEL_DATATYPES = ("FP32", "FP16", "FP64")


def encoded_image_input(pixel_input: str) -> str:
    """The name of the encoded-image input: ``image``, unless the graph's own input is called that."""
    return ENCODED_IMAGE if pixel_input != ENCODED_IMAGE else f"{ENCODED_IMAGE}_bytes"


def image_signature(target: Target) -> Signature:
    meta = target.version.section_as(ImageClassificationMetadata)
    return Signature(
        inputs=(
            TensorSpec(meta.input_name, "FP32", (-1, meta.channels, meta.height, meta.width), optional=True),
            TensorSpec(encoded_image_input(meta.input_name), "BYTES", (-1,), optional=True),
        ),
        outputs=(TensorSpec(meta.output_name, "FP32", (-1, meta.num_classes)),),
        max_batch_size=target.model.max_images_per_request,
    )


def classification_entries(logits: npt.NDArray[np.float32], k: int, labels: tuple[str, ...]) -> npt.NDArray[Any]:
    """``(batch, k)`` BYTES ``"score:index:label"``, best first; the score is the output's value, as in Triton."""
    order = np.argsort(-logits, axis=-1, kind="stable")[:, :k]  # (batch, k)
    rows = [
        [f"{float(row[i]):f}:{int(i)}:{labels[int(i)]}".encode() for i in idx]
        for row, idx in zip(logits, order, strict=True)
    ]
    return np.array(rows, dtype=object).reshape(len(rows), k)


def _logits_request(request: InferRequest, target: Target, signature: Signature) -> LogitsRequest:
    """The one input tensor as encoded images or pixels (the handler checks shapes and counts)."""
    meta = target.version.section_as(ImageClassificationMetadata)
    inputs = inputs_by_name(request.inputs, signature)
    encoded_name = encoded_image_input(meta.input_name)
    if len(inputs) != 1:
        raise InvalidArgumentError(
            f"send exactly one of the inputs {meta.input_name!r} (FP32 pixels, shape [batch, {meta.channels}, "
            f"{meta.height}, {meta.width}]) and {encoded_name!r} (BYTES, one encoded image per element); "
            f"got {len(inputs)}"
        )
    (tensor,) = inputs.values()
    common = {"model": target.name, "model_version": target.version.version, "deadline": request.deadline}
    if tensor.name == encoded_name:
        if tensor.datatype != "BYTES":
            raise InvalidArgumentError(
                f"input {shown(tensor.name)} must be BYTES (encoded images), got {shown(tensor.datatype)}"
            )
        if tensor.array.ndim not in (1, 2) or (tensor.array.ndim == 2 and tensor.array.shape[1] != 1):
            raise InvalidArgumentError(
                f"input {shown(tensor.name)} must have shape [batch] or [batch, 1], "
                f"got {shown_shape(tensor.array.shape)}"
            )
        return LogitsRequest(images=tuple(tensor.array.reshape(-1).tolist()), **common)  # type: ignore[arg-type]
    if tensor.datatype not in PIXEL_DATATYPES:
        raise InvalidArgumentError(
            f"input {shown(tensor.name)} must be FP32 (or FP16/FP64), got {shown(tensor.datatype)}"
        )
    return LogitsRequest(pixels=tensor.array, **common)  # type: ignore[arg-type]


async def infer_image(
    handler: ImageClassificationHandler, target: Target, request: InferRequest, chunked: bool
) -> AsyncIterator[InferResponse]:
    """Logits (or top-k classes) of one batch: always one response."""
    signature = image_signature(target)
    meta = target.version.section_as(ImageClassificationMetadata)
    check_outputs(request.outputs, signature, meta.num_classes)
    result = await handler.logits(_logits_request(request, target, signature), target)
    response = InferResponse(target.name, target.version.version, request.id, parameters={FINAL_RESPONSE: True})
    for output in request.outputs or (RequestedOutput(meta.output_name),):
        if output.classification:
            response.outputs.append(
                (output.name, classification_entries(result.logits, output.classification, result.labels))
            )
        else:
            response.outputs.append((output.name, result.logits))
    yield response
