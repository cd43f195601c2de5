"""Golden preprocessing: the exporter's path and the server's path give the same pixels.

``preprocess_golden.npz`` holds arrays computed with the server's formulas at commit 854ceee
(``python tests/golden/test_preprocess_golden.py --write`` made them there). Both the model
format's ``preprocess`` (which the server calls) and the exporter's training data path must
reproduce them to 1e-6: a model is then served on exactly the pixels it was trained on.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

GOLDEN = Path(__file__).with_name("preprocess_golden.npz")


def _noise(shape: tuple[int, ...], seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


def cases() -> dict[str, tuple[Image.Image, dict[str, Any]]]:
    """Each case: a deterministic image and the metadata's preprocessing fields."""
    landscape = Image.fromarray(_noise((60, 100, 3), 1), mode="RGB")  # 100x60
    tall_rgba = Image.fromarray(_noise((90, 30, 4), 2), mode="RGBA")  # 30x90
    palette = Image.fromarray(_noise((40, 50, 3), 3), mode="RGB").quantize(colors=16)  # mode "P"
    return {
        "center_crop_100x60": (
            landscape,
            {
                "channels": 3,
                "height": 32,
                "width": 32,
                "resample": "bilinear",
                "resize_policy": "resize_center_crop",
                "crop_ratio": 0.875,
                "mean": (0.485, 0.456, 0.406),
                "std": (0.229, 0.224, 0.225),
            },
        ),
        "tall_rgba_bicubic": (
            tall_rgba,
            {
                "channels": 3,
                "height": 24,
                "width": 16,
                "resample": "bicubic",
                "resize_policy": "resize",
                "crop_ratio": None,
                "mean": (0.5, 0.5, 0.5),
                "std": (0.25, 0.5, 1.0),
            },
        ),
        "palette_grey": (
            palette,
            {
                "channels": 1,
                "height": 16,
                "width": 16,
                "resample": "lanczos",
                "resize_policy": "resize",
                "crop_ratio": None,
                "mean": (0.5,),
                "std": (0.5,),
            },
        ),
    }


def _golden() -> Any:
    return np.load(GOLDEN)


def test_server_preprocess_reproduces_the_golden_arrays() -> None:
    from attnserve_server.model_format.preprocess import InputSpec, preprocess

    golden = _golden()
    for name, (image, fields) in cases().items():
        got = preprocess(image, InputSpec(**fields))
        np.testing.assert_allclose(got, golden[name], atol=1e-6, rtol=0, err_msg=name)


def test_export_preprocess_reproduces_the_golden_arrays() -> None:
    from attnserve_export.image_data import ImageSpec, preprocess

    golden = _golden()
    for name, (image, fields) in cases().items():
        got = preprocess(image, ImageSpec(**fields))
        np.testing.assert_allclose(got, golden[name], atol=1e-6, rtol=0, err_msg=name)


def _write() -> None:  # run once, at 854ceee, with the server's own formulas of then
    from attnserve_server.vision.preprocess import InputSpec, preprocess  # type: ignore[import-not-found]

    arrays = {name: preprocess(image, InputSpec(**fields)) for name, (image, fields) in cases().items()}
    np.savez_compressed(GOLDEN, **arrays)


if __name__ == "__main__" and "--write" in sys.argv:
    _write()
