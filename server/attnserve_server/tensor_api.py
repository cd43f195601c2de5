"""The tensor view of a model (the KServe v2 / Open Inference Protocol), without any wire format.

Each task says how its models look as named tensors (:class:`Signature`) and how a tensor
request becomes one of its domain requests; ``kserve/`` turns protobuf into these types and back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy.typing as npt

from attnserve_server.errors import InvalidArgumentError, shown

ParameterValue = bool | int | str | float
# ONNX Runtime runs every model; the names are the ones Triton gives ONNX models.
PLATFORM = "onnxruntime_onnx"
BACKEND = "onnxruntime"
# Response parameters of the decoupled (streaming) convention, as Triton names them.
FINAL_RESPONSE = "triton_final_response"
ENABLE_EMPTY_FINAL_RESPONSE = "triton_enable_empty_final_response"


@dataclass(frozen=True)
class TensorSpec:
    """One tensor: ``shape`` includes the batch dimension; -1 is a variable dimension."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    optional: bool = False


@dataclass(frozen=True)
class Signature:
    """A model version's inputs and outputs, and the largest batch it takes (0: no batch dimension)."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    max_batch_size: int
    # One request may get many responses (streamed generation).
    decoupled: bool = False

    def input(self, name: str) -> TensorSpec | None:
        return next((t for t in self.inputs if t.name == name), None)


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


def check_outputs(requested: tuple[RequestedOutput, ...], signature: Signature, classes: int = 0) -> None:
    """Every requested output exists; a ``classification`` asks for 1..``classes`` classes."""
    known = {t.name for t in signature.outputs}
    for output in requested:
        if output.name not in known:
            raise InvalidArgumentError(
                f"unknown requested output {shown(output.name)} (the model's outputs: {', '.join(sorted(known))})"
            )
        if output.classification and not 1 <= output.classification <= classes:
            if not classes:
                raise InvalidArgumentError(f"output {shown(output.name)} has no classification")
            raise InvalidArgumentError(
                f"output {shown(output.name)}: classification must be in [1, {classes}], got {output.classification}"
            )


def inputs_by_name(inputs: tuple[InputTensor, ...], signature: Signature) -> dict[str, InputTensor]:
    """The request's inputs by name; each must be one of the signature's, and appear once."""
    by_name: dict[str, InputTensor] = {}
    for tensor in inputs:
        if tensor.name in by_name:
            raise InvalidArgumentError(f"input {shown(tensor.name)} appears twice")
        if signature.input(tensor.name) is None:
            known = ", ".join(t.name for t in signature.inputs)
            raise InvalidArgumentError(f"unknown input {shown(tensor.name)} (the model's inputs: {known})")
        by_name[tensor.name] = tensor
    return by_name


def int_parameter(parameters: dict[str, ParameterValue], key: str) -> int | None:
    value = parameters.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgumentError(f"parameter {shown(key)} must be an integer, got {shown(value)}")
    return value


def float_parameter(parameters: dict[str, ParameterValue], key: str) -> float | None:
    value = parameters.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidArgumentError(f"parameter {shown(key)} must be a number, got {shown(value)}")
    return float(value)
