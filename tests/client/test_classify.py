"""classify / classify_batch of Client and AsyncClient against a real server serving ``tiny-digits``."""

from __future__ import annotations

import io
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from PIL import Image

from attnserve_client import (
    AsyncClient,
    Client,
    ImageClassificationInfo,
    InvalidArgumentError,
    ModelNotFoundError,
    Prediction,
    ServerError,
)

MODEL = "tiny-digits"
LABELS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


@pytest.fixture(scope="module")
def client(image_server_address: str) -> Iterator[Client]:
    with Client(image_server_address, timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
async def aclient(image_server_address: str) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(image_server_address, timeout=30) as client:
        yield client


def pixels(seed: int = 0, colour: bool = False) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (24, 24, 3) if colour else (24, 24), dtype=np.uint8)


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def test_every_kind_of_input_gives_the_same_predictions(client: Client, tmp_path: Path) -> None:
    array = pixels(1)
    path = tmp_path / "digit.png"
    path.write_bytes(png(array))
    inputs: list[object] = [png(array), path, str(path), Image.fromarray(array), array, bytearray(png(array))]
    results = [client.classify(image, model=MODEL, top_k=10) for image in inputs]  # type: ignore[arg-type]
    for result in results[1:]:
        assert result == results[0]
    first = results[0]
    assert all(isinstance(p, Prediction) for p in first)
    assert [p.score for p in first] == sorted((p.score for p in first), reverse=True)
    assert sum(p.score for p in first) == pytest.approx(1.0, abs=1e-5)
    assert {p.label for p in first} == set(LABELS)
    assert all(p.label == LABELS[p.index] for p in first)


def test_rgb_arrays_and_jpeg_files_are_accepted(client: Client, tmp_path: Path) -> None:
    path = tmp_path / "digit.jpg"
    Image.fromarray(pixels(2, colour=True)).save(path, format="JPEG")
    assert len(client.classify(pixels(2, colour=True), model=MODEL, top_k=2)) == 2
    assert len(client.classify(path, model=MODEL)) == 5  # the server's default top_k


def test_batch_returns_one_list_per_image_in_order(client: Client) -> None:
    arrays = [pixels(seed) for seed in range(4)]
    batch = client.classify_batch(arrays, model=MODEL, top_k=3)
    assert len(batch) == 4
    for array, predictions in zip(arrays, batch, strict=True):
        alone = client.classify(array, model=MODEL, top_k=3)
        assert [p.index for p in predictions] == [p.index for p in alone]
        assert [p.score for p in predictions] == pytest.approx([p.score for p in alone], rel=1e-4)


def test_model_can_be_left_out_when_one_image_model_is_served(client: Client) -> None:
    assert client.classify(pixels(), top_k=1)[0].label in LABELS


def test_model_info_describes_the_image_model(client: Client) -> None:
    info = client.get_model(MODEL)
    assert info.task == "image-classification"
    assert info.text_generation is None
    assert isinstance(info.image_classification, ImageClassificationInfo)
    assert info.image_classification.labels == LABELS
    assert (info.image_classification.input.channels, info.image_classification.input.height) == (1, 16)
    assert info.image_classification.max_images_per_request == 64
    text = next(m for m in client.models() if m.task == "text-generation")
    assert text.image_classification is None


@pytest.mark.parametrize(
    ("images", "kwargs", "message"),
    [
        ([], {}, "at least one image"),
        ("digit.png", {}, "images must be a list of images"),
        ([pixels()], {"top_k": 0}, "top_k must be >= 1"),
        ([pixels().astype(np.float32)], {}, "image 0: a numpy image must have dtype uint8"),
        ([np.zeros((4, 4, 4), dtype=np.uint8)], {}, r"must be H×W or H×W×3"),
        ([b"ok", 42], {}, "image 1 is a int"),
        ([Path("/no/such/file.png")], {}, "image 0: cannot read"),
        ([b""], {}, "image 0 is empty"),
    ],
    ids=["none", "a-string", "top-k", "float-array", "four-channels", "int", "missing-file", "empty-bytes"],
)
def test_local_validation_before_sending(client: Client, images: object, kwargs: dict[str, int], message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        client.classify_batch(images, model=MODEL, **kwargs)  # type: ignore[arg-type]


def test_server_side_errors_are_typed(client: Client) -> None:
    with pytest.raises(InvalidArgumentError, match="image 1 is not a PNG, JPEG, WebP or BMP image"):
        client.classify_batch([pixels(), b"not an image"], model=MODEL)
    with pytest.raises(InvalidArgumentError, match=r"top_k must be in \[1, 10\]"):
        client.classify(pixels(), model=MODEL, top_k=11)
    with pytest.raises(ModelNotFoundError):
        client.classify(pixels(), model="no-such-model")
    assert client.health()


async def test_async_client_classifies_like_the_sync_one(aclient: AsyncClient, client: Client) -> None:
    array = pixels(5)
    expected = client.classify(array, model=MODEL, top_k=4)
    assert await aclient.classify(array, model=MODEL, top_k=4) == expected
    batch = await aclient.classify_batch([array, png(array)], model=MODEL, top_k=4)
    assert batch == [expected, expected]
    with pytest.raises(InvalidArgumentError, match="image 0 is not a PNG"):
        await aclient.classify(b"junk", model=MODEL)
    info = await aclient.get_model(MODEL)
    assert info.image_classification is not None


def run_without(blocked: tuple[str, ...], code: str, address: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter where importing any of ``blocked`` fails."""
    prelude = "import sys\n" + "".join(f"sys.modules[{name!r}] = None\n" for name in blocked)
    return subprocess.run(
        [sys.executable, "-c", prelude + code, address],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_bytes_and_paths_need_neither_numpy_nor_pillow(image_server_address: str, tmp_path: Path) -> None:
    path = tmp_path / "digit.png"
    path.write_bytes(png(pixels(7)))
    code = (
        "from attnserve_client import Client\n"
        "with Client(sys.argv[1], timeout=30) as c:\n"
        f"    a = c.classify({str(path)!r}, model={MODEL!r}, top_k=3)\n"
        f"    b = c.classify(open({str(path)!r}, 'rb').read(), model={MODEL!r}, top_k=3)\n"
        "assert a == b and len(a) == 3, (a, b)\n"
        "assert 'numpy' not in [m for m in sys.modules if sys.modules[m] is not None]\n"
        "print(a[0].label)\n"
    )
    result = run_without(("numpy", "PIL"), code, image_server_address)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() in LABELS


def test_arrays_without_pillow_say_which_extra_to_install(image_server_address: str) -> None:
    code = (
        "import numpy as np\n"
        "from attnserve_client import Client\n"
        "with Client(sys.argv[1]) as c:\n"
        "    try:\n"
        f"        c.classify(np.zeros((4, 4), dtype=np.uint8), model={MODEL!r})\n"
        "    except ImportError as e:\n"
        "        print(e)\n"
    )
    result = run_without(("PIL", "PIL.Image"), code, image_server_address)
    assert result.returncode == 0, result.stderr
    assert "pip install 'attnserve-client[images]'" in result.stdout


def test_classify_is_retried_on_unavailable_and_sends_what_was_asked(scripted_server: Any) -> None:
    scripted_server.script.failures = [grpc.StatusCode.UNAVAILABLE]
    with Client(scripted_server.address, timeout=10) as client:
        predictions = client.classify(b"\x89PNG-ish", model="digits", top_k=1, model_version="3")
    assert predictions == [Prediction(label="seven", index=7, score=0.75)]
    assert scripted_server.script.calls == 2
    sent = scripted_server.script.classify_requests[-1]
    assert (sent.model, list(sent.images), sent.top_k, sent.model_version) == ("digits", [b"\x89PNG-ish"], 1, "3")


def test_unset_top_k_is_not_sent(scripted_server: Any) -> None:
    with Client(scripted_server.address, timeout=10) as client:
        client.classify(b"img", model="digits")
    assert not scripted_server.script.classify_requests[-1].HasField("top_k")


async def test_a_response_with_the_wrong_number_of_classifications_is_a_server_error(scripted_server: Any) -> None:
    scripted_server.script.classifications = 1
    async with AsyncClient(scripted_server.address, timeout=10) as client:
        with pytest.raises(ServerError, match="1 classifications for 2 images"):
            await client.classify_batch([b"a", b"b"], model="digits")


def test_model_is_required_when_no_image_model_is_served(scripted_server: Any) -> None:
    with (
        Client(scripted_server.address, timeout=10) as client,
        pytest.raises(ModelNotFoundError, match="no image-classification model"),
    ):
        client.classify(b"img")
