"""The KServe v2 data plane: tensor requests translated onto the attnserve handlers.

Image requests go through :class:`ImageLogitsHandler` and text requests through
:class:`TextGenerationHandler`, the same code paths (and concurrency limits) as the typed API.
Nothing here knows protobuf; :mod:`attnserve_server.kserve.convert` does the wire format.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from attnserve_server.errors import InvalidArgumentError
from attnserve_server.handlers import (
    GenerationRequest,
    ImageLogitsHandler,
    LogitsRequest,
    TextGenerationHandler,
)
from attnserve_server.kserve.signature import TEXT_INPUT, TEXT_OUTPUT, Signature, encoded_image_input, signature
from attnserve_server.kserve.statistics import Statistics
from attnserve_server.kserve.tensors import ParameterValue
from attnserve_server.repository import IMAGE_CLASSIFICATION, Model, ModelRepository, ModelVersion
from attnserve_server.text.params import RequestedParameters

CLASSIFICATION = "classification"
FINAL_RESPONSE = "triton_final_response"
ENABLE_EMPTY_FINAL_RESPONSE = "triton_enable_empty_final_response"
# Pixel tensors of these datatypes are converted to the graph's FP32.
PIXEL_DATATYPES = ("FP32", "FP16", "FP64")


@dataclass(frozen=True)
class InputTensor:
    name: str
    datatype: str
    array: npt.NDArray[Any]


@dataclass(frozen=True)
class RequestedOutput:
    """An output the client asked for; ``classification`` > 0 asks for the top-k classes instead of the tensor."""

    name: str
    classification: int = 0


@dataclass(frozen=True)
class InferRequest:
    model: str
    version: str
    id: str
    inputs: tuple[InputTensor, ...]
    outputs: tuple[RequestedOutput, ...]
    parameters: dict[str, ParameterValue]
    deadline: float | None = None


@dataclass
class InferResponse:
    model: str
    version: str
    id: str
    outputs: list[tuple[str, npt.NDArray[Any]]] = field(default_factory=list)
    parameters: dict[str, ParameterValue] = field(default_factory=dict)


def classification_entries(logits: npt.NDArray[np.float32], k: int, labels: tuple[str, ...]) -> npt.NDArray[Any]:
    """``(batch, k)`` BYTES ``"score:index:label"``, best first; the score is the output's value, as in Triton."""
    order = np.argsort(-logits, axis=-1, kind="stable")[:, :k]  # (batch, k)
    rows = [
        [f"{float(row[i]):f}:{int(i)}:{labels[int(i)]}".encode() for i in idx]
        for row, idx in zip(logits, order, strict=True)
    ]
    return np.array(rows, dtype=object).reshape(len(rows), k)


def _check_outputs(requested: tuple[RequestedOutput, ...], sig: Signature, classes: int) -> None:
    known = {t.name for t in sig.outputs}
    for output in requested:
        if output.name not in known:
            raise InvalidArgumentError(
                f"unknown requested output {output.name!r} (the model's outputs: {', '.join(sorted(known))})"
            )
        if output.classification and not 1 <= output.classification <= classes:
            raise InvalidArgumentError(
                f"output {output.name!r}: classification must be in [1, {classes}], got {output.classification}"
            )


def _check_inputs(inputs: tuple[InputTensor, ...], sig: Signature) -> dict[str, InputTensor]:
    by_name: dict[str, InputTensor] = {}
    for tensor in inputs:
        if tensor.name in by_name:
            raise InvalidArgumentError(f"input {tensor.name!r} appears twice")
        if sig.input(tensor.name) is None:
            known = ", ".join(t.name for t in sig.inputs)
            raise InvalidArgumentError(f"unknown input {tensor.name!r} (the model's inputs: {known})")
        by_name[tensor.name] = tensor
    return by_name


def _int_parameter(parameters: dict[str, ParameterValue], key: str) -> int | None:
    value = parameters.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgumentError(f"parameter {key!r} must be an integer, got {value!r}")
    return value


def _float_parameter(parameters: dict[str, ParameterValue], key: str) -> float | None:
    value = parameters.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidArgumentError(f"parameter {key!r} must be a number, got {value!r}")
    return float(value)


def generation_parameters(parameters: dict[str, ParameterValue]) -> RequestedParameters:
    """The generate convention's request parameters as attnserve sampling settings."""
    stop = parameters.get("stop")
    if stop is not None and not isinstance(stop, str):
        raise InvalidArgumentError(f"parameter 'stop' must be a string, got {stop!r}")
    return RequestedParameters(
        max_new_tokens=_int_parameter(parameters, "max_tokens"),
        temperature=_float_parameter(parameters, "temperature"),
        top_k=_int_parameter(parameters, "top_k"),
        top_p=_float_parameter(parameters, "top_p"),
        repetition_penalty=_float_parameter(parameters, "repetition_penalty"),
        stop=(stop,) if stop else (),
        seed=_int_parameter(parameters, "seed"),
    )


class DataPlane:
    """ModelInfer and ModelStreamInfer over the handlers, with per-version statistics."""

    def __init__(
        self,
        repository: ModelRepository,
        images: ImageLogitsHandler,
        text: TextGenerationHandler,
        statistics: Statistics,
    ) -> None:
        self._repository = repository
        self._images = images
        self._text = text
        self.statistics = statistics

    def resolve(self, name: str, version: str) -> tuple[Model, ModelVersion, Signature]:
        """The model, the version a request means, and its v2 signature."""
        model = self._repository.get(name)
        loaded = model.version(version)
        return model, loaded, signature(model, loaded)

    async def infer(self, request: InferRequest) -> InferResponse:
        """One request, one response (text generations are returned whole)."""
        final: InferResponse | None = None
        async for response in self.stream(request, chunked=False):
            final = response
        assert final is not None  # stream always yields at least once
        return final

    async def stream(self, request: InferRequest, *, chunked: bool = True) -> AsyncIterator[InferResponse]:
        """The responses of one request: one for an image model, one per chunk of tokens for a text model.

        The last carries ``triton_final_response``. With ``triton_enable_empty_final_response``
        a text stream ends with an extra response that has no outputs and only that flag.
        """
        model, version, sig = self.resolve(request.model, request.version)
        started = time.perf_counter_ns()
        try:
            if version.metadata.task == IMAGE_CLASSIFICATION:
                response = await self._infer_image(request, model, version, sig)
                response.parameters[FINAL_RESPONSE] = True
                yield response
            else:
                async for response in self._generate(request, model, version, sig, chunked=chunked):
                    yield response
        except Exception:
            self.statistics.record_failure(model.name, version.version, total_ns=time.perf_counter_ns() - started)
            raise

    async def _infer_image(
        self, request: InferRequest, model: Model, version: ModelVersion, sig: Signature
    ) -> InferResponse:
        meta = version.image_classification
        _check_outputs(request.outputs, sig, meta.num_classes)
        inputs = _check_inputs(request.inputs, sig)
        encoded_name = encoded_image_input(meta.input_name)
        if len(inputs) != 1:
            raise InvalidArgumentError(
                f"send exactly one of the inputs {meta.input_name!r} (FP32 pixels, shape [batch, {meta.channels}, "
                f"{meta.height}, {meta.width}]) and {encoded_name!r} (BYTES, one encoded image per element); "
                f"got {len(inputs)}"
            )
        (tensor,) = inputs.values()
        if tensor.name == encoded_name:
            if tensor.datatype != "BYTES":
                raise InvalidArgumentError(
                    f"input {tensor.name!r} must be BYTES (encoded images), got {tensor.datatype}"
                )
            if tensor.array.ndim not in (1, 2) or (tensor.array.ndim == 2 and tensor.array.shape[1] != 1):
                raise InvalidArgumentError(
                    f"input {tensor.name!r} must have shape [batch] or [batch, 1], got {list(tensor.array.shape)}"
                )
            logits_request = LogitsRequest(
                model.name,
                version.version,
                images=tuple(tensor.array.reshape(-1).tolist()),
                deadline=request.deadline,
            )
        else:
            if tensor.datatype not in PIXEL_DATATYPES:
                raise InvalidArgumentError(f"input {tensor.name!r} must be FP32 (or FP16/FP64), got {tensor.datatype}")
            expected = [-1, meta.channels, meta.height, meta.width]
            if tensor.array.ndim != 4 or list(tensor.array.shape[1:]) != expected[1:]:
                raise InvalidArgumentError(
                    f"input {tensor.name!r} has shape {list(tensor.array.shape)}, the model takes {expected}"
                )
            pixels = np.ascontiguousarray(tensor.array, dtype=np.float32)
            logits_request = LogitsRequest(model.name, version.version, pixels=pixels, deadline=request.deadline)
        started = time.perf_counter_ns()
        result = await self._images.logits(logits_request)
        batch = int(result.logits.shape[0])
        self.statistics.record_success(
            model.name,
            version.version,
            total_ns=time.perf_counter_ns() - started,
            queue_ns=result.timings.queue_ns,
            compute_ns=result.timings.compute_ns,
            batch=batch,
        )
        response = InferResponse(model.name, version.version, request.id)
        for output in request.outputs or (RequestedOutput(meta.output_name),):
            if output.classification:
                response.outputs.append(
                    (output.name, classification_entries(result.logits, output.classification, result.labels))
                )
            else:
                response.outputs.append((output.name, result.logits))
        return response

    async def _generate(
        self, request: InferRequest, model: Model, version: ModelVersion, sig: Signature, *, chunked: bool
    ) -> AsyncIterator[InferResponse]:
        _check_outputs(request.outputs, sig, 0)
        if any(o.classification for o in request.outputs):
            raise InvalidArgumentError(f"output {TEXT_OUTPUT!r} has no classification")
        inputs = _check_inputs(request.inputs, sig)
        tensor = inputs.get(TEXT_INPUT)
        if tensor is None:
            raise InvalidArgumentError(f"missing input {TEXT_INPUT!r} (BYTES, the prompt)")
        if tensor.datatype != "BYTES":
            raise InvalidArgumentError(f"input {TEXT_INPUT!r} must be BYTES, got {tensor.datatype}")
        if tensor.array.size != 1:
            raise InvalidArgumentError(
                f"input {TEXT_INPUT!r} must hold exactly one prompt (shape [1]), got shape {list(tensor.array.shape)}"
            )
        try:
            prompt = tensor.array.reshape(-1)[0].decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidArgumentError(f"input {TEXT_INPUT!r} is not valid UTF-8: {exc}") from None
        empty_final = request.parameters.get(ENABLE_EMPTY_FINAL_RESPONSE) is True
        shape = tensor.array.shape
        started = time.perf_counter_ns()
        stream = await self._text.start(
            GenerationRequest(
                model=model.name,
                prompt=prompt,
                parameters=generation_parameters(request.parameters),
                model_version=version.version,
                deadline=request.deadline,
            )
        )

        def response(text: str, *, final: bool, with_output: bool = True) -> InferResponse:
            out = InferResponse(model.name, version.version, request.id, parameters={FINAL_RESPONSE: final})
            if with_output:
                out.outputs.append((TEXT_OUTPUT, np.array([text.encode()], dtype=object).reshape(shape)))
            return out

        pieces: list[str] = []
        tokens = 0
        async for chunk in stream.chunks:
            tokens += len(chunk.token_ids)
            last = chunk.finish_reason is not None
            if not chunked:
                pieces.append(chunk.text)
                continue
            if chunk.text or (last and not empty_final):
                yield response(chunk.text, final=last and not empty_final)
        self.statistics.record_success(
            model.name,
            version.version,
            total_ns=time.perf_counter_ns() - started,
            queue_ns=stream.timings.queue_ns,
            compute_ns=stream.timings.compute_ns,
            batch=1,
        )
        if not chunked:
            yield response("".join(pieces), final=True)
        elif empty_final:
            yield response("", final=True, with_output=False)
