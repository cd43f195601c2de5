"""health() answers True iff SERVING, False for the other answers and for an unreachable server."""

from __future__ import annotations

from typing import Any

import pytest
from grpc_health.v1 import health_pb2

from attnserve_client import AsyncClient, Client
from attnserve_client.health import ServingStatus, decode_response, encode_request


@pytest.mark.parametrize("service", ["", "tiny-gpt", "ü" * 100, "x" * 300])
def test_the_request_encodes_like_the_generated_message(service: str) -> None:
    assert encode_request(service) == health_pb2.HealthCheckRequest(service=service).SerializeToString()


@pytest.mark.parametrize("status", list(ServingStatus))
def test_the_response_decodes_like_the_generated_message(status: ServingStatus) -> None:
    data = health_pb2.HealthCheckResponse(status=status.value).SerializeToString()
    assert decode_response(data) is status


def test_unknown_fields_and_values_are_tolerated() -> None:
    # field 2 (varint 5), field 3 (length-delimited "ab"), then status = 1
    data = bytes([2 << 3, 5, 3 << 3 | 2, 2]) + b"ab" + bytes([1 << 3, 1])
    assert decode_response(data) is ServingStatus.SERVING
    assert decode_response(bytes([1 << 3, 42])) is ServingStatus.UNKNOWN


def test_a_truncated_response_is_refused() -> None:
    with pytest.raises(ValueError, match="malformed"):
        decode_response(bytes([1 << 3 | 2, 10, 1]))


def test_health_follows_the_servers_answer(scripted_server: Any) -> None:
    with Client(scripted_server.address) as client:
        assert client.health() is True
        assert client.health("only-gpt") is False  # NOT_SERVING
        assert client.health("no-such-model") is False  # NOT_FOUND
        scripted_server.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        assert client.health() is False


async def test_async_health_follows_the_servers_answer(scripted_server: Any) -> None:
    async with AsyncClient(scripted_server.address) as client:
        assert await client.health() is True
        assert await client.health("only-gpt") is False
        scripted_server.health.set("only-gpt", health_pb2.HealthCheckResponse.SERVING)
        assert await client.health("only-gpt") is True


def test_an_unreachable_server_is_not_healthy(dead_address: str) -> None:
    with Client(dead_address, retries=5) as client:
        assert client.health(timeout=1) is False


async def test_an_unreachable_server_is_not_healthy_async(dead_address: str) -> None:
    async with AsyncClient(dead_address) as client:
        assert await client.health(timeout=1) is False
