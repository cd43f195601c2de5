"""Helpers that every task's loader uses: files inside the version directory, the model's runtime
(backend and precision) and its session, and the parity check of a non-default engine."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from concurrent.futures import Executor
from dataclasses import replace
from pathlib import Path

import numpy as np
import numpy.typing as npt

from attnserve_server.errors import ModelLoadError
from attnserve_server.lazy_graph import LazyGraph, shared_graph
from attnserve_server.onnx_files import check_external_data
from attnserve_server.parity import DEFAULT_TOLERANCE, ParityReport, compare_logits
from attnserve_server.runtime import (
    BACKEND_NAMES,
    Backend,
    RuntimeOptions,
    RuntimeSession,
    Shape,
    open_runtime,
)
from attnserve_server.task import LoadContext

logger = logging.getLogger(__name__)


def version_file(ctx: LoadContext, relative: str, what: str) -> Path:
    """A file named by the metadata: it must exist inside the version directory."""
    path = (ctx.version_dir / relative).resolve()
    if not path.is_relative_to(ctx.version_dir.resolve()):
        raise ModelLoadError(ctx.model, f"{what} {relative!r} points outside the version directory")
    if not path.is_file():
        raise ModelLoadError(ctx.model, f"{what} {relative!r} not found in version {ctx.version_dir.name}")
    return path


def model_runtime(
    ctx: LoadContext, *, default_backend: Backend = "onnxruntime", supported: tuple[Backend, ...] = ("onnxruntime",)
) -> RuntimeOptions:
    """The server's runtime options with the backend and precision this model runs on: its
    ``config.yaml``'s, else the task's default (image models: ``--image-backend``)."""
    backend = ctx.config.backend or default_backend
    if backend not in supported:
        runs_on = " or ".join(supported)
        raise ModelLoadError(
            ctx.model,
            f"config.yaml asks for backend {backend}, but {ctx.metadata.task} models run on {runs_on} only; "
            "remove backend from config.yaml",
        )
    if backend == "openvino":
        precision = ctx.config.precision or ctx.settings.image_precision
    else:
        precision = ctx.config.precision or "f32"
        if precision != "f32":
            raise ModelLoadError(
                ctx.model,
                f"config.yaml asks for precision {precision} on onnxruntime, which computes in f32 only; "
                f"set backend: openvino for {precision}, or precision: f32",
            )
    return replace(ctx.settings.runtime_options(), backend=backend, precision=precision)


def onnxruntime_options(ctx: LoadContext) -> RuntimeOptions:
    """The server's runtime options on ONNX Runtime in f32, whatever the model's ``config.yaml`` asks."""
    return replace(ctx.settings.runtime_options(), backend="onnxruntime", precision="f32")


def open_session(
    ctx: LoadContext, relative: str, what: str = "model_file", options: RuntimeOptions | None = None
) -> RuntimeSession:
    """An inference session of the graph file ``relative``: on ``options`` (from :func:`model_runtime`),
    else on ONNX Runtime with the server's options (a ``backend`` in config.yaml is then refused)."""
    path = version_file(ctx, relative, what)
    try:
        check_external_data(path)
    except ValueError as exc:
        raise ModelLoadError(ctx.model, str(exc)) from None
    if options is None:
        options = model_runtime(ctx)
    try:
        return open_runtime(path, options)
    except RuntimeError as exc:  # BackendUnavailableError too: the engine is not installed
        raise ModelLoadError(ctx.model, str(exc)) from None


def check_parity(
    ctx: LoadContext, session: RuntimeSession, feed: Mapping[str, npt.NDArray[np.float32]], output: str
) -> ParityReport | None:
    """On a session that is not ONNX Runtime: run ``feed`` on it and on an ONNX Runtime session of the
    same file, compare ``output`` (see :mod:`attnserve_server.parity`), and refuse the load unless they agree.

    Returns the report (None for an ONNX Runtime session, which is its own reference).
    """
    if session.backend == "onnxruntime":
        return None
    tolerance = ctx.config.parity_tolerance or DEFAULT_TOLERANCE[session.precision]
    try:
        # Only for the check: it goes when this function returns.
        reference = open_runtime(session.path, replace(ctx.settings.runtime_options(), backend="onnxruntime"))
        (expected,) = reference.run([output], feed)
        (got,) = session.run([output], feed)
        report = compare_logits(expected, got, tolerance)
    except (RuntimeError, ValueError) as exc:
        raise ModelLoadError(ctx.model, f"the parity check against ONNX Runtime could not run: {exc}") from None
    engine = f"{BACKEND_NAMES[session.backend]} ({session.precision})"
    if not report.passed:
        raise ModelLoadError(
            ctx.model,
            f"{engine} disagrees with ONNX Runtime on {report.inputs} generated inputs: {report.summary()}. "
            f"Serve it on onnxruntime, try precision: f32, or raise parity_tolerance in config.yaml if the "
            "difference is acceptable",
        )
    logger.info("%s/%s: %s agrees with ONNX Runtime: %s", ctx.model, ctx.version_dir.name, engine, report.summary())
    return report


def fixed(dim: int | str | None) -> int | None:
    """A graph dimension's size if it is fixed, else None."""
    return dim if isinstance(dim, int) else None


def show_shape(shape: Shape) -> str:
    return "(" + ", ".join("batch" if d is None else str(d) for d in shape) + ")"


def extra_graph(
    ctx: LoadContext, relative: str, what: str, executor: Executor, options: RuntimeOptions | None = None
) -> LazyGraph:
    """The version's lazily opened graph ``relative`` (an embeddings or explain graph), present now,
    shared by every engine that names the same file (:mod:`attnserve_server.lazy_graph`)."""
    version_file(ctx, relative, what)
    return shared_graph(
        ctx.graphs,
        name=ctx.model,
        version=ctx.version_dir.name,
        file=relative,
        open_session=lambda: open_session(ctx, relative, what, options=options),
        executor=executor,
    )
