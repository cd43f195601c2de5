"""Digits and ImageFolder data, and the preprocessing, which is the server's own."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from attnserve_export.image_data import (
    ImageSpec,
    load_digits_splits,
    load_image_folder,
    preprocess,
    random_affine,
    render_digit,
)
from attnserve_export.image_export import build_classifier_metadata
from attnserve_server.model_format import preprocess as model_format_preprocess


@pytest.fixture(scope="module")
def digits():
    return load_digits_splits()


def test_digits_split(digits) -> None:
    assert len(digits.test) == 360
    assert len(digits.train) + len(digits.validation) + len(digits.test) == 1797
    assert digits.classes == [str(i) for i in range(10)]
    counts = np.bincount([label for _, label in digits.test], minlength=10)
    assert counts.min() >= 35  # stratified: about 36 of each
    assert load_digits_splits().test[0][1] == digits.test[0][1]  # fixed


def test_render_digit_like_a_user() -> None:
    values = np.zeros((8, 8))
    values[2:6, 3] = 16
    small = render_digit(values, size=8)
    assert small.mode == "L" and small.size == (8, 8)
    assert np.asarray(small)[3, 3] == 255 and np.asarray(small)[0, 0] == 0  # light ink on dark
    assert render_digit(values).size == (64, 64)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_saved_file_preprocesses_like_training(digits, fmt: str) -> None:
    """A digit saved as a file and decoded again gives (nearly) the model input used in training."""
    spec = ImageSpec()
    image, _ = digits.test[0]
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, quality=95)
    decoded = Image.open(io.BytesIO(buffer.getvalue()))
    a, b = preprocess(image, spec), preprocess(decoded, spec)
    assert a.shape == b.shape == (1, 32, 32) and a.dtype == np.float32
    assert np.abs(a - b).max() <= (0 if fmt == "PNG" else 0.1)


def test_preprocess_matches_the_metadata_formula() -> None:
    spec = ImageSpec(channels=3, height=4, width=6, resample="nearest", mean=(0.1, 0.2, 0.3), std=(0.5, 0.5, 0.25))
    rgb = np.random.default_rng(0).integers(0, 256, (4, 6, 3), dtype=np.uint8)
    out = preprocess(Image.fromarray(rgb), spec)  # already the model size: resize is the identity
    expected = (rgb / 255.0 - np.array([0.1, 0.2, 0.3])) / np.array([0.5, 0.5, 0.25])
    np.testing.assert_allclose(out, expected.transpose(2, 0, 1), rtol=1e-5, atol=1e-5)
    assert preprocess(Image.fromarray(rgb).convert("L"), ImageSpec(height=2, width=3)).shape == (1, 2, 3)


def test_resize_center_crop() -> None:
    spec = ImageSpec(height=8, width=8, resize_policy="resize_center_crop", crop_ratio=0.5, resample="nearest")
    wide = Image.new("L", (40, 20))
    assert preprocess(wide, spec).shape == (1, 8, 8)
    section = build_classifier_metadata(spec, ["a"], description="", provenance={}).to_json_dict()
    assert section["image_classification"]["crop_ratio"] == 0.5
    plain = build_classifier_metadata(ImageSpec(), ["a"], description="", provenance={}).to_json_dict()
    assert "crop_ratio" not in plain["image_classification"]


def test_the_exporter_preprocesses_with_the_servers_code() -> None:
    """One implementation: the exporter's ``preprocess`` is the model format's, and an ImageSpec is an InputSpec."""
    assert preprocess is model_format_preprocess.preprocess
    spec = ImageSpec(channels=3, resize_policy="resize_center_crop", crop_ratio=0.875, mean=[0.5] * 3, std=[0.5] * 3)
    assert isinstance(spec, model_format_preprocess.InputSpec)
    assert spec.mean == (0.5, 0.5, 0.5)  # lists from JSON become tuples
    assert ImageSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec  # a checkpoint's round trip


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"channels": 2, "mean": (0.5,) * 2, "std": (0.5,) * 2}, "channels"),
        ({"resample": "box"}, "resample"),
        ({"resize_policy": "resize_center_crop"}, "crop_ratio"),
        ({"crop_ratio": 0.875}, "crop_ratio"),  # only meaningful with resize_center_crop
        ({"mean": (0.5, 0.5)}, "one value per channel"),
        ({"std": (0.0,)}, "positive"),
    ],
)
def test_image_spec_follows_the_metadata_rules(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ImageSpec(**fields)


def test_random_affine_is_seeded(digits) -> None:
    import torch

    image, _ = digits.train[0]
    a = random_affine(image, torch.Generator().manual_seed(1))
    b = random_affine(image, torch.Generator().manual_seed(1))
    assert a.size == image.size
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(image))


def test_image_folder(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for name in ("cat", "dog"):
        (tmp_path / name).mkdir()
        for i in range(10):
            Image.fromarray(rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)).save(tmp_path / name / f"{i}.png")
    (tmp_path / "dog" / "notes.txt").write_text("not an image")
    splits = load_image_folder(tmp_path)
    assert splits.classes == ["cat", "dog"]
    assert len(splits.test) == 4 and len(splits.train) + len(splits.validation) == 16
    assert {label for _, label in splits.test} == {0, 1}
