"""EmbeddingService.Embed on a real server, through the real client, against the PyTorch modules.

Each model in the repository was exported by attnserve-export with random weights (see conftest.py);
the vectors the server returns must match the module's own hidden states within 1e-4.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from attnserve_client import AsyncClient, Client, InvalidArgumentError, ServerError
from attnserve_client.pb import embeddings_pb2, embeddings_pb2_grpc

from .conftest import png

TOLERANCE = 1e-4
TEXTS = ["ROMEO. But soft, what light", "To be", "Le café est très chaud; la crème brûlée", "🙂"]


def pooled(states: np.ndarray, pooling: str, *, class_token: bool = False) -> np.ndarray:
    """The reference pooling of one layer ``(T, D)``."""
    if pooling == "last":
        return states[-1]
    if pooling == "cls":
        return states[0]
    return (states[1:] if class_token else states).mean(axis=0)


@pytest.mark.parametrize("model", ["emb-gpt", "emb-gpt-rotary"])
@pytest.mark.parametrize(("pooling", "layer"), [(None, None), ("last", 1), ("mean", None), ("mean", 0), ("none", -2)])
def test_text_vectors_match_pytorch(client: Client, reference, model: str, pooling: str | None, layer) -> None:  # type: ignore[no-untyped-def]
    result = client.embed(TEXTS, model=model, pooling=pooling, layer=layer)
    assert result.layer == (2 if layer is None else layer % 3) and result.dim == 32
    assert result.pooling == ("last" if pooling in (None, "none") else pooling)
    for index, text in enumerate(TEXTS):
        states = reference.text_states(model, text)[result.layer]  # (T, D), alone
        np.testing.assert_allclose(result.vectors[index], pooled(states, result.pooling), atol=TOLERANCE)
        if pooling == "none":
            np.testing.assert_allclose(result.tokens[index], states, atol=TOLERANCE)
            pieces = result.token_texts[index]  # each token's own slice of the text
            assert all(piece and piece in text for piece in pieces)
            if text.isascii():  # a byte-level token inside a multi-byte character shows the whole character
                assert "".join(pieces) == text
        else:
            assert result.tokens is None and result.token_texts is None


@pytest.mark.parametrize(
    ("model", "pooling", "layer", "expected_pooling"),
    [
        ("emb-vit", None, None, "cls"),
        ("emb-vit", "mean", 1, "mean"),
        ("emb-vit", "none", 0, "cls"),
        ("emb-swin", None, None, "mean"),
        ("emb-swin", "mean", 0, "mean"),
        ("emb-swin", "none", 1, "mean"),
    ],
)
def test_image_vectors_match_pytorch(  # type: ignore[no-untyped-def]  # noqa: PLR0917 (parametrized)
    client: Client, reference, model: str, pooling: str | None, layer, expected_pooling: str
) -> None:
    size = reference.specs[model].height
    images = [png(seed, size) for seed in range(3)]
    result = client.embed(images, model=model, pooling=pooling, layer=layer)
    assert result.pooling == expected_pooling
    for index, image in enumerate(images):
        states = reference.image_states(model, image)[result.layer]  # (T, D)
        assert result.dim == states.shape[1]
        expected = pooled(states, expected_pooling, class_token=model == "emb-vit")
        np.testing.assert_allclose(result.vectors[index], expected, atol=TOLERANCE)
        if pooling == "none":
            np.testing.assert_allclose(result.tokens[index], states, atol=TOLERANCE)
            assert result.token_texts is None


def test_swin_layers_are_stages_of_their_own_width(client: Client) -> None:
    """Swin: layer 0 is the patch embedding, then one layer per stage; widths and token counts differ."""
    image = [png(7, 20)]
    shapes = [client.embed(image, model="emb-swin", pooling="none", layer=layer).tokens[0].shape for layer in range(3)]
    assert shapes == [(100, 16), (100, 16), (25, 32)]


def test_texts_give_the_same_vectors_batched_and_alone(client: Client, embeddings_address: str) -> None:
    together = client.embed(TEXTS, model="emb-gpt-rotary", pooling="none")
    for index, text in enumerate(TEXTS):
        alone = client.embed([text], model="emb-gpt-rotary", pooling="none")
        np.testing.assert_allclose(together.vectors[index], alone.vectors[0], atol=1e-5)
        np.testing.assert_allclose(together.tokens[index], alone.tokens[0], atol=1e-5)

    async def concurrently() -> list[np.ndarray]:
        # Separate requests at once: the batcher merges them into shared, left-padded graph calls.
        async with AsyncClient(embeddings_address) as aclient:
            results = await asyncio.gather(*(aclient.embed([t], model="emb-gpt-rotary") for t in TEXTS * 3))
        return [r.vectors[0] for r in results]

    for index, vector in enumerate(asyncio.run(concurrently())):
        np.testing.assert_allclose(vector, together.vectors[index % len(TEXTS)], atol=1e-5)


def test_images_give_the_same_vectors_batched_and_alone(client: Client) -> None:
    images = [png(seed) for seed in range(5)]
    together = client.embed(images, model="emb-vit", pooling="mean")
    for index, image in enumerate(images):
        alone = client.embed([image], model="emb-vit", pooling="mean")
        np.testing.assert_allclose(together.vectors[index], alone.vectors[0], atol=1e-5)


@pytest.mark.parametrize(("model", "inputs"), [("emb-gpt", TEXTS), ("emb-swin", [png(1, 20), png(2, 20)])])
def test_normalize_gives_unit_vectors(client: Client, model: str, inputs: list[object]) -> None:
    raw = client.embed(inputs, model=model)
    unit = client.embed(inputs, model=model, normalize=True)
    np.testing.assert_allclose(np.linalg.norm(unit.vectors, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(
        unit.vectors, raw.vectors / np.linalg.norm(raw.vectors, axis=1, keepdims=True), atol=1e-5
    )
    tokens = client.embed(inputs, model=model, pooling="none", normalize=True).tokens
    for per_input in tokens:
        np.testing.assert_allclose(np.linalg.norm(per_input, axis=1), 1.0, atol=1e-5)


def test_async_client_matches_sync(client: Client, embeddings_address: str) -> None:
    async def embed() -> np.ndarray:
        async with AsyncClient(embeddings_address) as aclient:
            return (await aclient.embed(TEXTS, model="emb-gpt", pooling="mean")).vectors

    np.testing.assert_array_equal(asyncio.run(embed()), client.embed(TEXTS, model="emb-gpt", pooling="mean").vectors)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"inputs": [png(0, 20)], "model": "emb-swin", "pooling": "cls"}, "takes one of mean, none"),
        ({"inputs": ["hi"], "model": "emb-gpt", "pooling": "cls"}, "takes one of last, mean, none"),
        ({"inputs": [png(0)], "model": "emb-vit", "pooling": "last"}, "takes one of cls, mean, none"),
        ({"inputs": ["hi"], "model": "emb-gpt", "layer": 3}, "layer must be in [-3, 2]"),
        ({"inputs": ["hi"], "model": "emb-vit"}, "embeds images, not texts"),
        ({"inputs": [png(0)], "model": "emb-gpt"}, "embeds texts, not images"),
        ({"inputs": ["hi"] * 1001, "model": "emb-gpt"}, "more than model 'emb-gpt' embeds per request (1000"),
        ({"inputs": ["x"] * 33, "model": "emb-vit"}, "embeds images, not texts"),
        ({"inputs": [png(0)] * 33, "model": "emb-vit"}, "per request (32, embeddings.max_inputs"),
        ({"inputs": ["word " * 40], "model": "emb-gpt"}, "over the limit of 32 tokens per text"),
        ({"inputs": ["word " * 5000], "model": "emb-gpt"}, "longer than 32 tokens can be"),
        ({"inputs": [""], "model": "emb-gpt"}, "texts[0] is empty"),
        # 1000 texts of 30 one-byte tokens (no merges) of 32 floats each: over 4 MiB of token-wise vectors.
        ({"inputs": ["~^" * 15] * 1000, "model": "emb-gpt", "pooling": "none"}, "over the 4 MiB response limit"),
    ],
)
def test_bad_requests_are_invalid_argument_and_the_server_keeps_serving(
    client: Client, arguments: dict[str, object], message: str
) -> None:
    with pytest.raises(InvalidArgumentError, match=None) as raised:
        client.embed(**arguments)  # type: ignore[arg-type]
    assert raised.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert message in raised.value.details
    assert client.health()
    assert client.embed(["still here"], model="emb-gpt").vectors.shape == (1, 32)


def test_raw_requests_with_both_kinds_or_none_are_refused(embeddings_address: str) -> None:
    with grpc.insecure_channel(embeddings_address) as channel:
        stub = embeddings_pb2_grpc.EmbeddingServiceStub(channel)
        for request, message in (
            (embeddings_pb2.EmbedRequest(model="emb-vit", texts=["a"], images=[png(0)]), "not both"),
            (embeddings_pb2.EmbedRequest(model="emb-vit"), "images is empty"),
            (embeddings_pb2.EmbedRequest(model="emb-vit", images=[png(0)], pooling=99), "unknown pooling"),  # type: ignore[arg-type]
            (embeddings_pb2.EmbedRequest(model="emb-vit", images=[b"not an image"]), "image 0"),
        ):
            with pytest.raises(grpc.RpcError) as raised:
                stub.Embed(request, timeout=30)
            assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT, raised.value.details()
            assert message in raised.value.details()


def test_the_graph_opens_on_the_first_request_that_needs_it(
    embeddings_reference: tuple[Path, Any], server_launcher: Callable[..., Any]
) -> None:
    server = server_launcher(embeddings_reference[0])
    opened = "opened the embeddings graph of model emb-vit"
    with Client(server.address) as client:
        assert client.classify(png(0), model="emb-vit")
        assert opened not in server.stderr()  # loading and classifying leave it closed
        client.embed([png(0)], model="emb-vit")
    assert server.stderr().count(opened) == 1


def test_a_version_without_the_graph_says_so(client: Client) -> None:
    with pytest.raises(ServerError) as raised:
        client.embed([png(0)], model="emb-legacy")
    assert raised.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "has no embeddings graph" in raised.value.details and "attnserve-export embeddings" in raised.value.details
    assert client.classify(png(0), model="emb-legacy")  # the model itself still serves
