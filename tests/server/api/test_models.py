"""ModelService through a real server process."""

from __future__ import annotations

import grpc
import pytest

from attnserve_client.pb import models_pb2, models_pb2_grpc, text_generation_pb2, text_generation_pb2_grpc

MODEL = "tiny-gpt"
TIMEOUT = 10.0


def get(stub: models_pb2_grpc.ModelServiceStub, name: str = MODEL) -> models_pb2.ModelInfo:
    return stub.GetModel(models_pb2.GetModelRequest(name=name), timeout=TIMEOUT)


def test_list_models(model_stub: models_pb2_grpc.ModelServiceStub) -> None:
    reply = model_stub.ListModels(models_pb2.ListModelsRequest(), timeout=TIMEOUT)
    assert [m.name for m in reply.models] == [MODEL]


def test_get_model(model_stub: models_pb2_grpc.ModelServiceStub) -> None:
    info = get(model_stub)
    assert info.name == MODEL
    assert info.task == "text-generation"
    assert list(info.versions) == ["1"]
    assert info.default_version == "1"
    assert info.description
    assert info.WhichOneof("task_info") == "text_generation"
    text = info.text_generation
    assert text.context_length == 64  # the tiny preset
    assert text.vocab_size > 256
    assert text.max_new_tokens_limit == 48  # config.yaml
    assert text.eos_token == "<|endoftext|>"
    assert 0 < text.defaults.max_new_tokens <= 48
    assert 0 < text.defaults.top_p <= 1
    assert text.defaults.repetition_penalty > 0


def test_unknown_model_is_not_found(model_stub: models_pb2_grpc.ModelServiceStub) -> None:
    with pytest.raises(grpc.RpcError) as info:
        get(model_stub, "nope")
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert "nope" in (info.value.details() or "")


def test_counters(
    model_stub: models_pb2_grpc.ModelServiceStub, text_stub: text_generation_pb2_grpc.TextGenerationServiceStub
) -> None:
    before = get(model_stub).counters
    reply = text_stub.Generate(
        text_generation_pb2.GenerateRequest(
            model=MODEL, prompt="hi", parameters=text_generation_pb2.GenerationParameters(max_new_tokens=5)
        ),
        timeout=TIMEOUT,
    )
    with pytest.raises(grpc.RpcError):  # refused before it is accepted: not counted
        text_stub.Generate(text_generation_pb2.GenerateRequest(model=MODEL, prompt=""), timeout=TIMEOUT)
    after = get(model_stub).counters
    assert after.requests == before.requests + 1
    assert after.tokens_generated == before.tokens_generated + reply.usage.completion_tokens
    assert after.failures == before.failures
