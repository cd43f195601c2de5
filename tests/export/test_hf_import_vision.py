"""Importing ViT and Swin classifiers written by transformers, checked against transformers and a real server.

Three random-weight folders (``save_pretrained``), each with a ``preprocessor_config.json`` that the
import maps onto the model format:

- ``vit-wide``: a non-square 32×48 ViT, transformers' default epsilon (1e-12), bilinear resize;
- ``vit-deit``: no qkv bias, tanh GELU, DeiT's processor (resize to 40×40, center crop 32×32);
- ``swin``: feature maps that need padding (12×12 and 6×6 in windows of 5), so transformers'
  pad-then-shift order matters; a shortest-edge resize and a center crop, bicubic, CLIP's mean/std.

Sixteen images made here, from 17×23 to 640×480 in RGB, L, RGBA and P (one with a transparent
palette colour), are sent to the server as PNG. The server's preprocessing (the model format's
``preprocess`` with the metadata it loads) must equal transformers' PIL image processor to 1e-5, and
the server's top-5 classes must equal transformers' top-5 wherever transformers' own margin between
the two ranks is above 1e-3 x max |logit|.
"""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from attnserve_client import Client
from attnserve_export.__main__ import main
from attnserve_export.hf_check import processor_pixels, top_k_agreement
from attnserve_export.hf_checkpoint import read_checkpoint
from attnserve_export.hf_import import import_checkpoint
from attnserve_export.hf_random import random_image_classifier
from attnserve_export.hf_vision import swin_config, swin_state_dict
from attnserve_export.swin import Swin
from attnserve_server.model_format.metadata import read_metadata
from attnserve_server.model_format.preprocess import preprocess
from attnserve_server.task_table import TaskTable

transformers = pytest.importorskip("transformers")

SMALL_VIT = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 37}
MODELS: dict[str, dict[str, Any]] = {
    "vit-wide": {
        "family": "vit",
        "config": {**SMALL_VIT, "image_size": [32, 48], "patch_size": 8},
        "processor": {"size": {"height": 32, "width": 48}, "do_convert_rgb": True},
        "policy": "resize",
    },
    "vit-deit": {
        "family": "vit",
        "config": {**SMALL_VIT, "image_size": 32, "patch_size": 8, "qkv_bias": False, "hidden_act": "gelu_new"},
        "processor": {
            "size": {"height": 40, "width": 40}, "crop_size": {"height": 32, "width": 32}, "do_convert_rgb": True,
        },
        "processor_class": "DeiTImageProcessorPil",
        "policy": "resize_then_center_crop",
    },
    "swin": {
        "family": "swin",
        "config": {
            "image_size": 24, "patch_size": 2, "embed_dim": 16, "depths": [2, 2], "num_heads": [2, 4],
            "window_size": 5, "layer_norm_eps": 1e-6,
        },
        "processor": {
            "size": {"shortest_edge": 28}, "do_center_crop": True, "crop_size": {"height": 24, "width": 24},
            "resample": 3, "image_mean": [0.48145466, 0.4578275, 0.40821073],
            "image_std": [0.26862954, 0.26130258, 0.27577711], "do_convert_rgb": True,
        },
        "policy": "resize_then_center_crop",
    },
}  # fmt: skip


def make_images() -> list[bytes]:
    """16 PNG files: sizes from 17×23 to 640×480; modes RGB, L, RGBA, P; smooth gradients plus noise."""
    rng = np.random.default_rng(2024)
    sizes = [(17, 23), (640, 480), (23, 17), (480, 640), (33, 33), (300, 200), (97, 131), (200, 301)]
    files = []
    for i in range(16):
        width, height = sizes[i % len(sizes)]
        yy, xx = np.mgrid[0:height, 0:width]
        smooth = np.stack([(xx * (2 + c) + yy * (4 - c) + 60 * c) % 256 for c in range(3)], axis=-1)
        noisy = np.where(rng.random((height, width, 1)) < 0.25, rng.integers(0, 256, (height, width, 3)), smooth)
        image = Image.fromarray(noisy.astype(np.uint8), mode="RGB")
        mode = ("RGB", "L", "RGBA", "P")[i % 4]
        if mode == "RGBA":
            image.putalpha(Image.fromarray(rng.integers(0, 256, (height, width), dtype=np.uint8), mode="L"))
        elif mode != "RGB":
            image = image.convert(mode)
        buffer = io.BytesIO()
        image.save(buffer, "PNG", **({"transparency": 5} if mode == "P" and i == 15 else {}))
        files.append(buffer.getvalue())
    return files


IMAGES = make_images()


def decoded() -> list[Image.Image]:
    """The images as the server decodes them."""
    return [Image.open(io.BytesIO(data)) for data in IMAGES]


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("hf-vision")
    out: dict[str, Any] = {"root": root / "models"}
    for name, spec in MODELS.items():
        folder = random_image_classifier(
            root / name,
            spec["family"],
            num_labels=10,
            processor=spec["processor"],
            processor_class=spec.get("processor_class", "ViTImageProcessorPil"),
            **spec["config"],
        )
        result = import_checkpoint(folder, root / "models", name, check_with_transformers=True, command="test")
        out[name] = (folder, result.version_dir)
    return out


@pytest.fixture(scope="module")
def server_address(repository: dict[str, Any], session_server_launcher: Callable[..., Any]) -> str:
    return str(session_server_launcher(repository["root"]).address)


@pytest.mark.parametrize("name", list(MODELS))
def test_the_import_records_its_checks(name: str, repository: dict[str, Any]) -> None:
    metadata = json.loads((repository[name][1] / "metadata.json").read_text())
    section, provenance = metadata["image_classification"], metadata["provenance"]
    assert section["resize_policy"] == MODELS[name]["policy"] and section["transparency"] == "white"
    assert provenance["parity"]["max_rel_diff"] <= 1e-4
    checked = provenance["transformers_parity"]
    assert checked["passed"] and checked["max_rel_diff"] <= 1e-4 and checked["max_pixel_diff"] <= 1e-5
    assert checked["top_k"]["mismatches"] == 0
    labels = json.loads((repository[name][1] / "labels.json").read_text())
    assert labels == [f"class-{i:03d}" for i in range(10)]


@pytest.mark.parametrize("name", list(MODELS))
def test_the_servers_preprocessing_equals_transformers(name: str, repository: dict[str, Any]) -> None:
    folder, version = repository[name]
    spec = read_metadata(version, TaskTable().sections()).section.input_spec()  # type: ignore[attr-defined]
    ours = np.stack([preprocess(image, spec) for image in decoded()])
    theirs = processor_pixels(folder, decoded())
    assert ours.shape == theirs.shape == (16, 3, *((32, 48) if name == "vit-wide" else (spec.height, spec.width)))
    difference = float(np.abs(ours - theirs).max())
    print(f"\n{name}: max |Δpixel| {difference:.3g} over 16 images")
    assert difference <= 1e-5


@pytest.mark.parametrize("name", list(MODELS))
def test_the_servers_top5_equals_transformers(name: str, repository: dict[str, Any], server_address: str) -> None:
    folder, _ = repository[name]
    model = transformers.AutoModelForImageClassification.from_pretrained(str(folder), dtype=torch.float32).eval()
    with torch.inference_mode():
        expected = model(pixel_values=torch.from_numpy(processor_pixels(folder, decoded()))).logits.numpy()
    with Client(server_address) as client:
        results = client.classify_batch(IMAGES, model=name, top_k=5)
    got = np.array([[p.index for p in predictions] for predictions in results])
    outcome = top_k_agreement(expected, got)
    print(f"\n{name}: top-5 through the server against transformers: {outcome}")
    assert outcome["mismatches"] == 0 and outcome["ranks"] == 80


def test_swin_needs_the_pad_first_order(repository: dict[str, Any]) -> None:
    """The same weights in this model's own order (pad after the shift, padding masked) give other logits."""
    folder, _ = repository["swin"]
    checkpoint = read_checkpoint(folder)
    config = swin_config(checkpoint.config)
    theirs = Swin(config).eval()
    theirs.load_state_dict(swin_state_dict(dict(checkpoint.weights), theirs))
    own = Swin(config.with_(pad_before_shift=False)).eval()
    own.load_state_dict(theirs.state_dict())
    x = torch.from_numpy(processor_pixels(folder, decoded()[:4]))
    reference = transformers.AutoModelForImageClassification.from_pretrained(str(folder)).eval()
    with torch.inference_mode():
        expected = reference(pixel_values=x).logits
        assert torch.allclose(theirs(x), expected, rtol=0, atol=1e-5 * float(expected.abs().max()))
        assert not torch.allclose(own(x), expected, rtol=0, atol=1e-3 * float(expected.abs().max()))


def test_an_imported_classifier_quantizes_on_a_labelled_folder(
    repository: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """quantize has no test split on record for an imported model: it asks for --data, then scores on it."""
    models = tmp_path / "models"
    shutil.copytree(repository["vit-wide"][1].parent, models / "vit-wide")
    data = tmp_path / "data"
    for i, image in enumerate(decoded()[:8]):
        (data / f"class-{i % 2:03d}").mkdir(parents=True, exist_ok=True)
        image.save(data / f"class-{i % 2:03d}" / f"{i}.png")
    base = ["quantize", "--repository", str(models), "--name", "vit-wide", "--repeats", "2", "--force"]
    assert main(base) == 2
    assert "was imported and has no test set on record: pass --data" in capsys.readouterr().err
    assert main([*base, "--data", str(data)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["version"] == "2" and report["metric"] == "test_accuracy"
    quantization = json.loads((models / "vit-wide" / "2" / "metadata.json").read_text())["provenance"]["quantization"]
    assert quantization["fp32"] == report["fp32"]
