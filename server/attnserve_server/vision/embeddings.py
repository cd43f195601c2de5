"""The image-classification row's embeddings engine: images are decoded and preprocessed as for
classification, then run through the version's embeddings graph (see ``attnserve_server.embeddings``)."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from attnserve_server.embeddings.engine import EmbeddingsEngine, PreparedInputs
from attnserve_server.embeddings.limits import embeddings_limits
from attnserve_server.errors import ModelLoadError
from attnserve_server.loaded import Engine
from attnserve_server.loading import extra_graph, onnxruntime_options
from attnserve_server.task import LoadContext
from attnserve_server.vision.classifier import ImageClassifier
from attnserve_server.vision.loader import batching_config
from attnserve_server.vision.metadata import ImageClassificationMetadata


def image_embeddings(ctx: LoadContext, engine: Engine) -> EmbeddingsEngine | None:
    """The version's embeddings engine, or None if its metadata names no embeddings graph."""
    meta = ctx.metadata.section
    assert isinstance(meta, ImageClassificationMetadata) and isinstance(engine, ImageClassifier)  # this row's loader
    graph = meta.embeddings
    if graph is None:
        return None
    if graph.is_text or graph.num_tokens is None:
        raise ModelLoadError(ctx.model, "embeddings of an image model take one pixel input and declare num_tokens")
    max_pixels = ctx.settings.max_image_pixels

    def prepare(images: Sequence[Any], stop: threading.Event, deadline: float | None) -> PreparedInputs:
        return PreparedInputs(rows=engine.prepare(images, max_pixels, stop, deadline))

    return EmbeddingsEngine(
        name=ctx.model,
        version=ctx.version_dir.name,
        graph=graph,
        # On ONNX Runtime whatever backend config.yaml picks for the serving graph: the OpenVINO
        # path checks parity on logits, which this graph does not have.
        graph_file=extra_graph(
            ctx, graph.file, "embeddings.file", engine.decode_pool, options=onnxruntime_options(ctx)
        ),
        prepare=prepare,
        prepare_executor=engine.decode_pool,
        batching=batching_config(ctx.settings, ctx.config.dynamic_batching),
        limits=embeddings_limits(ctx.config),
    )
