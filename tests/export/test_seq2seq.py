"""The encoder–decoder's masks and cache: what may see what, and that a cached step equals a full pass."""

from __future__ import annotations

import pytest
import torch

from attnserve_export.seq2seq import PRESETS, Seq2Seq, Seq2SeqConfig

VARIANTS = [
    PRESETS["tiny"],
    PRESETS["tiny"].with_(norm="pre"),
    PRESETS["tiny"].with_(pos_encoding="learned"),
    PRESETS["tiny"].with_(pos_encoding="rotary", norm="pre"),
]


def make(config: Seq2SeqConfig, seed: int = 0) -> Seq2Seq:
    torch.manual_seed(seed)
    return Seq2Seq(config).eval()


def right_padded(lengths: list[int], width: int, vocab: int, pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(1, vocab, (len(lengths), width))
    mask = torch.zeros(len(lengths), width, dtype=torch.int64)
    for row, n in enumerate(lengths):
        mask[row, :n] = 1
        ids[row, n:] = pad_id
    return ids, mask


@pytest.mark.parametrize("config", VARIANTS, ids=lambda c: f"{c.pos_encoding}-{c.norm}")
def test_a_future_target_token_never_changes_earlier_outputs(config: Seq2SeqConfig) -> None:
    model = make(config)
    source, source_mask = right_padded([9, 5], 9, config.vocab_size)
    target = torch.randint(1, config.vocab_size, (2, 8))
    changed = target.clone()
    changed[:, 5:] = torch.randint(1, config.vocab_size, (2, 3))
    with torch.no_grad():
        before = model(source, source_mask, target)
        after = model(source, source_mask, changed)
    torch.testing.assert_close(after[:, :5], before[:, :5], rtol=0, atol=1e-6)
    assert not torch.allclose(after[:, 5:], before[:, 5:])


@pytest.mark.parametrize("config", VARIANTS, ids=lambda c: f"{c.pos_encoding}-{c.norm}")
def test_a_source_padding_token_never_changes_any_output(config: Seq2SeqConfig) -> None:
    model = make(config)
    source, source_mask = right_padded([9, 4], 9, config.vocab_size)
    other = source.clone()
    other[1, 4:] = torch.randint(1, config.vocab_size, (5,))  # different ids under the padding mask
    target = torch.randint(1, config.vocab_size, (2, 6))
    with torch.no_grad():
        before = model(source, source_mask, target)
        after = model(other, source_mask, target)
        memory_before = model.encode(source, source_mask)
        memory_after = model.encode(other, source_mask)
    torch.testing.assert_close(after, before, rtol=0, atol=1e-6)
    torch.testing.assert_close(memory_after[1, :4], memory_before[1, :4], rtol=0, atol=1e-6)


@pytest.mark.parametrize("config", VARIANTS, ids=lambda c: f"{c.pos_encoding}-{c.norm}")
def test_cached_steps_equal_one_full_pass(config: Seq2SeqConfig) -> None:
    model = make(config)
    source, source_mask = right_padded([9, 6], 9, config.vocab_size)
    target = torch.randint(1, config.vocab_size, (2, 7))
    with torch.no_grad():
        full = model(source, source_mask, target)
        cross = model.cross_kv(model.encode(source, source_mask))
        logits, past = model.decode(
            target[:, :3], cross, source_mask, attention_mask=torch.ones(2, 3, dtype=torch.int64)
        )
        steps = [logits]
        for t in range(3, 7):
            mask = torch.ones(2, t + 1, dtype=torch.int64)
            logits, past = model.decode(target[:, t : t + 1], cross, source_mask, attention_mask=mask, past=past)
            steps.append(logits)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-5, atol=1e-5)


def test_left_padded_target_in_a_batch_decodes_as_it_would_alone() -> None:
    config = PRESETS["tiny"].with_(norm="pre")
    model = make(config)
    source, source_mask = right_padded([7, 7], 7, config.vocab_size)
    target = torch.randint(1, config.vocab_size, (2, 5))
    with torch.no_grad():
        alone = model(source[1:], source_mask[1:], target[1:, 2:])
        cross = model.cross_kv(model.encode(source, source_mask))
        mask = torch.tensor([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]])
        positions = (mask.cumsum(1) - 1).clamp(min=0)
        padded = target.clone()
        padded[1, :2] = 0
        batched, _ = model.decode(padded, cross, source_mask, attention_mask=mask, position_ids=positions)
    torch.testing.assert_close(batched[1:, 2:], alone, rtol=1e-5, atol=1e-5)


def test_label_smoothed_loss_falls_on_a_copy_task() -> None:
    config = PRESETS["tiny"].with_(norm="pre")
    model = make(config)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    torch.manual_seed(1)
    losses = []
    for _ in range(60):
        source, source_mask = right_padded([6] * 16, 6, 20)
        target_in = torch.cat([torch.full((16, 1), 1), source[:, :5]], dim=1)
        loss = model.loss(source, source_mask, target_in, source, pad_id=0, label_smoothing=0.1)
        optimizer.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:5]) / 5


def test_base_preset_is_the_papers_transformer_base() -> None:
    config = PRESETS["base"]
    assert (config.encoder_layers, config.decoder_layers, config.dim, config.num_heads, config.ff_dim) == (
        6,
        6,
        512,
        8,
        2048,
    )
    # The paper reports 65M parameters with a shared 37000-token BPE vocabulary.
    params = Seq2Seq(config.with_(dropout=0.0)).num_parameters()
    assert 60e6 < params < 66e6, params
