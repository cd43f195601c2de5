"""From an explain graph's raw attention probabilities to the maps a client sees (pure numpy).

- ViT: the class token's row over the patches, and attention rollout (Abnar and Zuidema, 2020);
- Swin: one query patch's row of a window attention, put back into the stage's token grid with
  the block's padding and cyclic shift undone (the rest of the grid is zero);
- text: the chosen layers and heads of one input.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from attnserve_server.model_format.explain import WindowGeometry

FloatArray = npt.NDArray[np.float32]


def select(layers: Sequence[FloatArray], heads: Sequence[int]) -> FloatArray:
    """The chosen heads of each chosen layer's ``(1, H, Q, K)`` output: ``(layers, heads, Q, K)`` float32."""
    return np.stack([layer[0, list(heads)] for layer in layers]).astype(np.float32, copy=False)


def class_token_attention(layer: FloatArray, heads: Sequence[int], grid: tuple[int, int]) -> FloatArray:
    """The class token's attention over the patches, ``(heads, gh, gw)``, from ``(1, H, 1 + N, 1 + N)``."""
    row = layer[0, list(heads), 0, 1:]  # (heads, N): the class token (query 0) over the patches
    return row.reshape(len(heads), *grid).astype(np.float32, copy=False)


def attention_rollout(layers: Sequence[FloatArray], grid: tuple[int, int]) -> FloatArray:
    """Attention rollout of ``(1, H, 1 + N, 1 + N)`` maps, first layer first: ``(gh, gw)``.

    Abnar and Zuidema (2020): average the heads, add the identity for the residual connection
    (0.5 A + 0.5 I), renormalize the rows, and multiply the layers' matrices, last layer on the
    left. The class token's row, without itself, says how much each patch flowed into it.
    """
    tokens = layers[0].shape[-1]
    rollout = np.eye(tokens, dtype=np.float64)
    for layer in layers:
        mixed = 0.5 * layer[0].astype(np.float64).mean(axis=0) + 0.5 * np.eye(tokens)  # (1 + N, 1 + N)
        mixed /= mixed.sum(axis=-1, keepdims=True)
        rollout = mixed @ rollout
    return rollout[0, 1:].reshape(grid).astype(np.float32)


@dataclass(frozen=True)
class QueryWindow:
    """Where one Swin block's query patch fell: its window in the shifted, padded grid of windows."""

    shift: int
    window_size: int
    window_row: int
    window_col: int
    # The stage's patches in that window (the query's own included).
    patches: int


def window_query_map(
    windows: FloatArray, heads: Sequence[int], geometry: WindowGeometry, query: tuple[int, int]
) -> tuple[FloatArray, QueryWindow]:
    """One query patch's attention in one Swin block, ``(heads, H, W)`` over the stage's token grid.

    ``windows`` is the block's raw window attention ``(windows, H, M*M, M*M)`` for one image,
    windows in row-major order over the block's shifted and padded grid. A stage token at
    ``(r, c)`` sits at ``(r - shift) mod L`` after the block's cyclic shift, where ``L`` is the
    axis length the shift rolled (the padded length when padding came first). Keys that are
    padding are no patch and are left out.
    """
    height, width, m, shift = geometry.height, geometry.width, geometry.window_size, geometry.shift
    padded_h, padded_w = geometry.padded
    roll_h, roll_w = (padded_h, padded_w) if geometry.pad_before_shift else (height, width)
    row, col = query
    shifted_row, shifted_col = (row - shift) % roll_h, (col - shift) % roll_w
    window_row, window_col = shifted_row // m, shifted_col // m
    window = window_row * (padded_w // m) + window_col
    query_index = (shifted_row % m) * m + shifted_col % m
    probabilities = windows[window][list(heads), query_index]  # (heads, M*M): over the window's keys
    out = np.zeros((len(heads), height, width), dtype=np.float32)
    patches = 0
    for key in range(m * m):
        # The key's place in the shifted, padded grid, then in the stage's grid before the shift.
        key_row = (window_row * m + key // m + shift) % roll_h
        key_col = (window_col * m + key % m + shift) % roll_w
        if window_row * m + key // m >= roll_h or window_col * m + key % m >= roll_w:
            continue  # padding added after the shift
        if key_row >= height or key_col >= width:
            continue  # padding added before the shift, rolled along
        out[:, key_row, key_col] = probabilities[:, key]
        patches += 1
    return out, QueryWindow(shift, m, window_row, window_col, patches)
