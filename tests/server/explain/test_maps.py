"""The server's map arithmetic (pure numpy), against routes of its own: Swin windows put back by
rolling and padding an index grid the way the block does, and rollout by its definition."""

from __future__ import annotations

import numpy as np
import pytest

from attnserve_server.explain.maps import attention_rollout, class_token_attention, window_query_map
from attnserve_server.model_format.explain import WindowGeometry


def _window_slots(geometry: WindowGeometry) -> np.ndarray:
    """For each window and slot, the stage token it holds (-1: padding): ``(windows, M*M)``, made by
    applying the block's own steps (cyclic shift, padding, partition) to a grid of token indices."""
    h, w, m, s = geometry.height, geometry.width, geometry.window_size, geometry.shift
    ph, pw = geometry.padded
    grid = np.arange(h * w).reshape(h, w)
    if geometry.pad_before_shift:
        grid = np.pad(grid, ((0, ph - h), (0, pw - w)), constant_values=-1)
        grid = np.roll(grid, (-s, -s), axis=(0, 1))
    else:
        grid = np.roll(grid, (-s, -s), axis=(0, 1))
        grid = np.pad(grid, ((0, ph - h), (0, pw - w)), constant_values=-1)
    windows = grid.reshape(ph // m, m, pw // m, m).transpose(0, 2, 1, 3)  # (rows, cols, M, M)
    return windows.reshape(-1, m * m)


GEOMETRIES = [
    WindowGeometry(height=8, width=8, window_size=4, shift=0),
    WindowGeometry(height=8, width=8, window_size=4, shift=2),
    WindowGeometry(height=10, width=7, window_size=4, shift=2),  # padded edges, shifted
    WindowGeometry(height=10, width=7, window_size=4, shift=2, pad_before_shift=True),
    WindowGeometry(height=5, width=5, window_size=5, shift=0),  # one window
]


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=lambda g: f"{g.height}x{g.width}-s{g.shift}-p{g.pad_before_shift}")
def test_window_query_map_puts_each_key_where_the_block_took_it_from(geometry: WindowGeometry) -> None:
    slots = _window_slots(geometry)
    rng = np.random.default_rng(0)
    heads = 3
    m2 = geometry.window_size**2
    raw = rng.random((len(slots), heads, m2, m2)).astype(np.float32)
    raw /= raw.sum(-1, keepdims=True)
    for row in range(geometry.height):
        for col in range(geometry.width):
            token = row * geometry.width + col
            window, slot = map(int, np.argwhere(slots == token)[0])
            expected = np.zeros((heads, geometry.height * geometry.width), dtype=np.float32)
            real = slots[window] >= 0
            expected[:, slots[window][real]] = raw[window][:, slot][:, real]
            got, where = window_query_map(raw, [0, 1, 2], geometry, (row, col))
            np.testing.assert_array_equal(got.reshape(heads, -1), expected)
            assert where.patches == int(real.sum())
            assert where.window_row * (geometry.padded[1] // geometry.window_size) + where.window_col == window
            assert np.count_nonzero(got[0]) == where.patches  # zero outside the query's window


def test_window_query_map_keeps_the_chosen_heads_in_order() -> None:
    geometry = GEOMETRIES[1]
    raw = np.random.default_rng(1).random((4, 3, 16, 16)).astype(np.float32)
    both, _ = window_query_map(raw, [2, 0], geometry, (3, 5))
    first, _ = window_query_map(raw, [0], geometry, (3, 5))
    np.testing.assert_array_equal(both[1], first[0])


def test_rollout_follows_its_definition() -> None:
    rng = np.random.default_rng(2)
    layers = []
    for _ in range(3):
        a = rng.random((1, 2, 5, 5)).astype(np.float32)
        layers.append(a / a.sum(-1, keepdims=True))
    expected = np.eye(5)
    for a in layers:
        mixed = 0.5 * a[0].mean(0) + 0.5 * np.eye(5)
        expected = (mixed / mixed.sum(-1, keepdims=True)) @ expected
    got = attention_rollout(layers, (2, 2))
    np.testing.assert_allclose(got, expected[0, 1:].reshape(2, 2), rtol=1e-6)


def test_rollout_of_self_attention_only_gives_the_patches_nothing() -> None:
    eye = np.eye(5, dtype=np.float32)[None, None].repeat(2, axis=1)  # (1, 2, 5, 5)
    np.testing.assert_array_equal(attention_rollout([eye, eye], (2, 2)), np.zeros((2, 2)))


def test_class_token_attention_is_the_class_row_without_itself() -> None:
    layer = np.arange(2 * 5 * 5, dtype=np.float32).reshape(1, 2, 5, 5)
    got = class_token_attention(layer, [1], (2, 2))
    np.testing.assert_array_equal(got, layer[0, 1, 0, 1:].reshape(1, 2, 2))
