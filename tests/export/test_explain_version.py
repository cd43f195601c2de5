"""``attnserve-export explain``: a new version of an existing entry that adds the explain graph, with the
module rebuilt from the entry's own graphs (the encoder-decoder's two included)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from attnserve_export.__main__ import main as export_cli
from attnserve_export.explain_version import add_explain_version
from attnserve_export.hidden_states import export_embeddings
from attnserve_export.image_data import ImageSpec
from attnserve_export.image_export import export_classifier
from attnserve_export.number_data import LANGUAGES, fixed_set, tag, train_tokenizer
from attnserve_export.onnx_export import ParityError
from attnserve_export.rebuild import module_from_onnx
from attnserve_export.seq2seq import PRESETS as SEQ2SEQ_PRESETS
from attnserve_export.seq2seq import Seq2Seq
from attnserve_export.swin import PRESETS as SWIN_PRESETS
from attnserve_export.swin import Swin
from attnserve_export.translator_export import export_translator
from attnserve_server.model_format.metadata import read_metadata
from attnserve_server.task_table import TaskTable

SPEC = ImageSpec(channels=1, height=20, width=20)


def _files(version_dir: Path) -> list[str]:
    return sorted(p.name for p in version_dir.iterdir())


@pytest.fixture(scope="module")
def old_swin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Swin version as written before the explain graph: model.onnx, labels, and embeddings.onnx."""
    torch.manual_seed(5)
    model = Swin(SWIN_PRESETS["tiny"]).eval()
    version = tmp_path_factory.mktemp("repo") / "swin" / "1"
    images = np.random.default_rng(0).standard_normal((4, 1, 20, 20)).astype(np.float32)
    export_classifier(model, SPEC, [str(i) for i in range(10)], images, version,
                      provenance={"family": "swin", "model_config": model.config.to_dict()})  # fmt: skip
    metadata = json.loads((version / "metadata.json").read_text())
    del metadata["image_classification"]["explain"]
    (version / "explain.onnx").unlink()
    entry, _ = export_embeddings(model, version, spec=SPEC)
    metadata["image_classification"]["embeddings"] = json.loads(entry.model_dump_json())
    (version / "metadata.json").write_text(json.dumps(metadata))
    assert _files(version) == ["embeddings.onnx", "labels.json", "metadata.json", "model.onnx"]
    return version.parent


def test_an_image_version_gets_one_graph_for_explain_and_embed(old_swin: Path, tmp_path: Path) -> None:
    model_dir = tmp_path / "swin"
    shutil.copytree(old_swin, model_dir)
    assert export_cli(["explain", "--model-dir", str(model_dir)]) == 0
    new, old = model_dir / "2", model_dir / "1"
    assert _files(new) == ["explain.onnx", "labels.json", "metadata.json", "model.onnx"]
    assert (new / "model.onnx").read_bytes() == (old / "model.onnx").read_bytes()
    written = read_metadata(new, TaskTable().sections())
    section, before = written.section, read_metadata(old, TaskTable().sections()).section
    assert section.explain is not None and section.explain.layout == "swin"  # type: ignore[attr-defined]
    # The Embed RPC reads the same entry, from the explain graph.
    assert section.embeddings == before.embeddings.model_copy(update={"file": "explain.onnx"})  # type: ignore[attr-defined]
    record = written.provenance["explain"]
    assert record["rebuilt_module_parity"]["passed"] and record["parity"]["passed"]
    assert record["embeddings"]["parity"]["cases"] and record["source_version"] == "1"
    with pytest.raises(ValueError, match="exists"):
        add_explain_version(model_dir, source="1", target="2")


def test_a_version_whose_graph_does_not_hold_the_module_is_refused(old_swin: Path, tmp_path: Path) -> None:
    model_dir = tmp_path / "swin"
    shutil.copytree(old_swin, model_dir)
    metadata = json.loads((model_dir / "1" / "metadata.json").read_text())
    metadata["provenance"]["model_config"]["ln_eps"] = 0.5  # not the eps the graph was exported with
    (model_dir / "1" / "metadata.json").write_text(json.dumps(metadata))
    with pytest.raises(ParityError, match="disagrees"):
        add_explain_version(model_dir)
    assert _files(model_dir) == ["1"]


def test_an_encoder_decoder_is_rebuilt_from_its_two_graphs_and_keeps_its_embeddings_graph(tmp_path: Path) -> None:
    tokenizer = train_tokenizer(max_number=999, vocab_size=300)
    torch.manual_seed(2)
    model = Seq2Seq(SEQ2SEQ_PRESETS["tiny"].with_(vocab_size=tokenizer.get_vocab_size())).eval()
    old = tmp_path / "t" / "1"
    export_translator(model, tokenizer, old, target_tags=[tag(lang) for lang in LANGUAGES],
                      parity_sources=[e.source for e in fixed_set("test", 4, 999)])  # fmt: skip
    # As the shipped version was written: no explain graph, no model_config (the training run's preset instead).
    metadata = json.loads((old / "metadata.json").read_text())
    del metadata["text2text_generation"]["explain"]
    del metadata["provenance"]["model_config"]
    metadata["provenance"]["training"] = {"train_config": {"preset": "tiny", "model_overrides": {}}}
    (old / "metadata.json").write_text(json.dumps(metadata))
    (old / "explain.onnx").unlink()

    rebuilt = module_from_onnx(old)
    for name, tensor in rebuilt.state_dict().items():
        torch.testing.assert_close(tensor, model.state_dict()[name], rtol=0, atol=0, msg=name)

    new = add_explain_version(old.parent)
    assert _files(new) == sorted([*_files(old), "explain.onnx"])
    for name in _files(old):
        if name != "metadata.json":
            assert (new / name).read_bytes() == (old / name).read_bytes(), name
    section = read_metadata(new, TaskTable().sections()).section
    assert section.embeddings.file == "embeddings.onnx"  # type: ignore[attr-defined]
    assert section.explain.layout == "encoder_decoder"  # type: ignore[attr-defined]
