"""Helpers that every task's loader uses: files inside the version directory, and an ORT session."""

from __future__ import annotations

from pathlib import Path

from attnserve_server.errors import ModelLoadError
from attnserve_server.onnx_files import check_external_data
from attnserve_server.runtime import RuntimeSession, Shape
from attnserve_server.task import LoadContext


def version_file(ctx: LoadContext, relative: str, what: str) -> Path:
    """A file named by the metadata: it must exist inside the version directory."""
    path = (ctx.version_dir / relative).resolve()
    if not path.is_relative_to(ctx.version_dir.resolve()):
        raise ModelLoadError(ctx.model, f"{what} {relative!r} points outside the version directory")
    if not path.is_file():
        raise ModelLoadError(ctx.model, f"{what} {relative!r} not found in version {ctx.version_dir.name}")
    return path


def open_session(ctx: LoadContext, relative: str, what: str = "model_file") -> RuntimeSession:
    """An inference session of the graph file ``relative``, with the server's runtime options."""
    path = version_file(ctx, relative, what)
    try:
        check_external_data(path)
    except ValueError as exc:
        raise ModelLoadError(ctx.model, str(exc)) from None
    try:
        return RuntimeSession(path, ctx.settings.runtime_options())
    except RuntimeError as exc:
        raise ModelLoadError(ctx.model, str(exc)) from None


def fixed(dim: int | str | None) -> int | None:
    """A graph dimension's size if it is fixed, else None."""
    return dim if isinstance(dim, int) else None


def show_shape(shape: Shape) -> str:
    return "(" + ", ".join("batch" if d is None else str(d) for d in shape) + ")"
