"""``attnserve-export explain``: a new version of an existing model that adds the explain graph.

As ``attnserve-export embeddings`` does (:mod:`attnserve_export.embeddings_version`): the PyTorch
module is rebuilt from the fp32 graphs' own initializers (for a quantized version, from the version
it was quantized from), checked against those graphs, and exported.

The new version holds the source version's serving files byte for byte, plus ``explain.onnx``. For a
GPT, ViT or Swin that graph also returns the hidden states, so the version's ``embeddings`` entry
names it and the source's ``embeddings.onnx`` is not copied: one fp32 analysis graph per version. An
encoder-decoder keeps its ``embeddings.onnx`` (its explain graph needs a target as well).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

from attnserve_export.embeddings_version import rebuilt_module, version_dirs
from attnserve_export.explain_graph import embeddings_entry, export_explain, hidden_states_part
from attnserve_server.model_format.metadata import METADATA_FILE, read_metadata, write_metadata
from attnserve_server.task_table import TaskTable
from attnserve_server.vision.metadata import ImageClassificationMetadata

logger = logging.getLogger(__name__)


def add_explain_version(
    model_dir: Path, *, source: str | None = None, target: str | None = None, tolerance: float = 1e-4
) -> Path:
    """Write ``model_dir/<target>``: version ``source`` (default: the highest) plus its explain graph.

    ``target`` defaults to one above the highest version. Nothing is written if a check fails.

    Raises:
        ParityError: the rebuilt module or the new graph disagrees with its reference.
        ValueError: the versions do not exist or the target does; or the explain graph's hidden states
            would not be the ones the source's embeddings entry describes.
    """
    source, target, source_dir, target_dir = version_dirs(model_dir, source, target)
    sections = TaskTable().sections()
    metadata = read_metadata(source_dir, sections)
    module, weights_dir, rebuilt = rebuilt_module(model_dir, metadata, source, tolerance)
    section = metadata.section
    spec = section.input_spec() if isinstance(section, ImageClassificationMetadata) else None
    embeddings = embeddings_entry(module, spec)
    old_embeddings = getattr(section, "embeddings", None)
    # The Embed RPC must not notice: the same layers, widths, tokens and pooling, from another file.
    if embeddings and old_embeddings and embeddings.model_copy(update={"file": old_embeddings.file}) != old_embeddings:
        raise ValueError(f"version {source}'s embeddings entry is not the explain graph's hidden states")
    with tempfile.TemporaryDirectory(prefix="attnserve-explain-version-", dir=model_dir) as tmp:
        staged = Path(tmp) / target
        shutil.copytree(source_dir, staged)
        entry, report = export_explain(module, staged, spec=spec, tolerance=tolerance)
        update: dict[str, Any] = {"explain": entry}
        record: dict[str, Any] = {
            "command": f"attnserve-export explain --model-dir {model_dir} --from-version {source} "
            f"--to-version {target}",
            "source_version": source,
            "weights_version": weights_dir.name,
            "rebuilt_module_parity": rebuilt.to_dict(),
            "parity": report.to_dict(),
        }
        if embeddings is not None:
            if old_embeddings is not None and old_embeddings.file != entry.file:
                (staged / old_embeddings.file).unlink(missing_ok=True)  # the explain graph serves Embed now
            update["embeddings"] = embeddings
            record["embeddings"] = {"file": entry.file, "parity": hidden_states_part(report).to_dict()}
        new_metadata = metadata.model_copy(
            update={
                "section": section.model_copy(update=update),
                "provenance": {**metadata.provenance, "explain": record},
            }
        )
        (staged / METADATA_FILE).unlink()
        write_metadata(staged, new_metadata)
        read_metadata(staged, sections)  # what the server will read must validate
        staged.rename(target_dir)
    logger.info("wrote %s: version %s with an explain graph (%s)", target_dir, source, report.summary())
    return target_dir
