"""Pictures of attention maps, drawn with Pillow (the ``attnserve-client[images]`` extra).

- :func:`rollout_overlay`: a patch map (a ViT's rollout, one Swin head's map) upscaled to the
  image, coloured, and blended over it; optionally the query patch outlined.
- :func:`attention_panels`: several such overlays side by side, each with a title.
- :func:`token_heatmaps`: one token-by-token heatmap per head, with the tokens as axis labels.

Pillow encodes the PNGs (``picture.save("attn.png")``); nothing here writes an image format by
hand. The colour maps are small lookup tables interpolated from a few anchor colours of
matplotlib's perceptually uniform maps, so that matplotlib stays optional (:mod:`attnserve_client.plots`).
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Sequence
from typing import Any

try:
    import numpy as np
    from PIL import Image, ImageDraw, ImageFont
except ImportError as error:  # pragma: no cover - the extra is installed wherever the tests run
    raise ImportError(
        f"attnserve_client.pictures needs numpy and Pillow ({error.name} is missing): "
        "pip install 'attnserve-client[images]'"
    ) from None

__all__ = ["COLORMAPS", "attention_panels", "load_image", "rollout_overlay", "token_heatmaps", "token_label"]

# Anchor colours at 0, 1/4, 1/2, 3/4 and 1 of matplotlib's maps of the same names.
COLORMAPS: dict[str, tuple[str, ...]] = {
    "viridis": ("#440154", "#3b528b", "#21918c", "#5ec962", "#fde725"),
    "inferno": ("#000004", "#57106e", "#bc3754", "#f98e09", "#fcffa4"),
    "magma": ("#000004", "#51127c", "#b73779", "#fc8961", "#fcfdbf"),
    "grey": ("#000000", "#404040", "#808080", "#bfbfbf", "#ffffff"),
}
MARK_COLOUR = "#00e5ff"
BACKGROUND = "white"
INK = "black"
PAD = 6


def _lookup(cmap: str) -> list[list[int]]:
    """The 256-entry lookup table of each of R, G and B of ``cmap``, for ``Image.point``."""
    if cmap not in COLORMAPS:
        raise ValueError(f"cmap must be one of {', '.join(COLORMAPS)}, got {cmap!r}")
    anchors = np.array([[int(c[i : i + 2], 16) for i in (1, 3, 5)] for c in COLORMAPS[cmap]], dtype=np.float64)
    positions = np.linspace(0.0, 1.0, len(anchors))
    levels = np.linspace(0.0, 1.0, 256)
    return [[int(v) for v in np.round(np.interp(levels, positions, anchors[:, k]))] for k in range(3)]


def _levels(values: Any, vmax: float | None, vmin: float | None = 0.0) -> Any:
    """``values`` scaled to 0..255 (uint8) from ``vmin`` to ``vmax`` (None: the map's own minimum, maximum)."""
    array = np.nan_to_num(np.asarray(values, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    top = float(array.max(initial=0.0)) if vmax is None else float(vmax)
    bottom = float(array.min(initial=top)) if vmin is None else float(vmin)
    if top <= bottom:  # a blank or uniform map (with vmin=None): every cell at the bottom of the colour map
        return np.zeros(array.shape, dtype=np.uint8)
    return np.round(np.clip((array - bottom) / (top - bottom), 0.0, 1.0) * 255).astype(np.uint8)


def _coloured(levels: Any, cmap: str, size: tuple[int, int], resample: Image.Resampling) -> Image.Image:
    """A uint8 (rows, cols) array as an RGB picture of ``size`` (width, height), coloured by ``cmap``."""
    grey = Image.fromarray(levels, mode="L").resize(size, resample)
    return Image.merge("RGB", [grey.point(table) for table in _lookup(cmap)])


def load_image(image: object) -> Image.Image:
    """A PIL image from a PIL image, a path, encoded bytes or a uint8 array, as RGB (transparency on white)."""
    if isinstance(image, Image.Image):
        picture = image
    elif isinstance(image, (str, os.PathLike)):
        picture = Image.open(image)
    elif isinstance(image, (bytes, bytearray, memoryview)):
        picture = Image.open(io.BytesIO(bytes(image)))
    elif isinstance(image, np.ndarray):
        picture = Image.fromarray(image)
    else:
        raise TypeError(
            f"image must be a PIL image, a path, encoded bytes or a uint8 array, not {type(image).__name__}"
        )
    if picture.mode in ("RGBA", "LA", "PA") or (picture.mode == "P" and "transparency" in picture.info):
        rgba = picture.convert("RGBA")
        white = Image.new("RGBA", rgba.size, BACKGROUND)
        return Image.alpha_composite(white, rgba).convert("RGB")
    return picture.convert("RGB")  # grey digits too: the colours need three channels


def rollout_overlay(
    image: object,
    attention_map: Any,
    *,
    alpha: float = 0.6,
    resample: str = "bilinear",
    cmap: str = "inferno",
    min_size: int = 256,
    vmax: float | None = None,
    vmin: float | None = 0.0,
    mark: tuple[int, int] | None = None,
) -> Image.Image:
    """The image with a patch map blended over it.

    Args:
        image: a PIL image, a path, encoded bytes or a uint8 array; grey images become RGB.
        attention_map: ``(grid_h, grid_w)``: a ViT's rollout, one class-attention head, or one Swin
            head's map. It is stretched over the whole image, as the ``resize`` preprocessing
            stretches the image over the model's input (with a center-crop policy the map covers
            only the crop, which the client does not know: pass the crop as ``image`` then).
        alpha: how much of the map shows, 0 (the image only) to 1 (the map only).
        resample: ``"bilinear"`` (smooth) or ``"nearest"`` (one flat square per patch).
        cmap: a name of :data:`COLORMAPS`.
        min_size: a smaller image is first scaled up by a whole factor until its shorter side is at
            least this (a 64x64 digit becomes 256x256); 0 keeps the image's own size.
        vmax: the value at the top of the colour map; None: the map's maximum.
        vmin: the value at the bottom; None: the map's minimum, which shows the contrast of a
            rollout that spreads over every patch (the default 0 keeps a Swin map's zeros black).
        mark: a (row, col) cell of the map to outline, such as a Swin map's query patch.

    Returns:
        An RGB PIL image; ``save("heat.png")`` writes it.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    filters = {"bilinear": Image.Resampling.BILINEAR, "nearest": Image.Resampling.NEAREST}
    if resample not in filters:
        raise ValueError(f"resample must be 'bilinear' or 'nearest', got {resample!r}")
    levels = _levels(attention_map, vmax, vmin)
    if levels.ndim != 2 or 0 in levels.shape:
        raise ValueError(f"attention_map must be a non-empty (rows, cols) map, got shape {levels.shape}")
    picture = load_image(image)
    factor = max(1, math.ceil(min_size / min(picture.size))) if min_size > 0 else 1
    if factor > 1:
        picture = picture.resize((picture.width * factor, picture.height * factor), Image.Resampling.BICUBIC)
    heat = _coloured(levels, cmap, picture.size, filters[resample])
    blended = Image.blend(picture, heat, alpha)
    if mark is not None:
        rows, cols = levels.shape
        row, col = mark
        cell_w, cell_h = blended.width / cols, blended.height / rows
        box = (col * cell_w, row * cell_h, (col + 1) * cell_w - 1, (row + 1) * cell_h - 1)
        ImageDraw.Draw(blended).rectangle(box, outline=MARK_COLOUR, width=max(1, blended.width // 128))
    return blended


def attention_panels(
    image: object,
    maps: Any,
    *,
    titles: Sequence[str] | None = None,
    columns: int | None = None,
    **overlay: Any,
) -> Image.Image:
    """One :func:`rollout_overlay` per map, in a grid, each with its title above it.

    Args:
        image: as :func:`rollout_overlay` takes it.
        maps: ``(n, grid_h, grid_w)``, e.g. the heads of one Swin block, or ``(n, m, grid_h, grid_w)``
            (blocks x heads), which is drawn one row per block.
        titles: one per map (row-major); None: ``map 0``, ``map 1``, ...
        columns: maps per row; None: the second axis of a 4-D ``maps``, else up to 4.
        overlay: passed to :func:`rollout_overlay` (``alpha``, ``cmap``, ``mark``, ...).
    """
    array = np.asarray(maps, dtype=np.float64)
    if array.ndim == 4:
        columns = columns or array.shape[1]
        array = array.reshape(-1, *array.shape[2:])  # (blocks * heads, grid_h, grid_w)
    if array.ndim != 3 or array.shape[0] == 0:
        raise ValueError(f"maps must be (n, rows, cols) or (n, m, rows, cols) with n > 0, got shape {array.shape}")
    names = list(titles) if titles is not None else [f"map {i}" for i in range(len(array))]
    if len(names) != len(array):
        raise ValueError(f"{len(names)} titles for {len(array)} maps")
    panels = [_titled(rollout_overlay(image, m, **overlay), name) for m, name in zip(array, names, strict=True)]
    return _grid(panels, columns or min(4, len(panels)))


def token_label(token: str, max_chars: int = 12, *, ascii_only: bool = True) -> str:
    """A token as an axis label: whitespace made visible, unprintable characters escaped, long ones cut.

    A space shows as ``·``, a newline as ``\\n``, a tab as ``\\t``, an empty token as ``''``. With
    ``ascii_only`` (Pillow's built-in font draws ASCII only) other characters show as their Python
    escapes (``é`` as ``\\xe9``); pass ``ascii_only=False`` with a font that has them.
    """
    visible = {" ": "·", "\n": "\\n", "\t": "\\t", "\r": "\\r"}
    parts = []
    for ch in token:
        if ch in visible:
            parts.append(visible[ch])
        elif not ch.isprintable() or (ascii_only and not ch.isascii()):
            parts.append(ch.encode("unicode_escape").decode("ascii"))
        else:
            parts.append(ch)
    label = "".join(parts) or "''"
    return label if len(label) <= max_chars else label[: max(1, max_chars - 2)] + ".."


def token_heatmaps(
    tokens: Sequence[str],
    attention: Any,
    *,
    row_tokens: Sequence[str] | None = None,
    layer: int | None = None,
    heads: Sequence[int] | None = None,
    titles: Sequence[str] | None = None,
    columns: int | None = None,
    cell: int | None = None,
    cmap: str = "viridis",
    max_label: int = 12,
    font: ImageFont.FreeTypeFont | ImageFont.ImageFont | None = None,
) -> Image.Image:
    """One token-by-token heatmap per head, with the tokens as axis labels and a title per head.

    Args:
        tokens: the column tokens (what is attended to), and the row tokens unless ``row_tokens``.
        attention: ``(heads, rows, cols)``, or one ``(rows, cols)`` map; each row is one token's
            attention. Each panel is coloured from 0 to its own maximum.
        row_tokens: the rows' tokens when they differ from the columns' (cross-attention: the
            generated tokens over the source's).
        layer: the layer, for the titles (``layer 5 head 0``).
        heads: the head numbers, for the titles; None: 0, 1, ...
        titles: the titles, instead of ``layer L head H``.
        columns: panels per row; None: up to 4.
        cell: pixels per token; None: as many as fit about 512 pixels (6 to 24).
        cmap: a name of :data:`COLORMAPS`.
        max_label: labels longer than this many characters are cut (``..``).
        font: a Pillow font; None: Pillow's built-in one (ASCII; others are shown escaped, see
            :func:`token_label`).
    """
    array = np.asarray(attention, dtype=np.float64)
    if array.ndim == 2:
        array = array[None]  # (1, rows, cols)
    rows = list(row_tokens) if row_tokens is not None else list(tokens)
    if array.ndim != 3 or array.shape[0] == 0 or array.shape[1:] != (len(rows), len(tokens)):
        raise ValueError(
            f"attention must be (heads, {len(rows)}, {len(tokens)}) for {len(rows)} row and {len(tokens)} column "
            f"tokens, got shape {array.shape}"
        )
    if len(tokens) == 0 or len(rows) == 0:
        raise ValueError("there must be at least one token")
    numbers = list(heads) if heads is not None else list(range(array.shape[0]))
    if titles is None:
        titles = [f"layer {layer} head {h}" if layer is not None else f"head {h}" for h in numbers]
    if len(titles) != array.shape[0]:
        raise ValueError(f"{len(titles)} titles for {array.shape[0]} heads")
    face = font if font is not None else ImageFont.load_default(size=11)
    ascii_only = font is None
    side = cell or max(6, min(24, 512 // max(len(rows), len(tokens))))
    col_labels = [token_label(t, max_label, ascii_only=ascii_only) for t in tokens]
    row_labels = [token_label(t, max_label, ascii_only=ascii_only) for t in rows]
    panels = [
        _titled(_heatmap(m, labels=(row_labels, col_labels), side=side, cmap=cmap, font=face), title)
        for m, title in zip(array, titles, strict=True)
    ]
    return _grid(panels, columns or min(4, len(panels)))


def _heatmap(matrix: Any, *, labels: tuple[list[str], list[str]], side: int, cmap: str, font: Any) -> Image.Image:
    """One heatmap with its row labels on the left and its column labels below, read bottom to top."""
    n_rows, n_cols = matrix.shape
    row_labels, col_labels = labels
    line = _text_height(font)
    # Label every token when the cells are tall enough for a line of text, else every k-th.
    step = max(1, math.ceil(line / side))
    label_w = max(_text_width(font, t) for t in (*row_labels, *col_labels)) + PAD
    heat = _coloured(_levels(matrix, None), cmap, (n_cols * side, n_rows * side), Image.Resampling.NEAREST)
    picture = Image.new("RGB", (label_w + heat.width + PAD, heat.height + label_w + PAD), BACKGROUND)
    picture.paste(heat, (label_w, 0))
    draw = ImageDraw.Draw(picture)
    for i in range(0, n_rows, step):
        text = row_labels[i]
        y = i * side + (side - line) // 2
        draw.text((label_w - PAD // 2 - _text_width(font, text), y), text, fill=INK, font=font)
    for j in range(0, n_cols, step):
        text = col_labels[j]
        strip = Image.new("L", (_text_width(font, text) + 2, line + 2), 0)
        ImageDraw.Draw(strip).text((1, 1), text, fill=255, font=font)
        upright = strip.rotate(90, expand=True)  # (line, width): reads bottom to top
        x = label_w + j * side + (side - upright.width) // 2
        picture.paste(Image.new("RGB", upright.size, INK), (x, heat.height + PAD // 2), upright)
    return picture


def _text_width(font: Any, text: str) -> int:
    left, _, right, _ = font.getbbox(text)
    return math.ceil(float(right) - float(left))


def _text_height(font: Any) -> int:
    """The height of a line drawn at y=0: down to the bottom of its descenders."""
    return math.ceil(float(font.getbbox("Ag")[3])) + 1


def _titled(panel: Image.Image, title: str) -> Image.Image:
    font = ImageFont.load_default(size=12)
    height = _text_height(font) + PAD
    width = max(panel.width, _text_width(font, title) + PAD)
    out = Image.new("RGB", (width, panel.height + height), BACKGROUND)
    ImageDraw.Draw(out).text(((width - _text_width(font, title)) // 2, PAD // 2), title, fill=INK, font=font)
    out.paste(panel, ((width - panel.width) // 2, height))
    return out


def _grid(panels: list[Image.Image], columns: int) -> Image.Image:
    """The panels in rows of ``columns``, each in a cell as large as the largest, on white."""
    columns = max(1, min(columns, len(panels)))
    rows = math.ceil(len(panels) / columns)
    cell_w = max(p.width for p in panels) + PAD
    cell_h = max(p.height for p in panels) + PAD
    out = Image.new("RGB", (columns * cell_w + PAD, rows * cell_h + PAD), BACKGROUND)
    for index, panel in enumerate(panels):
        row, col = divmod(index, columns)
        out.paste(panel, (PAD + col * cell_w, PAD + row * cell_h))
    return out
