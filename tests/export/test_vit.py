"""ViT: patch embedding, class token, position embeddings, shapes and the paper preset's size."""

from __future__ import annotations

import pytest
import torch

from attnserve_export.vit import PRESETS, ViT, sincos_position_embedding


@pytest.mark.parametrize("pos_embedding", ["learned", "sincos"])
def test_shapes_and_class_token(pos_embedding: str) -> None:
    torch.manual_seed(0)
    cfg = PRESETS["tiny"].with_(pos_embedding=pos_embedding)
    model = ViT(cfg).eval()
    x = torch.randn(3, cfg.in_channels, cfg.image_size, cfg.image_size)
    tokens = model.forward_features(x)
    assert tokens.shape == (3, 1 + cfg.num_patches, cfg.dim)
    logits = model(x)
    assert logits.shape == (3, cfg.num_classes)
    # The head reads the class token (index 0) and nothing else.
    torch.testing.assert_close(logits, model.head(tokens[:, 0]))
    with torch.no_grad():
        model.cls_token.add_(1.0)
    assert not torch.allclose(model(x), logits)


def test_patch_embedding_is_per_patch() -> None:
    """Changing one pixel changes only the token of the patch that holds it."""
    torch.manual_seed(0)
    cfg = PRESETS["tiny"]
    model = ViT(cfg).eval()
    x = torch.randn(1, 1, cfg.image_size, cfg.image_size)
    y = x.clone()
    y[0, 0, 5, 9] += 1.0  # patch (1, 2) of a 4×4 grid of 4×4 patches
    a, b = model.patch_embed(x), model.patch_embed(y)  # (1, N, D)
    changed = (a - b).abs().sum(-1)[0].nonzero().flatten().tolist()
    assert changed == [1 * cfg.grid_size + 2]


def test_sincos_position_embedding() -> None:
    table = sincos_position_embedding(4, 8)
    assert table.shape == (16, 8)
    assert torch.allclose(table[0], torch.tensor([0.0, 0, 1, 1, 0, 0, 1, 1]))
    assert len({tuple(row.tolist()) for row in table}) == 16  # every position distinct


def test_batch_independent() -> None:
    torch.manual_seed(0)
    cfg = PRESETS["tiny"]
    model = ViT(cfg).eval()
    x = torch.randn(4, 1, cfg.image_size, cfg.image_size)
    torch.testing.assert_close(model(x)[1:2], model(x[1:2]), rtol=1e-5, atol=1e-6)


def test_vit_b16_parameter_count() -> None:
    model = ViT(PRESETS["vit-b16"])
    assert abs(model.num_parameters() - 86.6e6) <= 0.1e6
