"""Attention probabilities on the export side: the modules' ``attention_maps``, Swin's dense map, and the
explain graph (``explain.onnx``) against the modules."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from attnserve_export.explain_graph import check_explain_parity, export_explain
from attnserve_export.gpt import GPT, left_pad
from attnserve_export.gpt import PRESETS as GPT_PRESETS
from attnserve_export.image_data import ImageSpec
from attnserve_export.onnx_export import ParityError
from attnserve_export.seq2seq import PRESETS as SEQ2SEQ_PRESETS
from attnserve_export.seq2seq import Seq2Seq
from attnserve_export.swin import PRESETS as SWIN_PRESETS
from attnserve_export.swin import Swin, SwinBlock, dense_window_attention
from attnserve_export.vit import PRESETS as VIT_PRESETS
from attnserve_export.vit import ViT

FAMILIES = ["gpt-learned", "gpt-rotary", "vit", "swin", "swin-pad-first", "seq2seq"]
TEXTS = [[11, 42, 7, 200, 5, 9], [3, 8], [64, 2, 17, 90]]


def _model(family: str) -> tuple[torch.nn.Module, ImageSpec | None]:
    """A random-weight model; the tiny Swin has a shifted block and padded edges in both stages
    (10x10 tokens in 4x4 windows, then 5x5)."""
    torch.manual_seed(7)
    if family.startswith("gpt"):
        return GPT(GPT_PRESETS["tiny"].with_(pos_encoding=family.removeprefix("gpt-"))).eval(), None
    if family == "vit":
        return ViT(VIT_PRESETS["tiny"]).eval(), ImageSpec(channels=1, height=16, width=16)
    if family.startswith("swin"):
        config = SWIN_PRESETS["tiny"].with_(pad_before_shift=family == "swin-pad-first")
        return Swin(config).eval(), ImageSpec(channels=1, height=20, width=20)
    return Seq2Seq(SEQ2SEQ_PRESETS["tiny"]).eval(), None


def _inputs(family: str, spec: ImageSpec | None, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Left-padded texts (GPT), right-padded sources and an unpadded target (seq2seq), or images."""
    rng = torch.Generator().manual_seed(seed)
    if spec is not None:
        return (torch.randn(3, spec.channels, spec.height, spec.width, generator=rng),)
    ids, mask, _ = left_pad(TEXTS, pad_id=0)
    if family != "seq2seq":
        return ids, mask
    # Right padding, as the server pads sources: flip the left-padded rows.
    return ids.flip(1), mask.flip(1), torch.randint(3, 200, (3, 5), generator=rng)


def _maps(model: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> dict[str, list[torch.Tensor]]:
    with torch.no_grad():
        if isinstance(model, Seq2Seq):
            maps = model.attention_maps(*inputs)
            return {"encoder": maps.encoder, "decoder": maps.decoder, "cross": maps.cross}
        _, attentions = model.attention_maps(*inputs)  # type: ignore[operator]
    return {"self": attentions}


@pytest.mark.parametrize("family", FAMILIES)
def test_every_row_is_a_distribution_and_causal_maps_are_zero_above_the_diagonal(family: str) -> None:
    model, spec = _model(family)
    for kind, layers in _maps(model, _inputs(family, spec)).items():
        for probs in layers:
            assert (probs >= 0).all()
            torch.testing.assert_close(probs.sum(-1), torch.ones(probs.shape[:-1]), rtol=0, atol=1e-5)
            if kind in ("self", "decoder") and not isinstance(model, (ViT, Swin)):
                assert torch.count_nonzero(torch.triu(probs, diagonal=1)) == 0, f"{kind} attends to the future"


def test_left_padding_changes_no_real_row() -> None:
    """A text's maps alone equal its rows in a left-padded batch, and no real token attends to padding."""
    model, _ = _model("gpt-rotary")
    ids, mask, _ = left_pad(TEXTS, pad_id=0)
    with torch.no_grad():
        _, batched = model.attention_maps(ids, mask)  # type: ignore[operator]
        for row, text in enumerate(TEXTS):
            alone_ids = torch.tensor([text])
            _, alone = model.attention_maps(alone_ids, torch.ones_like(alone_ids))  # type: ignore[operator]
            n = len(text)
            for padded, single in zip(batched, alone, strict=True):
                torch.testing.assert_close(padded[row, :, -n:, -n:], single[0], rtol=0, atol=1e-6)
                assert torch.count_nonzero(padded[row, :, -n:, :-n]) == 0  # real queries over padding keys


@pytest.mark.parametrize("family", ["gpt-learned", "gpt-rotary", "vit", "swin", "seq2seq"])
def test_the_maps_are_the_forward_passs_own(family: str) -> None:
    """The explain path computes what the forward pass does: the same hidden states and logits. A
    wrong probability (another mask, a missing bias) changes what the next layer reads."""
    model, spec = _model(family)
    inputs = _inputs(family, spec)
    with torch.no_grad():
        if isinstance(model, Seq2Seq):
            torch.testing.assert_close(model.attention_maps(*inputs).logits, model(*inputs), rtol=0, atol=1e-5)
            return
        states, _ = model.attention_maps(*inputs)  # type: ignore[operator]
        if not isinstance(model, GPT):  # ViT and Swin run their blocks' explain path in forward too
            head_input = states[-1][:, 0] if isinstance(model, ViT) else states[-1].mean(dim=1)
            torch.testing.assert_close(model.head(head_input), model(*inputs), rtol=0, atol=1e-5)  # type: ignore[operator]
            return
        expected = model.hidden_states(*inputs)  # the SDPA path
    real = inputs[1].bool()
    for got, want in zip(states, expected, strict=True):
        torch.testing.assert_close(got[real], want[real], rtol=0, atol=1e-5)


def _window_of(block: SwinBlock, row: int, col: int) -> tuple[int, int]:
    """Which window of ``block`` holds token (row, col), by arithmetic on coordinates: the shift moves
    every token back by ``shift`` (cyclically, over the padded map when padding comes first)."""
    m, s = block.window_size, block.shift_size
    h = block.height + (block.pad_h if block.pad_before_shift else 0)
    w = block.width + (block.pad_w if block.pad_before_shift else 0)
    return ((row - s) % h) // m, ((col - s) % w) // m


@pytest.mark.parametrize("family", ["swin", "swin-pad-first"])
def test_swins_dense_map_is_zero_outside_each_querys_window(family: str) -> None:
    model, spec = _model(family)
    assert isinstance(model, Swin)
    (pixels,) = _inputs(family, spec)
    with torch.no_grad():
        _, maps = model.attention_maps(pixels)
    blocks = model.swin_blocks()
    assert any(b.shift_size for b in blocks) and all(b.pad_h for b in blocks)  # shifted, padded edges
    for block, probs in zip(blocks, maps, strict=True):
        dense = dense_window_attention(block, probs)  # (B, nH, HW, HW)
        h, w = block.height, block.width
        assert dense.shape == (len(pixels), block.attn.num_heads, h * w, h * w)
        windows = [_window_of(block, i // w, i % w) for i in range(h * w)]
        same = torch.tensor([[a == b for b in windows] for a in windows])  # (HW, HW)
        assert torch.count_nonzero(dense[:, :, ~same]) == 0
        if not block.pad_before_shift:  # padding is masked out: every real row keeps all its mass
            torch.testing.assert_close(dense.sum(-1), torch.ones(dense.shape[:-1]), rtol=0, atol=1e-5)
        # Every probability of a real (query, key) pair is in the dense map exactly once.
        real_mass = dense.sum()
        assert real_mass <= probs.sum() + 1e-3 and real_mass > 0


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Any, ...]]:
    """Each family's explain graph, exported once."""
    out = {}
    for family in FAMILIES:
        model, spec = _model(family)
        version_dir = tmp_path_factory.mktemp(family)
        entry, report = export_explain(model, version_dir, spec=spec)
        out[family] = (model, spec, version_dir / entry.file, entry, report)
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_the_graph_returns_the_modules_probabilities(family: str, exported: dict[str, tuple[Any, ...]]) -> None:
    model, spec, path, entry, report = exported[family]
    assert report.passed and report.max_abs_diff < 1e-4
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == list(entry.input_names)
    assert {o.name for o in session.get_outputs()} == {*entry.outputs(), *entry.hidden_states}
    inputs = _inputs(family, spec, seed=1)  # not the export's parity inputs
    feed = {name: t.numpy() for name, t in zip(entry.input_names, inputs, strict=True)}
    got = dict(zip(entry.outputs(), session.run(list(entry.outputs()), feed), strict=True))
    maps = _maps(model, inputs)
    layers = {"self": entry.attentions, "encoder": entry.attentions, "decoder": entry.decoder_attentions,
              "cross": entry.cross_attentions}  # fmt: skip
    for kind, probs in maps.items():
        for layer, want in zip(layers[kind], probs, strict=True):
            have = got[layer.output]
            assert have.shape == want.shape and layer.heads == want.shape[1]
            if kind in ("self", "encoder") and len(inputs) > 1:  # real queries over real keys
                real = inputs[1].bool().numpy()
                sel = real[:, None, :, None] & real[:, None, None, :]
                np.testing.assert_allclose(have * sel, want.numpy() * sel, rtol=0, atol=1e-4)
            else:
                np.testing.assert_allclose(have, want.numpy(), rtol=0, atol=1e-4)


def test_the_entry_describes_the_graph(exported: dict[str, tuple[Any, ...]]) -> None:
    gpt, vit, swin, seq2seq = (exported[f][3] for f in ("gpt-rotary", "vit", "swin", "seq2seq"))
    assert gpt.layout == "causal_text" and gpt.input_names == ("input_ids", "attention_mask")
    assert gpt.hidden_states == ("hidden_states.0", "hidden_states.1", "hidden_states.2")
    assert vit.layout == "vit" and vit.grid == (4, 4) and vit.patch_size == 4
    assert swin.layout == "swin" and swin.patch_size == 2 and swin.stages == 2
    geometry = [(a.stage, a.block, a.window.height, a.window.window_size, a.window.shift) for a in swin.attentions]
    assert geometry == [(0, 0, 10, 4, 0), (0, 1, 10, 4, 2), (1, 0, 5, 4, 0), (1, 1, 5, 4, 2)]
    assert [a.heads for a in swin.attentions] == [2, 2, 4, 4]
    assert seq2seq.layout == "encoder_decoder" and seq2seq.logits == "logits" and not seq2seq.hidden_states
    assert seq2seq.input_names == ("source_ids", "source_mask", "target_ids")
    assert [a.output for a in seq2seq.cross_attentions] == ["cross_attentions.0", "cross_attentions.1"]


def test_a_graph_that_misses_the_tolerance_is_refused(
    exported: dict[str, tuple[Any, ...]], tmp_path: Path, tamper: Callable[..., None]
) -> None:
    model, spec, path, entry, _ = exported["vit"]
    proto = onnx.load(str(path))
    tamper(proto, "attentions.1", 17, 2e-4)  # one probability off by 2e-4: above the 1e-4 tolerance
    tampered = tmp_path / "tampered.onnx"
    onnx.save(proto, str(tampered))
    cases = check_explain_parity(model, entry, tampered, np.random.default_rng(0).standard_normal((4, 1, 16, 16)))
    diff = {c.name: c.max_abs_diff for c in cases}
    assert 1.9e-4 < diff["attentions.1, batch of 4"] < 2.1e-4 and diff["attentions.0, batch of 4"] < 1e-5
    # export_explain refuses what misses its tolerance, and writes nothing.
    with pytest.raises(ParityError, match="attention maps"):
        export_explain(model, tmp_path / "refused", spec=spec, tolerance=1e-12)
    assert not (tmp_path / "refused").exists()
