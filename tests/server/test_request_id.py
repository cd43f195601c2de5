"""Every RPC of a real server returns a request id in its trailing metadata: the client's, or a new one."""

from __future__ import annotations

import re
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from attnserve_client import Client, InvalidArgumentError, ModelNotFoundError
from attnserve_client.pb import (
    image_classification_pb2,
    image_classification_pb2_grpc,
    models_pb2,
    models_pb2_grpc,
    text_generation_pb2,
    text_generation_pb2_grpc,
)

TEXT = "tiny-gpt"
IMAGE = "tiny-digits"
KEY = "x-request-id"
GENERATED = re.compile(r"^[0-9a-f]{32}$")


def trailing_id(call: grpc.Call) -> str | None:
    ids = [value for key, value in call.trailing_metadata() or () if key == KEY]
    assert len(ids) <= 1, ids
    return ids[0] if ids else None


@pytest.fixture(scope="module")
def channel(image_server_address: str) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(image_server_address) as channel:
        yield channel


def generate_request(model: str = TEXT) -> text_generation_pb2.GenerateRequest:
    # Seeded: with a random seed the tiny model sometimes samples its end-of-text token early.
    parameters = text_generation_pb2.GenerationParameters(max_new_tokens=3, seed=1)
    return text_generation_pb2.GenerateRequest(model=model, prompt="ROMEO.", parameters=parameters)


def test_a_given_id_is_echoed_on_success(channel: grpc.Channel) -> None:
    stub = text_generation_pb2_grpc.TextGenerationServiceStub(channel)
    _, call = stub.Generate.with_call(generate_request(), metadata=[(KEY, "trace-42/a.b")], timeout=30)
    assert trailing_id(call) == "trace-42/a.b"


def test_an_id_is_generated_when_none_is_given(channel: grpc.Channel) -> None:
    stub = text_generation_pb2_grpc.TextGenerationServiceStub(channel)
    ids = []
    for _ in range(2):
        _, call = stub.Generate.with_call(generate_request(), timeout=30)
        ids.append(trailing_id(call))
    assert all(rid is not None and GENERATED.match(rid) for rid in ids), ids
    assert ids[0] != ids[1]


def test_an_unusable_id_is_replaced(channel: grpc.Channel) -> None:
    stub = models_pb2_grpc.ModelServiceStub(channel)
    _, call = stub.ListModels.with_call(models_pb2.ListModelsRequest(), metadata=[(KEY, "x" * 129)], timeout=30)
    rid = trailing_id(call)
    assert rid is not None and GENERATED.match(rid)


@pytest.mark.parametrize("given", ["err-1", None])
def test_an_error_carries_the_id(channel: grpc.Channel, given: str | None) -> None:
    stub = text_generation_pb2_grpc.TextGenerationServiceStub(channel)
    metadata = [(KEY, given)] if given else None
    with pytest.raises(grpc.RpcError) as info:
        stub.Generate(generate_request("no-such-model"), metadata=metadata, timeout=30)
    error = info.value
    assert error.code() == grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]
    rid = trailing_id(error)  # type: ignore[arg-type]
    assert rid == given if given else rid is not None and GENERATED.match(rid)


def test_an_unparseable_request_carries_the_id(channel: grpc.Channel) -> None:
    call = channel.unary_unary("/attnserve.v1.ImageClassificationService/Classify")
    with pytest.raises(grpc.RpcError) as info:
        call(b"\xff\xff\xff", metadata=[(KEY, "garbled")], timeout=30)  # not a ClassifyRequest
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert trailing_id(info.value) == "garbled"  # type: ignore[arg-type]


def test_a_stream_carries_the_id(channel: grpc.Channel) -> None:
    stub = text_generation_pb2_grpc.TextGenerationServiceStub(channel)
    call = stub.GenerateStream(generate_request(), metadata=[(KEY, "stream-7")], timeout=30)
    chunks = list(call)
    assert chunks and chunks[-1].usage.completion_tokens == 3
    assert trailing_id(call) == "stream-7"  # type: ignore[arg-type]


def test_a_failed_stream_carries_the_id(channel: grpc.Channel) -> None:
    stub = text_generation_pb2_grpc.TextGenerationServiceStub(channel)
    call = stub.GenerateStream(generate_request(IMAGE), metadata=[(KEY, "stream-8")], timeout=30)
    with pytest.raises(grpc.RpcError) as info:
        list(call)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION  # type: ignore[attr-defined]
    assert trailing_id(info.value) == "stream-8"  # type: ignore[arg-type]


def test_classify_and_health_carry_the_id(channel: grpc.Channel) -> None:
    classify = image_classification_pb2_grpc.ImageClassificationServiceStub(channel)
    with pytest.raises(grpc.RpcError) as info:
        classify.Classify(
            image_classification_pb2.ClassifyRequest(model=IMAGE, images=[b"junk"]),
            metadata=[(KEY, "img-1")],
            timeout=30,
        )
    assert trailing_id(info.value) == "img-1"  # type: ignore[arg-type]
    health = health_pb2_grpc.HealthStub(channel)
    _, call = health.Check.with_call(health_pb2.HealthCheckRequest(), metadata=[(KEY, "probe-1")], timeout=30)
    assert trailing_id(call) == "probe-1"


def test_the_client_errors_expose_the_id(image_server_address: str) -> None:
    with Client(image_server_address, timeout=30) as client:
        with pytest.raises(ModelNotFoundError) as not_found:
            client.generate("x", model="no-such-model")
        with pytest.raises(InvalidArgumentError) as invalid:
            client.classify(b"junk", model=IMAGE)
    ids = [not_found.value.request_id, invalid.value.request_id]
    assert all(rid is not None and GENERATED.match(rid) for rid in ids), ids
    assert ids[0] != ids[1]
    assert ids[0] in repr(not_found.value)


def test_a_client_side_error_has_no_id() -> None:
    with Client("127.0.0.1:1", timeout=5) as client, pytest.raises(InvalidArgumentError) as info:
        client.generate("", model=TEXT)  # refused before sending
    assert info.value.request_id is None
