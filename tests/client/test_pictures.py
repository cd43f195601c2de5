"""The pictures of attention maps (attnserve_client.pictures, Pillow) and the matplotlib figures
(attnserve_client.plots): PNGs that Pillow opens, of the expected size, whatever the map holds."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from attnserve_client import pictures, plots
from attnserve_client.pictures import attention_panels, rollout_overlay, token_heatmaps, token_label


def _digit(size: int = 64) -> Image.Image:
    grey = np.zeros((size, size), dtype=np.uint8)
    grey[size // 4 : 3 * size // 4, size // 3 : 2 * size // 3] = 255
    return Image.fromarray(grey, mode="L")


def _causal(heads: int, tokens: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    maps = np.tril(rng.random((heads, tokens, tokens)) + 0.01)
    return maps / maps.sum(-1, keepdims=True)  # (heads, T, T), rows sum to 1


def _saved(picture: Image.Image, path: Path) -> Image.Image:
    picture.save(path)
    with Image.open(path) as opened:
        assert opened.format == "PNG"
        opened.load()
        return opened.copy()


def test_the_rollout_is_blended_over_a_grey_image_scaled_up(tmp_path: Path) -> None:
    rollout = np.arange(16, dtype=np.float32).reshape(4, 4)
    written = _saved(rollout_overlay(_digit(), rollout), tmp_path / "heat.png")
    assert written.size == (256, 256) and written.mode == "RGB"
    pixels = np.asarray(written).astype(int)
    # The map's top-left patch (0) takes the bottom of the colour map, its bottom-right (15) the top.
    assert pixels[:8, :8].sum() < pixels[-8:, -8:].sum()
    assert rollout_overlay(_digit(), rollout, min_size=0).size == (64, 64)
    assert rollout_overlay(_digit(100), rollout, min_size=256).size == (300, 300)  # a whole factor: 3
    # From the map's own minimum, its lowest patch takes the very bottom of the colour map (black).
    lowest = np.asarray(rollout_overlay(_digit(), rollout + 1, alpha=1.0, resample="nearest", vmin=None))
    np.testing.assert_array_equal(lowest[0, 0], [0, 0, 4])


@pytest.mark.parametrize("source", ["pil", "path", "bytes", "array", "rgba"])
def test_the_overlay_takes_every_kind_of_image(source: str, tmp_path: Path) -> None:
    image: object = _digit()
    if source == "path":
        image = tmp_path / "digit.png"
        _digit().save(image)
    elif source == "bytes":
        buffer = io.BytesIO()
        _digit().save(buffer, format="PNG")
        image = buffer.getvalue()
    elif source == "array":
        image = np.asarray(_digit())
    elif source == "rgba":
        image = _digit().convert("RGBA")
    assert rollout_overlay(image, np.ones((2, 2)), min_size=0).size == (64, 64)


@pytest.mark.parametrize("vmin", [0.0, None])
@pytest.mark.parametrize("fill", [0.0, 1 / 16, np.nan])
def test_blank_and_uniform_maps_give_one_flat_colour(fill: float, vmin: float | None) -> None:
    blank = Image.new("L", (32, 32), 0)
    picture = rollout_overlay(blank, np.full((4, 4), fill), min_size=0, alpha=1.0, resample="nearest", vmin=vmin)
    assert len(np.unique(np.asarray(picture).reshape(-1, 3), axis=0)) == 1


def test_the_query_patch_is_outlined_and_panels_are_titled(tmp_path: Path) -> None:
    swin = np.zeros((2, 3, 8, 8))
    swin[:, :, 0:4, 4:8] = 1 / 16  # the query's window; zero elsewhere
    titles = [f"stage 0 block {b} head {h}" for b in range(2) for h in range(3)]
    panels = _saved(
        attention_panels(_digit(), swin, titles=titles, mark=(2, 5), resample="nearest"), tmp_path / "s.png"
    )
    single = rollout_overlay(_digit(), swin[0, 0], mark=(2, 5), resample="nearest")
    assert panels.width > 3 * single.width and panels.height > 2 * single.height
    cyan = np.array([0x00, 0xE5, 0xFF])
    outline = np.asarray(single)[2 * 32, 5 * 32 + 8]  # the top edge of cell (2, 5), 32 px per cell
    np.testing.assert_array_equal(outline, cyan)
    with pytest.raises(ValueError, match="5 titles for 6 maps"):
        attention_panels(_digit(), swin, titles=titles[:5])


def test_token_heatmaps_have_a_panel_per_head_with_labels(tmp_path: Path) -> None:
    tokens = ["The", " cat", " sat", "\n", "café", "日本語のテキストです", "🙂", ""]
    one = token_heatmaps(tokens, _causal(1, len(tokens)), layer=5, cell=16)
    six = _saved(token_heatmaps(tokens, _causal(6, len(tokens)), layer=5, cell=16), tmp_path / "attn.png")
    assert one.width > len(tokens) * 16 and one.height > len(tokens) * 16
    assert six.width > 3.5 * one.width and six.height > 1.8 * one.height  # 4 columns, 2 rows
    # The map's pixels: row 0 of a causal map puts all its weight on token 0 (the colour map's top).
    top = np.array([int(pictures.COLORMAPS["viridis"][-1][i : i + 2], 16) for i in (1, 3, 5)])
    assert (np.asarray(one) == top).all(axis=-1).sum() >= 16 * 16


def test_cross_attention_rows_are_other_tokens_and_shapes_are_checked() -> None:
    source, generated = ["<2en>", "zwei", "und"], ["two", "</s>"]
    cross = np.full((2, 2, 3), 1 / 3)  # (heads, generated, source)
    assert token_heatmaps(source, cross, row_tokens=generated).width > 0
    with pytest.raises(ValueError, match=r"attention must be \(heads, 3, 3\)"):
        token_heatmaps(source, cross)
    with pytest.raises(ValueError, match="cmap must be one of"):
        token_heatmaps(source, cross, row_tokens=generated, cmap="jet")


@pytest.mark.parametrize(
    ("token", "label"),
    [
        (" cat", "·cat"),
        ("\n\n", "\\n\\n"),
        ("\t", "\\t"),
        ("", "''"),
        ("café", "caf\\xe9"),
        ("\x00", "\\x00"),
        ("a_very_long_token_indeed", "a_very_lon.."),
    ],
)
def test_token_labels_are_readable_in_the_built_in_font(token: str, label: str) -> None:
    assert token_label(token) == label
    assert token_label(token).isascii() or "·" in token_label(token)


def test_token_labels_keep_characters_a_font_has() -> None:
    assert token_label("café", ascii_only=False) == "café"


def test_the_matplotlib_figures(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="the plots extra (tests/client also runs in .venv-pb6, without it)")
    figure = plots.plot_token_attention(["a", " b", "\n", "é"], _causal(3, 4), layer=1)
    assert len([ax for ax in figure.axes if ax.get_title()]) == 3
    assert [t.get_text() for t in figure.axes[0].get_xticklabels()] == ["a", "·b", "\\n", "é"]
    figure.savefig(tmp_path / "plot.png")
    with Image.open(tmp_path / "plot.png") as written:
        assert written.format == "PNG" and written.width > 300
    image = plots.plot_image_attention(_digit(), np.ones((2, 4, 4)), titles=["a", "b"], mark=(1, 1))
    assert [ax.get_title() for ax in image.axes] == ["a", "b"]


def test_the_figures_name_the_extra_when_matplotlib_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # what an import of a missing package does
    with pytest.raises(ImportError, match=r"attnserve-client\[plots\]"):
        plots.plot_token_attention(["a"], np.ones((1, 1)))
