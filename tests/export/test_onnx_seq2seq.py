"""The encoder–decoder's two ONNX graphs against PyTorch, called the way a server calls them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from attnserve_export.onnx_seq2seq import CROSS_KEY, CROSS_VALUE, SOURCE_IDS, SOURCE_MASK, export_seq2seq
from attnserve_export.seq2seq import PRESETS, Seq2Seq, Seq2SeqConfig
from attnserve_export.seq2seq_runner import Seq2SeqRunner

# Head size 16, the smallest that GroupQueryAttention takes.
CONFIGS = {
    "post-ln-sinusoidal": PRESETS["tiny"],
    "pre-ln-learned": PRESETS["tiny"].with_(norm="pre", pos_encoding="learned"),
}
TOLERANCE = 1e-4


def padded_sources(lengths: list[int], vocab: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = np.zeros((len(lengths), max(lengths)), np.int64)
    mask = np.zeros_like(ids)
    for row, n in enumerate(lengths):
        ids[row, :n] = rng.integers(3, vocab, n)
        mask[row, :n] = 1
    return ids, mask


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_encoder_graph_gives_the_cross_attention_keys_and_values(tmp_path: Path, name: str) -> None:
    config: Seq2SeqConfig = CONFIGS[name]
    torch.manual_seed(0)
    model = Seq2Seq(config).eval()
    encoder, _ = export_seq2seq(model, tmp_path)
    ids, mask = padded_sources([9, 4, 6], config.vocab_size, seed=1)
    session = ort.InferenceSession(str(encoder), providers=["CPUExecutionProvider"])
    outputs = dict(
        zip(
            [o.name for o in session.get_outputs()],
            session.run(None, {SOURCE_IDS: ids, SOURCE_MASK: mask}),
            strict=True,
        )
    )
    with torch.no_grad():
        cross = model.cross_kv(model.encode(torch.from_numpy(ids), torch.from_numpy(mask)))
    for layer, (k, v) in enumerate(cross):
        for row, n in enumerate(mask.sum(axis=1)):  # padding positions are never attended to
            got_k = outputs[CROSS_KEY.format(layer=layer)][row, :, :n]
            got_v = outputs[CROSS_VALUE.format(layer=layer)][row, :, :n]
            np.testing.assert_allclose(got_k, k[row, :, :n].numpy(), rtol=0, atol=TOLERANCE)
            np.testing.assert_allclose(got_v, v[row, :, :n].numpy(), rtol=0, atol=TOLERANCE)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_decoder_steps_match_pytorch_for_a_padded_batch_at_different_positions(tmp_path: Path, name: str) -> None:
    config: Seq2SeqConfig = CONFIGS[name]
    torch.manual_seed(0)
    model = Seq2Seq(config).eval()
    encoder, decoder = export_seq2seq(model, tmp_path)
    runner = Seq2SeqRunner(encoder, decoder, model, slots=3)
    ids, mask = padded_sources([9, 4, 6], config.vocab_size, seed=2)
    rng = np.random.default_rng(3)
    targets = rng.integers(3, config.vocab_size, (3, 6))
    # Slots 0-1 are admitted together and step twice alone; slot 2 joins later, so the batch mixes positions.
    runner.admit([0, 1], ids[:2], mask[:2])
    got: dict[int, list[np.ndarray]] = {0: [], 1: [], 2: []}
    for t in range(2):
        logits = runner.step([0, 1], targets[:2, t])
        got[0].append(logits[0])
        got[1].append(logits[1])
    runner.admit([2], ids[2:, :6], mask[2:, :6])
    for t in range(4):
        logits = runner.step([0, 1, 2], np.asarray([targets[0, t + 2], targets[1, t + 2], targets[2, t]]))
        for row in range(3):
            got[row].append(logits[row])
    with torch.no_grad():
        for row in range(3):
            n = int(mask[row].sum())
            source = torch.from_numpy(ids[row : row + 1, :n])
            expected = model(source, torch.ones_like(source), torch.from_numpy(targets[row : row + 1, : len(got[row])]))
            np.testing.assert_allclose(np.stack(got[row]), expected[0].numpy(), rtol=0, atol=TOLERANCE)
