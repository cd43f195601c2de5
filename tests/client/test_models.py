"""Model discovery, and the choice of the model when the caller names none.

What a real server reports (``image_server_address``: ``tiny-digits`` and ``tiny-gpt``) is checked
against the repository's own metadata; the scripted server stands in only for the model lists a test
server is not set up to serve (several text models, none at all, a model without an end-of-text token),
where the point is what the client does with the list.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from attnserve_client import AsyncClient, Client, InvalidArgumentError, ModelInfo, ModelNotFoundError
from attnserve_client.pb import models_pb2

TEXT, IMAGE = "tiny-gpt", "tiny-digits"
IMAGE_MODEL = models_pb2.ModelInfo(name="vit", task="image-classification", versions=["1"], default_version="1")


def test_models_are_typed_and_say_what_the_repository_holds(image_server_address: str, image_repository: Path) -> None:
    text_meta = json.loads((image_repository / TEXT / "1" / "metadata.json").read_text())["text_generation"]
    image_meta = json.loads((image_repository / IMAGE / "1" / "metadata.json").read_text())["image_classification"]
    labels = json.loads((image_repository / IMAGE / "1" / "labels.json").read_text())
    with Client(image_server_address) as client:
        models = client.models()
    assert all(type(m) is ModelInfo for m in models)
    by_name = {m.name: m for m in models}
    assert set(by_name) == {TEXT, IMAGE}
    text, image = by_name[TEXT], by_name[IMAGE]
    assert (text.task, text.versions, text.default_version) == ("text-generation", ("1",), "1")
    assert text.text_generation is not None and text.image_classification is None
    assert text.text_generation.context_length == text_meta["context_length"]
    assert text.text_generation.vocab_size == text_meta["vocab_size"]
    assert text.text_generation.eos_token == text_meta["eos_token"]
    assert text.text_generation.max_new_tokens_limit == 48  # the copy's config.yaml
    assert (image.task, image.versions) == ("image-classification", ("1",))
    assert image.text_generation is None and image.image_classification is not None
    assert list(image.image_classification.labels) == labels
    spec = image.image_classification.input
    assert (spec.channels, spec.height, spec.width) == (
        image_meta["channels"],
        image_meta["height"],
        image_meta["width"],
    )


def test_without_a_model_the_only_text_generation_model_is_used(image_server_address: str) -> None:
    with Client(image_server_address) as client:  # one text model, one image model
        assert client.generate("ROMEO:", max_new_tokens=2, seed=1).model == TEXT
        chunks = list(client.generate_stream("ROMEO:", max_new_tokens=2, seed=1))
    assert chunks[0].model == TEXT


async def test_async_without_a_model_the_only_text_generation_model_is_used(image_server_address: str) -> None:
    async with AsyncClient(image_server_address) as client:
        assert (await client.generate("ROMEO:", max_new_tokens=2, seed=1)).model == TEXT


def test_get_model_of_an_unknown_name_raises_model_not_found(image_server_address: str) -> None:
    with Client(image_server_address) as client:
        assert client.get_model(TEXT).name == TEXT
        with pytest.raises(ModelNotFoundError, match="nope"):
            client.get_model("nope")
        with pytest.raises(InvalidArgumentError):
            client.get_model("")


def test_several_text_generation_models_require_a_choice(scripted_server: Any) -> None:
    scripted_server.script.models.append(models_pb2.ModelInfo(name="other-gpt", task="text-generation"))
    with Client(scripted_server.address) as client, pytest.raises(InvalidArgumentError, match="other-gpt"):
        client.generate("ROMEO:")
    assert scripted_server.script.requests == []  # refused before anything was sent


def test_no_text_generation_model_raises_model_not_found(scripted_server: Any) -> None:
    scripted_server.script.models[:] = [IMAGE_MODEL]
    with Client(scripted_server.address) as client, pytest.raises(ModelNotFoundError):
        next(client.generate_stream("ROMEO:"))
    assert scripted_server.script.requests == []


def test_an_unset_end_of_text_token_reads_as_none(scripted_server: Any) -> None:
    with Client(scripted_server.address) as client:
        (model,) = client.models()
    assert model.text_generation is not None and model.text_generation.eos_token is None
