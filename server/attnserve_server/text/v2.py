"""Text generators as tensors (the KServe v2 generate convention).

BYTES ``text_input`` in, BYTES ``text_output`` out; the sampling settings are request parameters.
A streamed request gets one response per chunk of text, the last with ``triton_final_response``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import numpy as np

from attnserve_server.errors import InvalidArgumentError, shown, shown_shape
from attnserve_server.loaded import Target
from attnserve_server.tensor_api import (
    ENABLE_EMPTY_FINAL_RESPONSE,
    FINAL_RESPONSE,
    InferRequest,
    InferResponse,
    ParameterValue,
    Signature,
    TensorSpec,
    check_outputs,
    float_parameter,
    inputs_by_name,
    int_parameter,
)
from attnserve_server.text.handler import GenerationRequest, TextGenerationHandler
from attnserve_server.text.params import RequestedParameters

TEXT_INPUT = "text_input"
TEXT_OUTPUT = "text_output"


def text_signature(target: Target) -> Signature:
    """One prompt in, its continuation out; decoupled, so a request may get many responses."""
    return Signature(
        inputs=(TensorSpec(TEXT_INPUT, "BYTES", (1,)),),
        outputs=(TensorSpec(TEXT_OUTPUT, "BYTES", (1,)),),
        max_batch_size=0,
        decoupled=True,
    )


def generation_parameters(parameters: dict[str, ParameterValue]) -> RequestedParameters:
    """The generate convention's request parameters as attnserve sampling settings."""
    stop = parameters.get("stop")
    if stop is not None and not isinstance(stop, str):
        raise InvalidArgumentError(f"parameter 'stop' must be a string, got {shown(stop)}")
    return RequestedParameters(
        max_new_tokens=int_parameter(parameters, "max_tokens"),
        temperature=float_parameter(parameters, "temperature"),
        top_k=int_parameter(parameters, "top_k"),
        top_p=float_parameter(parameters, "top_p"),
        repetition_penalty=float_parameter(parameters, "repetition_penalty"),
        stop=(stop,) if stop else (),
        seed=int_parameter(parameters, "seed"),
    )


def _prompt(request: InferRequest, signature: Signature) -> tuple[str, tuple[int, ...]]:
    """The prompt of a request, and the shape its text output takes."""
    check_outputs(request.outputs, signature)
    tensor = inputs_by_name(request.inputs, signature).get(TEXT_INPUT)
    if tensor is None:
        raise InvalidArgumentError(f"missing input {TEXT_INPUT!r} (BYTES, the prompt)")
    if tensor.datatype != "BYTES":
        raise InvalidArgumentError(f"input {TEXT_INPUT!r} must be BYTES, got {shown(tensor.datatype)}")
    if tensor.array.size != 1:
        raise InvalidArgumentError(
            f"input {TEXT_INPUT!r} must hold exactly one prompt (shape [1]), "
            f"got shape {shown_shape(tensor.array.shape)}"
        )
    try:
        prompt = tensor.array.reshape(-1)[0].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidArgumentError(f"input {TEXT_INPUT!r} is not valid UTF-8: {exc}") from None
    return prompt, tuple(tensor.array.shape)


async def infer_text(
    handler: TextGenerationHandler, target: Target, request: InferRequest, chunked: bool
) -> AsyncIterator[InferResponse]:
    """Generate for one tensor request: the whole text in one response, or one response per chunk."""
    prompt, shape = _prompt(request, text_signature(target))
    empty_final = request.parameters.get(ENABLE_EMPTY_FINAL_RESPONSE) is True
    domain = GenerationRequest(
        model=target.name,
        prompt=prompt,
        parameters=generation_parameters(request.parameters),
        model_version=target.version.version,
        deadline=request.deadline,
    )
    stream = await handler.start(domain, target)

    def response(text: str, *, final: bool, with_output: bool = True) -> InferResponse:
        out = InferResponse(target.name, target.version.version, request.id, parameters={FINAL_RESPONSE: final})
        if with_output:
            out.outputs.append((TEXT_OUTPUT, np.array([text.encode()], dtype=object).reshape(shape)))
        return out

    pieces: list[str] = []
    async for chunk in stream.chunks:
        last = chunk.finish_reason is not None
        if not chunked:
            pieces.append(chunk.text)
        elif chunk.text or (last and not empty_final):
            yield response(chunk.text, final=last and not empty_final)
    if not chunked:
        yield response("".join(pieces), final=True)
    elif empty_final:
        yield response("", final=True, with_output=False)
