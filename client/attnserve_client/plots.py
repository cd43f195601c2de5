"""matplotlib figures of attention maps, for notebooks (the optional ``attnserve-client[plots]`` extra).

The same pictures as :mod:`attnserve_client.pictures`, as ``matplotlib.figure.Figure`` objects
with real axes, tick labels and a colour bar: a notebook shows them inline, ``fig.savefig(...)``
writes any format matplotlib knows. They are built without ``pyplot``, so making one changes no
global state and needs no display. matplotlib is imported on the first call, not with the client.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from attnserve_client.pictures import load_image, token_label

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["plot_image_attention", "plot_token_attention"]

EXTRA_HINT = "pip install 'attnserve-client[plots]'"


def _figure_class() -> type[Figure]:
    try:
        module = importlib.import_module("matplotlib.figure")
    except ImportError:
        raise ImportError(f"the attnserve_client.plots figures need matplotlib: {EXTRA_HINT}") from None
    figure: type[Figure] = module.Figure
    return figure


def plot_token_attention(
    tokens: Sequence[str],
    attention: Any,
    *,
    row_tokens: Sequence[str] | None = None,
    layer: int | None = None,
    heads: Sequence[int] | None = None,
    columns: int | None = None,
    cmap: str = "viridis",
    max_label: int = 12,
) -> Figure:
    """One token-by-token heatmap per head, the tokens as tick labels (see :func:`pictures.token_heatmaps`).

    Args:
        tokens: the column tokens, and the row tokens unless ``row_tokens``.
        attention: ``(heads, rows, cols)`` or one ``(rows, cols)`` map.
        row_tokens: the rows' tokens when they differ (cross-attention).
        layer, heads: for the titles (``layer 5 head 0``).
        columns: panels per row; None: up to 4.
        cmap: any matplotlib colour map.
        max_label: labels longer than this are cut.
    """
    np = importlib.import_module("numpy")
    array = np.asarray(attention, dtype=np.float64)
    if array.ndim == 2:
        array = array[None]  # (1, rows, cols)
    rows = list(row_tokens) if row_tokens is not None else list(tokens)
    if array.ndim != 3 or array.shape[0] == 0 or array.shape[1:] != (len(rows), len(tokens)):
        raise ValueError(f"attention must be (heads, {len(rows)}, {len(tokens)}), got shape {array.shape}")
    numbers = list(heads) if heads is not None else list(range(array.shape[0]))
    ncols = columns or min(4, len(array))
    nrows = -(-len(array) // ncols)
    side = max(2.5, min(6.0, 0.28 * max(len(rows), len(tokens))))
    figure = _figure_class()(figsize=(ncols * (side + 1.2), nrows * (side + 1.2)), layout="constrained")
    axes = figure.subplots(nrows, ncols, squeeze=False)
    col_labels = [token_label(t, max_label, ascii_only=False) for t in tokens]
    row_labels = [token_label(t, max_label, ascii_only=False) for t in rows]
    for index, ax in enumerate(axes.flat):
        if index >= len(array):
            ax.set_axis_off()
            continue
        image = ax.imshow(array[index], cmap=cmap, vmin=0.0, interpolation="nearest")
        ax.set_xticks(range(len(tokens)), col_labels, rotation=90, fontsize=8)
        ax.set_yticks(range(len(rows)), row_labels, fontsize=8)
        head = numbers[index] if index < len(numbers) else index
        ax.set_title(f"layer {layer} head {head}" if layer is not None else f"head {head}", fontsize=10)
        figure.colorbar(image, ax=ax, shrink=0.8)
    return figure


def plot_image_attention(
    image: object,
    maps: Any,
    *,
    titles: Sequence[str] | None = None,
    mark: tuple[int, int] | None = None,
    alpha: float = 0.6,
    cmap: str = "inferno",
    columns: int | None = None,
) -> Figure:
    """Each ``(grid_h, grid_w)`` map of ``maps`` (one, or ``(n, grid_h, grid_w)``) over the image.

    Args:
        image: a PIL image, a path, encoded bytes or a uint8 array.
        maps: a ViT's rollout, its class attention of one layer ``(heads, gh, gw)``, or a Swin
            block's heads ``(heads, gh, gw)``; each is stretched over the whole image.
        titles: one per map.
        mark: a (row, col) cell to outline on every map (a Swin map's query patch).
        alpha: how much of the map shows over the image.
        cmap: any matplotlib colour map.
        columns: panels per row; None: up to 4.
    """
    np = importlib.import_module("numpy")
    picture = np.asarray(load_image(image))
    array = np.asarray(maps, dtype=np.float64)
    if array.ndim == 2:
        array = array[None]  # (1, gh, gw)
    if array.ndim != 3 or array.shape[0] == 0:
        raise ValueError(f"maps must be (rows, cols) or (n, rows, cols), got shape {array.shape}")
    names = list(titles) if titles is not None else [""] * len(array)
    ncols = columns or min(4, len(array))
    nrows = -(-len(array) // ncols)
    figure = _figure_class()(figsize=(ncols * 3.2, nrows * 3.4), layout="constrained")
    axes = figure.subplots(nrows, ncols, squeeze=False)
    height, width = picture.shape[:2]
    for index, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if index >= len(array):
            continue
        grid_h, grid_w = array[index].shape
        ax.imshow(picture, extent=(0, width, height, 0))
        ax.imshow(array[index], cmap=cmap, alpha=alpha, extent=(0, width, height, 0), interpolation="bilinear")
        if mark is not None:
            cell_w, cell_h = width / grid_w, height / grid_h
            patch = importlib.import_module("matplotlib.patches").Rectangle(
                (mark[1] * cell_w, mark[0] * cell_h), cell_w, cell_h, fill=False, edgecolor="#00e5ff", linewidth=2
            )
            ax.add_patch(patch)
        ax.set_title(names[index] if index < len(names) else "", fontsize=10)
    return figure
