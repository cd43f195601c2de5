"""Parity-checked ONNX export of an image classifier (ViT or Swin) into a model repository.

Like the text export (:mod:`attnserve_export.onnx_export`, whose parity report this
reuses): export with ``torch.onnx.export(dynamo=True)`` and a dynamic batch axis keyed
by the declared input name, run ``onnx.checker``, then run ONNX Runtime on the whole
evaluation set (the test split for a trained model) and compare with PyTorch. Both
max |Δlogit| / max |logit| ≤ the tolerance and identical top-1 on every image are
required; otherwise :class:`ParityError` is raised and nothing is written.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from attnserve_export.explain_graph import embeddings_entry, export_explain, supports_explain, with_explain
from attnserve_export.onnx_export import OPSET, ParityCase, ParityError, ParityReport, save_program
from attnserve_server.model_format.metadata import ModelMetadata, write_metadata
from attnserve_server.model_format.preprocess import InputSpec
from attnserve_server.vision.metadata import ImageClassificationMetadata

logger = logging.getLogger(__name__)

INPUT_NAME = "pixel_values"
OUTPUT_NAME = "logits"
MODEL_FILE = "model.onnx"
LABELS_FILE = "labels.json"
PARITY_BATCH = 64


def export_classifier_onnx(model: nn.Module, spec: InputSpec, path: Path) -> None:
    """Export ``model`` to ``path``: input ``(batch, C, H, W)`` float32, output ``(batch, classes)``.

    The sample batch is 2: torch.export specializes dimensions of size 0 or 1.
    """
    sample = (torch.randn(2, spec.channels, spec.height, spec.width),)
    dynamic_shapes = {"x": {0: torch.export.Dim("batch")}}
    with torch.no_grad():
        program = torch.onnx.export(
            model.eval(),
            sample,
            dynamo=True,
            dynamic_shapes=dynamic_shapes,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            opset_version=OPSET,
            optimize=True,
            verbose=False,
        )
    save_program(program, path)


def check_classifier_parity(
    model: nn.Module, path: Path, images: np.ndarray, batch_size: int = PARITY_BATCH
) -> list[ParityCase]:
    """ONNX Runtime vs PyTorch on ``images`` ``(N, C, H, W)``, in batches (the last one ragged)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    cases = []
    model = model.eval()
    starts = list(range(0, len(images), batch_size))
    # One batch-1 call too: the server's smallest request.
    batches = [images[s : s + batch_size] for s in starts] + [images[:1]]
    for i, raw in enumerate(batches):
        batch = np.ascontiguousarray(raw, dtype=np.float32)
        with torch.no_grad():
            expected = model(torch.from_numpy(batch)).numpy()  # (b, K)
        (got,) = session.run([OUTPUT_NAME], {INPUT_NAME: batch})
        top_expected, top_got = expected.argmax(-1), got.argmax(-1)
        mismatch = top_expected != top_got
        # A mismatch between two logits closer than the difference is a tie, not an error.
        gap = np.abs(expected[np.arange(len(batch)), top_expected] - expected[np.arange(len(batch)), top_got])
        diff = float(np.abs(expected - got).max())
        cases.append(
            ParityCase(
                name=f"batch {i} ({len(batch)} images)",
                max_abs_diff=diff,
                max_abs_logit=float(np.abs(expected).max()),
                argmax_mismatches=int(mismatch.sum()),
                argmax_ties=int((mismatch & (gap <= diff)).sum()),
                present_max_abs_diff=0.0,
            )
        )
    return cases


def build_classifier_metadata(
    spec: InputSpec, labels: list[str], *, description: str, provenance: dict[str, Any]
) -> ModelMetadata:
    """The validated ``metadata.json`` of an image classifier (``docs/model-repository.md``)."""
    section = ImageClassificationMetadata.from_input_spec(
        spec, labels_file=LABELS_FILE, num_classes=len(labels), input_name=INPUT_NAME, output_name=OUTPUT_NAME
    )
    return ModelMetadata.of(section, model_file=MODEL_FILE, description=description, provenance=provenance)


def export_classifier(
    model: nn.Module,
    spec: InputSpec,
    labels: list[str],
    images: np.ndarray,
    version_dir: Path,
    *,
    description: str = "",
    provenance: dict[str, Any] | None = None,
    max_rel_diff: float | None = 1e-4,
    max_abs_diff: float | None = None,
) -> ParityReport:
    """Export into ``version_dir`` (created): ``model.onnx``, ``labels.json``, ``metadata.json``.

    Args:
        images: preprocessed parity images ``(N, C, H, W)`` (a trained model: its whole test set).

    Raises:
        ParityError: the check failed; nothing is written to ``version_dir``.
        ValueError: the labels do not match the model's outputs, or the metadata would be invalid.
    """
    model = model.eval()
    with torch.no_grad():
        num_classes = model(torch.from_numpy(np.ascontiguousarray(images[:2], dtype=np.float32))).shape[-1]
    if num_classes != len(labels):
        raise ValueError(f"{len(labels)} labels for a model with {num_classes} outputs")
    # Built (and validated) before any work: metadata the server would refuse fails here.
    metadata = build_classifier_metadata(spec, labels, description=description, provenance=provenance or {})
    report = ParityReport(max_abs_tolerance=max_abs_diff, max_rel_tolerance=max_rel_diff)
    with tempfile.TemporaryDirectory(prefix="attnserve-export-") as tmp:
        staged = Path(tmp) / MODEL_FILE
        start = time.perf_counter()
        export_classifier_onnx(model, spec, staged)
        report.export_seconds = time.perf_counter() - start
        onnx.checker.check_model(str(staged), full_check=True)
        report.onnx_checker = True
        report.cases = check_classifier_parity(model, staged, images)
        report.model_bytes = staged.stat().st_size
        logger.info("parity on %d images: %s", len(images), report.summary())
        # Every top-1 must agree, ties included: the server reports the top-1.
        if not report.passed:
            raise ParityError(f"ONNX Runtime disagrees with PyTorch: {report.summary()}")
        # The Explain and Embed RPCs' graph, parity-checked too (attnserve_export.explain_graph); ViT and Swin.
        explained = supports_explain(model)
        if explained:
            tolerance = max_rel_diff if max_rel_diff is not None else 1e-4  # the logits' tolerance
            entry, explain_report = export_explain(
                model, Path(tmp) / "explain", spec=spec, images=images, tolerance=tolerance
            )
        version_dir.mkdir(parents=True, exist_ok=True)
        shutil.move(str(staged), version_dir / MODEL_FILE)
        if explained:
            shutil.move(str(Path(tmp) / "explain" / entry.file), version_dir / entry.file)
            metadata = with_explain(metadata, entry, explain_report, embeddings_entry(model, spec))
    (version_dir / LABELS_FILE).write_text(json.dumps(labels) + "\n")
    full_provenance = {
        **(provenance or {}),
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "parity": {**report.to_dict(), "images": len(images)},
    }
    write_metadata(version_dir, metadata.replace(provenance={**metadata.provenance, **full_provenance}))
    logger.info("wrote %s (%.1f MB model)", version_dir, report.model_bytes / 1e6)
    return report
