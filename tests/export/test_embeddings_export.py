"""The embeddings graph on the export side: what the exports write, rebuilding modules from ONNX files,
and ``attnserve-export embeddings`` (a new version that adds the graph to an existing one)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from tokenizers import Tokenizer

from attnserve_export.__main__ import main as export_cli
from attnserve_export.embeddings_version import add_embeddings_version
from attnserve_export.gpt import GPT
from attnserve_export.gpt import PRESETS as GPT_PRESETS
from attnserve_export.image_data import ImageSpec
from attnserve_export.image_export import export_classifier
from attnserve_export.onnx_export import ParityError, export_gpt
from attnserve_export.rebuild import module_from_onnx
from attnserve_export.swin import PRESETS as SWIN_PRESETS
from attnserve_export.swin import Swin
from attnserve_export.vit import PRESETS as VIT_PRESETS
from attnserve_export.vit import ViT
from attnserve_server.model_format.metadata import read_metadata
from attnserve_server.task_table import TaskTable

LABELS = [str(i) for i in range(10)]


def _images(size: int) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((4, 1, size, size)).astype(np.float32)


@pytest.fixture(scope="module")
def swin_model_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Swin]:
    torch.manual_seed(3)
    model = Swin(SWIN_PRESETS["tiny"]).eval()
    model_dir = tmp_path_factory.mktemp("repo") / "swin"
    spec = ImageSpec(channels=1, height=20, width=20)
    export_classifier(model, spec, LABELS, _images(20), model_dir / "1", provenance={"family": "swin",
                      "model_config": model.config.to_dict()})  # fmt: skip
    return model_dir, model


def test_an_image_export_writes_the_graph_and_names_it(swin_model_dir: tuple[Path, Swin]) -> None:
    model_dir, model = swin_model_dir
    metadata = read_metadata(model_dir / "1", TaskTable().sections())
    entry = metadata.section.embeddings  # type: ignore[attr-defined]
    assert entry is not None and (model_dir / "1" / entry.file).is_file()
    assert entry.dims == (16, 16, 32) and entry.num_tokens == (100, 100, 25)
    assert entry.default_pooling == "mean" and entry.poolings() == ("mean", "none") and not entry.class_token
    assert metadata.provenance["embeddings_parity"]["passed"]
    # The graph's last layer is what the head reads: pooled and projected, it gives the logits.
    session = ort.InferenceSession(str(model_dir / "1" / entry.file), providers=["CPUExecutionProvider"])
    pixels = _images(20)
    (last,) = session.run([entry.hidden_states[-1]], {entry.input_names[0]: pixels})
    with torch.no_grad():
        logits = model(torch.from_numpy(pixels)).numpy()
        head = model.head(torch.from_numpy(last).mean(dim=1)).numpy()
    np.testing.assert_allclose(head, logits, atol=1e-4)


def test_a_gpt_export_writes_the_graph(tmp_path: Path, tiny_tokenizer: Tokenizer) -> None:
    torch.manual_seed(0)
    model = GPT(GPT_PRESETS["tiny"].with_(vocab_size=tiny_tokenizer.get_vocab_size(with_added_tokens=True)))
    export_gpt(model, tiny_tokenizer, tmp_path / "1", kv_cache_layout="concat")
    entry = read_metadata(tmp_path / "1", TaskTable().sections()).section.embeddings  # type: ignore[attr-defined]
    assert entry.input_names == ("input_ids", "attention_mask") and entry.default_pooling == "last"
    assert entry.num_layers == 3 and entry.num_tokens is None
    assert entry.file == "explain.onnx"  # the explain graph returns the hidden states too
    export_gpt(model, tiny_tokenizer, tmp_path / "2", kv_cache_layout="concat", explain=False)
    assert sorted(p.name for p in (tmp_path / "2").iterdir()) == ["metadata.json", "model.onnx", "tokenizer.json"]


@pytest.mark.parametrize("family", ["vit", "swin", "gpt-concat", "gpt-shared-buffer"])
def test_modules_are_rebuilt_exactly_from_their_graphs(family: str, tmp_path: Path, tiny_tokenizer: Tokenizer) -> None:
    torch.manual_seed(4)
    if family.startswith("gpt"):
        # head_dim 16: the shared_buffer layout needs a multiple of 16.
        config = GPT_PRESETS["tiny"].with_(vocab_size=tiny_tokenizer.get_vocab_size(with_added_tokens=True),
                                           pos_encoding="rotary", bias=False)  # fmt: skip
        model: torch.nn.Module = GPT(config)
        layout = "concat" if family == "gpt-concat" else "shared_buffer"
        export_gpt(model, tiny_tokenizer, tmp_path / "1", kv_cache_layout=layout, explain=False)
    else:
        model = ViT(VIT_PRESETS["tiny"]) if family == "vit" else Swin(SWIN_PRESETS["tiny"])
        size = 16 if family == "vit" else 20
        export_classifier(model, ImageSpec(channels=1, height=size, width=size), LABELS, _images(size), tmp_path / "1",
                          provenance={"family": family, "model_config": model.config.to_dict()})  # type: ignore[operator]  # fmt: skip
    rebuilt = module_from_onnx(tmp_path / "1")
    expected = model.state_dict()
    for name, tensor in rebuilt.state_dict().items():
        torch.testing.assert_close(tensor, expected[name], rtol=0, atol=0, msg=name)


def test_a_version_without_the_graph_gets_a_new_one(swin_model_dir: tuple[Path, Swin], tmp_path: Path) -> None:
    source, _ = swin_model_dir
    model_dir = tmp_path / "swin"
    shutil.copytree(source / "1", model_dir / "1")
    metadata = json.loads((model_dir / "1" / "metadata.json").read_text())
    del metadata["image_classification"]["embeddings"]  # as written before the graph existed
    del metadata["image_classification"]["explain"]
    (model_dir / "1" / "metadata.json").write_text(json.dumps(metadata))
    (model_dir / "1" / "explain.onnx").unlink()

    assert export_cli(["embeddings", "--model-dir", str(model_dir)]) == 0
    new = model_dir / "2"
    assert (new / "model.onnx").read_bytes() == (model_dir / "1" / "model.onnx").read_bytes()
    assert (new / "labels.json").read_bytes() == (model_dir / "1" / "labels.json").read_bytes()
    written = read_metadata(new, TaskTable().sections())
    assert written.section.embeddings is not None  # type: ignore[attr-defined]
    report = written.provenance["embeddings"]
    assert report["rebuilt_module_parity"]["passed"] and report["parity"]["passed"]
    assert report["source_version"] == "1" and report["weights_version"] == "1"
    with pytest.raises(ValueError, match="exists"):
        add_embeddings_version(model_dir, source="1", target="2")


def test_a_graph_that_does_not_hold_the_module_is_refused(swin_model_dir: tuple[Path, Swin], tmp_path: Path) -> None:
    """A rebuilt module that disagrees with its graph (here: provenance names another config) writes nothing."""
    source, _ = swin_model_dir
    model_dir = tmp_path / "swin"
    shutil.copytree(source / "1", model_dir / "1")
    metadata = json.loads((model_dir / "1" / "metadata.json").read_text())
    metadata["provenance"]["model_config"]["ln_eps"] = 0.5  # not the eps the graph was exported with
    (model_dir / "1" / "metadata.json").write_text(json.dumps(metadata))
    with pytest.raises(ParityError, match="disagrees"):
        add_embeddings_version(model_dir)
    assert sorted(p.name for p in model_dir.iterdir()) == ["1"]
