"""The window arithmetic of a Swin block, as small typed functions (timm's style): cutting a map into
M×M windows and back, the relative position index of a window, and the masks of shifted (and padded)
windows. :mod:`attnserve_export.swin` builds its blocks from them.
"""

# Shape letters (B, H, W, C, M) as in the paper and timm: clearer than lowercase here.
# ruff: noqa: N806
from __future__ import annotations

import math

import torch

MASK_VALUE = -100.0  # as in the paper's code: exp(-100) is 0 in float32 once added to O(1) scores


def window_partition(x: torch.Tensor, window_size: int) -> torch.Tensor:
    """Cut ``(B, H, W, C)`` (H, W multiples of M) into windows: ``(B * nW, M, M, C)``, row-major per image."""
    B, H, W, C = x.shape
    M = window_size
    x = x.view(B, H // M, M, W // M, M, C)  # (B, H/M, M, W/M, M, C)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, M, M, C)  # (B * nW, M, M, C)


def window_reverse(windows: torch.Tensor, window_size: int, height: int, width: int) -> torch.Tensor:
    """Inverse of :func:`window_partition`: ``(B * nW, M, M, C)`` → ``(B, H, W, C)``."""
    M = window_size
    C = windows.shape[-1]
    x = windows.view(-1, height // M, width // M, M, M, C)  # (B, H/M, W/M, M, M, C)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, height, width, C)  # (B, H, W, C)


def relative_position_index(window_size: int) -> torch.Tensor:
    """For each (query, key) pair of a window, its row in the bias table: ``(M², M²)`` int64.

    The offset (dy, dx) ∈ [-(M-1), M-1]² maps to ``(dy + M - 1) * (2M - 1) + (dx + M - 1)``.
    """
    M = window_size
    ys, xs = torch.meshgrid(torch.arange(M), torch.arange(M), indexing="ij")
    coords = torch.stack([ys.flatten(), xs.flatten()])  # (2, M²)
    rel = coords[:, :, None] - coords[:, None, :]  # (2, M², M²)
    return (rel[0] + M - 1) * (2 * M - 1) + (rel[1] + M - 1)  # (M², M²)


def _region_ids(size: int, padded: int, window_size: int, shift: int) -> torch.Tensor:
    """Per position of the shifted-then-padded axis: which true region it belongs to (-1: padding).

    Position p < size holds original index (p + shift) mod size. Tokens are in the same region
    iff they are in the same shifted window of the original axis, i.e. the same
    ``(i + M - shift) // M``; the rolled window grid then splits regions that wrapped around.
    """
    p = torch.arange(padded)
    original = (p + shift) % size
    ids = (original + window_size - shift) // window_size if shift else original // window_size
    return torch.where(p < size, ids, torch.full_like(ids, -1))


def attention_mask(height: int, width: int, window_size: int, shift: int) -> torch.Tensor:
    """Additive mask for (S)W-MSA on a ``height × width`` map: ``(nW, M², M²)``, 0 or ``MASK_VALUE``.

    The map is cyclically shifted by ``shift`` first, then padded up to multiples of M (the
    order of :class:`SwinBlock`). A query may attend to a key iff both come from the same
    true window of the original map and the key is not padding. A padding query sees
    only masked keys, so its (discarded) output stays finite.
    """
    M = window_size
    Hp, Wp = math.ceil(height / M) * M, math.ceil(width / M) * M
    rows = _region_ids(height, Hp, M, shift)  # (Hp,)
    cols = _region_ids(width, Wp, M, shift)  # (Wp,)
    region = rows[:, None] * (Wp + 1) + cols[None, :]  # (Hp, Wp): unique per (row region, col region)
    pad = (rows[:, None] < 0) | (cols[None, :] < 0)  # (Hp, Wp)
    region = torch.where(pad, torch.full_like(region, -1), region)
    windows = window_partition(region[None, :, :, None], M).reshape(-1, M * M)  # (nW, M²)
    allowed = (windows[:, :, None] == windows[:, None, :]) & (windows[:, None, :] >= 0)  # (nW, M², M²)
    return torch.where(allowed, 0.0, MASK_VALUE)


def padded_shift_mask(height: int, width: int, window_size: int, shift: int) -> torch.Tensor:
    """Additive SW-MSA mask of a map that was padded to ``height × width`` and then shifted: ``(nW, M², M²)``.

    transformers' order (``SwinConfig.pad_before_shift``): along each padded axis of length L the
    shifted map has three regions, ``[0, L - M)``, ``[L - M, L - shift)`` and ``[L - shift, L)``;
    tokens of different regions never attend to each other. Padding is not masked.
    """
    M = window_size
    rows, cols = ((torch.arange(n) >= n - M).long() + (torch.arange(n) >= n - shift).long() for n in (height, width))
    region = rows[:, None] * 3 + cols[None, :]  # (Hp, Wp)
    windows = window_partition(region[None, :, :, None], M).reshape(-1, M * M)  # (nW, M²)
    allowed = windows[:, :, None] == windows[:, None, :]  # (nW, M², M²)
    return torch.where(allowed, 0.0, MASK_VALUE)
