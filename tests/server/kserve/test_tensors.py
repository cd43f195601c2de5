"""The v2 tensor codec: every datatype round-trips through typed and raw contents, in the same
process as tritonclient (our stubs live in their own descriptor pool, so both import).

What tritonclient puts on the wire is captured through its public API: ``infer()`` against a plain
gRPC server in this process that records the request bytes and answers with our own encoding, which
tritonclient's ``as_numpy()`` must read back.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.grpc import service_pb2
from tritonclient.utils import deserialize_bytes_tensor, serialize_byte_tensor

from attnserve_server.errors import InvalidArgumentError
from attnserve_server.kserve.pb import grpc_service_pb2 as pb
from attnserve_server.kserve.tensors import decode_input, encode_bytes, encode_output, parameters_to_dict

ARRAYS: dict[str, np.ndarray] = {
    "FP32": np.array([[1.5, -2.25], [3.0, 1e-7]], dtype=np.float32),
    "FP16": np.array([[0.5, -1.0, 65504.0]], dtype=np.float16),
    "FP64": np.array([1e300, -0.1], dtype=np.float64),
    "INT64": np.array([[2**62, -(2**63)]], dtype=np.int64),
    "INT32": np.array([-(2**31), 2**31 - 1, 0], dtype=np.int32),
    "INT16": np.array([[-(2**15), 2**15 - 1], [0, -2]], dtype=np.int16),
    "INT8": np.array([-128, 127], dtype=np.int8),
    "UINT8": np.array([[0, 255], [7, 128]], dtype=np.uint8),
    "UINT16": np.array([0, 2**16 - 1, 258], dtype=np.uint16),
    "UINT32": np.array([[0, 2**32 - 1, 65536]], dtype=np.uint32),
    "UINT64": np.array([2**64 - 1], dtype=np.uint64),
    "BOOL": np.array([[True, False, True]], dtype=np.bool_),
    "BYTES": np.array([[b"", b"caf\xc3\xa9"], [b"\x00\xff", b"x" * 300]], dtype=object),
}


@dataclass
class Capture:
    """A gRPC server that keeps the ModelInfer requests it receives and echoes the first input back."""

    address: str = ""
    requests: list[pb.ModelInferRequest] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def infer(self, raw_request: bytes, context: grpc.ServicerContext) -> bytes:
        request = pb.ModelInferRequest.FromString(raw_request)
        with self.lock:
            self.requests.append(request)
        (tensor,) = request.inputs
        (raw,) = request.raw_input_contents
        out, out_raw = encode_output("y", decode_input(tensor, raw), raw=True)
        assert out_raw is not None
        response = pb.ModelInferResponse(model_name=request.model_name, id=request.id, outputs=[out])
        response.raw_output_contents.append(out_raw)
        return response.SerializeToString()


@pytest.fixture(scope="module")
def capture() -> Iterator[Capture]:
    found = Capture()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    handler = grpc.unary_unary_rpc_method_handler(found.infer)  # bytes in, bytes out
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler("inference.GRPCInferenceService", {"ModelInfer": handler})]
    )
    found.address = f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}"
    server.start()
    try:
        yield found
    finally:
        server.stop(grace=None)


def test_both_stub_sets_live_in_one_process() -> None:
    assert pb.DESCRIPTOR.pool is not service_pb2.DESCRIPTOR.pool
    ours = pb.ModelInferRequest(model_name="m", raw_input_contents=[b"abc"])
    assert service_pb2.ModelInferRequest.FromString(ours.SerializeToString()).raw_input_contents == [b"abc"]


@pytest.mark.parametrize("datatype", list(ARRAYS))
def test_raw_contents_match_tritonclient_serialisation(datatype: str, capture: Capture) -> None:
    array = ARRAYS[datatype]
    tensor = triton.InferInput("x", list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    with triton.InferenceServerClient(capture.address) as client:
        result = client.infer("m", [tensor], request_id=datatype, client_timeout=30)
    (request,) = [r for r in capture.requests if r.id == datatype]
    (wire,) = request.inputs
    assert (wire.name, wire.datatype, list(wire.shape)) == ("x", datatype, list(array.shape))
    (sent,) = request.raw_input_contents
    decoded = decode_input(wire, sent)
    assert decoded.shape == array.shape
    np.testing.assert_array_equal(decoded, array)
    out, raw = encode_output("y", decoded, raw=True)
    assert out.datatype == datatype and list(out.shape) == list(array.shape)
    assert raw == sent  # byte for byte what tritonclient sends
    # ...and what tritonclient reads back from a response.
    echoed: Any = result.as_numpy("y")
    assert echoed.shape == array.shape
    np.testing.assert_array_equal(echoed, array)


@pytest.mark.parametrize("datatype", [d for d in ARRAYS if d != "FP16"])
def test_typed_contents_round_trip(datatype: str) -> None:
    array = ARRAYS[datatype]
    out, raw = encode_output("x", array, raw=False)
    assert raw is None
    wire = pb.ModelInferRequest.InferInputTensor(
        name="x", datatype=out.datatype, shape=out.shape, contents=out.contents
    )
    decoded = decode_input(wire, None)
    assert decoded.dtype == array.dtype or datatype == "BYTES"
    np.testing.assert_array_equal(decoded, array)


def test_bytes_framing_is_tritonclients() -> None:
    elements = np.array([b"a", b"", b"\x00\x01\x02"], dtype=object)
    assert encode_bytes(list(elements)) == serialize_byte_tensor(elements).item()
    assert list(deserialize_bytes_tensor(encode_bytes(list(elements)))) == list(elements)


def test_typed_value_out_of_range_is_invalid() -> None:
    wire = pb.ModelInferRequest.InferInputTensor(name="x", datatype="UINT8", shape=[1])
    wire.contents.uint_contents.append(300)
    with pytest.raises(InvalidArgumentError, match="'x'"):
        decode_input(wire, None)


def test_both_contents_and_raw_is_invalid() -> None:
    wire = pb.ModelInferRequest.InferInputTensor(name="x", datatype="FP32", shape=[1])
    wire.contents.fp32_contents.append(1.0)
    with pytest.raises(InvalidArgumentError, match="both contents and raw_input_contents"):
        decode_input(wire, b"\0\0\0\0")


def test_parameters_keep_their_types() -> None:
    request = pb.ModelInferRequest()
    request.parameters["a"].bool_param = True
    request.parameters["b"].int64_param = -3
    request.parameters["c"].string_param = "s"
    request.parameters["d"].double_param = 0.5
    request.parameters["e"].uint64_param = 2**63
    request.parameters["unset"].SetInParent()
    assert parameters_to_dict(request.parameters) == {"a": True, "b": -3, "c": "s", "d": 0.5, "e": 2**63}
