"""The reference image preprocessing: a decoded image into the model's input, exactly as its metadata says.

The server runs it on every request image, and the exporter on every training, evaluation and
parity image, so a model is served on the pixels it was trained on.

decode → convert to ``L`` or ``RGB`` → resize (policy, filter) → scale to [0, 1] → normalise → CHW.

Two optional facts describe models imported from Hugging Face folders (``attnserve-export import``),
whose image processors do things the two original policies cannot express exactly; a model that
sets neither is preprocessed exactly as before:

- ``transparency="white"``: images with an alpha channel (or a transparent palette colour) are
  composited onto white before the conversion to RGB, as transformers' ``convert_to_rgb`` does
  (Pillow's plain ``convert`` drops the alpha channel instead).
- ``resize_policy="resize_then_center_crop"``: transformers' resize then center crop: the shorter
  side to ``shortest_edge`` (the longer one to ``int(shortest_edge * long / short)``), or the whole
  image to ``resize_to`` = (height, width); then a crop of ``height × width`` whose offsets are
  rounded down.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
from PIL import Image

ResampleName = Literal["nearest", "bilinear", "bicubic", "lanczos"]
ResizePolicy = Literal["resize", "resize_center_crop", "resize_then_center_crop"]
Transparency = Literal["white"]

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
    # resize_then_center_crop: exactly one of the two.
    shortest_edge: int | None = None
    resize_to: tuple[int, int] | None = None  # (height, width)
    transparency: Transparency | None = None

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


def resize_then_center_crop(
    image: Image.Image,
    height: int,
    width: int,
    resample: int,
    *,
    shortest_edge: int | None = None,
    resize_to: tuple[int, int] | None = None,
) -> Image.Image:
    """transformers' image processors: resize (shortest edge, or to a fixed size), then center crop.

    The crop's offsets round down, and the long side of a shortest-edge resize is truncated, as in
    ``transformers.image_transforms``. The metadata guarantees that the crop lies inside the image.
    """
    w, h = image.size
    if shortest_edge is not None:
        short, long = (w, h) if w <= h else (h, w)
        new_long = int(shortest_edge * long / short)
        new_h, new_w = (new_long, shortest_edge) if w <= h else (shortest_edge, new_long)
    elif resize_to is not None:
        new_h, new_w = resize_to
    else:
        raise ValueError("resize_then_center_crop needs shortest_edge or resize_to")
    image = image.resize((new_w, new_h), resample)
    top, left = (new_h - height) // 2, (new_w - width) // 2
    return image.crop((left, top, left + width, top + height))


def composite_on_white(image: Image.Image) -> Image.Image:
    """An RGB image with transparency composited onto white (transformers' ``convert_to_rgb``)."""
    if "A" not in image.getbands() and image.info.get("transparency") is None:
        return image.convert("RGB")
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def preprocess(image: Image.Image, spec: InputSpec) -> npt.NDArray[np.float32]:
    """One image as a float32 ``(channels, height, width)`` array."""
    if spec.transparency == "white" and spec.mode == "RGB" and image.mode != "RGB":
        image = composite_on_white(image)
    elif image.mode != spec.mode:
        image = image.convert(spec.mode)
    resample = RESAMPLE[spec.resample]
    if spec.resize_policy == "resize":
        if image.size != (spec.width, spec.height):
            image = image.resize((spec.width, spec.height), resample)
    elif spec.resize_policy == "resize_then_center_crop":
        image = resize_then_center_crop(
            image, spec.height, spec.width, resample, shortest_edge=spec.shortest_edge, resize_to=spec.resize_to
        )
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
