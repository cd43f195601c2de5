"""The embeddings graph: a second ONNX file per version that returns every layer's hidden state.

The serving graph (``model.onnx``) stays as fast as it is; the Embed RPC loads this one lazily.
What each layer means is written down in :mod:`attnserve_server.model_format.embeddings`; the
models compute it in their ``hidden_states`` methods, and this module exports those methods
with a dynamic batch (and, for text, sequence) axis, then checks parity against PyTorch on every
layer, as the other exports do, before anything is written.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from attnserve_export.gpt import GPT, left_pad
from attnserve_export.onnx_export import OPSET, ParityCase, ParityError, ParityReport, save_program
from attnserve_export.seq2seq import Seq2Seq
from attnserve_export.swin import Swin
from attnserve_export.vit import ViT
from attnserve_server.model_format.embeddings import EMBEDDINGS_FILE, EmbeddingsGraph
from attnserve_server.model_format.metadata import ModelMetadata
from attnserve_server.model_format.preprocess import InputSpec

logger = logging.getLogger(__name__)

INPUT_IDS = "input_ids"
ATTENTION_MASK = "attention_mask"
PIXELS = "pixel_values"
HIDDEN_STATE = "hidden_states.{layer}"
# Token lists of several lengths, so that left padding is exercised (ids are taken modulo the vocab).
PARITY_TEXTS = ([5, 17, 3, 99, 42, 7, 11], [8], [300, 2, 64, 1000, 12])


# Text models: a GPT, or an encoder-decoder whose encoder gives the hidden states.
TextModel = GPT | Seq2Seq


class _TextHiddenStates(nn.Module):
    def __init__(self, model: TextModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.model.hidden_states(input_ids, attention_mask))


class _ImageHiddenStates(nn.Module):
    def __init__(self, model: ViT | Swin) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.model.hidden_states(pixel_values))


def supports_embeddings(model: nn.Module) -> bool:
    """Whether this module has an embeddings graph (the three families of this package do)."""
    return isinstance(model, (GPT, Seq2Seq, ViT, Swin))


def _text_sample(model: TextModel) -> tuple[torch.Tensor, torch.Tensor]:
    ids, mask, _ = left_pad([[t % model.config.vocab_size for t in seq] for seq in PARITY_TEXTS], pad_id=0)
    return ids, mask


def graph_entry(model: nn.Module, spec: InputSpec | None = None) -> EmbeddingsGraph:
    """The ``embeddings`` metadata entry of ``model``'s graph (shapes from one sample run)."""
    model = model.eval()
    with torch.no_grad():
        if isinstance(model, (GPT, Seq2Seq)):
            states = model.hidden_states(*_text_sample(model))
            inputs: tuple[str, ...] = (INPUT_IDS, ATTENTION_MASK)
        elif isinstance(model, (ViT, Swin)):
            if spec is None:
                raise ValueError("an image model's embeddings graph needs its InputSpec")
            states = model.hidden_states(torch.zeros(1, spec.channels, spec.height, spec.width))
            inputs = (PIXELS,)
        else:
            raise TypeError(f"no embeddings graph for a {type(model).__name__}")
    image = not isinstance(model, (GPT, Seq2Seq))
    return EmbeddingsGraph(
        file=EMBEDDINGS_FILE,
        input_names=inputs,
        hidden_states=tuple(HIDDEN_STATE.format(layer=i) for i in range(len(states))),
        dims=tuple(int(s.shape[-1]) for s in states),
        num_tokens=tuple(int(s.shape[1]) for s in states) if image else None,
        class_token=isinstance(model, ViT),
        # A GPT's last token has read the whole text; an encoder's tokens all read each other.
        default_pooling="last" if isinstance(model, GPT) else "cls" if isinstance(model, ViT) else "mean",
    )


def export_hidden_states_onnx(model: nn.Module, entry: EmbeddingsGraph, path: Path, spec: InputSpec | None) -> None:
    """Export ``model.hidden_states`` to ``path`` with the entry's input and output names.

    Parameters stay initializers named after them (``optimize=False``), so that tools can rebuild
    the module from this file too (:mod:`attnserve_export.rebuild`); ONNX Runtime folds at load time.
    """
    wrapper: nn.Module
    if isinstance(model, (GPT, Seq2Seq)):
        wrapper = _TextHiddenStates(model)
        sample: tuple[torch.Tensor, ...] = _text_sample(model)  # batch 3, seq 7: neither 0 nor 1
        batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq")
        dynamic: dict[str, dict[int, torch.export.Dim]] = {
            "input_ids": {0: batch, 1: seq},
            "attention_mask": {0: batch, 1: seq},
        }
    else:
        assert spec is not None  # graph_entry checked it
        wrapper = _ImageHiddenStates(model)  # type: ignore[arg-type]  # ViT or Swin: checked by graph_entry
        sample = (torch.randn(2, spec.channels, spec.height, spec.width),)
        dynamic = {"pixel_values": {0: torch.export.Dim("batch")}}
    with torch.no_grad():
        program = torch.onnx.export(
            wrapper.eval(),
            sample,
            dynamo=True,
            dynamic_shapes=dynamic,
            input_names=list(entry.input_names),
            output_names=list(entry.hidden_states),
            opset_version=OPSET,
            optimize=False,
            verbose=False,
        )
    save_program(program, path)


def reference_hidden_states(model: nn.Module, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    """PyTorch's hidden states for an ONNX feed of the embeddings graph."""
    with torch.no_grad():
        if isinstance(model, (GPT, Seq2Seq)):
            states = model.hidden_states(torch.from_numpy(feed[INPUT_IDS]), torch.from_numpy(feed[ATTENTION_MASK]))
        else:
            states = model.hidden_states(torch.from_numpy(feed[PIXELS]))  # type: ignore[operator]
    return [s.numpy() for s in states]


def check_hidden_states_parity(
    model: nn.Module, entry: EmbeddingsGraph, path: Path, images: np.ndarray | None = None
) -> list[ParityCase]:
    """Every layer, ONNX Runtime vs PyTorch, on left-padded texts of several lengths or on ``images``.

    Padding positions are left out of the comparison: nothing reads them.
    """
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    if isinstance(model, (GPT, Seq2Seq)):
        ids, mask = _text_sample(model)
        feeds = [{INPUT_IDS: ids.numpy(), ATTENTION_MASK: mask.numpy()}]
    else:
        assert images is not None
        feeds = [{PIXELS: np.ascontiguousarray(images[:16], dtype=np.float32)}, {PIXELS: images[:1].astype(np.float32)}]
    cases = []
    for feed in feeds:
        expected = reference_hidden_states(model, feed)
        got = session.run(list(entry.hidden_states), feed)
        real = feed[ATTENTION_MASK].astype(bool) if ATTENTION_MASK in feed else None
        for layer, (want, have) in enumerate(zip(expected, got, strict=True)):
            if real is not None:  # (real tokens, D)
                want, have = want[real], have[real]  # noqa: PLW2901
            cases.append(
                ParityCase(
                    name=f"layer {layer}, batch of {len(next(iter(feed.values())))}",
                    max_abs_diff=float(np.abs(want - have).max()),
                    max_abs_logit=float(np.abs(want).max()),
                    argmax_mismatches=0,
                    argmax_ties=0,
                    present_max_abs_diff=0.0,
                )
            )
    return cases


def with_embeddings(metadata: ModelMetadata, entry: EmbeddingsGraph, report: ParityReport) -> ModelMetadata:
    """``metadata`` whose section names the embeddings graph, with its parity in the provenance."""
    section = metadata.section.model_copy(update={"embeddings": entry})
    provenance = {**metadata.provenance, "embeddings_parity": report.to_dict()}
    return metadata.model_copy(update={"section": section, "provenance": provenance})


def write_checked_graph(
    version_dir: Path,
    file: str,
    report: ParityReport,
    *,
    export: Callable[[Path], None],
    check: Callable[[Path], list[ParityCase]],
    what: str,
) -> None:
    """Export a graph to a temporary file, check it (``onnx.checker``, then ``check``'s parity cases,
    recorded in ``report``), and move it to ``version_dir/file`` only if it passed.

    Raises:
        ParityError: ONNX Runtime disagrees with PyTorch on ``what``; nothing is written.
    """
    with tempfile.TemporaryDirectory(prefix="attnserve-graph-") as tmp:
        staged = Path(tmp) / file
        start = time.perf_counter()
        export(staged)
        report.export_seconds = time.perf_counter() - start
        onnx.checker.check_model(str(staged), full_check=True)
        report.onnx_checker = True
        report.cases = check(staged)
        report.model_bytes = staged.stat().st_size
        logger.info("%s graph parity: %s", file, report.summary())
        if not report.passed:
            raise ParityError(f"ONNX Runtime disagrees with PyTorch on {what}: {report.summary()}")
        version_dir.mkdir(parents=True, exist_ok=True)
        shutil.move(str(staged), version_dir / file)


def export_embeddings(
    model: nn.Module,
    version_dir: Path,
    *,
    spec: InputSpec | None = None,
    images: np.ndarray | None = None,
    max_rel_diff: float = 1e-4,
) -> tuple[EmbeddingsGraph, ParityReport]:
    """Write ``version_dir/embeddings.onnx`` (parity-checked) and return its metadata entry.

    Args:
        spec: the image models' input (their graph takes the same pixels as the serving graph).
        images: preprocessed parity images ``(N, C, H, W)`` for an image model (random ones if None).

    Raises:
        ParityError: ONNX Runtime disagrees with PyTorch on some layer; nothing is written.
    """
    model = model.eval()
    entry = graph_entry(model, spec)
    if images is None and spec is not None:
        images = np.random.default_rng(0).standard_normal((4, spec.channels, spec.height, spec.width)).astype("f4")
    report = ParityReport(max_abs_tolerance=None, max_rel_tolerance=max_rel_diff)
    write_checked_graph(
        version_dir,
        entry.file,
        report,
        export=lambda path: export_hidden_states_onnx(model, entry, path, spec),
        check=lambda path: check_hidden_states_parity(model, entry, path, images),
        what="the hidden states",
    )
    return entry, report
