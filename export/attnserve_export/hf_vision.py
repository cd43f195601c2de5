"""``ViTForImageClassification`` and ``SwinForImageClassification`` folders onto attnserve's ViT and Swin.

The configs map onto :class:`ViTConfig` / :class:`SwinConfig` (LayerNorm epsilon, GELU variant,
qkv bias, MLP width, non-square inputs, and Swin's pad-then-shift order); separate query, key and
value projections are concatenated into one ``qkv`` layer. ``id2label`` becomes the labels, and
``preprocessor_config.json`` the metadata's preprocessing (see :func:`image_spec`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from attnserve_export.hf_checkpoint import CheckpointError, check_all_used, read_json, strip_prefix, take
from attnserve_export.image_data import ImageSpec
from attnserve_export.swin import Swin, SwinConfig
from attnserve_export.vit import ViT, ViTConfig

VIT = "ViTForImageClassification"
SWIN = "SwinForImageClassification"
PREPROCESSOR_CONFIG = "preprocessor_config.json"
ACTIVATIONS = {"gelu": "gelu", "gelu_python": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh"}
# Pillow's filter numbers, as preprocessor_config.json stores them; BOX (4) and HAMMING (5) are not served.
RESAMPLE_NAMES = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic"}
_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_VIT_DEFAULTS: dict[str, Any] = {
    "resample": 2,
    "image_mean": (0.5, 0.5, 0.5),
    "image_std": (0.5, 0.5, 0.5),
    "size": {"height": 224, "width": 224},
    "do_center_crop": False,
    "default_to_square": True,
}
# The image processors whose pipeline is convert → resize → center crop → rescale → normalize, with
# the class defaults that a preprocessor_config.json may leave out.
PROCESSOR_DEFAULTS: dict[str, dict[str, Any]] = {
    "ViTImageProcessor": _VIT_DEFAULTS,
    "ViTFeatureExtractor": _VIT_DEFAULTS,
    "DeiTImageProcessor": {
        **_VIT_DEFAULTS,
        "resample": 3,
        "size": {"height": 256, "width": 256},
        "crop_size": {"height": 224, "width": 224},
        "do_center_crop": True,
    },
    "BitImageProcessor": {
        "resample": 3,
        "image_mean": _CLIP_MEAN,
        "image_std": _CLIP_STD,
        "size": {"shortest_edge": 224},
        "crop_size": {"height": 224, "width": 224},
        "do_center_crop": True,
        "do_convert_rgb": True,
        "default_to_square": False,
    },
}


def _get(config: dict[str, Any], key: str, kind: type, default: Any = None) -> Any:
    value = config.get(key, default)
    if not isinstance(value, kind) or isinstance(value, bool) is not (kind is bool):
        raise CheckpointError(f"config.json: {key} must be a {kind.__name__}, got {value!r}")
    return value


def _activation(config: dict[str, Any]) -> str:
    name = config.get("hidden_act", "gelu")
    if name not in ACTIVATIONS:
        raise CheckpointError(f"hidden_act {name!r} is not supported (supported: {', '.join(sorted(ACTIVATIONS))})")
    return ACTIVATIONS[name]


def _pair(value: Any, key: str) -> int | tuple[int, int]:
    """An int, or a [height, width] pair (an equal pair is one int)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return value[0] if value[0] == value[1] else (value[0], value[1])
    raise CheckpointError(f"config.json: {key} must be an int or a [height, width] pair, got {value!r}")


def labels_of(config: dict[str, Any]) -> list[str]:
    """``id2label`` as a list by class index (``LABEL_i`` where config.json has none)."""
    id2label = config.get("id2label")
    if not isinstance(id2label, dict) or not id2label:
        count = _get(config, "num_labels", int, 2)
        return [f"LABEL_{i}" for i in range(count)]
    try:
        by_index = {int(k): str(v) for k, v in id2label.items()}
    except ValueError:
        raise CheckpointError("config.json: id2label keys must be class indices") from None
    if sorted(by_index) != list(range(len(by_index))):
        raise CheckpointError("config.json: id2label must name every class index from 0 without gaps")
    return [by_index[i] for i in range(len(by_index))]


def _common(config: dict[str, Any]) -> dict[str, Any]:
    if _get(config, "num_channels", int, 3) != 3:
        raise CheckpointError("only 3-channel (RGB) image models can be imported")
    patch = _pair(config.get("patch_size", 16), "patch_size")
    if not isinstance(patch, int):
        raise CheckpointError("only square patches can be imported")
    eps = config.get("layer_norm_eps", 1e-12)
    if not isinstance(eps, (int, float)) or eps <= 0:
        raise CheckpointError(f"layer_norm_eps must be a positive number, got {eps!r}")
    return {
        "image_size": _pair(config.get("image_size", 224), "image_size"),
        "patch_size": patch,
        "in_channels": 3,
        "num_classes": len(labels_of(config)),
        "qkv_bias": _get(config, "qkv_bias", bool, True),
        "activation": _activation(config),
        "ln_eps": float(eps),
        "dropout": 0.0,
        "drop_path": 0.0,
    }


def vit_config(config: dict[str, Any]) -> ViTConfig:
    dim, heads = _get(config, "hidden_size", int, 768), _get(config, "num_attention_heads", int, 12)
    if config.get("head_dim") not in (None, dim // heads):
        raise CheckpointError("config.json: head_dim must be hidden_size / num_attention_heads")
    try:
        return ViTConfig(
            dim=dim,
            depth=_get(config, "num_hidden_layers", int, 12),
            num_heads=heads,
            mlp_hidden_dim=_get(config, "intermediate_size", int, 3072),
            pos_embedding="learned",
            **_common(config),
        )
    except ValueError as exc:
        raise CheckpointError(f"config.json describes no valid ViT: {exc}") from None


def swin_config(config: dict[str, Any]) -> SwinConfig:
    if config.get("use_absolute_embeddings"):
        raise CheckpointError("Swin with absolute position embeddings (use_absolute_embeddings) is not supported")
    try:
        cfg = SwinConfig(
            embed_dim=_get(config, "embed_dim", int, 96),
            depths=tuple(_get(config, "depths", list, [2, 2, 6, 2])),
            num_heads=tuple(_get(config, "num_heads", list, [3, 6, 12, 24])),
            window_size=_get(config, "window_size", int, 7),
            mlp_ratio=float(config.get("mlp_ratio", 4.0)),
            pad_before_shift=True,
            **{**_common(config), "ln_eps": float(config.get("layer_norm_eps", 1e-5))},
        )
    except ValueError as exc:
        raise CheckpointError(f"config.json describes no valid Swin: {exc}") from None
    height, width = cfg.height // cfg.patch_size, cfg.width // cfg.patch_size
    for stage in range(len(cfg.depths)):
        if min(height, width) < cfg.window_size:
            raise CheckpointError(
                f"stage {stage}'s feature map ({height}x{width}) is smaller than window_size {cfg.window_size}; "
                "transformers cannot run such a Swin either"
            )
        height, width = (height + 1) // 2, (width + 1) // 2
    return cfg


def _qkv(w: dict[str, torch.Tensor], prefix: str, dim: int, bias: bool) -> dict[str, torch.Tensor]:
    """``query``/``key``/``value`` under ``prefix`` concatenated into one ``(3 dim, dim)`` layer."""
    out = {"weight": torch.cat([take(w, f"{prefix}.{p}.weight", (dim, dim)) for p in ("query", "key", "value")])}
    if bias:
        out["bias"] = torch.cat([take(w, f"{prefix}.{p}.bias", (dim,)) for p in ("query", "key", "value")])
    return out


def _fill(
    state: dict[str, torch.Tensor], model: torch.nn.Module, pairs: dict[str, str], w: dict[str, torch.Tensor]
) -> None:
    """``state[ours] = w[theirs]`` for each pair, with the shape the model expects."""
    expected = model.state_dict()
    for ours, theirs in pairs.items():
        if ours in expected:  # a layer without bias has no bias entry
            state[ours] = take(w, theirs, tuple(expected[ours].shape))


def vit_state_dict(weights: dict[str, torch.Tensor], model: ViT) -> dict[str, torch.Tensor]:
    """The ViT's state dict from ``ViTForImageClassification`` tensors."""
    cfg = model.config
    w = strip_prefix(weights, "vit.")
    for unused in ("pooler.dense.weight", "pooler.dense.bias", "embeddings.mask_token"):
        w.pop(unused, None)  # ViTModel's pooler and the masked-modeling token: the classifier uses neither
    state: dict[str, torch.Tensor] = {}
    pairs = {
        "cls_token": "embeddings.cls_token",
        "pos_embed": "embeddings.position_embeddings",
        "patch_embed.proj.weight": "embeddings.patch_embeddings.projection.weight",
        "patch_embed.proj.bias": "embeddings.patch_embeddings.projection.bias",
        "norm.weight": "layernorm.weight",
        "norm.bias": "layernorm.bias",
        "head.weight": "classifier.weight",
        "head.bias": "classifier.bias",
    }
    for i in range(cfg.depth):
        theirs = f"encoder.layer.{i}"
        for part in ("weight", "bias"):
            pairs |= {
                f"blocks.{i}.norm1.{part}": f"{theirs}.layernorm_before.{part}",
                f"blocks.{i}.norm2.{part}": f"{theirs}.layernorm_after.{part}",
                f"blocks.{i}.attn.proj.{part}": f"{theirs}.attention.output.dense.{part}",
                f"blocks.{i}.mlp.fc1.{part}": f"{theirs}.intermediate.dense.{part}",
                f"blocks.{i}.mlp.fc2.{part}": f"{theirs}.output.dense.{part}",
            }
        qkv = _qkv(w, f"{theirs}.attention.attention", cfg.dim, cfg.qkv_bias)
        state |= {f"blocks.{i}.attn.qkv.{k}": v for k, v in qkv.items()}
    _fill(state, model, pairs, w)
    check_all_used(w)
    return state


def swin_state_dict(weights: dict[str, torch.Tensor], model: Swin) -> dict[str, torch.Tensor]:
    """The Swin's state dict from ``SwinForImageClassification`` tensors."""
    cfg = model.config
    w = strip_prefix(weights, "swin.")
    w.pop("embeddings.mask_token", None)
    state: dict[str, torch.Tensor] = {}
    pairs = {
        "patch_embed.weight": "embeddings.patch_embeddings.projection.weight",
        "patch_embed.bias": "embeddings.patch_embeddings.projection.bias",
        "patch_norm.weight": "embeddings.norm.weight",
        "patch_norm.bias": "embeddings.norm.bias",
        "norm.weight": "layernorm.weight",
        "norm.bias": "layernorm.bias",
        "head.weight": "classifier.weight",
        "head.bias": "classifier.bias",
    }
    for s, depth in enumerate(cfg.depths):
        dim = cfg.embed_dim * 2**s
        for b in range(depth):
            ours, theirs = f"stages.{s}.blocks.{b}", f"encoder.layers.{s}.blocks.{b}"
            w.pop(f"{theirs}.attention.self.relative_position_index", None)  # a fixed buffer old versions saved
            pairs[f"{ours}.attn.relative_position_bias_table"] = f"{theirs}.attention.self.relative_position_bias_table"
            for part in ("weight", "bias"):
                pairs |= {
                    f"{ours}.norm1.{part}": f"{theirs}.layernorm_before.{part}",
                    f"{ours}.norm2.{part}": f"{theirs}.layernorm_after.{part}",
                    f"{ours}.attn.proj.{part}": f"{theirs}.attention.output.dense.{part}",
                    f"{ours}.mlp.fc1.{part}": f"{theirs}.intermediate.dense.{part}",
                    f"{ours}.mlp.fc2.{part}": f"{theirs}.output.dense.{part}",
                }
            qkv = _qkv(w, f"{theirs}.attention.self", dim, cfg.qkv_bias)
            state |= {f"{ours}.attn.qkv.{k}": v for k, v in qkv.items()}
        if s < len(cfg.depths) - 1:
            pairs |= {
                f"stages.{s}.downsample.reduction.weight": f"encoder.layers.{s}.downsample.reduction.weight",
                f"stages.{s}.downsample.norm.weight": f"encoder.layers.{s}.downsample.norm.weight",
                f"stages.{s}.downsample.norm.bias": f"encoder.layers.{s}.downsample.norm.bias",
            }
    _fill(state, model, pairs, w)
    check_all_used(w)
    return state


def _size(value: Any, default_to_square: bool, key: str) -> dict[str, int]:
    if isinstance(value, int) and not isinstance(value, bool):
        return {"height": value, "width": value} if default_to_square else {"shortest_edge": value}
    if isinstance(value, dict) and value and all(isinstance(v, int) for v in value.values()):
        return {str(k): int(v) for k, v in value.items()}
    raise CheckpointError(f"{PREPROCESSOR_CONFIG}: {key} must be an int or a dict of sizes, got {value!r}")


def _channels(value: Any, key: str) -> tuple[float, float, float]:
    values = [value] * 3 if isinstance(value, (int, float)) else value
    numbers = isinstance(values, (list, tuple)) and all(isinstance(v, (int, float)) for v in values)
    if not numbers or len(values) != 3:
        raise CheckpointError(f"{PREPROCESSOR_CONFIG}: {key} must be a number or three numbers, got {value!r}")
    return (float(values[0]), float(values[1]), float(values[2]))


def image_spec(folder: Path, height: int, width: int) -> ImageSpec:
    """The metadata's preprocessing from ``preprocessor_config.json``, for a model input of ``height × width``.

    - ``size`` ``{height, width}`` without a center crop: the ``resize`` policy.
    - a center crop after ``{shortest_edge}`` or ``{height, width}``: ``resize_then_center_crop``
      (the model format's ``resize_center_crop`` rounds its sizes and offsets differently).
    - ``rescale_factor`` is folded into mean and std: ``(x·r - m) / s = (x/255 - m') / s'`` with
      ``m' = m / (255 r)`` and ``s' = s / (255 r)``.
    - ``do_convert_rgb``: transparency is composited onto white, as transformers does.
    """
    raw = read_json(folder / PREPROCESSOR_CONFIG, f"{PREPROCESSOR_CONFIG} (the image preprocessing)")
    if not isinstance(raw, dict):
        raise CheckpointError(f"{PREPROCESSOR_CONFIG} must hold a JSON object")
    kind = str(raw.get("image_processor_type") or raw.get("feature_extractor_type") or "")
    base = kind.removesuffix("Fast").removesuffix("Pil")
    if base not in PROCESSOR_DEFAULTS:
        raise CheckpointError(
            f"image processor {kind or '(none named)'} is not supported (supported: "
            f"{', '.join(sorted(PROCESSOR_DEFAULTS))}, and their Fast and Pil variants)"
        )
    p = {**PROCESSOR_DEFAULTS[base], **{k: v for k, v in raw.items() if v is not None}}
    if not p.get("do_resize", True):
        raise CheckpointError(f"{PREPROCESSOR_CONFIG} has do_resize false: images of any size cannot reach the model")
    resample = RESAMPLE_NAMES.get(p["resample"]) if isinstance(p["resample"], int) else None
    if resample is None:
        raise CheckpointError(f"resample {p['resample']!r} is not supported (supported: {RESAMPLE_NAMES})")
    size = _size(p["size"], p.get("default_to_square", True), "size")
    shortest, resize_to = size.get("shortest_edge"), None
    if set(size) == {"height", "width"}:
        resize_to = (size["height"], size["width"])
    elif set(size) != {"shortest_edge"}:
        raise CheckpointError(f"{PREPROCESSOR_CONFIG}: size {size} is not supported (height/width or shortest_edge)")
    if p.get("do_center_crop"):
        crop = _size(p.get("crop_size"), True, "crop_size")
        out = (crop.get("height"), crop.get("width"))
    elif resize_to is not None:
        out = resize_to
    else:
        raise CheckpointError(f"{PREPROCESSOR_CONFIG}: a shortest_edge resize without a center crop has no fixed size")
    if out != (height, width):
        raise CheckpointError(f"{PREPROCESSOR_CONFIG} makes {out[0]}x{out[1]} images; the model takes {height}x{width}")
    scale = float(p.get("rescale_factor", 1 / 255)) if p.get("do_rescale", True) else 1.0
    mean, std = (_channels(p["image_mean"], "image_mean"), _channels(p["image_std"], "image_std"))
    if not p.get("do_normalize", True):
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    factor = 1.0 if math.isclose(255 * scale, 1.0, rel_tol=1e-12) else 255 * scale
    policy = "resize" if resize_to == out else "resize_then_center_crop"
    try:
        return ImageSpec(
            channels=3,
            height=height,
            width=width,
            resample=resample,  # type: ignore[arg-type]  # a value of RESAMPLE_NAMES
            resize_policy=policy,  # type: ignore[arg-type]  # one of the two literals
            mean=tuple(m / factor for m in mean),
            std=tuple(s / factor for s in std),
            shortest_edge=shortest if policy != "resize" else None,
            resize_to=resize_to if policy != "resize" and shortest is None else None,
            transparency="white" if p.get("do_convert_rgb") else None,
        )
    except ValueError as exc:
        raise CheckpointError(f"{PREPROCESSOR_CONFIG} cannot be served: {exc}") from None


def synthetic_images(count: int = 16, seed: int = 0) -> list[Image.Image]:
    """Deterministic test images from 17×23 to 640×480, in RGB, L, RGBA and P modes (smooth and noisy)."""
    rng = np.random.default_rng(seed)
    sizes = [(17, 23), (640, 480), (23, 17), (480, 640), (32, 32), (224, 224), (300, 200), (97, 131)]
    images = []
    for i in range(count):
        w, h = sizes[i % len(sizes)]
        yy, xx = np.mgrid[0:h, 0:w]
        smooth = np.stack([(xx * (3 + c) + yy * (5 - c) + 40 * c) % 256 for c in range(3)], axis=-1)
        noise = rng.integers(0, 256, size=(h, w, 3))
        pixels = np.where(rng.random((h, w, 1)) < 0.3, noise, smooth).astype(np.uint8)
        image = Image.fromarray(pixels, mode="RGB")
        mode = ("RGB", "L", "RGBA", "P")[i % 4]
        if mode == "RGBA":
            alpha = Image.fromarray(rng.integers(0, 256, size=(h, w), dtype=np.uint8), mode="L")
            image = image.convert("RGBA")
            image.putalpha(alpha)
        elif mode != "RGB":
            image = image.convert(mode)
        if mode == "P" and i % 8 == 7:
            image.info["transparency"] = 0  # a transparent palette colour
        images.append(image)
    return images
