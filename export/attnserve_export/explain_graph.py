"""The explain graph: a version's ``explain.onnx``, which returns every layer's attention probabilities.

The serving graphs use fused attention, which never materializes the probabilities; the models'
``attention_maps`` methods compute them the explicit way, with the forward pass's own masks. This
module exports those methods (dynamic batch; dynamic sequence lengths for text) with the output
names of :mod:`attnserve_server.model_format.explain`, and checks every output against PyTorch
before anything is written.

For a GPT, ViT or Swin the graph also returns the hidden states, under the embeddings graph's names
(:mod:`attnserve_export.hidden_states`): the version's ``embeddings`` entry then names this file too,
so a version holds one fp32 analysis graph, not two. An encoder-decoder's explain graph needs the
target, so it keeps its separate embeddings graph.

Parity: probabilities within 1e-4 absolute, hidden states and logits within 1e-4 of their largest
magnitude. One :class:`ParityReport` holds both: a probability case's scale is 1 (probabilities are
at most 1), so its relative figure is its absolute difference.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from attnserve_export.gpt import GPT, left_pad
from attnserve_export.hidden_states import (
    ATTENTION_MASK,
    INPUT_IDS,
    PARITY_TEXTS,
    PIXELS,
    graph_entry,
    write_checked_graph,
)
from attnserve_export.onnx_export import OPSET, ParityCase, ParityError, ParityReport, save_program
from attnserve_export.seq2seq import Seq2Seq
from attnserve_export.swin import Swin
from attnserve_export.vit import ViT
from attnserve_server.model_format.embeddings import EmbeddingsGraph
from attnserve_server.model_format.explain import EXPLAIN_FILE, AttentionLayer, ExplainGraph, WindowGeometry
from attnserve_server.model_format.metadata import ModelMetadata
from attnserve_server.model_format.preprocess import InputSpec

logger = logging.getLogger(__name__)

SOURCE_IDS, SOURCE_MASK, TARGET_IDS = "source_ids", "source_mask", "target_ids"
ATTENTION = "attentions.{i}"
DECODER_ATTENTION = "decoder_attentions.{i}"
CROSS_ATTENTION = "cross_attentions.{i}"
LOGITS = "logits"
PARITY_TARGET = [1, 9, 4, 33, 6]  # teacher-forced target ids (modulo the vocab), unpadded
ExplainModel = GPT | ViT | Swin | Seq2Seq


class _Explained(nn.Module):
    """``attention_maps`` as a flat tuple: the attentions, then (GPT, ViT, Swin) the hidden states or
    (encoder-decoder) the decoder's and cross attentions and the logits, in the entry's output order."""

    def __init__(self, model: ExplainModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if isinstance(self.model, Seq2Seq):
            maps = self.model.attention_maps(*inputs)
            return (*maps.encoder, *maps.decoder, *maps.cross, maps.logits)
        states, attentions = self.model.attention_maps(*inputs)
        return (*attentions, *states)


def supports_explain(model: nn.Module) -> bool:
    """Whether this module has an explain graph (the four families of this package do)."""
    return isinstance(model, (GPT, ViT, Swin, Seq2Seq))


def _layers(template: str, count: int, heads: int) -> tuple[AttentionLayer, ...]:
    return tuple(AttentionLayer(output=template.format(i=i), heads=heads) for i in range(count))


def _swin_layers(model: Swin) -> tuple[AttentionLayer, ...]:
    """One entry per block, stages in order, each with its stage's grid and its own window and shift."""
    layers: list[AttentionLayer] = []
    for stage, depth in enumerate(model.config.depths):
        for block_index in range(depth):
            block = model.swin_blocks()[len(layers)]
            window = WindowGeometry(
                height=block.height,
                width=block.width,
                # The block's own: a map no larger than a window is one window, unshifted.
                window_size=block.window_size,
                shift=block.shift_size,
                pad_before_shift=block.pad_before_shift,
            )
            output = ATTENTION.format(i=len(layers))
            layers.append(
                AttentionLayer(output=output, heads=block.attn.num_heads, stage=stage, block=block_index, window=window)
            )
    return tuple(layers)


def explain_entry(model: nn.Module, spec: InputSpec | None = None) -> ExplainGraph:
    """The ``explain`` metadata entry of ``model``'s graph.

    Raises:
        TypeError: not a GPT, ViT, Swin or Seq2Seq.
        ValueError: an image model without its ``spec``.
    """
    if isinstance(model, Seq2Seq):
        cfg = model.config
        return ExplainGraph(
            layout="encoder_decoder",
            input_names=(SOURCE_IDS, SOURCE_MASK, TARGET_IDS),
            attentions=_layers(ATTENTION, cfg.encoder_layers, cfg.num_heads),
            decoder_attentions=_layers(DECODER_ATTENTION, cfg.decoder_layers, cfg.num_heads),
            cross_attentions=_layers(CROSS_ATTENTION, cfg.decoder_layers, cfg.num_heads),
            logits=LOGITS,
        )
    if not isinstance(model, (GPT, ViT, Swin)):
        raise TypeError(f"no explain graph for a {type(model).__name__}")
    # The hidden states, as the embeddings graph names them.
    hidden = graph_entry(model, spec).hidden_states
    if isinstance(model, GPT):
        cfg_gpt = model.config
        return ExplainGraph(
            layout="causal_text",
            input_names=(INPUT_IDS, ATTENTION_MASK),
            attentions=_layers(ATTENTION, cfg_gpt.num_layers, cfg_gpt.num_heads),
            hidden_states=hidden,
        )
    if isinstance(model, ViT):
        cfg_vit = model.config
        p = cfg_vit.patch_size
        return ExplainGraph(
            layout="vit",
            input_names=(PIXELS,),
            attentions=_layers(ATTENTION, cfg_vit.depth, cfg_vit.num_heads),
            grid=(cfg_vit.height // p, cfg_vit.width // p),
            patch_size=p,
            hidden_states=hidden,
        )
    return ExplainGraph(
        layout="swin",
        input_names=(PIXELS,),
        attentions=_swin_layers(model),
        patch_size=model.config.patch_size,
        hidden_states=hidden,
    )


def embeddings_entry(model: nn.Module, spec: InputSpec | None = None) -> EmbeddingsGraph | None:
    """The ``embeddings`` entry that names the explain graph (GPT, ViT, Swin); None for an encoder-decoder."""
    if isinstance(model, Seq2Seq) or not supports_explain(model):
        return None
    return graph_entry(model, spec).model_copy(update={"file": EXPLAIN_FILE})


def output_names(entry: ExplainGraph) -> list[str]:
    """The graph's outputs, in the order :class:`_Explained` returns them."""
    return [*entry.outputs(), *entry.hidden_states]


def _text_sample(vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    ids, mask, _ = left_pad([[t % vocab for t in seq] for seq in PARITY_TEXTS], pad_id=0)
    return ids, mask  # (3, 7) each


def _seq2seq_sample(vocab: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded sources of several lengths (as the server pads them) and one unpadded target."""
    width = max(map(len, PARITY_TEXTS))
    ids = torch.zeros(len(PARITY_TEXTS), width, dtype=torch.int64)
    mask = torch.zeros_like(ids)
    for row, seq in enumerate(PARITY_TEXTS):
        ids[row, : len(seq)] = torch.tensor([t % vocab for t in seq])
        mask[row, : len(seq)] = 1
    target = torch.tensor([t % vocab for t in PARITY_TARGET]).expand(len(PARITY_TEXTS), -1).contiguous()
    return ids, mask, target  # (3, 7), (3, 7), (3, 5): no two dynamic sizes alike, none 0 or 1


def _sample(model: ExplainModel, spec: InputSpec | None) -> tuple[tuple[torch.Tensor, ...], list[dict[int, object]]]:
    """A sample input for torch.export, and each input's dynamic axes."""
    batch = torch.export.Dim("batch")
    if isinstance(model, Seq2Seq):
        source, target = torch.export.Dim("source_len"), torch.export.Dim("target_len")
        axes: list[dict[int, object]] = [{0: batch, 1: source}, {0: batch, 1: source}, {0: batch, 1: target}]
        return _seq2seq_sample(model.config.vocab_size), axes
    if isinstance(model, GPT):
        seq = torch.export.Dim("seq")
        return _text_sample(model.config.vocab_size), [{0: batch, 1: seq}, {0: batch, 1: seq}]
    if spec is None:
        raise ValueError("an image model's explain graph needs its InputSpec")
    return (torch.randn(2, spec.channels, spec.height, spec.width),), [{0: batch}]


def export_explain_onnx(model: ExplainModel, entry: ExplainGraph, path: Path, spec: InputSpec | None) -> None:
    """Export ``model.attention_maps`` to ``path`` with the entry's input and output names.

    Parameters stay initializers named after them (``optimize=False``, as the embeddings graph), so
    that a module can be rebuilt from this file too; ONNX Runtime folds at load time.
    """
    sample, axes = _sample(model, spec)
    with torch.no_grad():
        program = torch.onnx.export(
            _Explained(model).eval(),
            sample,
            dynamo=True,
            # Keyed by the declared input names: forward takes them as *inputs.
            dynamic_shapes={"inputs": tuple(axes)},
            input_names=list(entry.input_names),
            output_names=output_names(entry),
            opset_version=OPSET,
            optimize=False,
            verbose=False,
        )
    save_program(program, path)


def reference_outputs(model: ExplainModel, feed: dict[str, np.ndarray], entry: ExplainGraph) -> list[np.ndarray]:
    """PyTorch's outputs for an ONNX feed of the explain graph, in the graph's output order."""
    with torch.no_grad():
        outputs = _Explained(model).eval()(*(torch.from_numpy(feed[name]) for name in entry.input_names))
    return [t.numpy() for t in outputs]


def _feeds(model: ExplainModel, entry: ExplainGraph, images: np.ndarray | None) -> list[dict[str, np.ndarray]]:
    if isinstance(model, Seq2Seq):
        ids, mask, target = _seq2seq_sample(model.config.vocab_size)
        one = (ids[1:2, :1], mask[1:2, :1], target[:1, :2])  # one token of source, two of target
        return [
            dict(zip(entry.input_names, (t.numpy() for t in feed), strict=True)) for feed in ((ids, mask, target), one)
        ]
    if isinstance(model, GPT):
        ids, mask = _text_sample(model.config.vocab_size)
        short = {INPUT_IDS: ids[:1, -2:].numpy(), ATTENTION_MASK: mask[:1, -2:].numpy()}  # one text, no padding
        return [{INPUT_IDS: ids.numpy(), ATTENTION_MASK: mask.numpy()}, short]
    assert images is not None
    return [{PIXELS: np.ascontiguousarray(images[:16], dtype=np.float32)}, {PIXELS: images[:1].astype(np.float32)}]


def _real(name: str, want: np.ndarray, feed: dict[str, np.ndarray]) -> np.ndarray:
    """Which entries of output ``name`` nothing masks: real queries and real keys (text), everything
    else (images; the decoder's target is unpadded)."""
    everything = np.ones(want.shape, dtype=bool)
    mask = feed.get(ATTENTION_MASK, feed.get(SOURCE_MASK))
    if mask is None:
        return everything
    real = mask.astype(bool)  # (B, T)
    if name.startswith("hidden_states."):  # (B, T, D)
        return np.broadcast_to(real[:, :, None], want.shape)
    if name.startswith("attentions."):  # (B, nh, T, T): a real query's row over real keys
        return np.broadcast_to(real[:, None, :, None] & real[:, None, None, :], want.shape)
    if name.startswith("cross_attentions."):  # (B, nh, U, S)
        return np.broadcast_to(real[:, None, None, :], want.shape)
    return everything


def check_explain_parity(
    model: ExplainModel, entry: ExplainGraph, path: Path, images: np.ndarray | None = None
) -> list[ParityCase]:
    """Every output, ONNX Runtime vs PyTorch, on padded texts of several lengths or on ``images``."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = output_names(entry)
    probabilities = set(names) - set(entry.hidden_states) - {entry.logits}
    cases = []
    for feed in _feeds(model, entry, images):
        expected = reference_outputs(model, feed, entry)
        got = session.run(names, feed)
        for name, want, have in zip(names, expected, got, strict=True):
            if want.shape != have.shape:
                raise ParityError(f"{name}: ONNX Runtime returned {have.shape}, PyTorch {want.shape}")
            real = _real(name, want, feed)
            diff = np.abs(want - have)[real]
            cases.append(
                ParityCase(
                    name=f"{name}, batch of {len(next(iter(feed.values())))}",
                    max_abs_diff=float(diff.max(initial=0.0)),
                    # Probabilities are at most 1: their scale is 1, so rel_diff is the absolute difference.
                    max_abs_logit=1.0 if name in probabilities else float(np.abs(want[real]).max(initial=0.0)),
                    argmax_mismatches=0,
                    argmax_ties=0,
                    present_max_abs_diff=0.0,
                )
            )
    return cases


def export_explain(
    model: nn.Module,
    version_dir: Path,
    *,
    spec: InputSpec | None = None,
    images: np.ndarray | None = None,
    tolerance: float = 1e-4,
) -> tuple[ExplainGraph, ParityReport]:
    """Write ``version_dir/explain.onnx`` (parity-checked) and return its metadata entry.

    Args:
        spec: the image models' input (the graph takes the same pixels as the serving graph).
        images: preprocessed parity images ``(N, C, H, W)`` for an image model (random ones if None).
        tolerance: on probabilities, absolute; on hidden states and logits, relative to their largest magnitude.

    Raises:
        ParityError: ONNX Runtime disagrees with PyTorch on some output; nothing is written.
    """
    if not isinstance(model, (GPT, ViT, Swin, Seq2Seq)):
        raise TypeError(f"no explain graph for a {type(model).__name__}")
    model = model.eval()
    entry = explain_entry(model, spec)
    if images is None and spec is not None:
        images = np.random.default_rng(0).standard_normal((4, spec.channels, spec.height, spec.width)).astype("f4")
    report = ParityReport(max_abs_tolerance=None, max_rel_tolerance=tolerance)
    write_checked_graph(
        version_dir,
        entry.file,
        report,
        export=lambda path: export_explain_onnx(model, entry, path, spec),
        check=lambda path: check_explain_parity(model, entry, path, images),
        what="the attention maps",
    )
    return entry, report


def hidden_states_part(report: ParityReport) -> ParityReport:
    """The hidden states' cases of an explain graph's parity report: the Embed RPC's part of it."""
    return replace(report, cases=[c for c in report.cases if c.name.startswith("hidden_states.")])


def with_explain(
    metadata: ModelMetadata, entry: ExplainGraph, report: ParityReport, embeddings: EmbeddingsGraph | None
) -> ModelMetadata:
    """``metadata`` whose section names the explain graph (and, when given, the embeddings entry that
    names the same file), with the parity in the provenance."""
    update: dict[str, object] = {"explain": entry}
    provenance = {**metadata.provenance, "explain_parity": report.to_dict()}
    if embeddings is not None:
        update["embeddings"] = embeddings
        # The same graph and check: the hidden states' part of it.
        provenance["embeddings_parity"] = hidden_states_part(report).to_dict()
    section = metadata.section.model_copy(update=update)
    return metadata.model_copy(update={"section": section, "provenance": provenance})
