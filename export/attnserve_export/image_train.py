"""Training loop for the image classifiers (:class:`~attnserve_export.vit.ViT`, :class:`~attnserve_export.swin.Swin`).

Deterministic under a seed: one ``torch.Generator`` drives the shuffling and the
augmentation, and the checkpoint (written after every epoch with the helpers of
:mod:`attnserve_export.train`) holds it, the AdamW moments and the weights as
safetensors. Model selection uses the validation split only; the test split is scored
once, at the end.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn
from tqdm import tqdm

from attnserve_export import swin, vit
from attnserve_export.image_data import (
    ImageSpec,
    ImageSplits,
    load_digits_splits,
    load_image_folder,
    preprocess,
    random_affine,
    to_batch,
)
from attnserve_export.train import (
    CHECKPOINT_DIR,
    MODEL_FILE,
    RESULTS_FILE,
    STATE_FILE,
    cosine_lr,
    decay_groups,
    load_model_state,
    save_checkpoint,
)

logger = logging.getLogger(__name__)

Family = Literal["vit", "swin"]
LABELS_FILE = "labels.json"
CONFIG_FILE = "train_config.json"


@dataclass
class ImageTrainConfig:
    """Settings of one image-classifier run (everything that determines the weights, plus bookkeeping)."""

    family: Family = "vit"
    preset: str = "digits"
    model_overrides: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    data: str = ""  # empty: scikit-learn's digits; else an ImageFolder root
    epochs: int = 100
    batch_size: int = 64
    lr: float = 2e-3
    min_lr: float = 1e-5
    warmup_epochs: int = 3
    weight_decay: float = 0.05
    label_smoothing: float = 0.1
    grad_clip: float = 1.0
    augment: float = 0.6  # strength of the random affine (0: none)
    resample: str = "bilinear"
    mean: float = 0.5
    std: float = 0.5
    threads: int | None = None
    command: str = ""


ModelConfig = vit.ViTConfig | swin.SwinConfig


def build_model(family: str, config: ModelConfig) -> nn.Module:
    if family == "vit" and isinstance(config, vit.ViTConfig):
        return vit.ViT(config)
    if family == "swin" and isinstance(config, swin.SwinConfig):
        return swin.Swin(config)
    raise ValueError(f"no {family!r} model for {type(config).__name__}")


def model_config(family: str, preset: str, overrides: dict[str, Any] | None = None) -> ModelConfig:
    presets: dict[str, Any] = vit.PRESETS if family == "vit" else swin.PRESETS
    if preset not in presets:
        raise ValueError(f"unknown {family} preset {preset!r}; choose from {sorted(presets)}")
    cfg: ModelConfig = presets[preset]
    return cfg.with_(**(overrides or {}))


def config_from_dict(family: str, data: dict[str, Any]) -> ModelConfig:
    if family == "vit":
        return vit.ViTConfig(**data)
    return swin.SwinConfig(**{**data, "depths": tuple(data["depths"]), "num_heads": tuple(data["num_heads"])})


def image_spec_for(cfg: ModelConfig, resample: str = "bilinear", mean: float = 0.5, std: float = 0.5) -> ImageSpec:
    c = cfg.in_channels
    return ImageSpec(
        channels=c,
        height=cfg.height,
        width=cfg.width,
        resample=resample,  # type: ignore[arg-type]
        mean=(mean,) * c,
        std=(std,) * c,
    )


def load_splits(data: str) -> ImageSplits:
    return load_image_folder(Path(data)) if data else load_digits_splits()


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256) -> tuple[float, float]:
    """``(accuracy, mean cross-entropy)`` of ``model`` on preprocessed images ``x`` with labels ``y``."""
    was_training = model.training
    model.eval()
    logits = torch.cat([model(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])  # (N, K)
    model.train(was_training)
    return float((logits.argmax(-1) == y).float().mean()), float(F.cross_entropy(logits, y))


def augmented_batch(
    items: list[tuple[Any, int]], spec: ImageSpec, generator: torch.Generator, strength: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random affine on the full-size image, then the serving preprocessing."""
    if strength <= 0:
        return to_batch(items, spec)
    xs = [torch.from_numpy(preprocess(random_affine(im, generator, strength), spec)) for im, _ in items]
    return torch.stack(xs), torch.tensor([label for _, label in items], dtype=torch.int64)


def train_image(cfg: ImageTrainConfig, run_dir: Path) -> dict[str, Any]:
    """Train a classifier into ``run_dir``; returns the results (also written to ``results.json``)."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / CONFIG_FILE).write_text(json.dumps(asdict(cfg), indent=2) + "\n")
    torch.manual_seed(cfg.seed)
    splits = load_splits(cfg.data)
    mcfg = model_config(cfg.family, cfg.preset, {**cfg.model_overrides, "num_classes": len(splits.classes)})
    spec = image_spec_for(mcfg, cfg.resample, cfg.mean, cfg.std)
    (run_dir / LABELS_FILE).write_text(json.dumps(splits.classes) + "\n")
    x_val, y_val = to_batch(splits.validation, spec)
    model = build_model(cfg.family, mcfg)
    logger.info(
        "%s %s: %.3fM parameters; %d train / %d validation / %d test images",
        cfg.family,
        cfg.preset,
        sum(p.numel() for p in model.parameters()) / 1e6,
        len(splits.train),
        len(splits.validation),
        len(splits.test),
    )
    optimizer = torch.optim.AdamW(decay_groups(model, cfg.weight_decay), lr=cfg.lr, foreach=False, fused=False)
    generator = torch.Generator().manual_seed(cfg.seed)
    steps_per_epoch = -(-len(splits.train) // cfg.batch_size)
    max_steps = cfg.epochs * steps_per_epoch
    warmup_steps = cfg.warmup_epochs * steps_per_epoch
    history: list[dict[str, float]] = []
    start = time.perf_counter()
    step = 0
    model.train()
    bar = tqdm(total=max_steps, desc=f"train {cfg.family}", unit="step", dynamic_ncols=True, mininterval=5)
    for epoch in range(1, cfg.epochs + 1):
        order = torch.randperm(len(splits.train), generator=generator).tolist()
        total_loss, seen = 0.0, 0
        for i in range(0, len(order), cfg.batch_size):
            lr = cosine_lr(step, lr=cfg.lr, min_lr=cfg.min_lr, warmup_steps=warmup_steps, max_steps=max_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            items = [splits.train[j] for j in order[i : i + cfg.batch_size]]
            x, y = augmented_batch(items, spec, generator, cfg.augment)
            loss = F.cross_entropy(model(x), y, label_smoothing=cfg.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            if cfg.grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            step += 1
            total_loss += float(loss.detach()) * len(items)
            seen += len(items)
            bar.update(1)
            bar.set_postfix(epoch=epoch, loss=f"{total_loss / seen:.3f}", lr=f"{lr:.1e}")
        val_acc, val_loss = evaluate(model, x_val, y_val)
        train_loss = total_loss / seen
        history.append(
            {"epoch": epoch, "step": step, "train_loss": train_loss, "val_loss": val_loss, "val_acc": val_acc}
        )
        logger.info(
            "epoch %d: train loss %.4f, validation loss %.4f, accuracy %.4f", epoch, train_loss, val_loss, val_acc
        )
        extra = {
            "family": cfg.family,
            "model_config": mcfg.to_dict(),
            "image_spec": spec.to_dict(),
            "train_seconds": time.perf_counter() - start,
            "history": history,
        }
        save_checkpoint(run_dir, model=model, optimizer=optimizer, generator=generator, step=step, extra=extra)
    bar.close()
    train_seconds = time.perf_counter() - start
    x_test, y_test = to_batch(splits.test, spec)
    test_acc, test_loss = evaluate(model, x_test, y_test)
    val_acc, val_loss = evaluate(model, x_val, y_val)
    results = {
        "finished": True,
        "family": cfg.family,
        "preset": cfg.preset,
        "seed": cfg.seed,
        "command": cfg.command,
        "epochs": cfg.epochs,
        "steps": step,
        "train_seconds": round(train_seconds, 1),
        "train_images": len(splits.train),
        "validation_images": len(splits.validation),
        "test_images": len(splits.test),
        "validation_accuracy": round(val_acc, 4),
        "validation_loss": round(val_loss, 4),
        "test_accuracy": round(test_acc, 4),
        "test_loss": round(test_loss, 4),
        "test_errors": round((1 - test_acc) * len(splits.test)),
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
    }
    (run_dir / RESULTS_FILE).write_text(json.dumps(results, indent=2) + "\n")
    logger.info("done in %.0fs: validation accuracy %.4f, test accuracy %.4f", train_seconds, val_acc, test_acc)
    return results


@dataclass
class TrainedClassifier:
    """What export needs from a run directory."""

    family: str
    model: nn.Module
    spec: ImageSpec
    labels: list[str]
    train_config: dict[str, Any]
    results: dict[str, Any]
    history: list[dict[str, float]]


def load_trained_classifier(run_dir: Path) -> TrainedClassifier:
    """The model (eval mode), preprocessing and labels of a run written by :func:`train_image`."""
    state = json.loads((run_dir / CHECKPOINT_DIR / STATE_FILE).read_text())
    family = state["family"]
    model = build_model(family, config_from_dict(family, state["model_config"]))
    load_model_state(model, load_file(str(run_dir / CHECKPOINT_DIR / MODEL_FILE)))
    results_path = run_dir / RESULTS_FILE
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    train_config = json.loads((run_dir / CONFIG_FILE).read_text())
    train_config.pop("threads", None)
    return TrainedClassifier(
        family=family,
        model=model.eval(),
        spec=ImageSpec.from_dict(state["image_spec"]),
        labels=json.loads((run_dir / LABELS_FILE).read_text()),
        train_config=train_config,
        results=results,
        history=state["history"],
    )
