"""preprocess: exactly what the metadata says (mode, resize policy and filter, scaling, normalisation, CHW)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from attnserve_server.model_format.preprocess import InputSpec, preprocess
from attnserve_server.vision.classifier import softmax, top_k


def spec(**changes: object) -> InputSpec:
    values: dict[str, object] = {
        "channels": 1,
        "height": 8,
        "width": 8,
        "resample": "bicubic",
        "resize_policy": "resize",
        "crop_ratio": None,
        "mean": (0.5,),
        "std": (0.25,),
    }
    values.update(changes)
    return InputSpec(**values)  # type: ignore[arg-type]


def test_grey_resize_scale_normalise() -> None:
    image = Image.new("L", (16, 16), 255)
    out = preprocess(image, spec())
    assert out.shape == (1, 8, 8)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, (1.0 - 0.5) / 0.25)


def test_rgb_is_chw_with_per_channel_normalisation() -> None:
    image = Image.new("RGB", (8, 8), (255, 0, 51))
    out = preprocess(image, spec(channels=3, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 0.5)))
    assert out.shape == (3, 8, 8)
    np.testing.assert_allclose(out[:, 0, 0], [1.0, 0.0, 0.4], rtol=1e-6)


def test_colour_is_converted_to_grey_like_pillow_does() -> None:
    image = Image.new("RGB", (8, 8), (200, 100, 50))
    expected = np.asarray(image.convert("L"), dtype=np.float32) / 255
    np.testing.assert_allclose(preprocess(image, spec(mean=(0.0,), std=(1.0,)))[0], expected)


@pytest.mark.parametrize("resample", ["nearest", "bilinear", "bicubic", "lanczos"])
def test_resize_uses_the_named_filter(resample: str) -> None:
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (13, 21), dtype=np.uint8))
    filters = {"nearest": 0, "bilinear": 2, "bicubic": 3, "lanczos": 1}
    expected = np.asarray(image.resize((8, 8), filters[resample]), dtype=np.float32) / 255
    out = preprocess(image, spec(resample=resample, mean=(0.0,), std=(1.0,)))
    np.testing.assert_allclose(out[0], expected)


def test_resize_center_crop_is_timm_style() -> None:
    # 8 / 0.5 = 16: the shorter side (20) goes to 16, the longer (40) to 32, then the centre 8×8.
    array = np.zeros((20, 40), dtype=np.uint8)
    array[:, 16:24] = 255  # a white vertical band in the middle
    out = preprocess(
        Image.fromarray(array), spec(resize_policy="resize_center_crop", crop_ratio=0.5, mean=(0.0,), std=(1.0,))
    )
    expected = Image.fromarray(array).resize((32, 16), Image.Resampling.BICUBIC).crop((12, 4, 20, 12))
    np.testing.assert_allclose(out[0], np.asarray(expected, dtype=np.float32) / 255)


def test_softmax_rows_sum_to_one_and_top_k_is_sorted() -> None:
    logits = np.array([[1.0, 3.0, 2.0, 3.0], [10.0, 0.0, -10.0, 0.0]], dtype=np.float32)
    probs = softmax(logits)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)
    labels = ["a", "b", "c", "d"]
    best = top_k(probs, 3, labels)
    assert [p.label for p in best[0]] == ["b", "d", "c"]  # ties keep the lower index first
    assert [p.index for p in best[1]] == [0, 1, 3]
    assert best[1][0].score == pytest.approx(1 / (1 + 2 * np.exp(-10) + np.exp(-20)))
