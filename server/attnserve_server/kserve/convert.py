"""KServe v2 protobuf <-> the data plane's domain types."""

from __future__ import annotations

from attnserve_server.errors import InvalidArgumentError, shown
from attnserve_server.kserve.pb import grpc_service_pb2 as pb
from attnserve_server.kserve.tensors import (
    decode_input,
    encode_output,
    parameter_value,
    parameters_to_dict,
    set_parameter,
)
from attnserve_server.tensor_api import InferRequest, InferResponse, InputTensor, RequestedOutput

# The classification extension's parameter on a requested output.
CLASSIFICATION = "classification"


def _requested_output(output: pb.ModelInferRequest.InferRequestedOutputTensor) -> RequestedOutput:
    classification = 0
    if CLASSIFICATION in output.parameters:
        value = parameter_value(output.parameters[CLASSIFICATION])
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidArgumentError(
                f"output {shown(output.name)}: the classification parameter must be an integer (the number of classes)"
            )
        if value < 1:
            raise InvalidArgumentError(f"output {shown(output.name)}: classification must be at least 1, got {value}")
        classification = value
    return RequestedOutput(output.name, classification)


def infer_request(request: pb.ModelInferRequest, deadline: float | None) -> tuple[InferRequest, bool]:
    """The domain request, and whether the client sent raw contents (the response then uses them too)."""
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise InvalidArgumentError(
            f"raw_input_contents has {len(raw)} entries but the request has {len(request.inputs)} inputs; "
            "send one entry per input, in order"
        )
    inputs = tuple(
        InputTensor(tensor.name, tensor.datatype, decode_input(tensor, raw[i] if raw else None))
        for i, tensor in enumerate(request.inputs)
    )
    domain = InferRequest(
        model=request.model_name,
        version=request.model_version,
        id=request.id,
        inputs=inputs,
        outputs=tuple(_requested_output(o) for o in request.outputs),
        parameters=parameters_to_dict(request.parameters),
        deadline=deadline,
    )
    return domain, bool(raw)


def infer_response(response: InferResponse, *, raw: bool) -> pb.ModelInferResponse:
    """The wire response; outputs as raw contents when the request used them."""
    out = pb.ModelInferResponse(model_name=response.model, model_version=response.version, id=response.id)
    for name, array in response.outputs:
        tensor, contents = encode_output(name, array, raw=raw)
        out.outputs.append(tensor)
        if contents is not None:
            out.raw_output_contents.append(contents)
    for key, value in response.parameters.items():
        set_parameter(out.parameters, key, value)
    return out
