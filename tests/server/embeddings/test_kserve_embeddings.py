"""The ``embeddings`` output of the KServe v2 API, through tritonclient, against EmbeddingService.Embed."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

from attnserve_client import Client

from .conftest import png

TEXTS = ["ROMEO. But soft, what light", "To be", "🙂"]


@pytest.fixture(scope="module")
def v2(embeddings_address: str) -> Iterator[triton.InferenceServerClient]:
    with triton.InferenceServerClient(embeddings_address) as c:
        yield c


def bytes_input(name: str, values: list[bytes]) -> triton.InferInput:
    tensor = triton.InferInput(name, [len(values)], "BYTES")
    tensor.set_data_from_numpy(np.array(values, dtype=object))
    return tensor


def infer(
    v2: triton.InferenceServerClient, model: str, name: str, values: list[bytes], **parameters: object
) -> np.ndarray:
    result = v2.infer(
        model,
        [bytes_input(name, values)],
        outputs=[triton.InferRequestedOutput("embeddings")],
        parameters=parameters or None,
        client_timeout=60,
    )
    array: np.ndarray = result.as_numpy("embeddings")
    return array


def test_text_embeddings_match_the_embed_rpc(v2: triton.InferenceServerClient, client: Client) -> None:
    got = infer(v2, "emb-gpt", "text_input", [t.encode() for t in TEXTS], pooling="mean", layer=1, normalize=True)
    expected = client.embed(TEXTS, model="emb-gpt", pooling="mean", layer=1, normalize=True).vectors
    assert got.shape == (3, 32) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_image_embeddings_and_token_wise_tensors(v2: triton.InferenceServerClient, client: Client) -> None:
    images = [png(seed) for seed in range(2)]
    np.testing.assert_allclose(infer(v2, "emb-vit", "image", images), client.embed(images, model="emb-vit").vectors)
    tokens = infer(v2, "emb-vit", "image", images, pooling="none", layer=0)
    assert tokens.shape == (2, 17, 32)  # class token + 16 patches
    expected = client.embed(images, model="emb-vit", pooling="none", layer=0).tokens
    np.testing.assert_allclose(tokens, np.stack(expected), atol=1e-6)


def test_the_output_is_not_listed_so_clients_that_ask_for_every_output_keep_working(
    v2: triton.InferenceServerClient,
) -> None:
    outputs = [o.name for o in v2.get_model_metadata("emb-swin").outputs]
    assert outputs == ["logits"]
    image = bytes_input("image", [png(0, 20)])
    result = v2.infer("emb-swin", [image], outputs=[triton.InferRequestedOutput(n) for n in outputs])
    assert result.as_numpy("logits").shape == (1, 10)


@pytest.mark.parametrize(
    ("model", "name", "values", "parameters", "message"),
    [
        ("emb-swin", "image", [png(0, 20)], {"pooling": "cls"}, "takes one of mean, none"),
        ("emb-gpt", "text_input", [b"a b", b"a b c d e f"], {"pooling": "none"}, "one token count"),
        ("emb-gpt", "text_input", [b"x"], {"pooling": "max"}, "parameter 'pooling' must be one of"),
        ("emb-gpt", "text_input", [b"x"], {"normalize": 1}, "parameter 'normalize' must be a bool"),
        ("emb-vit", "text_input", [b"x"], {}, "embeds images, not texts"),
    ],
)
def test_bad_requests_are_invalid_argument(  # noqa: PLR0917 (parametrized)
    v2: triton.InferenceServerClient,
    model: str,
    name: str,
    values: list[bytes],
    parameters: dict[str, object],
    message: str,
) -> None:
    with pytest.raises(InferenceServerException) as raised:
        infer(v2, model, name, values, **parameters)
    assert raised.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert message in raised.value.message()
    assert v2.is_server_ready()
