"""Model discovery, and the choice of the model when the caller names none (scripted server)."""

from __future__ import annotations

from typing import Any

import pytest

from attnserve_client import AsyncClient, Client, InvalidArgumentError, ModelInfo, ModelNotFoundError
from attnserve_client.pb import models_pb2

IMAGE_MODEL = models_pb2.ModelInfo(name="vit", task="image-classification", versions=["1"], default_version="1")


def test_models_are_typed(scripted_server: Any) -> None:
    scripted_server.script.models.append(IMAGE_MODEL)
    with Client(scripted_server.address) as client:
        models = client.models()
    assert [type(m) for m in models] == [ModelInfo, ModelInfo]
    text, image = models
    assert text.text_generation is not None
    assert text.text_generation.context_length == 64
    assert text.text_generation.eos_token is None  # unset in the scripted model
    assert text.versions == ("1",)
    assert image.task == "image-classification"
    assert image.text_generation is None


def test_without_a_model_the_only_text_generation_model_is_used(scripted_server: Any) -> None:
    scripted_server.script.models.append(IMAGE_MODEL)
    with Client(scripted_server.address) as client:
        assert client.generate("ROMEO:").model == "only-gpt"
        chunks = list(client.generate_stream("ROMEO:"))
    assert chunks[0].model == "only-gpt"
    assert [r.model for r in scripted_server.script.requests] == ["only-gpt", "only-gpt"]


async def test_async_without_a_model_the_only_text_generation_model_is_used(scripted_server: Any) -> None:
    async with AsyncClient(scripted_server.address) as client:
        assert (await client.generate("ROMEO:")).model == "only-gpt"


def test_several_text_generation_models_require_a_choice(scripted_server: Any) -> None:
    scripted_server.script.models.append(models_pb2.ModelInfo(name="other-gpt", task="text-generation"))
    with Client(scripted_server.address) as client, pytest.raises(InvalidArgumentError, match="other-gpt"):
        client.generate("ROMEO:")
    assert scripted_server.script.requests == []


def test_no_text_generation_model_raises_model_not_found(scripted_server: Any) -> None:
    scripted_server.script.models[:] = [IMAGE_MODEL]
    with Client(scripted_server.address) as client, pytest.raises(ModelNotFoundError):
        next(client.generate_stream("ROMEO:"))


def test_get_model_of_an_unknown_name_raises_model_not_found(scripted_server: Any) -> None:
    with Client(scripted_server.address) as client:
        assert client.get_model("only-gpt").name == "only-gpt"
        with pytest.raises(ModelNotFoundError, match="nope"):
            client.get_model("nope")
        with pytest.raises(InvalidArgumentError):
            client.get_model("")
