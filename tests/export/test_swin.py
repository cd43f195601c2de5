"""Swin: window partition, relative positions, the shift mask, padding, patch merging and the paper preset."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from attnserve_export.swin import (
    PRESETS,
    PatchMerging,
    Swin,
    SwinBlock,
)
from attnserve_export.swin_windows import (
    attention_mask,
    relative_position_index,
    window_partition,
    window_reverse,
)


def test_window_partition_round_trip() -> None:
    x = torch.randn(2, 8, 12, 3)
    windows = window_partition(x, 4)
    assert windows.shape == (2 * 2 * 3, 4, 4, 3)
    torch.testing.assert_close(windows[0], x[0, :4, :4])
    torch.testing.assert_close(windows[1], x[0, :4, 4:8])  # row-major over windows
    torch.testing.assert_close(windows[6], x[1, :4, :4])  # then the next image
    torch.testing.assert_close(window_reverse(windows, 4, 8, 12), x)


@pytest.mark.parametrize("m", [1, 2, 3, 7])
def test_relative_position_index(m: int) -> None:
    index = relative_position_index(m)
    assert index.shape == (m * m, m * m)
    coords = list(itertools.product(range(m), range(m)))
    for (i, (yi, xi)), (j, (yj, xj)) in itertools.product(enumerate(coords), repeat=2):
        assert index[i, j] == (yi - yj + m - 1) * (2 * m - 1) + (xi - xj + m - 1)
    assert index.min() == 0 and index.max() == (2 * m - 1) ** 2 - 1
    assert index.diagonal().eq((m - 1) * (2 * m - 1) + (m - 1)).all()
    assert len(index.unique()) == (2 * m - 1) ** 2  # every offset occurs


def test_mask_without_shift_or_padding_is_empty() -> None:
    assert attention_mask(8, 8, 4, 0).eq(0).all()


def _reference_block(block: SwinBlock, x: torch.Tensor, size: tuple[int, int], window: int, shift: int) -> torch.Tensor:
    """The block computed directly: each token attends to the tokens of its own true (shifted) window.

    No roll, no padding, no mask: windows are the M×M tiles of the original map whose grid is
    offset by ``shift`` (edge windows are partial), and the bias uses true relative positions.
    """
    height, width = size
    attn = block.attn
    heads, hd = attn.num_heads, attn.head_dim
    h = block.norm1(x)  # (B, L, C)
    qkv = attn.qkv(h).view(x.shape[0], height * width, 3, heads, hd)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # (B, L, nH, hd)
    out = torch.zeros_like(h)
    groups: dict[tuple[int, int], list[int]] = {}
    for y, xx in itertools.product(range(height), range(width)):
        groups.setdefault(((y + window - shift) // window, (xx + window - shift) // window), []).append(y * width + xx)
    table = attn.relative_position_bias_table
    for members in groups.values():
        idx = torch.tensor(members)
        ys, xs = idx // width, idx % width
        rel = (ys[:, None] - ys[None, :] + window - 1) * (2 * window - 1) + (xs[:, None] - xs[None, :] + window - 1)
        bias = table[rel].permute(2, 0, 1)  # (nH, n, n)
        scores = torch.einsum("bihd,bjhd->bhij", q[:, idx] * hd**-0.5, k[:, idx]) + bias
        mixed = torch.einsum("bhij,bjhd->bihd", scores.softmax(-1), v[:, idx]).reshape(x.shape[0], len(members), -1)
        out[:, idx] = attn.proj(mixed)
    x = x + out
    return x + block.mlp(block.norm2(x))


@pytest.mark.parametrize(
    ("size", "shift"),
    [((8, 8), True), ((8, 12), True), ((6, 6), True), ((6, 7), False), ((8, 8), False)],
)
def test_block_equals_attention_over_true_windows(size: tuple[int, int], shift: bool) -> None:
    """Shifted blocks (cyclic shift + mask) and padded blocks equal plain attention over the true windows."""
    torch.manual_seed(0)
    block = SwinBlock(16, size, num_heads=2, window_size=4, shift=shift, mlp_ratio=2.0, dropout=0.0, drop_path=0.0)
    with torch.no_grad():
        block.attn.relative_position_bias_table.normal_(std=1.0)  # make a wrong bias lookup visible
    block.eval()
    x = torch.randn(2, size[0] * size[1], 16)
    with torch.no_grad():
        expected = _reference_block(block, x, size, 4, 2 if shift else 0)
        torch.testing.assert_close(block(x), expected, rtol=1e-5, atol=1e-5)


def test_shift_changes_the_result() -> None:
    """Without the mask, wrapped-around tokens would mix: check the mask actually masks something."""
    mask = attention_mask(8, 8, 4, 2)
    assert mask.shape == (4, 16, 16)
    assert mask[0].eq(0).all()  # the top-left window holds one region
    assert (mask[3] != 0).any()  # the bottom-right one holds four


@pytest.mark.parametrize(("size", "out"), [((8, 8), (4, 4)), ((6, 6), (3, 3)), ((5, 7), (3, 4))])
def test_patch_merging_shapes(size: tuple[int, int], out: tuple[int, int]) -> None:
    merge = PatchMerging(8, size)
    y = merge(torch.randn(2, size[0] * size[1], 8))
    assert y.shape == (2, out[0] * out[1], 16)
    assert merge.out_resolution == out


def test_patch_merging_groups_2x2_neighbours() -> None:
    merge = PatchMerging(1, (4, 4))
    with torch.no_grad():
        merge.norm = nn.Identity()  # type: ignore[assignment]
        merge.reduction = nn.Identity()  # type: ignore[assignment]
    x = torch.arange(16.0).view(1, 16, 1)
    y = merge(x)  # (1, 4, 4): the 2×2 neighbourhoods, in timm's x0, x1, x2, x3 order
    assert y[0, 0].tolist() == [0.0, 4.0, 1.0, 5.0]
    assert y[0, 3].tolist() == [10.0, 14.0, 11.0, 15.0]


@pytest.mark.parametrize("image_size", [20, 18, 32])
def test_forward_with_uneven_sizes(image_size: int) -> None:
    """Feature maps that are not multiples of the window (10, 9, 5×5 after merging...) are padded."""
    torch.manual_seed(0)
    model = Swin(PRESETS["tiny"].with_(image_size=image_size)).eval()
    x = torch.randn(3, 1, image_size, image_size)
    logits = model(x)
    assert logits.shape == (3, 10)
    assert torch.isfinite(logits).all()
    torch.testing.assert_close(model(x[:1]), logits[:1], rtol=1e-5, atol=1e-6)


def test_swin_t_parameter_count() -> None:
    model = Swin(PRESETS["swin-t"])
    assert abs(model.num_parameters() - 28.3e6) <= 0.1e6
