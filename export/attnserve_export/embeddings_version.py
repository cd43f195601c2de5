"""``attnserve-export embeddings``: a new version of an existing model that adds the embeddings graph.

For a model whose training checkpoint is gone (the shipped ones), the PyTorch module is rebuilt
from the fp32 graph's own initializers (:mod:`attnserve_export.rebuild`). For a quantized version,
that is the version it was quantized from (``provenance.quantization.source_version``): the
hidden states are then the fp32 model's, while serving keeps the int8 graph.

The new version holds the source version's files byte for byte (serving graph, tokenizer or
labels), plus ``embeddings.onnx`` and a ``metadata.json`` whose section names it. Two parity
checks guard it: the rebuilt module against the graph it was read from (logits), then the new
graph against the rebuilt module (every layer's hidden states).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer
from torch import nn

from attnserve_export.gpt import GPT
from attnserve_export.hidden_states import export_embeddings
from attnserve_export.image_export import check_classifier_parity
from attnserve_export.onnx_export import (
    PARITY_PROMPTS,
    ParityCase,
    ParityError,
    ParityReport,
    check_parity,
    check_shared_buffer_parity,
)
from attnserve_export.rebuild import module_from_onnx
from attnserve_export.seq2seq import Seq2Seq
from attnserve_export.translator_export import check_parity as check_translator_parity
from attnserve_server.model_format.metadata import METADATA_FILE, ModelMetadata, read_metadata, write_metadata
from attnserve_server.task_table import TaskTable
from attnserve_server.text.metadata import TextGenerationMetadata
from attnserve_server.text2text.metadata import Text2TextGenerationMetadata
from attnserve_server.vision.metadata import ImageClassificationMetadata

logger = logging.getLogger(__name__)

# Sources for an encoder-decoder's rebuilt-module check, of several lengths (a padded batch).
PARITY_SOURCES = ("<2de> three hundred and twelve", "<2fr> seven", "<2en> zweiundvierzigtausend", "<2nl> cent")


def versions_of(model_dir: Path) -> list[int]:
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())


def weights_version(metadata: ModelMetadata, source: str) -> str:
    """The version whose graph holds fp32 weights: the quantization's source, or ``source`` itself."""
    quantization = metadata.provenance.get("quantization")
    if isinstance(quantization, dict) and quantization.get("source_version"):
        return str(quantization["source_version"])
    return source


def check_rebuilt(module: nn.Module, version_dir: Path, metadata: ModelMetadata, rel_tolerance: float) -> ParityReport:
    """The rebuilt module against the graph it was read from: logits within ``rel_tolerance``."""
    report = ParityReport(max_rel_tolerance=rel_tolerance, onnx_checker=True)
    graph = version_dir / metadata.model_file
    section = metadata.section
    if isinstance(module, Seq2Seq):
        assert isinstance(section, Text2TextGenerationMetadata)
        tokenizer = Tokenizer.from_file(str(version_dir / section.tokenizer_file))
        # Greedy decoding through the graphs as the server runs them, against the module.
        worst, largest = check_translator_parity(
            module, version_dir / section.encoder_file, graph, [tokenizer.encode(s).ids for s in PARITY_SOURCES],
            section.bos_token_id,
        )  # fmt: skip
        report.cases = [ParityCase(f"greedy decoding of {len(PARITY_SOURCES)} sources", worst, largest, 0, 0, 0.0)]
    elif isinstance(module, GPT):
        assert isinstance(section, TextGenerationMetadata)
        tokenizer = Tokenizer.from_file(str(version_dir / section.tokenizer_file))
        prompts = [tokenizer.encode(p).ids or [section.pad_token_id] for p in PARITY_PROMPTS]
        if section.kv_cache_layout == "shared_buffer":
            report.cases = check_shared_buffer_parity(module, graph, prompts)
        else:
            report.cases = check_parity(module, graph, prompts, section.pad_token_id)
    else:
        assert isinstance(section, ImageClassificationMetadata)
        images = np.random.default_rng(0).standard_normal((32, section.channels, section.height, section.width))
        report.cases = check_classifier_parity(module, graph, images.astype(np.float32))
    return report


def version_dirs(model_dir: Path, source: str | None, target: str | None) -> tuple[str, str, Path, Path]:
    """The source version (default: the highest) and the target (default: one above it), checked.

    Raises:
        ValueError: the source does not exist or the target does.
    """
    on_disk = versions_of(model_dir)
    if not on_disk:
        raise ValueError(f"{model_dir} has no versions")
    source = source or str(on_disk[-1])
    target = target or str(on_disk[-1] + 1)
    source_dir, target_dir = model_dir / source, model_dir / target
    if not source_dir.is_dir():
        raise ValueError(f"{model_dir.name} has no version {source}")
    if target_dir.exists():
        raise ValueError(f"{target_dir} exists; pick another --to-version")
    return source, target, source_dir, target_dir


def rebuilt_module(
    model_dir: Path, metadata: ModelMetadata, source: str, rel_tolerance: float
) -> tuple[nn.Module, Path, ParityReport]:
    """The PyTorch module rebuilt from the fp32 version behind ``source``, checked against its graph.

    Raises:
        ParityError: the rebuilt module disagrees with the graph it was read from.
    """
    weights_dir = model_dir / weights_version(metadata, source)
    weights_metadata = read_metadata(weights_dir, TaskTable().sections())
    module = module_from_onnx(weights_dir).eval()
    rebuilt = check_rebuilt(module, weights_dir, weights_metadata, rel_tolerance)
    logger.info("rebuilt module vs version %s: %s", weights_dir.name, rebuilt.summary())
    if not rebuilt.passed:
        raise ParityError(f"the module rebuilt from version {weights_dir.name} disagrees with it: {rebuilt.summary()}")
    return module, weights_dir, rebuilt


def add_embeddings_version(
    model_dir: Path, *, source: str | None = None, target: str | None = None, rel_tolerance: float = 1e-4
) -> Path:
    """Write ``model_dir/<target>``: version ``source`` (default: the highest) plus its embeddings graph.

    ``target`` defaults to one above the highest version. Nothing is written if a check fails.

    Raises:
        ParityError: the rebuilt module or the new graph disagrees with its reference.
        ValueError: the versions do not exist or the target does.
    """
    source, target, source_dir, target_dir = version_dirs(model_dir, source, target)
    sections = TaskTable().sections()
    metadata = read_metadata(source_dir, sections)
    module, weights_dir, rebuilt = rebuilt_module(model_dir, metadata, source, rel_tolerance)
    section = metadata.section
    spec = section.input_spec() if isinstance(section, ImageClassificationMetadata) else None
    with tempfile.TemporaryDirectory(prefix="attnserve-embeddings-version-", dir=model_dir) as tmp:
        staged = Path(tmp) / target
        shutil.copytree(source_dir, staged)
        entry, report = export_embeddings(module, staged, spec=spec, max_rel_diff=rel_tolerance)
        provenance: dict[str, Any] = {
            **metadata.provenance,
            "embeddings": {
                "command": f"attnserve-export embeddings --model-dir {model_dir} --from-version {source} "
                f"--to-version {target}",
                "source_version": source,
                "weights_version": weights_dir.name,
                "rebuilt_module_parity": rebuilt.to_dict(),
                "parity": report.to_dict(),
            },
        }
        new_metadata = metadata.model_copy(
            update={"section": section.model_copy(update={"embeddings": entry}), "provenance": provenance}
        )
        (staged / METADATA_FILE).unlink()
        write_metadata(staged, new_metadata)
        read_metadata(staged, sections)  # what the server will read must validate
        staged.rename(target_dir)
    logger.info("wrote %s: version %s with an embeddings graph (%s)", target_dir, source, report.summary())
    return target_dir
