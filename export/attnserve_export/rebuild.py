"""Rebuild the PyTorch module of a model repository entry from its ONNX file's own initializers.

The shipped models' training checkpoints are not in the repository, but their fp32 graphs hold
every weight. The architecture comes from ``provenance.model_config`` (and ``provenance.family``
for image models; the encoder-decoder's training preset where older versions lack it); the
weights from the initializers:

- the GPT's graphs name every parameter (the ``shared_buffer`` graph stores linear weights
  transposed, as ``<name>.weight_t``);
- the encoder-decoder's two graphs (``encoder.onnx``, ``decoder.onnx``) name every parameter too,
  with linear weights transposed and each self-attention's ``q`` and ``kv`` fused into one ``qkv``;
- the image classifiers were exported with the exporter's optimizer on, which folds each linear
  weight's transpose into an anonymous initializer (``val_13``). Exporting a module of the same
  config the same way reproduces those names, and matching values tells which parameter each holds.

Whoever uses the module must check it against the graph (:func:`check_rebuilt`): the rebuild is
only as good as that parity check.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from attnserve_export.gpt import GPT, GPTConfig
from attnserve_export.image_export import export_classifier_onnx
from attnserve_export.seq2seq import PRESETS as SEQ2SEQ_PRESETS
from attnserve_export.seq2seq import Seq2Seq, Seq2SeqConfig
from attnserve_export.swin import Swin, SwinConfig, WindowAttention
from attnserve_export.vit import ViT, ViTConfig
from attnserve_server.model_format.preprocess import InputSpec
from attnserve_server.vision.metadata import ImageClassificationMetadata


class RebuildError(ValueError):
    """The ONNX file does not hold the weights of the module its metadata describes."""


def read_metadata_json(version_dir: Path) -> dict[str, Any]:
    raw: dict[str, Any] = json.loads((version_dir / "metadata.json").read_text(encoding="utf-8"))
    return raw


def initializers(path: Path) -> dict[str, np.ndarray]:
    """Every initializer of an ONNX file, by name."""
    graph = onnx.load(str(path)).graph
    return {init.name: numpy_helper.to_array(init).copy() for init in graph.initializer}


def gpt_from_onnx(version_dir: Path) -> GPT:
    """The PyTorch GPT of a text-generation version, rebuilt from its ``model_file``."""
    metadata = read_metadata_json(version_dir)
    config = GPTConfig(**metadata["provenance"]["model_config"])
    model = GPT(config).eval()
    weights = {
        name.removeprefix("model."): torch.from_numpy(array)
        for name, array in initializers(version_dir / metadata["model_file"]).items()
    }
    # The shared_buffer graph stores linear weights transposed, as "<name>.weight_t".
    weights |= {name.removesuffix("_t"): w.t() for name, w in weights.items() if name.endswith(".weight_t")}
    state = model.state_dict()
    missing = [name for name in state if name not in weights and name not in ("wte.weight", "lm_head.weight")]
    if missing:
        raise RebuildError(f"{version_dir.name}: ONNX initializers do not name these parameters: {missing[:5]}")
    # Tied: the concat export names the matrix lm_head.weight, the shared_buffer one wte.weight.
    tied = weights.get("wte.weight", weights.get("lm_head.weight"))
    if tied is None:
        raise RebuildError(f"{version_dir.name}: no initializer holds the token embedding")
    weights.setdefault("wte.weight", tied)
    weights.setdefault("lm_head.weight", tied)
    model.load_state_dict({name: weights[name] for name in state}, strict=True)
    return model


def seq2seq_config(metadata: dict[str, Any]) -> Seq2SeqConfig:
    """An encoder-decoder version's architecture: ``provenance.model_config``, or (versions exported
    before it was recorded) the training run's preset with its overrides and the section's vocabulary."""
    provenance, section = metadata["provenance"], metadata["text2text_generation"]
    if "model_config" in provenance:
        return Seq2SeqConfig(**provenance["model_config"])
    train = provenance.get("training", {}).get("train_config", {})
    if train.get("preset") not in SEQ2SEQ_PRESETS:
        raise RebuildError("the provenance names neither model_config nor a known training preset")
    return SEQ2SEQ_PRESETS[train["preset"]].with_(vocab_size=section["vocab_size"], **train.get("model_overrides", {}))


def seq2seq_from_onnx(version_dir: Path) -> Seq2Seq:
    """The PyTorch encoder-decoder of a text2text-generation version, rebuilt from its two graphs."""
    metadata = read_metadata_json(version_dir)
    model = Seq2Seq(seq2seq_config(metadata)).eval()
    graphs = (metadata["text2text_generation"]["encoder_file"], metadata["model_file"])
    weights: dict[str, torch.Tensor] = {}
    for graph in graphs:
        for name, array in initializers(version_dir / graph).items():
            tensor = torch.from_numpy(array)
            # Linear weights are stored transposed, as "<name>.weight_t".
            weights[name.removesuffix("_t")] = tensor.t() if name.endswith(".weight_t") else tensor
    dim = model.config.dim
    for name in [n for n in weights if ".qkv." in n]:  # the self-attentions' fused [q | kv]
        fused = weights.pop(name)  # (3C, C) or (3C,)
        weights[name.replace(".qkv.", ".q.")], weights[name.replace(".qkv.", ".kv.")] = fused[:dim], fused[dim:]
    state = model.state_dict()
    missing = [name for name in state if name not in weights]
    if missing:
        raise RebuildError(f"{version_dir.name}: the graphs' initializers do not name these parameters: {missing[:5]}")
    if any(weights[name].shape != tensor.shape for name, tensor in state.items()):
        raise RebuildError(
            f"{version_dir.name}: the graphs' weights do not fit the architecture its metadata describes"
        )
    model.load_state_dict({name: weights[name].contiguous() for name in state}, strict=True)
    return model


def image_spec(metadata: dict[str, Any]) -> InputSpec:
    """The input of an image-classification version."""
    return ImageClassificationMetadata.model_validate(metadata["image_classification"]).input_spec()


def image_model_from_onnx(version_dir: Path) -> ViT | Swin:
    """The PyTorch ViT or Swin of an image-classification version, rebuilt from its fp32 ``model_file``."""
    metadata = read_metadata_json(version_dir)
    provenance = metadata["provenance"]
    family = provenance.get("family")
    model: ViT | Swin
    if family == "vit":
        model = ViT(ViTConfig(**provenance["model_config"]))
    elif family == "swin":
        model = Swin(SwinConfig().with_(**provenance["model_config"]))
    else:
        raise RebuildError(f"{version_dir.name}: provenance.family is {family!r}, not vit or swin")
    model.eval()
    # Distinct random values everywhere: the optimizer merges equal constants (LayerNorm's ones and
    # zeros at init), and a probe with merged constants would not have the shipped file's names.
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_()
    params = {name: p.detach().numpy() for name, p in model.state_dict().items()}
    with tempfile.TemporaryDirectory(prefix="attnserve-rebuild-") as tmp:
        probe = Path(tmp) / "probe.onnx"
        export_classifier_onnx(model, image_spec(metadata), probe)  # the same graph as the shipped file
        fresh = initializers(probe)
        shipped = aligned_initializers(probe, version_dir / metadata["model_file"])
    weights: dict[str, np.ndarray] = {}
    for name, value in fresh.items():
        if name not in shipped:
            continue
        if name in params:
            weights[name] = shipped[name]
            continue
        for param, known in params.items():  # an anonymous folded copy: which parameter is it?
            if param in weights or known.ndim != 2:
                continue
            if known.T.shape == value.shape and np.array_equal(known.T, value):
                weights[param] = shipped[name].T
                break
    _recover_position_bias_tables(model, fresh, shipped, weights)
    missing = sorted(set(params) - set(weights))
    if missing:
        raise RebuildError(f"{version_dir.name}: no initializer holds these parameters: {missing[:5]}")
    model.load_state_dict({name: torch.from_numpy(np.ascontiguousarray(w)) for name, w in weights.items()})
    return model


def aligned_initializers(probe: Path, shipped: Path) -> dict[str, np.ndarray]:
    """The shipped file's initializers under the probe's names, matched by position in the graph.

    Both files come from the same exporter on the same architecture, so their nodes correspond one
    to one; names may not (the optimizer merges equal constants, such as untrained LayerNorm ones
    and zeros, under one name).
    """
    probe_graph, shipped_graph = onnx.load(str(probe)).graph, onnx.load(str(shipped)).graph
    probe_ops = [n.op_type for n in probe_graph.node]
    if probe_ops != [n.op_type for n in shipped_graph.node]:
        raise RebuildError(f"{shipped.name} is not the graph of the architecture its metadata describes")
    values = {init.name: numpy_helper.to_array(init).copy() for init in shipped_graph.initializer}
    probe_names = {init.name for init in probe_graph.initializer}
    aligned: dict[str, np.ndarray] = {}
    probe_values = {init.name: init for init in probe_graph.initializer}
    for ours, theirs in zip(probe_graph.node, shipped_graph.node, strict=True):
        for slot, name in enumerate(ours.input):
            shipped_name = theirs.input[slot] if slot < len(theirs.input) else ""
            if name in probe_names and shipped_name in values:
                aligned.setdefault(name, values[shipped_name])
            elif name in probe_names and not shipped_name and ours.op_type == "Gemm" and slot == 2:
                # The optimizer drops a Gemm's all-zero bias (an untrained head's): it was zeros.
                aligned.setdefault(name, np.zeros_like(numpy_helper.to_array(probe_values[name])))
    return aligned


def _recover_position_bias_tables(
    model: nn.Module, fresh: dict[str, np.ndarray], shipped: dict[str, np.ndarray], weights: dict[str, np.ndarray]
) -> None:
    """Swin: the optimizer folds each relative position bias table into the ``(nH, M², M²)`` bias it
    looks up; every table row appears in that bias, so the table is read back out of it."""
    for name, module in model.named_modules():
        if not isinstance(module, WindowAttention):
            continue
        table_name = f"{name}.relative_position_bias_table"
        with torch.no_grad():
            bias = module.position_bias().numpy()  # (nH, N, N), from the probe's random table
        folded = next(
            (
                key
                for key, value in fresh.items()
                if value.size == bias.size and np.array_equal(value.reshape(bias.shape), bias)
            ),
            None,
        )
        if folded is None or folded not in shipped:
            continue
        shipped_bias = shipped[folded].reshape(bias.shape)  # (nH, N, N)
        index = module.relative_position_index.numpy()  # (N, N)
        table = np.empty(tuple(module.relative_position_bias_table.shape), dtype=np.float32)  # (rows, nH)
        table[index.reshape(-1)] = shipped_bias.reshape(bias.shape[0], -1).T
        weights[table_name] = table


def module_from_onnx(version_dir: Path) -> nn.Module:
    """The PyTorch module of a GPT, ViT, Swin or encoder-decoder version, rebuilt from its graphs."""
    task = read_metadata_json(version_dir).get("task")
    if task == "text-generation":
        return gpt_from_onnx(version_dir)
    if task == "text2text-generation":
        return seq2seq_from_onnx(version_dir)
    if task == "image-classification":
        return image_model_from_onnx(version_dir)
    raise RebuildError(f"{version_dir.name}: cannot rebuild a {task!r} model")
