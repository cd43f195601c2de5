"""``attnserve-export quantize``: the int8 round trip on tiny models, from repository entry to a served version.

The tiny random-weight models are not faster in int8 (they are too small for int8 kernels to pay
off), so the round trip uses ``--force``. The gate itself is tested with impossible tolerances (accuracy
and bits per character), and its speed rule with fixed latencies in place of the measurement.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from attnserve_client import Client, FinishReason
from attnserve_export import quantize
from attnserve_export.__main__ import main
from attnserve_export.quantize import QuantizationReport, SpeedCase, quantize_entry

QUANTIZED_NODES = {"MatMulInteger"}
# ONNX Runtime's one-scale-per-tensor activation quantization, which quantize replaces by one per row.
PER_TENSOR_NODE = "DynamicQuantizeLinear"


@pytest.fixture(scope="module")
def repository(
    tmp_path_factory: pytest.TempPathFactory,
    export_text_model: Callable[..., Path],
    export_image_classifier: Callable[..., Path],
) -> Path:
    root = tmp_path_factory.mktemp("quantize-models")
    export_text_model(root, "gpt", kv_cache_layout="concat")
    export_text_model(root, "gpt-shared")  # the shared_buffer layout, which the server batches
    export_image_classifier(root, "digits")
    return root


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory, corpus_text: str) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "plays.txt"
    path.write_text(corpus_text)
    return path


def _ops(path: Path) -> set[str]:
    return {node.op_type for node in onnx.load(str(path)).graph.node}


def _report(capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    return dict(json.loads(capsys.readouterr().out))


def test_a_quantized_variant_that_misses_the_tolerance_is_not_written(
    repository: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    versions = sorted(p.name for p in (repository / "digits").iterdir())
    code = main(["quantize", "--repository", str(repository), "--name", "digits", "--from-version", "1",
                 "--max-accuracy-drop", "-1", "--repeats", "3"])  # fmt: skip
    report = _report(capsys)
    assert code == 4
    assert not report["accepted"]
    assert report["version"] is None
    assert any("accuracy points" in reason for reason in report["reasons"])
    assert sorted(p.name for p in (repository / "digits").iterdir()) == versions


def test_text_bits_per_character_over_the_tolerance_is_not_written(repository: Path, corpus: Path) -> None:
    versions = sorted(p.name for p in (repository / "gpt").iterdir())
    report = quantize_entry(repository, "gpt", from_version="1", corpus=[corpus], repeats=1, max_bpc_increase=-1.0)
    assert not report.accepted and report.version is None
    assert report.metric == "test_bpc" and report.cost > -1.0
    assert any(reason.startswith("costs ") and "bits per character" in reason for reason in report.reasons), report
    assert sorted(p.name for p in (repository / "gpt").iterdir()) == versions


def _timed(fp32_ms: float, int8_ms: float) -> Callable[..., list[SpeedCase]]:
    """A stand-in for quantize's speed measurement with fixed latencies, so the gate's decision does
    not depend on how fast this machine runs int8 kernels today."""

    def compare_speed(fp32: Any, int8: Any, cases: dict[str, Any], repeats: int) -> list[SpeedCase]:
        return [SpeedCase(name, fp32_ms, int8_ms) for name in cases]

    return compare_speed


def test_a_quantized_variant_that_is_not_faster_is_not_written(
    repository: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(quantize, "compare_speed", _timed(fp32_ms=1.0, int8_ms=1.0))  # a tie is not faster
    versions = sorted(p.name for p in (repository / "digits").iterdir())
    code = main(["quantize", "--repository", str(repository), "--name", "digits", "--from-version", "1",
                 "--max-accuracy-drop", "100", "--repeats", "1"])  # fmt: skip
    report = _report(capsys)
    assert code == 4
    assert report["reasons"] == ["not faster than fp32 for: batch 1, batch 8"]
    assert report["version"] is None
    assert sorted(p.name for p in (repository / "digits").iterdir()) == versions


def test_a_faster_variant_within_the_tolerance_is_written_without_force(
    repository: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(quantize, "compare_speed", _timed(fp32_ms=2.0, int8_ms=1.0))
    written = repository / "digits" / "9"  # out of the way of the round trip's version 2; removed below
    try:
        report = quantize_entry(repository, "digits", from_version="1", version=9, repeats=1, max_accuracy_drop=100)
        assert report.accepted and report.version == "9"
        metadata = json.loads((written / "metadata.json").read_text())
        assert metadata["provenance"]["quantization"]["accepted"] is True
    finally:
        shutil.rmtree(written, ignore_errors=True)


@pytest.fixture(scope="module")
def quantized(repository: Path, corpus: Path) -> dict[str, QuantizationReport]:
    """Both models quantized as version 2 (forced: tiny models are not faster in int8)."""
    return {
        "digits": quantize_entry(repository, "digits", repeats=3, force=True),
        "gpt": quantize_entry(repository, "gpt", corpus=[corpus], repeats=3, force=True),
        "gpt-shared": quantize_entry(repository, "gpt-shared", corpus=[corpus], repeats=3, force=True),
    }


def test_classifier_round_trip(repository: Path, quantized: dict[str, QuantizationReport]) -> None:
    report = quantized["digits"].to_dict()
    fp32, int8 = repository / "digits" / "1", repository / "digits" / "2"
    assert report["version"] == "2"
    assert report["metric"] == "test_accuracy"
    assert 0 <= report["int8"] <= 100 and 0 <= report["fp32"] <= 100
    assert [case["name"] for case in report["speed"]] == ["batch 1", "batch 8"]
    assert _ops(int8 / "model.onnx") >= QUANTIZED_NODES and PER_TENSOR_NODE not in _ops(int8 / "model.onnx")
    assert not QUANTIZED_NODES & _ops(fp32 / "model.onnx")
    metadata = json.loads((int8 / "metadata.json").read_text())
    assert metadata["provenance"]["quantization"]["fp32"] == report["fp32"]
    assert metadata["image_classification"] == json.loads((fp32 / "metadata.json").read_text())["image_classification"]
    assert (int8 / "labels.json").read_bytes() == (fp32 / "labels.json").read_bytes()
    # The int8 graph computes nearly the same logits as the fp32 one (random tiny weights give flat
    # logits, so compare their pattern rather than their top-1).
    x = np.random.default_rng(0).standard_normal((8, 1, 16, 16)).astype(np.float32)
    want, got = (ort.InferenceSession(str(d / "model.onnx")).run(None, {"pixel_values": x})[0] for d in (fp32, int8))
    assert np.corrcoef(want.ravel(), got.ravel())[0, 1] > 0.95
    with pytest.raises(ValueError, match="already quantized"):
        quantize_entry(repository, "digits", from_version="2", force=True)


@pytest.mark.parametrize("name", ["gpt", "gpt-shared"])
def test_text_round_trip(repository: Path, quantized: dict[str, QuantizationReport], name: str) -> None:
    report = quantized[name]
    assert report.version == "2"
    assert report.metric == "test_bpc"
    assert math.isfinite(report.fp32) and report.fp32 > 0
    assert abs(report.int8 - report.fp32) < 0.1
    assert [case.name.split(",")[0] for case in report.speed][:2] == ["decode step at position 63"] * 2
    assert all(case.int8_ms > 0 for case in report.speed) and len(report.speed) == 3
    agreement = report.greedy_agreement
    assert agreement is not None and agreement["prompts"] == 100 and agreement["new_tokens"] == 32
    assert 0 <= agreement["identical_sequences"] <= agreement["first_token_agreement"] <= 100
    int8_ops = _ops(repository / name / "2" / "model.onnx")
    assert int8_ops >= QUANTIZED_NODES and PER_TENSOR_NODE not in int8_ops  # activations: per row
    assert ("GroupQueryAttention" in int8_ops) is (name == "gpt-shared")
    metadata = json.loads((repository / name / "2" / "metadata.json").read_text())
    assert metadata["provenance"]["quantization"]["greedy_agreement"] == agreement


def test_the_lm_head_can_stay_fp32(repository: Path, corpus: Path, quantized: dict[str, QuantizationReport]) -> None:
    written = repository / "gpt-shared" / "8"
    try:
        report = quantize_entry(
            repository, "gpt-shared", from_version="1", version=8, corpus=[corpus], repeats=1, force=True,
            keep_output_layer_fp32=True,
        )  # fmt: skip
        assert len(report.excluded_nodes) == 1 and report.excluded_nodes[0].startswith("lm_head")
        graph = onnx.load(str(written / "model.onnx")).graph
        full = onnx.load(str(repository / "gpt-shared" / "2" / "model.onnx")).graph
        count = [sum(n.op_type == "MatMulInteger" for n in g.node) for g in (graph, full)]
        assert count[0] == count[1] - 1  # every product but the output layer's
        head = [n for n in graph.node if n.name.startswith(report.excluded_nodes[0])]
        assert head and {n.op_type for n in head} <= {"MatMul", "Gemm"}
    finally:
        shutil.rmtree(written, ignore_errors=True)
    with pytest.raises(ValueError, match="text-generation models only"):
        quantize_entry(repository, "digits", from_version="1", force=True, keep_output_layer_fp32=True)


def test_int8_results_do_not_depend_on_the_batch(repository: Path, quantized: dict[str, QuantizationReport]) -> None:
    """Per-row activation quantization: a row's logits are the same alone and beside any other rows
    (ONNX Runtime's default, one scale for the whole tensor, would tie them to the batch)."""
    from attnserve_server.model_format.config import ModelConfig
    from attnserve_server.repository import ModelRepository
    from attnserve_server.text.engine import TextEngine

    with ThreadPoolExecutor(max_workers=1) as executor:
        version = ModelRepository(repository).load_version(
            "gpt-shared", repository / "gpt-shared" / "2", ModelConfig(), executor
        )
        generator = version.engine_as(TextEngine).generator
        rng = np.random.default_rng(3)
        rows = []
        for batch in (1, 4, 9):
            cache = generator.new_kv_cache(batch)
            ids = [[7, 8, 9, 10, 11], *(rng.integers(0, 300, 5).tolist() for _ in range(batch - 1))]
            prefill = cache.prefill_many(list(enumerate(ids)))
            step = cache.decode(list(range(batch)), [int(t) for t in prefill.argmax(-1)])
            rows.append((prefill[0], step[0]))
        version.engine.close()
    for prefill, step in rows[1:]:
        np.testing.assert_array_equal(prefill, rows[0][0])
        np.testing.assert_array_equal(step, rows[0][1])


def test_the_server_serves_the_quantized_versions(
    repository: Path, quantized: dict[str, QuantizationReport], server_launcher: Callable[..., Any]
) -> None:
    server = server_launcher(repository)
    with Client(server.address) as client:
        assert client.get_model("digits").default_version == "2"
        assert client.get_model("gpt").default_version == "2"
        image = np.random.default_rng(1).integers(0, 256, (16, 16)).astype(np.uint8)
        assert len(client.classify(image, model="digits", top_k=3)) == 3
        generation = client.generate("ROMEO.", model="gpt", max_new_tokens=8, temperature=0)
        assert 1 <= generation.usage.completion_tokens <= 8


def test_the_quantized_shared_buffer_gpt_serves_streams_and_stops(
    repository: Path, quantized: dict[str, QuantizationReport], server_launcher: Callable[..., Any]
) -> None:
    """The int8 shared_buffer version serves by default, streams the text of the unary call, stops on a
    stop string, and its greedy output is the same alone and batched with other requests."""
    server = server_launcher(repository)
    prompt = "ROMEO. But soft"
    with Client(server.address) as client:
        assert client.get_model("gpt-shared").default_version == "2"
        full = client.generate(prompt, model="gpt-shared", max_new_tokens=24, temperature=0)
        streamed = list(client.generate_stream(prompt, model="gpt-shared", max_new_tokens=24, temperature=0))
        assert "".join(c.text for c in streamed) == full.text
        assert tuple(t for c in streamed for t in c.token_ids) == full.token_ids
        words = [w for w in full.text.split() if len(w) >= 2]
        assert words, full.text
        stop = words[len(words) // 2]
        cut = client.generate(prompt, model="gpt-shared", max_new_tokens=24, temperature=0, stop=[stop])
        assert cut.finish_reason is FinishReason.STOP and stop not in cut.text and full.text.startswith(cut.text)
        others = ["JULIET.", "To be, or not to be", "O", "What light through yonder window breaks"]
        with ThreadPoolExecutor(max_workers=len(others) + 1) as pool:
            futures = [
                pool.submit(client.generate, p, model="gpt-shared", max_new_tokens=24, temperature=0)
                for p in (*others, prompt)
            ]
            batched = [f.result() for f in futures]
    assert batched[-1].token_ids == full.token_ids
