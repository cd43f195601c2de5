"""Image data for the classifiers: scikit-learn's digits, ImageFolder directories, preprocessing.

Every image reaches the model through :func:`preprocess`, which *is* the server's reference
preprocessing (:mod:`attnserve_server.model_format.preprocess`, re-exported here): convert to
``L``/``RGB`` → resize (policy, filter) → /255 → (x - mean) / std → CHW. There is no second copy
of those formulas on this side, so a model is trained and evaluated on the pixels it will be
served on. :class:`ImageSpec` is the server's :class:`InputSpec` with the exporter's defaults.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from pydantic import ValidationError
from sklearn.datasets import load_digits  # type: ignore[import-untyped]
from sklearn.model_selection import train_test_split  # type: ignore[import-untyped]

from attnserve_server.model_format.metadata import format_validation_error
from attnserve_server.model_format.preprocess import InputSpec, ResampleName, ResizePolicy, preprocess
from attnserve_server.vision.metadata import ImageClassificationMetadata

__all__ = [
    "ImageSpec",
    "ImageSplits",
    "InputSpec",
    "load_digits_splits",
    "load_image_folder",
    "preprocess",
    "random_affine",
    "render_digit",
    "to_batch",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
# The fixed digits split of the issue; the validation set is carved out of the training part.
TEST_SIZE = 0.2
SPLIT_SEED = 0
VALIDATION_SIZE = 0.15
# How a user turns an 8×8 digit into a picture: grey v*255/16, upscaled bicubically to 64×64.
DIGIT_RENDER_SIZE = 64


def _check_input_spec(spec: InputSpec) -> None:
    """Raise ValueError unless the server would accept ``spec`` in a model's metadata.

    The rules are the ``image_classification`` section's own (channels 1 or 3, a known filter,
    ``crop_ratio`` exactly with ``resize_center_crop``, one positive std per channel...), checked
    before training rather than at export time.
    """
    try:  # the section's other fields do not matter here
        ImageClassificationMetadata.from_input_spec(
            spec, labels_file="-", num_classes=1, input_name="-", output_name="-"
        )
    except ValidationError as exc:
        raise ValueError(f"invalid image preprocessing: {format_validation_error(exc)}") from None


@dataclass(frozen=True)
class ImageSpec(InputSpec):
    """The server's :class:`InputSpec` with the exporter's defaults (a 1 × 32 × 32 grey input,
    bilinear resize, mean = std = 0.5), validated when made, and stored in checkpoints as a dict.
    """

    channels: int = 1
    height: int = 32
    width: int = 32
    resample: ResampleName = "bilinear"
    resize_policy: ResizePolicy = "resize"
    crop_ratio: float | None = None
    mean: tuple[float, ...] = (0.5,)
    std: tuple[float, ...] = (0.5,)

    def __post_init__(self) -> None:
        # Lists (from JSON or a caller) become tuples, so that equal specs compare equal.
        object.__setattr__(self, "mean", tuple(self.mean))
        object.__setattr__(self, "std", tuple(self.std))
        if self.resize_to is not None:
            object.__setattr__(self, "resize_to", (int(self.resize_to[0]), int(self.resize_to[1])))
        _check_input_spec(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ImageSpec:
        """The spec :meth:`to_dict` wrote (a checkpoint's ``image_spec``)."""
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def render_digit(values: np.ndarray, size: int = DIGIT_RENDER_SIZE) -> Image.Image:
    """An 8×8 digit with values 0–16 as a user would save it: 8-bit grey ``v*255/16``, bicubic to ``size``."""
    grey = np.clip(np.rint(np.asarray(values, dtype=np.float64) * 255.0 / 16.0), 0, 255).astype(np.uint8)
    image = Image.fromarray(grey, mode="L")
    return image.resize((size, size), Image.Resampling.BICUBIC) if size != grey.shape[0] else image


def random_affine(image: Image.Image, generator: torch.Generator, strength: float = 1.0) -> Image.Image:
    """Augmentation: a small random rotation (±12°), scale (0.85–1.15) and shift (±6% of the size).

    Parameters come from ``generator`` so a seeded run (and its checkpoint) reproduces them.
    """
    u = torch.rand(4, generator=generator).tolist()
    angle = math.radians((u[0] * 2 - 1) * 12 * strength)
    scale = 1 + (u[1] * 2 - 1) * 0.15 * strength
    tx = (u[2] * 2 - 1) * 0.06 * strength * image.width
    ty = (u[3] * 2 - 1) * 0.06 * strength * image.height
    cx, cy = image.width / 2, image.height / 2
    # Pillow wants the inverse map: output (x, y) → input = R(-θ)/s · (out - c - t) + c.
    cos, sin = math.cos(angle) / scale, math.sin(angle) / scale
    a, b, d, e = cos, sin, -sin, cos
    c = cx - a * (cx + tx) - b * (cy + ty)
    f = cy - d * (cx + tx) - e * (cy + ty)
    coeffs = (a, b, c, d, e, f)
    return image.transform(image.size, Image.Transform.AFFINE, coeffs, Image.Resampling.BILINEAR, fillcolor=0)


@dataclass
class ImageSplits:
    """Images with integer labels, split three ways; ``classes[i]`` names label ``i``."""

    classes: list[str]
    train: list[tuple[Image.Image, int]]
    validation: list[tuple[Image.Image, int]]
    test: list[tuple[Image.Image, int]]


def _split(images: list[Image.Image], labels: list[int], classes: list[str], validation_size: float) -> ImageSplits:
    index = np.arange(len(images))
    train_idx, test_idx = train_test_split(index, test_size=TEST_SIZE, random_state=SPLIT_SEED, stratify=labels)
    train_labels = [labels[i] for i in train_idx]
    train_idx, val_idx = train_test_split(
        train_idx, test_size=validation_size, random_state=SPLIT_SEED, stratify=train_labels
    )

    def pick(idx: np.ndarray) -> list[tuple[Image.Image, int]]:
        return [(images[i], labels[i]) for i in idx]

    return ImageSplits(classes, pick(train_idx), pick(val_idx), pick(test_idx))


def load_digits_splits(validation_size: float = VALIDATION_SIZE) -> ImageSplits:
    """scikit-learn's 1,797 digits, rendered as users would, in the fixed split (360 test images)."""
    digits = load_digits()
    images = [render_digit(v) for v in digits.images]
    labels = [int(t) for t in digits.target]
    return _split(images, labels, [str(i) for i in range(10)], validation_size)


def read_image_folder(root: Path) -> tuple[list[Image.Image], list[int], list[str]]:
    """Every image of an ImageFolder tree ``root/<class>/*.png|jpg``, its class index, and the classes
    (the sorted folder names)."""
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise ValueError(f"{root} has no class folders")
    images: list[Image.Image] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        for path in sorted((root / name).iterdir()):
            if path.suffix.lower() in IMAGE_SUFFIXES:
                with Image.open(path) as im:
                    im.load()
                    images.append(im.copy())
                labels.append(label)
    if not images:
        raise ValueError(f"no images under {root}")
    return images, labels, classes


def load_image_folder(root: Path, validation_size: float = VALIDATION_SIZE) -> ImageSplits:
    """An ImageFolder tree ``root/<class>/*.png|jpg``: classes are the sorted folder names.

    Split like the digits: 20% test (stratified, seed 0), then validation from the rest.
    """
    images, labels, classes = read_image_folder(root)
    return _split(images, labels, classes, validation_size)


def to_batch(items: list[tuple[Image.Image, int]], spec: InputSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """Preprocess a list of images: ``(N, C, H, W)`` float32 and ``(N,)`` int64 labels."""
    x = np.stack([preprocess(im, spec) for im, _ in items])  # (N, C, H, W)
    y = np.asarray([label for _, label in items], dtype=np.int64)
    return torch.from_numpy(x), torch.from_numpy(y)
