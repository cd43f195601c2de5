"""The model format's preprocessing facts for imported image models, and that other models are untouched.

``resize_then_center_crop`` (a shortest-edge or fixed resize, then a center crop, rounded as
transformers rounds) and ``transparency: white`` (alpha composited onto white, as transformers'
``convert_to_rgb``) are optional metadata fields; a model without them gets the same pixels and the
same ``metadata.json`` as before (tests/golden holds the pixels of the existing policies).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from attnserve_export.image_data import ImageSpec
from attnserve_server.model_format.metadata import ModelMetadata, write_metadata
from attnserve_server.model_format.preprocess import InputSpec, preprocess, resize_then_center_crop
from attnserve_server.vision.metadata import ImageClassificationMetadata

transformers = pytest.importorskip("transformers")


def _section(**changes: object) -> ImageClassificationMetadata:
    fields: dict[str, object] = {
        "labels_file": "labels.json",
        "num_classes": 2,
        "input_name": "pixel_values",
        "output_name": "logits",
        "channels": 3,
        "height": 8,
        "width": 8,
        "resample": "bilinear",
        "resize_policy": "resize",
        "mean": (0.5, 0.5, 0.5),
        "std": (0.5, 0.5, 0.5),
    }
    return ImageClassificationMetadata.model_validate(fields | changes)


def _noise(width: int, height: int, mode: str = "RGB", seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, 4), dtype=np.uint8)
    return Image.fromarray(pixels, mode="RGBA").convert(mode) if mode != "RGBA" else Image.fromarray(pixels, "RGBA")


def test_metadata_without_the_new_fields_is_written_as_before(tmp_path: Path) -> None:
    write_metadata(tmp_path, ModelMetadata.of(_section(), model_file="model.onnx"))
    section = json.loads((tmp_path / "metadata.json").read_text())["image_classification"]
    assert sorted(section) == sorted(
        ["labels_file", "num_classes", "input_name", "output_name", "channels", "height", "width", "resample",
         "resize_policy", "mean", "std"]
    )  # fmt: skip


@pytest.mark.parametrize(
    ("changes", "says"),
    [
        ({"resize_policy": "resize_then_center_crop"}, "needs one of shortest_edge and resize_to"),
        ({"resize_policy": "resize_then_center_crop", "shortest_edge": 9, "resize_to": (9, 9)}, "needs one of"),
        ({"resize_policy": "resize_then_center_crop", "shortest_edge": 7}, "at least the larger of height and width"),
        ({"resize_policy": "resize_then_center_crop", "resize_to": (9, 7)}, "at least height x width"),
        ({"shortest_edge": 9}, "only meaningful with resize_then_center_crop"),
        ({"transparency": "white", "channels": 1, "mean": (0.5,), "std": (0.5,)}, "only meaningful with 3 channels"),
        ({"transparency": "black"}, "transparency"),
    ],
)
def test_inconsistent_fields_are_refused(changes: dict[str, object], says: str) -> None:
    with pytest.raises(ValueError, match=says):
        _section(**changes)


def test_the_fields_travel_through_the_input_spec() -> None:
    section = _section(resize_policy="resize_then_center_crop", resize_to=(10, 12), transparency="white")
    spec = section.input_spec()
    assert (spec.resize_to, spec.shortest_edge, spec.transparency) == ((10, 12), None, "white")
    again = ImageClassificationMetadata.from_input_spec(
        spec, labels_file="labels.json", num_classes=2, input_name="pixel_values", output_name="logits"
    )
    assert again == section
    assert ImageSpec.from_dict(json.loads(json.dumps(ImageSpec(**vars(spec)).to_dict()))).resize_to == (10, 12)


def _processor_pixels(image: Image.Image, **settings: object) -> np.ndarray:
    processor = transformers.ViTImageProcessorPil(**settings)
    return np.asarray(processor(image, return_tensors="np")["pixel_values"][0])


@pytest.mark.parametrize("size", [(17, 23), (23, 17), (40, 40), (101, 64), (64, 101), (333, 41)])
@pytest.mark.parametrize(
    "resize",
    [{"shortest_edge": 24}, {"shortest_edge": 37}, {"height": 30, "width": 26}],
    ids=["edge24", "edge37", "30x26"],
)
def test_resize_then_center_crop_is_transformers_resize_and_crop(size: tuple[int, int], resize: dict[str, int]) -> None:
    image = _noise(*size)
    crop = {"height": 24, "width": 20}
    expected = _processor_pixels(image, size=resize, do_center_crop=True, crop_size=crop, resample=3)
    spec = InputSpec(
        channels=3, height=24, width=20, resample="bicubic", resize_policy="resize_then_center_crop", crop_ratio=None,
        mean=(0.5,) * 3, std=(0.5,) * 3, shortest_edge=resize.get("shortest_edge"),
        resize_to=(resize["height"], resize["width"]) if "height" in resize else None,
    )  # fmt: skip
    np.testing.assert_allclose(preprocess(image, spec), expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P", "L", "RGB"])
def test_transparency_white_is_transformers_convert_to_rgb(mode: str) -> None:
    image = _noise(31, 19, mode)
    if mode == "P":
        image.info["transparency"] = 3
    expected = _processor_pixels(image, size={"height": 16, "width": 16}, do_convert_rgb=True)
    spec = InputSpec(
        channels=3, height=16, width=16, resample="bilinear", resize_policy="resize", crop_ratio=None,
        mean=(0.5,) * 3, std=(0.5,) * 3, transparency="white",
    )  # fmt: skip
    np.testing.assert_allclose(preprocess(image, spec), expected, atol=1e-6, rtol=0)


def test_without_transparency_alpha_is_dropped_as_before() -> None:
    clear = Image.new("RGBA", (4, 4), (10, 20, 30, 0))
    spec = InputSpec(3, 4, 4, "nearest", "resize", None, (0.0,) * 3, (1.0,) * 3)
    np.testing.assert_allclose(preprocess(clear, spec)[:, 0, 0], np.array([10, 20, 30]) / 255, atol=1e-7)
    white = InputSpec(3, 4, 4, "nearest", "resize", None, (0.0,) * 3, (1.0,) * 3, transparency="white")
    np.testing.assert_allclose(preprocess(clear, white)[:, 0, 0], [1.0, 1.0, 1.0], atol=1e-7)


def test_the_crop_offsets_round_down() -> None:
    """An odd margin leaves the extra pixel at the right and bottom, as transformers' center_crop does."""
    image = Image.fromarray(np.arange(5 * 7, dtype=np.uint8).reshape(5, 7) * 7, mode="L")
    cropped = resize_then_center_crop(image, 2, 2, Image.Resampling.NEAREST, resize_to=(5, 7))
    assert np.array_equal(np.asarray(cropped), np.asarray(image)[1:3, 2:4])
