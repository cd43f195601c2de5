"""The one error-mapping decorator, on unary and streaming methods of a real in-process aio server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest

from attnserve_client.pb import text_generation_pb2, text_generation_pb2_grpc
from attnserve_server.api.status import STATUS_CODES, grpc_errors, status_code
from attnserve_server.errors import (
    DeadlineExceededError,
    FailedPreconditionError,
    InvalidArgumentError,
    ModelNotFoundError,
    ResourceExhaustedError,
    UnavailableError,
)

ERRORS: dict[str, Exception] = {
    "invalid": InvalidArgumentError("bad top_p"),
    "missing": ModelNotFoundError("no model named 'x'"),
    "busy": ResourceExhaustedError("busy"),
    "late": DeadlineExceededError("too late"),
    "down": UnavailableError("shutting down"),
    "wrong-task": FailedPreconditionError("not a text model"),
    "bug": KeyError("secret internal detail"),
}
EXPECTED = {
    "invalid": grpc.StatusCode.INVALID_ARGUMENT,
    "missing": grpc.StatusCode.NOT_FOUND,
    "busy": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "late": grpc.StatusCode.DEADLINE_EXCEEDED,
    "down": grpc.StatusCode.UNAVAILABLE,
    "wrong-task": grpc.StatusCode.FAILED_PRECONDITION,
    "bug": grpc.StatusCode.INTERNAL,
}


class FailingServicer(text_generation_pb2_grpc.TextGenerationServiceServicer):
    """Raises the error named by the request's model field."""

    @grpc_errors
    async def Generate(self, request: Any, context: Any) -> text_generation_pb2.GenerateResponse:  # noqa: N802
        if request.model in ERRORS:
            raise ERRORS[request.model]
        return text_generation_pb2.GenerateResponse(text="ok")

    @grpc_errors
    async def GenerateStream(self, request: Any, context: Any) -> AsyncIterator[Any]:  # noqa: N802
        yield text_generation_pb2.GenerateStreamResponse(text="first")
        if request.model in ERRORS:
            raise ERRORS[request.model]
        yield text_generation_pb2.GenerateStreamResponse(text="second")


@pytest.fixture(scope="module")
async def address() -> AsyncIterator[str]:
    server = grpc.aio.server()
    text_generation_pb2_grpc.add_TextGenerationServiceServicer_to_server(FailingServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield f"127.0.0.1:{port}"
    await server.stop(None)


@pytest.fixture
def stub(address: str) -> Iterator[text_generation_pb2_grpc.TextGenerationServiceStub]:
    with grpc.insecure_channel(address) as channel:
        yield text_generation_pb2_grpc.TextGenerationServiceStub(channel)


@pytest.mark.parametrize("kind", list(ERRORS))
async def test_unary_errors_map_to_status_codes(
    stub: text_generation_pb2_grpc.TextGenerationServiceStub, kind: str
) -> None:
    def call() -> grpc.RpcError:
        with pytest.raises(grpc.RpcError) as info:
            stub.Generate(text_generation_pb2.GenerateRequest(model=kind), timeout=5)
        return info.value

    error = await asyncio.to_thread(call)
    assert error.code() == EXPECTED[kind]
    details = error.details()
    if kind == "bug":
        assert "secret" not in details  # internals stay in the server log
    else:
        assert details == str(ERRORS[kind])


@pytest.mark.parametrize("kind", list(ERRORS))
async def test_stream_errors_map_to_status_codes_after_chunks(
    stub: text_generation_pb2_grpc.TextGenerationServiceStub, kind: str
) -> None:
    def call() -> tuple[list[str], grpc.RpcError]:
        got: list[str] = []
        with pytest.raises(grpc.RpcError) as info:
            for chunk in stub.GenerateStream(text_generation_pb2.GenerateRequest(model=kind), timeout=5):
                got.append(chunk.text)
        return got, info.value

    got, error = await asyncio.to_thread(call)
    assert got == ["first"]
    assert error.code() == EXPECTED[kind]


async def test_success_passes_through(stub: text_generation_pb2_grpc.TextGenerationServiceStub) -> None:
    reply = await asyncio.to_thread(stub.Generate, text_generation_pb2.GenerateRequest(model="fine"), timeout=5)
    assert reply.text == "ok"
    chunks = await asyncio.to_thread(
        lambda: [c.text for c in stub.GenerateStream(text_generation_pb2.GenerateRequest(model="fine"), timeout=5)]
    )
    assert chunks == ["first", "second"]


def test_wrapper_keeps_the_method_name() -> None:
    assert FailingServicer.Generate.__name__ == "Generate"
    assert FailingServicer.GenerateStream.__name__ == "GenerateStream"


def test_every_domain_error_has_a_status_code() -> None:
    from attnserve_server import errors

    domain = [
        cls
        for cls in vars(errors).values()
        if isinstance(cls, type) and issubclass(cls, errors.AttnserveError) and cls is not errors.AttnserveError
    ]
    assert domain
    for cls in domain:
        assert cls in STATUS_CODES, f"{cls.__name__} has no gRPC status code"


def test_subclasses_inherit_their_parents_code() -> None:
    class PromptTooLongError(InvalidArgumentError):
        pass

    assert status_code(PromptTooLongError("x")) == grpc.StatusCode.INVALID_ARGUMENT
    assert status_code(ValueError("x")) == grpc.StatusCode.INTERNAL
