"""Parity-checked ONNX export of the tiny preset into a model repository version directory."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from tokenizers import Tokenizer

from attnserve_export import onnx_export, onnx_gqa
from attnserve_export.gpt import GPT, PRESETS, left_pad
from attnserve_export.onnx_export import ParityError, export_gpt, next_version_dir
from attnserve_server.model_format.metadata import read_metadata
from attnserve_server.task_table import TaskTable
from attnserve_server.text.metadata import TextGenerationMetadata

METADATA_KEYS = {"format_version", "task", "description", "model_file", "text_generation", "provenance"}
TEXT_KEYS = {
    "tokenizer_file", "context_length", "vocab_size", "num_layers", "num_heads", "head_dim", "inputs", "outputs",
    "past_key_template", "past_value_template", "present_key_template", "present_value_template",
    "eos_token", "eos_token_id", "pad_token_id", "kv_cache_layout", "defaults", "embeddings", "explain",
}  # fmt: skip
LAYOUT_INPUTS = {
    "concat": {"input_ids", "attention_mask", "position_ids"},
    "shared_buffer": {"input_ids", "position_ids", "seqlens_k", "total_sequence_length"},
}


@pytest.fixture(
    scope="module",
    params=[
        ("concat", "learned"),
        ("concat", "rotary"),
        ("shared_buffer", "learned"),
        ("shared_buffer", "rotary"),
        ("shared_buffer", "sinusoidal"),
    ],
    ids="-".join,
)
def exported(request: pytest.FixtureRequest, tiny_tokenizer: Tokenizer, tmp_path_factory: pytest.TempPathFactory):
    layout, pos_encoding = request.param
    torch.manual_seed(0)
    model = GPT(PRESETS["tiny"].with_(pos_encoding=pos_encoding))
    version_dir = tmp_path_factory.mktemp("repo") / "tiny-gpt" / "1"
    report = export_gpt(
        model,
        tiny_tokenizer,
        version_dir,
        description="tiny",
        provenance={"seed": 0},
        max_abs_diff=1e-4,
        kv_cache_layout=layout,
    )
    return model, version_dir, report


def test_files_and_metadata(exported) -> None:
    model, version_dir, report = exported
    files = sorted(p.name for p in version_dir.iterdir())
    assert files == ["explain.onnx", "metadata.json", "model.onnx", "tokenizer.json"]
    meta = json.loads((version_dir / "metadata.json").read_text())
    assert set(meta) == METADATA_KEYS
    assert meta["task"] == "text-generation"
    tg = meta["text_generation"]
    assert set(tg) == TEXT_KEYS
    cfg = model.config
    assert (tg["num_layers"], tg["num_heads"], tg["head_dim"]) == (cfg.num_layers, cfg.num_heads, cfg.head_dim)
    assert tg["vocab_size"] == cfg.vocab_size and tg["context_length"] == cfg.context_length
    assert tg["eos_token"] == "<|endoftext|>" and isinstance(tg["eos_token_id"], int)
    assert set(tg["inputs"]) == LAYOUT_INPUTS[tg["kv_cache_layout"]]
    assert set(tg["defaults"]) == {"max_new_tokens", "temperature", "top_k", "top_p", "repetition_penalty"}
    assert meta["provenance"]["seed"] == 0
    assert meta["provenance"]["parity"]["passed"] is True
    assert report.passed and report.max_abs_diff <= 1e-4 and report.argmax_mismatches == 0


def test_metadata_parses_with_the_model_format(exported) -> None:
    """The server's own parser accepts the file, and writing the parsed metadata gives the same JSON."""
    model, version_dir, _ = exported
    raw = json.loads((version_dir / "metadata.json").read_text())
    parsed = read_metadata(version_dir, TaskTable().sections())
    assert isinstance(parsed.section, TextGenerationMetadata)
    assert parsed.section.num_layers == model.config.num_layers
    assert parsed.section.kv_cache_layout == raw["text_generation"]["kv_cache_layout"]
    assert parsed.to_json_dict() == raw


def test_graph_io_matches_metadata(exported) -> None:
    _, version_dir, _ = exported
    tg = json.loads((version_dir / "metadata.json").read_text())["text_generation"]
    proto = onnx.load(str(version_dir / "model.onnx"))
    assert proto.opset_import[0].version >= 17
    inputs = {i.name: i for i in proto.graph.input}
    outputs = {o.name for o in proto.graph.output}
    expected_inputs = set(tg["inputs"].values()) | {
        t.format(layer=i) for i in range(tg["num_layers"]) for t in (tg["past_key_template"], tg["past_value_template"])
    }
    assert set(inputs) == expected_inputs
    assert outputs == set(tg["outputs"].values()) | {
        t.format(layer=i)
        for i in range(tg["num_layers"])
        for t in (tg["present_key_template"], tg["present_value_template"])
    }
    for role, name in tg["inputs"].items():
        # GroupQueryAttention takes its lengths as int32; everything else is int64.
        int32 = role in ("seqlens_k", "total_sequence_length")
        assert inputs[name].type.tensor_type.elem_type == (onnx.TensorProto.INT32 if int32 else onnx.TensorProto.INT64)
        dims = inputs[name].type.tensor_type.shape.dim
        assert all(d.dim_param for d in dims), f"{name} has a fixed axis"


def test_shared_buffer_parity_covers_chunked_prefill_and_batched_decode(exported) -> None:
    _, version_dir, report = exported
    if json.loads((version_dir / "metadata.json").read_text())["text_generation"]["kv_cache_layout"] != "shared_buffer":
        pytest.skip("concat layout")
    names = [c.name for c in report.cases]
    assert any("chunks" in n for n in names) and any("batched decode" in n for n in names)
    assert all(c.present_max_abs_diff < 1e-4 for c in report.cases)


def test_shared_buffer_refuses_head_sizes_ort_cannot_run(tiny_tokenizer: Tokenizer, tmp_path: Path) -> None:
    model = GPT(PRESETS["tiny"].with_(num_heads=4))  # head_dim 8
    with pytest.raises(ValueError, match="kv_cache_layout='concat'"):
        export_gpt(model, tiny_tokenizer, tmp_path / "m" / "1", kv_cache_layout="shared_buffer")
    assert not (tmp_path / "m").exists()


def test_failed_parity_raises_and_writes_nothing(
    tiny_tokenizer: Tokenizer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    tamper: Callable[[onnx.ModelProto, str, int, float], None],
) -> None:
    """A graph whose logits differ from PyTorch's (logit 0 shifted by 0.01, far above the 1e-4 relative
    tolerance) is refused, and nothing reaches the repository. (The default layout only: the concat
    one shares the same gate after its own comparison, and its torch.export takes seconds.)"""
    torch.manual_seed(0)
    model = GPT(PRESETS["tiny"].with_(vocab_size=tiny_tokenizer.get_vocab_size(with_added_tokens=True)))
    build = onnx_gqa.build_shared_buffer_graph

    def tampered_build(gpt: GPT, names: Any) -> onnx.ModelProto:
        graph = build(gpt, names)
        tamper(graph, onnx_export.LOGITS, gpt.config.vocab_size, 0.01)
        return graph

    monkeypatch.setattr("attnserve_export.onnx_export.build_shared_buffer_graph", tampered_build)
    version_dir = tmp_path / "tiny-gpt" / "1"
    with pytest.raises(ParityError, match=r"max \|Δlogit\| 0\.01\b"):
        export_gpt(model, tiny_tokenizer, version_dir, kv_cache_layout="shared_buffer")
    assert not version_dir.parent.exists()


def test_ort_runs_prefill_then_decode(exported) -> None:
    """Drive a concat-layout file with a left-padded batch: past_len = 0 prefill, then decode steps."""
    model, version_dir, _ = exported
    tg = json.loads((version_dir / "metadata.json").read_text())["text_generation"]
    if tg["kv_cache_layout"] != "concat":
        pytest.skip("the shared_buffer layout is driven by its parity check and the server's tests")
    session = ort.InferenceSession(str(version_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    seqs = [[3, 4, 5, 6, 7, 8], [9, 10], [11, 12, 13]]
    ids, mask, positions = left_pad(seqs, tg["pad_token_id"])
    empty = np.zeros((3, tg["num_heads"], 0, tg["head_dim"]), np.float32)
    past_names = [
        t.format(layer=i) for i in range(tg["num_layers"]) for t in (tg["past_key_template"], tg["past_value_template"])
    ]
    feed = {"input_ids": ids.numpy(), "attention_mask": mask.numpy(), "position_ids": positions.numpy()}
    feed |= dict.fromkeys(past_names, empty)
    outputs = session.run(None, feed)
    assert outputs[0].shape == (3, 6, tg["vocab_size"])
    assert np.isfinite(outputs[0]).all()  # padding rows too: no NaN that could leak into real rows
    for step in range(3):
        mask = torch.cat([mask, torch.ones(3, 1, dtype=torch.int64)], dim=1)
        positions = positions[:, -1:] + 1
        next_ids = outputs[0][:, -1].argmax(-1)[:, None].astype(np.int64)
        feed = {"input_ids": next_ids, "attention_mask": mask.numpy(), "position_ids": positions.numpy()}
        feed |= dict(zip(past_names, outputs[1:], strict=True))
        outputs = session.run(None, feed)
        assert outputs[0].shape == (3, 1, tg["vocab_size"])
        assert outputs[1].shape == (3, tg["num_heads"], 6 + step + 1, tg["head_dim"])
    # The row that was padded most gives what it gives alone.
    with torch.no_grad():
        alone, _ = model(torch.tensor([seqs[1]]))
    single = {"input_ids": np.array([seqs[1]]), "attention_mask": np.ones((1, 2), np.int64)}
    single |= {"position_ids": np.arange(2)[None]} | dict.fromkeys(past_names, empty[:1])
    np.testing.assert_allclose(session.run(None, single)[0][0], alone[0].numpy(), atol=1e-4)


def test_next_version_dir(tmp_path: Path) -> None:
    assert next_version_dir(tmp_path, "m") == tmp_path / "m" / "1"
    (tmp_path / "m" / "1").mkdir(parents=True)
    (tmp_path / "m" / "7").mkdir()
    assert next_version_dir(tmp_path, "m") == tmp_path / "m" / "8"
    with pytest.raises(ValueError):
        next_version_dir(tmp_path, "bad/name")


def test_cli_random_init_preset(tiny_tokenizer: Tokenizer, tmp_path: Path) -> None:
    from attnserve_export.__main__ import main

    tokenizer_path = tmp_path / "tokenizer.json"
    tiny_tokenizer.save(str(tokenizer_path))
    repo = tmp_path / "models"
    args = ["onnx", "--preset", "tiny", "--random-init", "--tokenizer", str(tokenizer_path), "--name", "rand"]
    assert main([*args, "--repository", str(repo)]) == 0
    meta = json.loads((repo / "rand" / "1" / "metadata.json").read_text())
    assert meta["provenance"]["random_init"] is True
    assert meta["text_generation"]["vocab_size"] == PRESETS["tiny"].vocab_size
    assert meta["text_generation"]["defaults"]["max_new_tokens"] == PRESETS["tiny"].context_length // 2


def test_shared_buffer_graph_quantizes_dynamically(exported, tmp_path: Path) -> None:
    """ONNX Runtime's dynamic int8 quantization must reach the linear layers of the shared_buffer graph."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    _, version_dir, _ = exported
    if json.loads((version_dir / "metadata.json").read_text())["text_generation"]["kv_cache_layout"] != "shared_buffer":
        pytest.skip("concat layout")
    quantized = tmp_path / "model.int8.onnx"
    quantize_dynamic(str(version_dir / "model.onnx"), str(quantized), weight_type=QuantType.QInt8)
    op_types = [n.op_type for n in onnx.load(str(quantized)).graph.node]
    assert "MatMul" not in op_types
    assert op_types.count("MatMulInteger") >= 4 * PRESETS["tiny"].num_layers  # qkv, proj, fc, mlp proj per block
    ort.InferenceSession(str(quantized), providers=["CPUExecutionProvider"])  # and ONNX Runtime loads it
