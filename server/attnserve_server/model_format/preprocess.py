"""The reference image preprocessing: a decoded image into the model's input, exactly as its metadata says.

The server runs it on every request image, and the exporter on every training, evaluation and
parity image, so a model is served on the pixels it was trained on.

decode → convert to ``L`` or ``RGB`` → resize (policy, filter) → scale to [0, 1] → normalise → CHW.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
from PIL import Image

ResampleName = Literal["nearest", "bilinear", "bicubic", "lanczos"]
ResizePolicy = Literal["resize", "resize_center_crop"]

RESAMPLE: dict[str, Image.Resampling] = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


@dataclass(frozen=True)
class InputSpec:
    """The preprocessing facts of one model version (from its ``image_classification`` metadata)."""

    channels: int
    height: int
    width: int
    resample: ResampleName
    resize_policy: ResizePolicy
    crop_ratio: float | None
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def mode(self) -> str:
        """The Pillow mode the image is converted to."""
        return "L" if self.channels == 1 else "RGB"


def resize_center_crop(image: Image.Image, height: int, width: int, crop_ratio: float, resample: int) -> Image.Image:
    """timm's eval transform: scale so the image covers ``floor(size / crop_ratio)``, then center-crop.

    For a square input this is "resize the shorter side to ``floor(size / crop_ratio)``", as timm
    does; for a non-square one each side must cover its own scaled size.
    """
    w, h = image.size
    scale = max(math.floor(height / crop_ratio) / h, math.floor(width / crop_ratio) / w)
    new_w, new_h = max(width, round(w * scale)), max(height, round(h * scale))
    image = image.resize((new_w, new_h), resample)
    top = round((new_h - height) / 2.0)
    left = round((new_w - width) / 2.0)
    return image.crop((left, top, left + width, top + height))


def preprocess(image: Image.Image, spec: InputSpec) -> npt.NDArray[np.float32]:
    """One image as a float32 ``(channels, height, width)`` array."""
    if image.mode != spec.mode:
        image = image.convert(spec.mode)
    resample = RESAMPLE[spec.resample]
    if spec.resize_policy == "resize":
        if image.size != (spec.width, spec.height):
            image = image.resize((spec.width, spec.height), resample)
    else:
        assert spec.crop_ratio is not None  # required by the metadata model for this policy
        image = resize_center_crop(image, spec.height, spec.width, spec.crop_ratio, resample)
    pixels = np.asarray(image, dtype=np.float32) / 255.0  # (H, W) for L, (H, W, C) for RGB
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]  # (H, W, 1)
    mean = np.asarray(spec.mean, dtype=np.float32)
    std = np.asarray(spec.std, dtype=np.float32)
    pixels = (pixels - mean) / std  # (H, W, C)
    return np.ascontiguousarray(pixels.transpose(2, 0, 1), dtype=np.float32)  # (C, H, W)
