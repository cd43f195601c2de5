"""``attnserve-export import PATH --name NAME``: bring your own checkpoint.

A local folder in the Hugging Face layout (``config.json``, safetensors weights, tokenizer or image
processor files) becomes a normal model repository version. The architecture named in
``config.json`` picks the family; its weights are mapped onto attnserve's own ``GPT``, ``ViT`` or
``Swin`` (not onto transformers' classes), and the version is written by the same parity-checked
export as a trained model, so quantization and serving work as for any other version.

The version is assembled in a hidden folder of the repository (the server skips names that start
with a dot) and renamed into place only after every check passed; a failure leaves nothing behind.
transformers is not needed, except for ``--check-with-transformers``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from attnserve_export.gpt import GPT
from attnserve_export.hf_check import check_classifier, check_gpt2, transformers_module
from attnserve_export.hf_checkpoint import Checkpoint, CheckpointError, architecture_of, read_checkpoint, read_config
from attnserve_export.hf_text import (
    GPT2,
    chat_template,
    generation_settings,
    gpt2_config,
    gpt2_state_dict,
    load_gpt2_tokenizer,
)
from attnserve_export.hf_vision import (
    SWIN,
    VIT,
    image_spec,
    labels_of,
    swin_config,
    swin_state_dict,
    synthetic_images,
    vit_config,
    vit_state_dict,
)
from attnserve_export.image_data import preprocess
from attnserve_export.image_export import export_classifier
from attnserve_export.onnx_export import ParityError, ParityReport, export_gpt, next_version_dir
from attnserve_export.onnx_gqa import supports_shared_buffer
from attnserve_export.swin import Swin
from attnserve_export.vit import ViT
from attnserve_server.model_format.metadata import read_metadata, write_metadata
from attnserve_server.task_table import TaskTable

logger = logging.getLogger(__name__)

SUPPORTED = {GPT2: "gpt2", VIT: "vit", SWIN: "swin"}
LAYOUTS = ("auto", "shared_buffer", "concat")
REL_TOLERANCE = 1e-4


@dataclass
class ImportResult:
    """Where the version went, and the parity figures of its checks."""

    version_dir: Path
    architecture: str
    parity: ParityReport
    transformers: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        summary: dict[str, Any] = {
            "version_dir": str(self.version_dir),
            "architecture": self.architecture,
            "parity": {"max_rel_diff": self.parity.max_rel_diff, "max_abs_diff": self.parity.max_abs_diff},
        }
        if self.transformers is not None:
            keys = ("passed", "max_rel_diff", "max_abs_diff", "max_pixel_diff", "top_k", "argmax_mismatches")
            summary["transformers"] = {k: self.transformers[k] for k in keys if k in self.transformers}
        return summary


def _target(repository: Path, name: str, version: int | None) -> Path:
    target = next_version_dir(repository, name)  # also checks the name
    if version is not None:
        if version <= 0:
            raise CheckpointError(f"--version must be a positive integer, got {version}")
        target = repository / name / str(version)
    if target.exists():
        raise CheckpointError(f"{target} already exists; choose another --version")
    return target


def _import_gpt2(
    ckpt: Checkpoint, staged: Path, description: str, provenance: dict[str, Any], *, layout: str, tolerance: float
) -> Any:
    cfg = gpt2_config(ckpt.config)
    state = gpt2_state_dict(ckpt.weights, cfg)
    tokenizer, source = load_gpt2_tokenizer(ckpt.path)
    if tokenizer.get_vocab_size(with_added_tokens=True) > cfg.vocab_size:
        raise CheckpointError(
            f"the tokenizer has {tokenizer.get_vocab_size(with_added_tokens=True)} ids but config.json's vocab_size "
            f"is {cfg.vocab_size}"
        )
    eos_token, defaults, notes = generation_settings(ckpt.path, ckpt.config, tokenizer, cfg.context_length)
    template = chat_template(ckpt.path)
    model = GPT(cfg)
    model.load_state_dict(state, strict=True)
    if layout == "auto":
        layout = "shared_buffer" if supports_shared_buffer(model) else "concat"
    provenance["source"] |= {"tokenizer": source, **notes, "chat_template": template is not None}
    return export_gpt(
        model.eval(),
        tokenizer,
        staged,
        description=description,
        defaults=defaults,
        provenance=provenance,
        max_rel_diff=tolerance,
        kv_cache_layout=layout,  # type: ignore[arg-type]  # checked against LAYOUTS
        eos_token=eos_token,
        chat_template=template,
    )


def _import_classifier(
    ckpt: Checkpoint, staged: Path, description: str, provenance: dict[str, Any], tolerance: float
) -> Any:
    model: nn.Module
    if ckpt.architecture == VIT:
        vit_cfg = vit_config(ckpt.config)
        model = ViT(vit_cfg)
        state = vit_state_dict(ckpt.weights, model)
        cfg_dict, height, width = vit_cfg.to_dict(), vit_cfg.height, vit_cfg.width
    else:
        swin_cfg = swin_config(ckpt.config)
        model = Swin(swin_cfg)
        state = swin_state_dict(ckpt.weights, model)
        cfg_dict, height, width = swin_cfg.to_dict(), swin_cfg.height, swin_cfg.width
    model.load_state_dict(state, strict=True)
    spec = image_spec(ckpt.path, height, width)
    images = np.stack([preprocess(image, spec) for image in synthetic_images()])
    provenance |= {"family": SUPPORTED[ckpt.architecture], "model_config": cfg_dict}
    labels = labels_of(ckpt.config)
    return export_classifier(
        model.eval(),
        spec,
        labels,
        images,
        staged,
        description=description,
        provenance=provenance,
        max_rel_diff=tolerance,
    )


def _publish(staging: Path, name: str, target: Path) -> None:
    """Rename the staged model (a new one) or version into place: one rename, nothing half-written."""
    if target.parent.exists():
        os.rename(staging / name / target.name, target)
    else:
        os.rename(staging / name, target.parent)


def import_checkpoint(
    folder: Path,
    repository: Path,
    name: str,
    *,
    version: int | None = None,
    description: str = "",
    kv_cache_layout: str = "auto",
    check_with_transformers: bool = False,
    command: str = "",
    max_rel_diff: float = REL_TOLERANCE,
) -> ImportResult:
    """Import ``folder`` as ``repository/name/<version>`` (default: the next one).

    ``max_rel_diff`` bounds max |Δlogit| / max |logit| of both parity checks (1e-4). Raise it only for
    a checkpoint whose float32 arithmetic is itself that noisy (transformers' float32 logits against
    its own float64 ones show it), such as random weights of a large initializer range.

    Raises:
        CheckpointError: the folder cannot be imported (the message says why); nothing is written.
        ParityError: the exported graph disagrees with attnserve's PyTorch model or (with
            ``check_with_transformers``) with transformers' model; nothing is written.
    """
    if kv_cache_layout not in LAYOUTS:
        raise CheckpointError(f"kv_cache_layout must be one of {', '.join(LAYOUTS)}")
    if not 0 < max_rel_diff < 1:
        raise CheckpointError(f"max_rel_diff must be in (0, 1), got {max_rel_diff}")
    folder = Path(folder).resolve()
    config, config_sha256 = read_config(folder)
    architecture = architecture_of(config)
    if architecture not in SUPPORTED:
        raise CheckpointError(
            f"architecture {architecture} (model_type {config.get('model_type')!r}) is not supported; "
            f"supported: {', '.join(SUPPORTED)}"
        )
    target = _target(repository, name, version)
    if check_with_transformers:
        transformers_module()  # fail before the work if it is missing
    ckpt = read_checkpoint(folder)
    description = description or f"{name}: imported from a Hugging Face {architecture} folder"
    provenance: dict[str, Any] = {
        "import_command": command,
        "source": {
            "path": str(folder),
            "architecture": architecture,
            "model_type": config.get("model_type"),
            "config_sha256": config_sha256,
            "weight_files_sha256": ckpt.weight_files,
            "transformers_version": config.get("transformers_version"),
        },
    }
    repository.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".attnserve-import-", dir=repository))
    try:
        staged = staging / name / target.name
        if architecture == GPT2:
            report = _import_gpt2(ckpt, staged, description, provenance, layout=kv_cache_layout, tolerance=max_rel_diff)
        else:
            report = _import_classifier(ckpt, staged, description, provenance, max_rel_diff)
        reference = None
        if check_with_transformers:
            reference = _check_with_transformers(folder, staged, architecture, max_rel_diff)
        _publish(staging, name, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("imported %s as %s: %s", folder, target, report.summary())
    return ImportResult(version_dir=target, architecture=architecture, parity=report, transformers=reference)


def _check_with_transformers(folder: Path, staged: Path, architecture: str, tolerance: float) -> dict[str, Any]:
    """Compare the staged version with transformers; record the figures in its provenance, or raise."""
    if architecture == GPT2:
        report = check_gpt2(folder, staged, tolerance=tolerance)
    else:
        report = check_classifier(folder, staged, synthetic_images(), tolerance=tolerance)
    summary = {k: v for k, v in report.items() if k != "cases"}
    logger.info("transformers parity: %s", summary)
    if not report["passed"]:
        raise ParityError(f"the imported graph disagrees with transformers: {json.dumps(summary)}")
    metadata = read_metadata(staged, TaskTable().sections())
    write_metadata(staged, metadata.replace(provenance={**metadata.provenance, "transformers_parity": report}))
    return report


def add_import_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "import",
        help="import a local Hugging Face folder (GPT-2, ViT, Swin) into a model repository",
        description="Import a local Hugging Face folder (config.json, model.safetensors or sharded safetensors, "
        "tokenizer or image-processor files) as <repository>/<name>/<next version>/, through the parity-checked "
        f"export. Supported architectures: {', '.join(SUPPORTED)}. Pickled weights are refused. Prints a JSON "
        "summary; exit status 2: the folder cannot be imported, 3: a parity check failed (nothing is written).",
    )
    p.add_argument("path", type=Path, help="the checkpoint folder")
    p.add_argument("--name", required=True, help="model name in the repository")
    p.add_argument("--repository", type=Path, default=Path("models"))
    p.add_argument("--version", type=int, default=None, help="version number (default: the next one)")
    p.add_argument("--description", default="")
    p.add_argument(
        "--kv-cache-layout",
        choices=LAYOUTS,
        default="auto",
        help="GPT-2 graph format (default: shared_buffer when head_dim is a multiple of 16, else concat)",
    )
    p.add_argument(
        "--max-rel-diff",
        type=float,
        default=REL_TOLERANCE,
        help="parity tolerance, max |Δlogit| / max |logit| (default 1e-4); raise it only for checkpoints whose "
        "float32 arithmetic is itself that noisy",
    )
    p.add_argument(
        "--check-with-transformers",
        action="store_true",
        help="also compare the graph with transformers' own model on the same inputs (needs transformers)",
    )
    p.set_defaults(func=run_import)


def run_import(args: argparse.Namespace) -> int:
    try:
        result = import_checkpoint(
            args.path,
            args.repository,
            args.name,
            version=args.version,
            description=args.description,
            kv_cache_layout=args.kv_cache_layout,
            check_with_transformers=args.check_with_transformers,
            command=shlex.join(["attnserve-export", *getattr(args, "argv", sys.argv[1:])]),
            max_rel_diff=args.max_rel_diff,
        )
    except ValueError as exc:  # CheckpointError, and the exporter's refusals (invalid metadata, ...)
        sys.stderr.write(f"attnserve-export import: {exc}\n")
        return 2
    except ParityError as exc:
        sys.stderr.write(f"attnserve-export import: {exc}; nothing was written\n")
        return 3
    sys.stdout.write(json.dumps(result.to_dict(), indent=2) + "\n")
    return 0
