"""Calling the encoder–decoder's two graphs as a server does (export parity checks, tests, benchmarks):
the encoder once per admission, decoder steps over per-slot buffers bound in place."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from attnserve_export.onnx_gqa import SEQLENS_K, TOTAL_SEQUENCE_LENGTH
from attnserve_export.onnx_seq2seq import (
    CROSS_KEY,
    CROSS_VALUE,
    INPUT_IDS,
    LOGITS,
    PAST_KEY,
    PAST_VALUE,
    POSITION_IDS,
    PRESENT_KEY,
    PRESENT_VALUE,
    SOURCE_IDS,
    SOURCE_MASK,
)
from attnserve_export.seq2seq import Seq2Seq


class Seq2SeqRunner:
    """Calls the two graphs as a server does: encoder per admission, decoder steps over slot buffers."""

    def __init__(self, encoder: Path, decoder: Path, model: Seq2Seq, slots: int, threads: int = 2) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        self.encoder = ort.InferenceSession(str(encoder), options, providers=["CPUExecutionProvider"])
        self.decoder = ort.InferenceSession(str(decoder), options, providers=["CPUExecutionProvider"])
        cfg = self.cfg = model.config
        cache = (slots, cfg.num_heads, cfg.target_context, cfg.head_dim)
        cross = (slots, cfg.num_heads, cfg.source_context, cfg.head_dim)
        layers = range(cfg.decoder_layers)
        self.keys, self.values = (
            [np.zeros(cache, np.float32) for _ in layers],
            [np.zeros(cache, np.float32) for _ in layers],
        )
        self.cross_keys = [np.zeros(cross, np.float32) for _ in layers]
        self.cross_values = [np.zeros(cross, np.float32) for _ in layers]
        self.source_mask = np.zeros((slots, cfg.source_context), np.int64)
        self.lengths = np.zeros(slots, np.int64)

    def admit(self, slots: list[int], source_ids: np.ndarray, source_mask: np.ndarray) -> None:
        """Encode right-padded sources ``(B, S)`` into the given slots (their caches start empty)."""
        outputs = self.encoder.run(None, {SOURCE_IDS: source_ids, SOURCE_MASK: source_mask})
        width = source_ids.shape[1]
        for layer in range(self.cfg.decoder_layers):
            self.cross_keys[layer][slots, :, :width] = outputs[2 * layer]
            self.cross_values[layer][slots, :, :width] = outputs[2 * layer + 1]
        self.source_mask[slots] = 0
        self.source_mask[slots, :width] = source_mask
        self.lengths[slots] = 0

    def step(self, slots: list[int], ids: np.ndarray) -> np.ndarray:
        """Feed one token per slot (``ids`` ``(B,)``, slots contiguous from ``slots[0]``); logits ``(B, V)``."""
        first, batch = slots[0], len(slots)
        assert slots == list(range(first, first + batch)), "the runner binds a contiguous range of slots"
        lengths = self.lengths[first : first + batch]
        width = int(self.source_mask[first : first + batch].sum(axis=1).max())
        binding = self.decoder.io_binding()
        binding.bind_cpu_input(INPUT_IDS, np.ascontiguousarray(ids.reshape(batch, 1), dtype=np.int64))
        binding.bind_cpu_input(POSITION_IDS, lengths.reshape(batch, 1).copy())
        binding.bind_cpu_input(SEQLENS_K, lengths.astype(np.int32))
        binding.bind_cpu_input(TOTAL_SEQUENCE_LENGTH, np.asarray(lengths.max() + 1, dtype=np.int32))
        binding.bind_cpu_input(SOURCE_MASK, np.ascontiguousarray(self.source_mask[first : first + batch, :width]))
        binding.bind_output(LOGITS, "cpu")
        for layer in range(self.cfg.decoder_layers):
            for buffers, past, present in (
                (self.keys, PAST_KEY, PRESENT_KEY),
                (self.values, PAST_VALUE, PRESENT_VALUE),
            ):
                value = ort.OrtValue.ortvalue_from_numpy(buffers[layer][first : first + batch])
                binding.bind_ortvalue_input(past.format(layer=layer), value)
                binding.bind_ortvalue_output(present.format(layer=layer), value)
            for buffers, name in ((self.cross_keys, CROSS_KEY), (self.cross_values, CROSS_VALUE)):
                binding.bind_cpu_input(
                    name.format(layer=layer), np.ascontiguousarray(buffers[layer][first : first + batch, :, :width])
                )
        self.decoder.run_with_iobinding(binding)
        self.lengths[first : first + batch] += 1
        logits: np.ndarray = binding.get_outputs()[0].numpy()[:, -1, :]
        return logits
