"""Failed calls raise typed exceptions; UNAVAILABLE is retried (RESOURCE_EXHAUSTED only if asked), a stream
only before its first chunk."""

from __future__ import annotations

import logging
from typing import Any

import grpc
import pytest

from attnserve_client import (
    AsyncClient,
    AttnserveError,
    Client,
    DeadlineExceededError,
    InvalidArgumentError,
    ModelNotFoundError,
    OverloadedError,
    RequestCancelledError,
    ServerError,
    UnavailableError,
)
from attnserve_client.errors import from_rpc_error

RETRY_LOGGER = "attnserve_client"

TYPED = [
    (grpc.StatusCode.INVALID_ARGUMENT, InvalidArgumentError),
    (grpc.StatusCode.NOT_FOUND, ModelNotFoundError),
    (grpc.StatusCode.RESOURCE_EXHAUSTED, OverloadedError),
    (grpc.StatusCode.DEADLINE_EXCEEDED, DeadlineExceededError),
    (grpc.StatusCode.CANCELLED, RequestCancelledError),
    (grpc.StatusCode.INTERNAL, ServerError),
    (grpc.StatusCode.UNKNOWN, ServerError),
    (grpc.StatusCode.UNIMPLEMENTED, ServerError),
    (grpc.StatusCode.FAILED_PRECONDITION, ServerError),
]


def _retry_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == RETRY_LOGGER and "retry" in r.getMessage()]


@pytest.mark.parametrize(("code", "error_type"), TYPED, ids=[c.name for c, _ in TYPED])
def test_a_status_code_raises_its_typed_exception_and_is_not_retried(
    scripted_server: Any, code: grpc.StatusCode, error_type: type[AttnserveError]
) -> None:
    scripted_server.script.failures = [code]
    with Client(scripted_server.address, retries=3) as client, pytest.raises(error_type) as info:
        client.generate("ROMEO:", model="only-gpt")
    assert type(info.value) is error_type
    assert info.value.code == code
    assert info.value.details == f"scripted {code.name}"
    assert scripted_server.script.calls == 1


@pytest.mark.parametrize(("code", "error_type"), TYPED[:3], ids=[c.name for c, _ in TYPED[:3]])
async def test_async_client_raises_the_same_typed_exceptions(
    scripted_server: Any, code: grpc.StatusCode, error_type: type[AttnserveError]
) -> None:
    scripted_server.script.failures = [code]
    async with AsyncClient(scripted_server.address, retries=3) as client:
        with pytest.raises(error_type) as info:
            await client.generate("ROMEO:", model="only-gpt")
    assert info.value.code == code
    assert scripted_server.script.calls == 1


def test_unavailable_is_retried_until_the_call_succeeds(scripted_server: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=RETRY_LOGGER)
    scripted_server.script.failures = [grpc.StatusCode.UNAVAILABLE] * 2
    with Client(scripted_server.address, retries=2) as client:
        assert client.generate("ROMEO:", model="only-gpt").text == "hello"
    assert scripted_server.script.calls == 3
    assert len(_retry_records(caplog)) == 2


def test_overloaded_is_retried_only_when_the_caller_asks(scripted_server: Any) -> None:
    scripted_server.script.failures = [grpc.StatusCode.RESOURCE_EXHAUSTED]
    with Client(scripted_server.address, retries=2) as client, pytest.raises(OverloadedError):
        client.generate("ROMEO:", model="only-gpt")
    assert scripted_server.script.calls == 1
    scripted_server.script.failures = [grpc.StatusCode.RESOURCE_EXHAUSTED] * 2
    with Client(scripted_server.address, retries=2, retry_overloaded=True) as client:
        assert client.generate("ROMEO:", model="only-gpt").text == "hello"
    assert scripted_server.script.calls == 1 + 3


async def test_async_client_retries_overloaded_when_asked(scripted_server: Any) -> None:
    scripted_server.script.failures = [grpc.StatusCode.RESOURCE_EXHAUSTED] * 3
    async with AsyncClient(scripted_server.address, retries=2, retry_overloaded=True) as client:
        with pytest.raises(OverloadedError):
            await client.models()
    assert scripted_server.script.calls == 3


def test_unavailable_is_raised_once_the_retries_are_spent(scripted_server: Any) -> None:
    scripted_server.script.failures = [grpc.StatusCode.UNAVAILABLE] * 5
    with Client(scripted_server.address, retries=1) as client, pytest.raises(UnavailableError):
        client.models()
    assert scripted_server.script.calls == 2


async def test_async_client_retries_unavailable(scripted_server: Any) -> None:
    scripted_server.script.failures = [grpc.StatusCode.UNAVAILABLE]
    async with AsyncClient(scripted_server.address, retries=1) as client:
        assert [m.name for m in await client.models()] == ["only-gpt"]
    assert scripted_server.script.calls == 2


def test_a_dead_port_raises_unavailable_after_the_retries(dead_address: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=RETRY_LOGGER)
    with Client(dead_address, retries=2) as client, pytest.raises(UnavailableError) as info:
        client.generate("ROMEO:", model="only-gpt")
    assert info.value.code == grpc.StatusCode.UNAVAILABLE
    assert isinstance(info.value.__cause__, grpc.RpcError)
    # The waits the client chose, from its own log rather than a stopwatch: the default backoff
    # (0.25 s, doubling, equal jitter) waits [0.125, 0.25] s and then [0.25, 0.5] s.
    waits = [float(r.getMessage().rsplit(" in ", 1)[1].removesuffix(" s")) for r in _retry_records(caplog)]
    assert len(waits) == 2
    assert 0.12 <= waits[0] <= 0.25 and 0.25 <= waits[1] <= 0.5, waits


async def test_async_dead_port_raises_unavailable(dead_address: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=RETRY_LOGGER)
    async with AsyncClient(dead_address, retries=1) as client:
        with pytest.raises(UnavailableError):
            await client.generate("ROMEO:", model="only-gpt")
        with pytest.raises(UnavailableError):
            async for _ in client.generate_stream("ROMEO:", model="only-gpt"):
                pass
    assert len(_retry_records(caplog)) == 2


def test_no_retries_when_disabled(dead_address: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=RETRY_LOGGER)
    with Client(dead_address, retries=0) as client, pytest.raises(UnavailableError):
        client.models()
    assert _retry_records(caplog) == []


def test_a_slow_answer_raises_deadline_exceeded(scripted_server: Any) -> None:
    scripted_server.script.delay = 1.0
    with Client(scripted_server.address, timeout=0.2) as client, pytest.raises(DeadlineExceededError):
        client.models()


def test_a_call_timeout_overrides_the_client_default(scripted_server: Any) -> None:
    scripted_server.script.delay = 1.0
    with Client(scripted_server.address, timeout=30) as client, pytest.raises(DeadlineExceededError):
        client.generate("ROMEO:", model="only-gpt", timeout=0.2)


def test_a_stream_is_retried_before_its_first_chunk(scripted_server: Any) -> None:
    scripted_server.script.failures = [grpc.StatusCode.UNAVAILABLE]
    with Client(scripted_server.address, retries=1) as client:
        text = "".join(chunk.text for chunk in client.generate_stream("ROMEO:", model="only-gpt"))
    assert text == "hello"
    assert scripted_server.script.calls == 2


@pytest.mark.parametrize("client_type", [Client, AsyncClient])
async def test_a_stream_that_breaks_after_a_chunk_is_not_retried(scripted_server: Any, client_type: type) -> None:
    scripted_server.script.fail_stream_after_first_chunk = grpc.StatusCode.UNAVAILABLE
    received = []
    with pytest.raises(UnavailableError, match="mid-stream"):
        if client_type is Client:
            with Client(scripted_server.address, retries=3) as client:
                for chunk in client.generate_stream("ROMEO:", model="only-gpt"):
                    received.append(chunk.text)
        else:
            async with AsyncClient(scripted_server.address, retries=3) as aclient:
                async for chunk in aclient.generate_stream("ROMEO:", model="only-gpt"):
                    received.append(chunk.text)
    assert received == ["hel"]
    assert scripted_server.script.calls == 1


def test_from_rpc_error_maps_a_real_call_error(dead_address: str) -> None:
    channel = grpc.insecure_channel(dead_address)
    method = channel.unary_unary("/attnserve.v1.ModelService/ListModels")
    with pytest.raises(grpc.RpcError) as info:
        method(b"", timeout=2)
    channel.close()
    error = from_rpc_error(info.value)
    assert isinstance(error, UnavailableError)
    assert error.details


def test_from_rpc_error_handles_an_error_without_status() -> None:
    error = from_rpc_error(grpc.RpcError("no status"))
    assert isinstance(error, ServerError)
    assert error.code == grpc.StatusCode.UNKNOWN
