"""Loading an image-classification version: labels, the session on its backend (ONNX Runtime or
OpenVINO, parity-checked), graph checks and a test batch."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

import numpy as np

from attnserve_server.errors import ModelLoadError
from attnserve_server.loading import check_parity, fixed, model_runtime, open_session, show_shape, version_file
from attnserve_server.model_format.config import DynamicBatchingConfig
from attnserve_server.model_format.metadata import MetadataError, read_text
from attnserve_server.parity import PARITY_INPUTS
from attnserve_server.runtime import BACKENDS, RuntimeSession
from attnserve_server.settings import ServerSettings
from attnserve_server.task import LoadContext
from attnserve_server.vision.batcher import BatchingConfig
from attnserve_server.vision.calibrate import calibrate
from attnserve_server.vision.classifier import ImageClassifier, ImageModelSpec
from attnserve_server.vision.metadata import ImageClassificationMetadata

logger = logging.getLogger(__name__)


def read_labels(name: str, path: Path) -> tuple[str, ...]:
    """``labels.json``: a JSON list of class names, by output index."""
    try:
        raw = json.loads(read_text(path))
    except json.JSONDecodeError as exc:
        raise ModelLoadError(name, f"cannot read {path.name}: {exc}") from None
    except MetadataError as exc:
        raise ModelLoadError(name, str(exc)) from None
    if not isinstance(raw, list) or not all(isinstance(label, str) for label in raw):
        raise ModelLoadError(name, f"{path.name} must hold a JSON list of strings (class names by output index)")
    return tuple(raw)


def batching_config(settings: ServerSettings, overrides: DynamicBatchingConfig | None) -> BatchingConfig:
    """The server-wide dynamic batching settings with the model's ``config.yaml`` overrides."""
    defaults = BatchingConfig(
        max_batch_size=settings.image_max_batch_size,
        max_queue_delay_s=settings.image_max_queue_delay_ms / 1000,
        max_queue_size=settings.image_max_queue_size,
        adaptive_delay=settings.image_adaptive_delay,
    )
    if overrides is None:
        return defaults
    return BatchingConfig(
        max_batch_size=overrides.max_batch_size or defaults.max_batch_size,
        max_queue_delay_s=defaults.max_queue_delay_s
        if overrides.max_queue_delay_ms is None
        else overrides.max_queue_delay_ms / 1000,
        max_queue_size=overrides.max_queue_size or defaults.max_queue_size,
        adaptive_delay=defaults.adaptive_delay if overrides.adaptive_delay is None else overrides.adaptive_delay,
    )


def check_graph(name: str, meta: ImageClassificationMetadata, session: RuntimeSession) -> None:
    """The graph must take float32 (batch, C, H, W) and give float32 (batch, num_classes) as metadata says."""
    if meta.input_name not in session.input_names:
        raise ModelLoadError(
            name, f"model.onnx has no input {meta.input_name!r} (it has {', '.join(session.input_names)})"
        )
    if meta.output_name not in session.output_names:
        raise ModelLoadError(
            name, f"model.onnx has no output {meta.output_name!r} (it has {', '.join(session.output_names)})"
        )
    extra = sorted(set(session.input_names) - {meta.input_name})
    if extra:
        raise ModelLoadError(name, f"model.onnx has inputs metadata.json does not describe: {', '.join(extra)}")
    for kind, tensor, dtype, shape, expected in (
        (
            "input",
            meta.input_name,
            session.input_types[meta.input_name],
            session.input_shapes[meta.input_name],
            (None, meta.channels, meta.height, meta.width),
        ),
        (
            "output",
            meta.output_name,
            session.output_types[meta.output_name],
            session.output_shapes[meta.output_name],
            (None, meta.num_classes),
        ),
    ):
        if dtype != "tensor(float)":
            raise ModelLoadError(name, f"{kind} {tensor!r} is {dtype}, expected tensor(float) (float32)")
        mismatch = len(shape) != len(expected) or any(
            want is not None and fixed(got) is not None and got != want
            for got, want in zip(shape, expected, strict=True)
        )
        if mismatch:
            raise ModelLoadError(
                name, f"{kind} {tensor!r} has shape {show_shape(shape)}, metadata.json implies {show_shape(expected)}"
            )
    if fixed(session.input_shapes[meta.input_name][0]) is not None:
        raise ModelLoadError(name, f"input {meta.input_name!r} has a fixed batch size; export it with a dynamic batch")


def load_image_classification(ctx: LoadContext) -> ImageClassifier:
    """Load one image-classification version; ModelLoadError says what does not fit."""
    meta = ctx.metadata.section
    assert isinstance(meta, ImageClassificationMetadata)  # the task table picked this loader for this section
    labels = read_labels(ctx.model, version_file(ctx, meta.labels_file, "labels_file"))
    if len(labels) != meta.num_classes:
        raise ModelLoadError(
            ctx.model, f"{meta.labels_file} has {len(labels)} labels but num_classes is {meta.num_classes}"
        )
    runtime = model_runtime(ctx, default_backend=ctx.settings.image_backend, supported=BACKENDS)
    session = open_session(ctx, ctx.metadata.model_file, options=runtime)
    check_graph(ctx.model, meta, session)
    # Preprocessed images are normalised pixels, so standard normal values cover their range (the
    # exporter's own parity check uses the same kind of input).
    parity_images = np.random.default_rng(0).standard_normal((PARITY_INPUTS, meta.channels, meta.height, meta.width))
    check_parity(ctx, session, {meta.input_name: parity_images.astype(np.float32)}, meta.output_name)
    spec = ImageModelSpec(
        input_name=meta.input_name, output_name=meta.output_name, labels=labels, input=meta.input_spec()
    )
    batching = batching_config(ctx.settings, ctx.config.dynamic_batching)
    fixed_by_config = ctx.config.dynamic_batching is not None and ctx.config.dynamic_batching.max_batch_size
    if ctx.settings.image_batch_calibration and not fixed_by_config and batching.max_batch_size > 1:
        try:
            measured = calibrate(
                lambda batch: session.run([meta.output_name], {meta.input_name: batch}),
                (meta.channels, meta.height, meta.width),
                batching.max_batch_size,
            )
        except Exception as exc:  # the engine's errors carry the useful detail in their message
            raise ModelLoadError(ctx.model, f"test run of model.onnx failed: {exc}") from None
        logger.info("%s/%s: %s", ctx.model, ctx.version_dir.name, measured.summary())
        batching = replace(batching, max_batch_size=measured.chosen)
    classifier = ImageClassifier(
        spec,
        session,
        name=ctx.model,
        batching=batching,
        observer=ctx.metrics.observe_image_batch if ctx.metrics is not None else None,
    )
    # A batch of two catches a fixed batch size or a shape mismatch now rather than on the first request.
    try:
        logits = classifier.forward(np.zeros((2, meta.channels, meta.height, meta.width), dtype=np.float32))
    except Exception as exc:  # ORT's errors carry the useful detail in their message
        classifier.close()
        raise ModelLoadError(ctx.model, f"test run of model.onnx failed: {exc}") from None
    if logits.shape != (2, meta.num_classes):
        classifier.close()
        raise ModelLoadError(
            ctx.model, f"logits of a batch of 2 have shape {logits.shape}, metadata implies (2, {meta.num_classes})"
        )
    return classifier
