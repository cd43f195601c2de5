"""The GPT model against the ONNX contract: shapes, causality, left padding and the KV cache."""

from __future__ import annotations

import pytest
import torch

from attnserve_export.gpt import GPT, PRESETS, GPTConfig, left_pad

ENCODINGS = ["learned", "sinusoidal", "rotary"]


def tiny(pos_encoding: str) -> GPT:
    torch.manual_seed(0)
    return GPT(PRESETS["tiny"].with_(pos_encoding=pos_encoding)).eval()


def random_ids(*shape: int) -> torch.Tensor:
    return torch.randint(0, PRESETS["tiny"].vocab_size, shape, generator=torch.Generator().manual_seed(1))


def test_presets() -> None:
    assert {"tiny", "shakespeare", "gpt2-small"} <= set(PRESETS)
    gpt2 = PRESETS["gpt2-small"]
    shape = (gpt2.num_layers, gpt2.num_heads, gpt2.dim, gpt2.context_length, gpt2.vocab_size)
    assert shape == (12, 12, 768, 1024, 50257)
    assert PRESETS["shakespeare"].context_length >= 256
    with pytest.raises(ValueError):
        GPTConfig(dim=10, num_heads=3)


@pytest.mark.parametrize("pos_encoding", ENCODINGS)
def test_shapes(pos_encoding: str) -> None:
    model = tiny(pos_encoding)
    cfg = model.config
    with torch.no_grad():
        logits, cache = model(random_ids(3, 7))
    assert logits.shape == (3, 7, cfg.vocab_size)
    assert len(cache) == cfg.num_layers
    for key, value in cache:
        assert key.shape == value.shape == (3, cfg.num_heads, 7, cfg.head_dim)


def test_tied_embeddings() -> None:
    model = tiny("learned")
    assert model.lm_head.weight.data_ptr() == model.wte.weight.data_ptr()


@pytest.mark.parametrize("pos_encoding", ENCODINGS)
def test_causal(pos_encoding: str) -> None:
    model = tiny(pos_encoding)
    ids = random_ids(2, 10)
    changed = ids.clone()
    changed[:, 6:] = (changed[:, 6:] + 1) % model.config.vocab_size
    with torch.no_grad():
        a, _ = model(ids)
        b, _ = model(changed)
    torch.testing.assert_close(a[:, :6], b[:, :6], rtol=0, atol=1e-6)
    assert not torch.allclose(a[:, 6:], b[:, 6:])


@pytest.mark.parametrize("pos_encoding", ENCODINGS)
def test_left_padding_matches_alone(pos_encoding: str) -> None:
    model = tiny(pos_encoding)
    seqs = [[5, 6, 7, 8, 9, 10, 11], [12, 13], [14, 15, 16, 17]]
    ids, mask, positions = left_pad(seqs, pad_id=0)
    with torch.no_grad():
        batched, _ = model(ids, mask, positions)
        for row, seq in enumerate(seqs):
            alone, _ = model(torch.tensor([seq]))
            torch.testing.assert_close(batched[row, -len(seq) :], alone[0], rtol=0, atol=1e-5)
        # Whatever sits in the padding (ids and positions) must not matter.
        noisy_ids = torch.where(mask.bool(), ids, random_ids(*ids.shape))
        noisy_pos = torch.where(mask.bool(), positions, torch.full_like(positions, 7))
        noisy, _ = model(noisy_ids, mask, noisy_pos)
    torch.testing.assert_close(noisy[mask.bool()], batched[mask.bool()], rtol=0, atol=1e-5)


@pytest.mark.parametrize("pos_encoding", ENCODINGS)
def test_kv_cache_decode_equals_recompute(pos_encoding: str) -> None:
    model = tiny(pos_encoding)
    seqs = [[5, 6, 7, 8, 9], [12, 13]]
    ids, mask, positions = left_pad(seqs, pad_id=0)
    steps = [[20, 21], [22, 23], [24, 25]]
    with torch.no_grad():
        logits, cache = model(ids, mask, positions)
        for step in steps:
            mask = torch.cat([mask, torch.ones(2, 1, dtype=torch.int64)], dim=1)
            positions = positions[:, -1:] + 1
            logits, cache = model(torch.tensor(step).unsqueeze(1), mask, positions, cache)
        assert cache[0][0].shape[2] == ids.shape[1] + len(steps)
        for row, seq in enumerate(seqs):
            full = seq + [s[row] for s in steps]
            recomputed, _ = model(torch.tensor([full]))
            torch.testing.assert_close(logits[row, 0], recomputed[0, -1], rtol=0, atol=1e-5)


def test_training_and_inference_paths_agree() -> None:
    """Training uses SDPA's fused causal kernel; inference uses an explicit mask. Same numbers."""
    model = tiny("rotary")
    ids = random_ids(2, 9)
    with torch.no_grad():
        fused, _ = model(ids)
        masked, _ = model(ids, torch.ones_like(ids), torch.arange(9).expand(2, 9))
    torch.testing.assert_close(fused, masked, rtol=0, atol=1e-5)
