"""KServe v2 tensors on the wire <-> numpy arrays, and InferParameter <-> Python values.

Raw contents are little-endian and row-major; each BYTES element carries a 4-byte little-endian
length prefix. Typed contents use the ``InferTensorContents`` field of the datatype (FP16 has
none, so it travels only as raw contents).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from attnserve_server.errors import InvalidArgumentError, shown, shown_shape
from attnserve_server.kserve.pb import grpc_service_pb2 as pb
from attnserve_server.tensor_api import ParameterValue


@dataclass(frozen=True)
class Datatype:
    """One protocol datatype: its numpy dtype and the typed-contents field that holds it."""

    name: str
    dtype: np.dtype[Any]
    contents_field: str | None


_DATATYPES = (
    Datatype("BOOL", np.dtype(np.bool_), "bool_contents"),
    Datatype("UINT8", np.dtype("<u1"), "uint_contents"),
    Datatype("UINT16", np.dtype("<u2"), "uint_contents"),
    Datatype("UINT32", np.dtype("<u4"), "uint_contents"),
    Datatype("UINT64", np.dtype("<u8"), "uint64_contents"),
    Datatype("INT8", np.dtype("<i1"), "int_contents"),
    Datatype("INT16", np.dtype("<i2"), "int_contents"),
    Datatype("INT32", np.dtype("<i4"), "int_contents"),
    Datatype("INT64", np.dtype("<i8"), "int64_contents"),
    Datatype("FP16", np.dtype("<f2"), None),
    Datatype("FP32", np.dtype("<f4"), "fp32_contents"),
    Datatype("FP64", np.dtype("<f8"), "fp64_contents"),
    Datatype("BYTES", np.dtype(object), "bytes_contents"),
)
DATATYPES = {d.name: d for d in _DATATYPES}
_BY_KIND = {d.dtype.newbyteorder("="): d for d in _DATATYPES if d.name != "BYTES"}
# numpy builds arrays of up to 64 dimensions; no model here takes more than a handful.
MAX_DIMS = 16
_LENGTH = struct.Struct("<I")


def datatype_of(array: npt.NDArray[Any]) -> str:
    """The protocol datatype of a numpy array (object arrays of bytes are BYTES)."""
    if array.dtype == object:
        return "BYTES"
    found = _BY_KIND.get(array.dtype.newbyteorder("="))
    if found is None:
        raise TypeError(f"no KServe v2 datatype for numpy dtype {array.dtype}")
    return found.name


def _element_count(name: str, shape: Sequence[int]) -> int:
    if len(shape) > MAX_DIMS:
        raise InvalidArgumentError(
            f"input {shown(name)}: shape {shown_shape(shape)} has more than {MAX_DIMS} dimensions"
        )
    if any(d < 0 for d in shape):
        raise InvalidArgumentError(f"input {shown(name)}: shape {shown_shape(shape)} has a negative dimension")
    return math.prod(shape)


def _shaped(name: str, array: npt.NDArray[Any], shape: tuple[int, ...]) -> npt.NDArray[Any]:
    """``array`` in the client's ``shape``. Its element count already matches; numpy may still refuse a
    shape whose dimensions it cannot index (``[0, 2**62]``), which is the client's shape to fix."""
    try:
        return array.reshape(shape)
    except ValueError as exc:
        raise InvalidArgumentError(f"input {shown(name)}: shape {shown_shape(shape)} cannot be built: {exc}") from None


def _split_bytes(name: str, raw: bytes, count: int) -> list[bytes]:
    """Length-prefixed BYTES elements; the element count must match the shape."""
    elements: list[bytes] = []
    offset = 0
    view = memoryview(raw)
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise InvalidArgumentError(
                f"input {shown(name)}: raw BYTES contents end inside a 4-byte length prefix (at byte {offset})"
            )
        (length,) = _LENGTH.unpack_from(raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise InvalidArgumentError(
                f"input {shown(name)}: raw BYTES element {len(elements)} claims {length} bytes but only "
                f"{len(raw) - offset} remain"
            )
        elements.append(bytes(view[offset : offset + length]))
        offset += length
    if len(elements) != count:
        raise InvalidArgumentError(
            f"input {shown(name)}: raw BYTES contents hold {len(elements)} elements, the shape needs {count}"
        )
    return elements


def decode_input(tensor: pb.ModelInferRequest.InferInputTensor, raw: bytes | None) -> npt.NDArray[Any]:
    """The input as a numpy array of its datatype and shape; ``raw`` is its raw_input_contents entry."""
    name = tensor.name
    datatype = DATATYPES.get(tensor.datatype)
    if datatype is None:
        raise InvalidArgumentError(
            f"input {shown(name)}: unknown datatype {shown(tensor.datatype)} (use one of {', '.join(DATATYPES)})"
        )
    shape = tuple(tensor.shape)
    count = _element_count(name, shape)
    if raw is not None:
        if tensor.HasField("contents"):
            raise InvalidArgumentError(f"input {shown(name)} has both contents and raw_input_contents; send one")
        if datatype.name == "BYTES":
            return _shaped(name, np.array(_split_bytes(name, raw, count) or [], dtype=object), shape)
        expected = count * datatype.dtype.itemsize
        if len(raw) != expected:
            raise InvalidArgumentError(
                f"input {shown(name)}: raw contents are {len(raw)} bytes, but {datatype.name} with shape "
                f"{shown_shape(shape)} needs {expected}"
            )
        return _shaped(name, np.frombuffer(raw, dtype=datatype.dtype), shape)
    if datatype.contents_field is None:
        raise InvalidArgumentError(
            f"input {shown(name)}: {datatype.name} has no typed contents; send raw_input_contents"
        )
    values = getattr(tensor.contents, datatype.contents_field)
    if len(values) != count:
        raise InvalidArgumentError(
            f"input {shown(name)}: contents.{datatype.contents_field} holds {len(values)} elements, the shape "
            f"{shown_shape(shape)} needs {count}"
        )
    if datatype.name == "BYTES":
        return _shaped(name, np.array(list(values), dtype=object), shape)
    if datatype.dtype.kind in "iu":
        # The wire fields are 32 or 64 bits wide; a narrower datatype must not wrap silently.
        wide = np.array(values, dtype=np.int64 if datatype.dtype.kind == "i" else np.uint64)
        info = np.iinfo(datatype.dtype)
        if wide.size and (wide.min() < info.min or wide.max() > info.max):
            raise InvalidArgumentError(
                f"input {shown(name)}: a value of contents.{datatype.contents_field} does not fit {datatype.name}"
            )
        return _shaped(name, wide.astype(datatype.dtype), shape)
    return _shaped(name, np.array(values, dtype=datatype.dtype), shape)


def encode_bytes(elements: Sequence[bytes]) -> bytes:
    """Raw BYTES contents: each element with its 4-byte little-endian length prefix."""
    return b"".join(_LENGTH.pack(len(e)) + e for e in elements)


def encode_output(
    name: str, array: npt.NDArray[Any], *, raw: bool
) -> tuple[pb.ModelInferResponse.InferOutputTensor, bytes | None]:
    """The output tensor (with typed contents unless ``raw``) and its raw contents (if ``raw``)."""
    datatype = DATATYPES[datatype_of(array)]
    tensor = pb.ModelInferResponse.InferOutputTensor(name=name, datatype=datatype.name, shape=array.shape)
    if datatype.name == "BYTES":
        elements = [e if isinstance(e, bytes) else str(e).encode() for e in array.reshape(-1)]
        if raw:
            return tensor, encode_bytes(elements)
        tensor.contents.bytes_contents.extend(elements)
        return tensor, None
    if raw or datatype.contents_field is None:
        return tensor, np.ascontiguousarray(array, dtype=datatype.dtype).tobytes()
    getattr(tensor.contents, datatype.contents_field).extend(array.reshape(-1).tolist())
    return tensor, None


def parameter_value(parameter: pb.InferParameter) -> ParameterValue | None:
    """The Python value of an InferParameter (None if no choice is set)."""
    choice = parameter.WhichOneof("parameter_choice")
    if choice is None:
        return None
    value: ParameterValue = getattr(parameter, choice)
    return value


def parameters_to_dict(parameters: Any) -> dict[str, ParameterValue]:
    """A ``map<string, InferParameter>`` as a plain dict (unset entries dropped)."""
    out = {}
    for key, parameter in parameters.items():
        value = parameter_value(parameter)
        if value is not None:
            out[key] = value
    return out


def set_parameter(parameters: Any, key: str, value: ParameterValue) -> None:
    """Store a Python value in a ``map<string, InferParameter>`` under the matching choice."""
    target = parameters[key]
    if isinstance(value, bool):
        target.bool_param = value
    elif isinstance(value, int):
        target.int64_param = value
    elif isinstance(value, float):
        target.double_param = value
    else:
        target.string_param = value
