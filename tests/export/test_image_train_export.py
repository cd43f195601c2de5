"""Training smoke run, determinism, and the parity-checked export of the tiny ViT and Swin presets."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from attnserve_export import image_export, swin, vit
from attnserve_export.__main__ import main
from attnserve_export.image_export import INPUT_NAME, OUTPUT_NAME, export_classifier
from attnserve_export.image_train import ImageTrainConfig, image_spec_for, train_image
from attnserve_export.onnx_export import ParityError
from attnserve_server.model_format.metadata import read_metadata
from attnserve_server.task_table import TaskTable
from attnserve_server.vision.metadata import ImageClassificationMetadata

METADATA_KEYS = {"format_version", "task", "description", "model_file", "image_classification", "provenance"}
IMAGE_KEYS = {
    "labels_file", "num_classes", "input_name", "output_name", "channels", "height", "width",
    "resample", "resize_policy", "mean", "std", "embeddings", "explain",
}  # fmt: skip


def _tiny_run(run_dir: Path, epochs: int = 3) -> dict:
    cfg = ImageTrainConfig(
        family="vit", preset="tiny", seed=0, epochs=epochs, lr=3e-3, warmup_epochs=0, augment=0.5, threads=1
    )
    return train_image(cfg, run_dir)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("run") / "tiny-vit"
    _tiny_run(run_dir)
    return run_dir


def test_training_loss_falls(tiny_run: Path) -> None:
    results = json.loads((tiny_run / "results.json").read_text())
    history = json.loads((tiny_run / "checkpoint" / "state.json").read_text())["history"]
    assert results["finished"] and results["test_images"] == 360
    assert history[-1]["train_loss"] < history[0]["train_loss"] - 0.1
    assert history[-1]["val_loss"] < history[0]["val_loss"]
    assert 0.0 <= results["test_accuracy"] <= 1.0


def test_training_is_deterministic(tiny_run: Path, tmp_path: Path) -> None:
    _tiny_run(tmp_path / "again")
    name = "checkpoint/model.safetensors"
    assert (tmp_path / "again" / name).read_bytes() == (tiny_run / name).read_bytes()


def test_cli_export_of_a_trained_run(tiny_run: Path, tmp_path: Path) -> None:
    repo = tmp_path / "models"
    assert main(["onnx", "--checkpoint", str(tiny_run), "--name", "tiny-vit", "--repository", str(repo)]) == 0
    version = repo / "tiny-vit" / "1"
    files = sorted(p.name for p in version.iterdir())
    assert files == ["explain.onnx", "labels.json", "metadata.json", "model.onnx"]
    meta = json.loads((version / "metadata.json").read_text())
    assert set(meta) == METADATA_KEYS
    assert meta["task"] == "image-classification"
    image = meta["image_classification"]
    assert set(image) == IMAGE_KEYS
    assert image["channels"] == 1 and image["height"] == image["width"] == 16
    assert image["resample"] == "bilinear" and image["resize_policy"] == "resize"
    assert json.loads((version / "labels.json").read_text()) == [str(i) for i in range(10)]
    parity = meta["provenance"]["parity"]
    assert parity["passed"] and parity["images"] == 360 and parity["max_rel_diff"] <= 1e-4
    assert meta["provenance"]["seed"] == 0
    assert meta["provenance"]["test_accuracy"] == json.loads((tiny_run / "results.json").read_text())["test_accuracy"]


@pytest.mark.parametrize(
    ("channels", "preprocessing"),
    [
        (1, {}),
        (3, {"resize_policy": "resize_center_crop", "crop_ratio": 0.875, "mean": [0.4, 0.5, 0.6]}),
    ],
    ids=["grey-resize", "rgb-center-crop"],
)
def test_classifier_metadata_parses_with_the_model_format(
    tmp_path: Path, export_image_classifier: Callable[..., Path], channels: int, preprocessing: dict[str, Any]
) -> None:
    """The server's own parser accepts the file, and writing the parsed metadata gives the same JSON."""
    model_dir = export_image_classifier(tmp_path, "tiny", channels=channels, **preprocessing)
    raw = json.loads((model_dir / "1" / "metadata.json").read_text())
    parsed = read_metadata(model_dir / "1", TaskTable().sections())
    assert isinstance(parsed.section, ImageClassificationMetadata)
    spec = parsed.section.input_spec()
    assert (spec.channels, spec.resize_policy, spec.crop_ratio) == (
        channels,
        preprocessing.get("resize_policy", "resize"),
        preprocessing.get("crop_ratio"),
    )
    assert parsed.to_json_dict() == raw


def test_swin_export_parity_and_dynamic_batch(tmp_path: Path) -> None:
    torch.manual_seed(0)
    cfg = swin.PRESETS["tiny"]  # 10×10 tokens with 4×4 windows: padding and shifts in the graph
    model = swin.Swin(cfg).eval()
    spec = image_spec_for(cfg)
    images = np.random.default_rng(0).standard_normal((70, 1, cfg.image_size, cfg.image_size)).astype(np.float32)
    report = export_classifier(model, spec, [str(i) for i in range(10)], images, tmp_path / "1")
    assert report.passed and report.max_rel_diff <= 1e-4 and report.argmax_mismatches == 0
    onnx.checker.check_model(str(tmp_path / "1" / "model.onnx"))
    session = ort.InferenceSession(str(tmp_path / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    (inp,) = session.get_inputs()
    assert inp.name == INPUT_NAME and isinstance(inp.shape[0], str) and inp.shape[1:] == [1, 20, 20]
    for batch in (1, 5):
        (logits,) = session.run([OUTPUT_NAME], {INPUT_NAME: images[:batch]})
        with torch.no_grad():
            expected = model(torch.from_numpy(images[:batch])).numpy()
        np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-5)


def test_labels_that_do_not_fit_the_model_write_nothing(tmp_path: Path) -> None:
    torch.manual_seed(0)
    cfg = swin.PRESETS["tiny"]
    images = np.zeros((2, 1, cfg.image_size, cfg.image_size), dtype=np.float32)
    with pytest.raises(ValueError, match="2 labels for a model with 10 outputs"):
        export_classifier(swin.Swin(cfg), image_spec_for(cfg), ["a", "b"], images, tmp_path / "1")
    assert not (tmp_path / "1").exists()


def test_failed_parity_raises_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tamper: Callable[[onnx.ModelProto, str, int, float], None]
) -> None:
    """A graph that computes other logits than PyTorch (here: logit 0 shifted by 0.01, far above the
    1e-4 relative tolerance of logits near 1) is refused, and the version directory is never made."""
    real_export = image_export.export_classifier_onnx

    def tampered_export(model: torch.nn.Module, spec: Any, path: Path) -> None:
        real_export(model, spec, path)
        graph = onnx.load(str(path))
        tamper(graph, OUTPUT_NAME, 10, 0.01)
        onnx.save(graph, str(path))

    monkeypatch.setattr(image_export, "export_classifier_onnx", tampered_export)
    torch.manual_seed(0)
    cfg = vit.PRESETS["tiny"]
    size = cfg.image_size
    assert isinstance(size, int)
    images = np.random.default_rng(0).standard_normal((4, 1, size, size)).astype(np.float32)
    version_dir = tmp_path / "tiny-vit" / "1"
    with pytest.raises(ParityError, match=r"ONNX Runtime disagrees with PyTorch: max \|Δlogit\| 0\.01\b"):
        export_classifier(vit.ViT(cfg), image_spec_for(cfg), [str(i) for i in range(10)], images, version_dir)
    assert not version_dir.exists() and not version_dir.parent.exists()
