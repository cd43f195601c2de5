"""Client.embed and `attnserve embed`: arguments checked before sending, the typed result, the CLI."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from attnserve_client import Client, Embeddings, InvalidArgumentError
from attnserve_client.core import ClientCore
from attnserve_client.embeddings import EmbeddingRequest, to_embeddings
from attnserve_client.pb import embeddings_pb2

MODEL = "tiny-gpt"  # the shared tiny server's model, exported with its embeddings graph


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8), mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"inputs": "one text"}, "list of texts or of images"),
        ({"inputs": []}, "at least one"),
        ({"inputs": ["a", _png()]}, "mix texts"),
        ({"inputs": ["a"], "pooling": "max"}, "pooling must be one of mean, last, cls, none"),
        ({"inputs": ["a"], "layer": 1.5}, "layer must be an integer"),
        ({"inputs": ["a"], "normalize": 1}, "normalize must be True or False"),
        ({"inputs": ["a"], "model": ""}, "model must be a non-empty string"),
    ],
)
def test_bad_arguments_raise_before_any_attempt(arguments: dict[str, object], message: str) -> None:
    plan = ClientCore("unused:1", timeout=5, retries=0, retry_overloaded=False)._embed_plan(
        arguments["inputs"],  # type: ignore[arg-type]
        arguments.get("model", "m"),  # type: ignore[arg-type]
        arguments.get("pooling"),  # type: ignore[arg-type]
        arguments.get("layer"),  # type: ignore[arg-type]
        arguments.get("normalize", False),  # type: ignore[arg-type]
        None,
        None,
    )
    with pytest.raises(InvalidArgumentError, match=message):
        next(plan)


def test_images_are_encoded_and_texts_sent_as_they_are(tmp_path: Path) -> None:
    path = tmp_path / "digit.png"
    path.write_bytes(_png())
    images = EmbeddingRequest.create([path], model="m", pooling="none", layer=-1, normalize=True, model_version=None)
    assert images.images == (_png(),) and not images.is_text
    message = images.to_proto("m")
    assert message.pooling == embeddings_pb2.POOLING_NONE and message.layer == -1 and message.normalize
    texts = EmbeddingRequest.create(
        ["a", "b"], model=None, pooling=None, layer=None, normalize=False, model_version="2"
    )
    message = texts.to_proto("m")
    assert list(message.texts) == ["a", "b"] and not message.HasField("layer") and message.model_version == "2"


def _response() -> embeddings_pb2.EmbedResponse:
    response = embeddings_pb2.EmbedResponse(
        model="m", model_version="1", pooling=embeddings_pb2.POOLING_LAST, layer=2, dim=2, token_wise=True
    )
    for offset in (0.0, 10.0):
        entry = response.embeddings.add(vector=[offset, offset + 1])
        entry.tokens.add(text="a", vector=[offset, 1.0])
        entry.tokens.add(text="b", vector=[offset, 2.0])
    return response


def test_vectors_are_numpy_arrays_with_numpy_and_lists_without() -> None:
    arrays = to_embeddings(_response(), inputs=2, texts=True)
    assert (
        isinstance(arrays.vectors, np.ndarray) and arrays.vectors.shape == (2, 2) and arrays.vectors.dtype == np.float32
    )
    assert arrays.tokens is not None and arrays.tokens[1].shape == (2, 2)
    assert arrays.token_texts == [["a", "b"], ["a", "b"]] and arrays.pooling == "last" and arrays.layer == 2
    lists = to_embeddings(_response(), inputs=2, texts=True, numpy=None)
    assert lists.vectors == [[0.0, 1.0], [10.0, 11.0]] and lists.tokens == [
        [[0.0, 1.0], [0.0, 2.0]],
        [[10.0, 1.0], [10.0, 2.0]],
    ]


def test_embed_without_a_model_picks_the_only_text_model(server_address: str) -> None:
    with Client(server_address) as client:
        result = client.embed(["To be"])
        named = client.embed(["To be"], model=MODEL)
    assert isinstance(result, Embeddings)
    np.testing.assert_array_equal(result.vectors, named.vectors)


def run_cli(*args: str, target: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONIOENCODING": "utf-8", "ATTNSERVE_TARGET": target}
    return subprocess.run([sys.executable, "-m", "attnserve_client", *args], capture_output=True, text=True, env=env,
                          timeout=60, check=False)  # fmt: skip


def test_cli_prints_vectors_and_writes_npy(server_address: str, tmp_path: Path) -> None:
    with Client(server_address) as client:
        expected = client.embed(["To be", "or not"], model=MODEL, pooling="mean", normalize=True)
    printed = run_cli(
        "embed", "To be", "or not", "--model", MODEL, "--pooling", "mean", "--normalize", target=server_address
    )
    assert printed.returncode == 0, printed.stderr
    lines = printed.stdout.splitlines()
    assert [line.split("\t")[0] for line in lines] == ["To be", "or not"]
    np.testing.assert_allclose(
        [[float(v) for v in line.split("\t")[1].split()] for line in lines], expected.vectors, rtol=1e-5
    )
    out = tmp_path / "vectors.npy"
    args = ["embed", "To be", "or not", "--model", MODEL, "--pooling", "mean", "--normalize", "--out", str(out)]
    written = run_cli(*args, target=server_address)
    assert written.returncode == 0, written.stderr
    np.testing.assert_array_equal(np.load(out), expected.vectors)
    tokens = run_cli("embed", "To be", "--model", MODEL, "--pooling", "none", target=server_address)
    assert tokens.returncode == 0 and "  'To'\t" in tokens.stdout


def test_cli_reports_an_invalid_pooling_with_the_choices(server_address: str) -> None:
    failed = run_cli("embed", "To be", "--model", MODEL, "--pooling", "cls", target=server_address)
    assert failed.returncode == 1
    assert "takes one of last, mean, none" in failed.stderr and "INVALID_ARGUMENT" in failed.stderr
