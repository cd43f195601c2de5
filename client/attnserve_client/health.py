"""The ``grpc.health.v1.Health/Check`` messages, encoded by hand.

The client depends on grpcio and protobuf only, not on grpcio-health-checking. The two
messages are one field each, so they are written and read directly in the protobuf wire
format rather than through generated classes::

    message HealthCheckRequest { string service = 1; }
    message HealthCheckResponse { ServingStatus status = 1; }
"""

from __future__ import annotations

import enum

__all__ = ["HEALTH_CHECK_METHOD", "ServingStatus", "decode_response", "encode_request"]

HEALTH_CHECK_METHOD = "/grpc.health.v1.Health/Check"

_WIRE_VARINT, _WIRE_FIXED64, _WIRE_LENGTH_DELIMITED, _WIRE_FIXED32 = 0, 1, 2, 5


class ServingStatus(enum.IntEnum):
    """``grpc.health.v1.HealthCheckResponse.ServingStatus``."""

    UNKNOWN = 0
    SERVING = 1
    NOT_SERVING = 2
    SERVICE_UNKNOWN = 3  # only used by the Watch method


def encode_request(service: str) -> bytes:
    """Serializes ``HealthCheckRequest(service=service)``; "" asks about the whole server."""
    data = service.encode("utf-8")
    if not data:
        return b""  # proto3 leaves a field at its default value out
    return bytes([1 << 3 | _WIRE_LENGTH_DELIMITED]) + _encode_varint(len(data)) + data


def decode_response(data: bytes) -> ServingStatus:
    """Parses a ``HealthCheckResponse``; an unset or unknown status reads as UNKNOWN."""
    status = 0
    pos = 0
    while pos < len(data):
        key, pos = _decode_varint(data, pos)
        field, wire_type = key >> 3, key & 7
        if wire_type == _WIRE_VARINT:
            value, pos = _decode_varint(data, pos)
            if field == 1:
                status = value  # the last occurrence wins, as in protobuf
        elif wire_type == _WIRE_LENGTH_DELIMITED:
            length, pos = _decode_varint(data, pos)
            pos += length
        elif wire_type == _WIRE_FIXED64:
            pos += 8
        elif wire_type == _WIRE_FIXED32:
            pos += 4
        else:
            raise ValueError(f"malformed HealthCheckResponse: wire type {wire_type}")
    if pos > len(data):
        raise ValueError("malformed HealthCheckResponse: truncated")
    try:
        return ServingStatus(status)
    except ValueError:
        return ServingStatus.UNKNOWN


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _decode_varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("malformed HealthCheckResponse: bad varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
