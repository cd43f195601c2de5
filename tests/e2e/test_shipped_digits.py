"""The shipped digit classifiers on images a user makes from the dataset, through the real
server and client: 8x8 values 0-16 -> 8-bit grey (v * 255 / 16) -> bicubic 64x64 -> PNG or JPEG."""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from attnserve_client import Client

MODELS = Path(__file__).resolve().parents[2] / "models"
BATCH = 60


def user_made_image(values: np.ndarray, fmt: str) -> bytes:
    grey = np.clip(np.round(values * 255 / 16), 0, 255).astype(np.uint8)
    image = Image.fromarray(grey, mode="L").resize((64, 64), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def shipped_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    log = tmp_path_factory.mktemp("digits") / "server.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "attnserve_server", "--model-repository", str(MODELS), "--port", str(port)],
            stdout=out,
            stderr=out,
            env=dict(os.environ),
        )
    address = f"127.0.0.1:{port}"
    try:
        with Client(address, timeout=2.0, retries=0) as client:
            deadline = time.monotonic() + 60
            while not client.health():
                assert process.poll() is None, log.read_text()
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.2)
        yield address
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)


@pytest.mark.parametrize("model", ["digits-vit", "digits-swin"])
@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_user_made_test_digits_are_classified(shipped_server: str, model: str, fmt: str) -> None:
    digits = load_digits()
    _, test_images, _, test_labels = train_test_split(
        digits.images, digits.target, test_size=0.2, random_state=0, stratify=digits.target
    )
    assert len(test_images) == 360
    encoded = [user_made_image(values, fmt) for values in test_images]
    predicted: list[int] = []
    with Client(shipped_server) as client:
        labels = client.get_model(model).image_classification.labels  # type: ignore[union-attr]
        for start in range(0, len(encoded), BATCH):
            results = client.classify_batch(encoded[start : start + BATCH], model=model, top_k=1)
            predicted += [top[0].index for top in results]
    accuracy = float(np.mean(np.asarray(predicted) == test_labels))
    # The models reach >= 98.5 % on the test split; JPEG's compression may cost a digit or two.
    assert accuracy >= 0.98, f"{model} on {fmt}: {accuracy:.4f}"
    assert len(labels) == 10
