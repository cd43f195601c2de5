"""Refuse ONNX files whose external data lives outside their own folder.

An ONNX tensor may keep its bytes in another file, named by a ``location`` that ONNX Runtime
opens relative to the model. A model copied into the repository could point that at
``../../etc/shadow`` or an absolute path; such a model is refused before ONNX Runtime sees it.

The server does not depend on the ``onnx`` package, so this walks the protobuf wire format of
the few messages that can hold tensors (field numbers from onnx.proto): ModelProto.graph (7);
GraphProto.node (1), .initializer (5), .sparse_initializer (15); NodeProto.attribute (5);
AttributeProto.t (5), .g (6), .tensors (10), .graphs (11), .sparse_tensor (22), .sparse_tensors (23);
SparseTensorProto.values (1), .indices (2); TensorProto.external_data (13) of
StringStringEntryProto key (1) / value (2).
"""

from __future__ import annotations

import mmap
from collections.abc import Iterator
from pathlib import Path

_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5

# message kind -> {field number: message kind of that (length-delimited) field}
_SCHEMA: dict[str, dict[int, str]] = {
    "model": {7: "graph"},
    "graph": {1: "node", 5: "tensor", 15: "sparse"},
    "node": {5: "attribute"},
    "attribute": {5: "tensor", 6: "graph", 10: "tensor", 11: "graph", 22: "sparse", 23: "sparse"},
    "sparse": {1: "tensor", 2: "tensor"},
    "tensor": {13: "entry"},
}
_MAX_DEPTH = 64


def _varint(data: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data):
            raise ValueError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _fields(data: memoryview) -> Iterator[tuple[int, int, memoryview | None]]:
    """(field number, wire type, payload of length-delimited fields) of one message."""
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == _VARINT:
            _, pos = _varint(data, pos)
            yield number, wire, None
        elif wire == _I64:
            pos += 8
            yield number, wire, None
        elif wire == _I32:
            pos += 4
            yield number, wire, None
        elif wire == _LEN:
            length, pos = _varint(data, pos)
            if pos + length > len(data):
                raise ValueError("truncated field")
            yield number, wire, data[pos : pos + length]
            pos += length
        else:
            raise ValueError(f"unsupported wire type {wire}")


def _locations(data: memoryview, kind: str, depth: int = 0) -> Iterator[str]:
    if depth > _MAX_DEPTH:
        raise ValueError("graph nesting too deep")
    if kind == "entry":
        key = value = b""
        for number, _, payload in _fields(data):
            if payload is not None and number == 1:
                key = bytes(payload)
            elif payload is not None and number == 2:
                value = bytes(payload)
        if key == b"location":
            yield value.decode("utf-8", errors="replace")
        return
    children = _SCHEMA[kind]
    for number, wire, payload in _fields(data):
        child = children.get(number)
        if child is not None and wire == _LEN and payload is not None:
            yield from _locations(payload, child, depth + 1)


def external_data_locations(model_path: Path) -> list[str]:
    """Every external-data ``location`` named in the model file."""
    with model_path.open("rb") as f:
        if model_path.stat().st_size == 0:
            return []
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            view = memoryview(mapped)
            try:
                return list(_locations(view, "model"))
            finally:
                view.release()


def check_external_data(model_path: Path) -> None:
    """Raise ValueError if a tensor's external data lies outside the model's folder."""
    folder = model_path.parent.resolve()
    try:
        locations = external_data_locations(model_path)
    except ValueError as exc:
        # Fail closed: a file this walk cannot read might still name external data that ONNX
        # Runtime would open, so it is refused rather than handed over unchecked.
        raise ValueError(
            f"{model_path.name} cannot be read as an ONNX model ({exc}), so its external data cannot be checked"
        ) from None
    for location in locations:
        if Path(location).is_absolute() or not (folder / location).resolve().is_relative_to(folder):
            raise ValueError(
                f"{model_path.name} keeps tensor data in {location!r}, outside its folder; external data "
                "must sit beside the model"
            )
