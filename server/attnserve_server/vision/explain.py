"""The image-classification row's explain engine: the image is decoded and preprocessed as for
classification, then run through the version's explain graph (see ``attnserve_server.explain``)."""

from __future__ import annotations

from typing import Any

from attnserve_server.errors import InvalidArgumentError, ModelLoadError
from attnserve_server.explain.engine import ExplainEngine, ExplainInput
from attnserve_server.explain.limits import explain_limits
from attnserve_server.loaded import Engine
from attnserve_server.loading import extra_graph, onnxruntime_options
from attnserve_server.task import LoadContext
from attnserve_server.vision.classifier import ImageClassifier
from attnserve_server.vision.metadata import ImageClassificationMetadata


def image_explain(ctx: LoadContext, engine: Engine) -> ExplainEngine | None:
    """The version's explain engine, or None if its metadata names no explain graph."""
    meta = ctx.metadata.section
    assert isinstance(meta, ImageClassificationMetadata) and isinstance(engine, ImageClassifier)  # this row's loader
    graph = meta.explain
    if graph is None:
        return None
    if graph.layout not in ("vit", "swin"):
        raise ModelLoadError(ctx.model, f"explain.layout of an image model must be vit or swin, not {graph.layout}")
    max_pixels = ctx.settings.max_image_pixels

    def prepare(image: Any, deadline: float | None) -> ExplainInput:
        try:
            pixels = engine.prepare([image], max_pixels, deadline=deadline)
        except InvalidArgumentError as exc:  # its message counts images: this RPC takes one
            raise InvalidArgumentError(str(exc).replace("image 0", "the image", 1)) from None
        return ExplainInput(pixels=pixels)

    return ExplainEngine(
        name=ctx.model,
        version=ctx.version_dir.name,
        graph=graph,
        # On ONNX Runtime whatever backend config.yaml picks for the serving graph, as for embeddings.
        graph_file=extra_graph(ctx, graph.file, "explain.file", engine.decode_pool, options=onnxruntime_options(ctx)),
        prepare=prepare,
        executor=engine.decode_pool,
        limits=explain_limits(ctx.config),
    )
