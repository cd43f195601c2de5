"""Writing an encoder–decoder as a ``text2text-generation`` version of a model repository.

The version holds ``encoder.onnx``, ``decoder.onnx`` (the envelope's ``model_file``),
``tokenizer.json``, ``embeddings.onnx`` (the encoder's hidden states), ``explain.onnx`` (every
attention map of a teacher-forced pass) and ``metadata.json``. Before anything is written, the two graphs are
checked against PyTorch the way the server calls them; the figures go into the provenance.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tokenizers import Tokenizer

from attnserve_export.explain_graph import export_explain, with_explain
from attnserve_export.hidden_states import export_embeddings, with_embeddings
from attnserve_export.number_data import BOS, EOS, PAD, special_id
from attnserve_export.onnx_seq2seq import DECODER_FILE, ENCODER_FILE, export_seq2seq
from attnserve_export.seq2seq import Seq2Seq
from attnserve_export.seq2seq_runner import Seq2SeqRunner
from attnserve_server.model_format.metadata import ModelMetadata, write_metadata
from attnserve_server.text.metadata import DefaultsMetadata
from attnserve_server.text2text.metadata import Text2TextGenerationMetadata

TOKENIZER_FILE = "tokenizer.json"
PARITY_TOLERANCE = 1e-4  # max |logit difference|, as for the GPT's export
PARITY_STEPS = 6


def build_metadata(
    model: Seq2Seq, tokenizer: Tokenizer, *, target_tags: list[str], description: str, provenance: dict[str, Any]
) -> ModelMetadata:
    cfg = model.config
    section = Text2TextGenerationMetadata(
        encoder_file=ENCODER_FILE,
        tokenizer_file=TOKENIZER_FILE,
        source_context_length=cfg.source_context,
        target_context_length=cfg.target_context,
        vocab_size=cfg.vocab_size,
        num_decoder_layers=cfg.decoder_layers,
        num_heads=cfg.num_heads,
        head_dim=cfg.head_dim,
        bos_token_id=special_id(tokenizer, BOS),
        eos_token_id=special_id(tokenizer, EOS),
        pad_token_id=special_id(tokenizer, PAD),
        target_tags=target_tags,
        # Translation has one right answer: greedy by default.
        defaults=DefaultsMetadata(max_new_tokens=min(64, cfg.target_context - 1), temperature=0.0),
    )
    return ModelMetadata.of(section, model_file=DECODER_FILE, description=description, provenance=provenance)


def check_parity(
    model: Seq2Seq, encoder: Path, decoder: Path, sources: list[list[int]], bos: int
) -> tuple[float, float]:
    """Greedy decoding over a padded batch of ``sources``, ONNX against PyTorch: the max |logit|
    difference, and the max |logit| (PyTorch's)."""
    runner = Seq2SeqRunner(encoder, decoder, model, slots=len(sources))
    width = max(map(len, sources))
    ids = np.zeros((len(sources), width), np.int64)
    mask = np.zeros_like(ids)
    for row, src in enumerate(sources):
        ids[row, : len(src)], mask[row, : len(src)] = src, 1
    runner.admit(list(range(len(sources))), ids, mask)
    tokens = np.full(len(sources), bos, np.int64)
    fed: list[np.ndarray] = []
    worst = largest = 0.0
    with torch.no_grad():
        memory = model.encode(torch.from_numpy(ids), torch.from_numpy(mask))
        for _ in range(PARITY_STEPS):
            fed.append(tokens)
            got = runner.step(list(range(len(sources))), tokens)
            expected = model.decode(
                torch.from_numpy(np.stack(fed, axis=1)), model.cross_kv(memory), torch.from_numpy(mask)
            )[0]
            worst = max(worst, float(np.abs(got - expected[:, -1].numpy()).max()))
            largest = max(largest, float(np.abs(expected[:, -1].numpy()).max()))
            tokens = got.argmax(axis=-1)
    return worst, largest


def export_translator(
    model: Seq2Seq,
    tokenizer: Tokenizer,
    version_dir: Path,
    *,
    target_tags: list[str],
    parity_sources: list[str],
    description: str = "",
    provenance: dict[str, Any] | None = None,
) -> ModelMetadata:
    """Export into ``version_dir`` (which must not exist); nothing is left there unless every check passes."""
    if version_dir.exists():
        raise FileExistsError(f"{version_dir} exists; versions are never overwritten")
    model = model.eval()
    if tokenizer.get_vocab_size() > model.config.vocab_size:
        raise ValueError(f"tokenizer has {tokenizer.get_vocab_size()} ids but the model only {model.config.vocab_size}")
    metadata = build_metadata(model, tokenizer, target_tags=target_tags, description=description, provenance={})
    version_dir.parent.mkdir(parents=True, exist_ok=True)
    staged = Path(tempfile.mkdtemp(prefix=f".{version_dir.name}-", dir=version_dir.parent))
    try:
        encoder, decoder = export_seq2seq(model, staged)
        sources = [tokenizer.encode(s).ids for s in parity_sources]
        worst, _ = check_parity(model, encoder, decoder, sources, special_id(tokenizer, BOS))
        if worst > PARITY_TOLERANCE:
            raise ValueError(f"ONNX and PyTorch logits differ by {worst:.2e} (> {PARITY_TOLERANCE:.0e})")
        tokenizer.save(str(staged / TOKENIZER_FILE))
        parity = {"max_abs_logit_diff": worst, "sources": len(sources), "decode_steps": PARITY_STEPS}
        # model_config: what rebuilds the module from the graphs (attnserve_export.rebuild).
        provenance = {**(provenance or {}), "model_config": model.config.to_dict(), "parity": parity}
        metadata = metadata.replace(provenance=provenance)
        entry, report = export_embeddings(model, staged)  # the encoder's hidden states, for Embed
        metadata = with_embeddings(metadata, entry, report)
        # The attention maps need the target too: a graph of their own (Explain).
        explain, explain_report = export_explain(model, staged)
        metadata = with_explain(metadata, explain, explain_report, embeddings=None)
        write_metadata(staged, metadata)
        staged.chmod(0o755)  # mkdtemp made it private; a version is read by whoever serves it
        staged.rename(version_dir)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    return metadata
