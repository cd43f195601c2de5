"""Explain on a real server, for each layout, against the PyTorch modules' own probabilities."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch

from attnserve_export.swin import SwinBlock, dense_window_attention

from .conftest import Reference, png, tensor

Explain = Callable[..., Any]
TEXT = "The cat sat on the mat. Le café est très chaud 🙂"


def _gpt_maps(reference: Reference, text: str) -> list[np.ndarray]:
    ids = torch.tensor([reference.tokenizer.encode(text).ids], dtype=torch.int64)
    with torch.no_grad():
        _, maps = reference.modules["ex-gpt"].attention_maps(ids, torch.ones_like(ids))
    return [m[0].numpy() for m in maps]  # (nh, T, T) per layer


def test_text_maps_match_the_module(explain: Explain, reference: Reference) -> None:
    response = explain(model="ex-gpt", text=TEXT)
    assert response.WhichOneof("maps") == "text"
    got = tensor(response.text.attention)
    expected = np.stack(_gpt_maps(reference, TEXT))  # (L, H, T, T)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=1e-4)
    # Each token's slice of the text (the byte-level tokens of one emoji each show the whole emoji).
    assert len(response.text.tokens) == got.shape[-1] and all(t in TEXT for t in response.text.tokens)
    assert "".join(response.text.tokens).startswith(TEXT[:-1])
    assert list(response.layers) == list(range(expected.shape[0]))
    assert list(response.heads) == list(range(expected.shape[1]))


def test_text_maps_are_causal_distributions(explain: Explain) -> None:
    got = tensor(explain(model="ex-gpt", text=TEXT).text.attention)
    np.testing.assert_allclose(got.sum(-1), 1.0, atol=1e-5)
    upper = np.triu(np.ones(got.shape[-2:], dtype=bool), k=1)
    assert np.all(got[..., upper] == 0.0)


def test_chosen_layers_and_heads_are_slices_of_all(explain: Explain) -> None:
    everything = tensor(explain(model="ex-gpt", text=TEXT).text.attention)
    response = explain(model="ex-gpt", text=TEXT, layers=[-1], heads=[1])
    assert list(response.layers) == [everything.shape[0] - 1] and list(response.heads) == [1]
    np.testing.assert_array_equal(tensor(response.text.attention), everything[-1:, 1:2])


def test_vit_class_attention_and_rollout(explain: Explain, reference: Reference) -> None:
    image = png(3)
    response = explain(model="ex-vit", image=image)
    vit = response.vit
    with torch.no_grad():
        _, maps = reference.modules["ex-vit"].attention_maps(reference.pixels("ex-vit", image))
    probs = [m[0].numpy() for m in maps]  # (H, 1 + N, 1 + N) per layer
    grid = (vit.grid_height, vit.grid_width)
    assert grid == (4, 4) and vit.patch_size == 4
    expected = np.stack([p[:, 0, 1:].reshape(-1, *grid) for p in probs])
    np.testing.assert_allclose(tensor(vit.class_attention), expected, atol=1e-4)
    # Rollout, written out independently of the server's code.
    rollout = np.eye(probs[0].shape[-1])
    for p in probs:
        a = 0.5 * p.mean(0) + 0.5 * np.eye(len(rollout))
        rollout = (a / a.sum(-1, keepdims=True)) @ rollout
    np.testing.assert_allclose(tensor(vit.rollout), rollout[0, 1:].reshape(grid), atol=1e-4)
    # The class token's row is a distribution: what the patches got plus what it kept.
    np.testing.assert_allclose(tensor(vit.class_attention).sum((-1, -2)) + expected_self(probs), 1.0, atol=1e-5)


def expected_self(probs: list[np.ndarray]) -> np.ndarray:
    return np.stack([p[:, 0, 0] for p in probs])  # (L, H)


def _swin_dense(reference: Reference, image: bytes, stage: int) -> list[np.ndarray]:
    """Each block of ``stage``: ``(H, N, N)`` over its tokens in row-major order, from the module."""
    model = reference.modules["ex-swin"]
    with torch.no_grad():
        _, maps = model.attention_maps(reference.pixels("ex-swin", image))
    blocks: list[SwinBlock] = [b for s in model.stages for b in s.blocks]
    first = sum(len(s.blocks) for s in model.stages[:stage])
    stage_blocks = blocks[first : first + len(model.stages[stage].blocks)]
    stage_maps = maps[first : first + len(stage_blocks)]
    with torch.no_grad():
        return [dense_window_attention(b, m)[0].numpy() for b, m in zip(stage_blocks, stage_maps, strict=True)]


@pytest.mark.parametrize("query", [None, (0, 0), (9, 9), (4, 9), (7, 2)])
def test_swin_query_maps_match_the_module_in_image_coordinates(
    explain: Explain, reference: Reference, query: tuple[int, int] | None
) -> None:
    image = png(4, size=20)
    fields: dict[str, Any] = {} if query is None else {"query_row": query[0], "query_col": query[1]}
    swin = explain(model="ex-swin", image=image, stage=0, **fields).swin
    assert (swin.grid_height, swin.grid_width) == (10, 10) and swin.cell_size == 2
    row, col = (5, 5) if query is None else query
    assert (swin.query_row, swin.query_col) == (row, col)
    got = tensor(swin.attention)  # (blocks, heads, 10, 10)
    dense = _swin_dense(reference, image, stage=0)
    assert [w.shift for w in swin.windows] == [0, 2]  # the second block is shifted
    for block, (window, expected) in enumerate(zip(swin.windows, dense, strict=True)):
        want = expected[:, row * 10 + col].reshape(-1, 10, 10)
        np.testing.assert_allclose(got[block], want, atol=1e-4)
        # Zero outside the query's window, a distribution inside it (padding keys are masked out).
        assert all(np.count_nonzero(head) == window.patches for head in got[block])
        np.testing.assert_allclose(got[block].sum((-1, -2)), 1.0, atol=1e-5)


def test_swin_later_stage(explain: Explain, reference: Reference) -> None:
    image = png(5, size=20)
    swin = explain(model="ex-swin", image=image, stage=1, layers=[1], heads=[0]).swin
    assert (swin.grid_height, swin.grid_width) == (5, 5) and swin.cell_size == 4
    dense = _swin_dense(reference, image, stage=1)[1]
    want = dense[0, 2 * 5 + 2].reshape(5, 5)
    np.testing.assert_allclose(tensor(swin.attention)[0, 0], want, atol=1e-4)


def test_translator_maps_match_the_module(explain: Explain, reference: Reference) -> None:
    source = "<2en> 123"
    response = explain(model="ex-translator", text=source, max_new_tokens=6)
    maps = response.text2text
    tokenizer = reference.translator_tokenizer
    model = reference.modules["ex-translator"]
    source_ids = torch.tensor([tokenizer.encode(source, add_special_tokens=False).ids], dtype=torch.int64)
    bos = tokenizer.token_to_id("<s>")
    target = [bos]
    with torch.no_grad():  # greedy decoding of the module, independently of the server
        for _ in range(6):
            step = model.attention_maps(source_ids, torch.ones_like(source_ids), torch.tensor([target]))
            token = int(step.logits[0, -1].argmax())
            if token == tokenizer.token_to_id("</s>") or len(target) == 6:
                break
            target.append(token)
    assert len(maps.target_tokens) == len(target) == len(maps.generated_tokens)
    assert "".join(maps.source_tokens) == source
    for name, want in (
        ("encoder_attention", step.encoder),
        ("decoder_attention", step.decoder),
        ("cross_attention", step.cross),
    ):
        got = tensor(getattr(maps, name))
        expected = np.stack([m[0].numpy() for m in want])
        np.testing.assert_allclose(got, expected, atol=1e-4, err_msg=name)
        np.testing.assert_allclose(got.sum(-1), 1.0, atol=1e-5, err_msg=name)
    decoder = tensor(maps.decoder_attention)
    assert np.all(decoder[..., np.triu(np.ones(decoder.shape[-2:], dtype=bool), k=1)] == 0.0)


def test_explain_and_embed_share_one_lazily_opened_graph(
    explain_reference: tuple[Any, Reference], server_launcher: Callable[..., Any]
) -> None:
    from attnserve_client import Client

    server = server_launcher(explain_reference[0])
    with Client(server.address) as client:
        assert client.generate("The cat", model="ex-gpt", max_new_tokens=2).text is not None
        assert "opened the" not in server.stderr()  # loading and generating leave it closed
        client.explain("The cat", model="ex-gpt")
        client.embed(["The cat"], model="ex-gpt")  # the same explain.onnx: no second session
        client.explain("The cat", model="ex-gpt")
    log = server.stderr()
    assert log.count("graph of model ex-gpt version 1") == 1 and "opened the explain graph" in log
