"""The runtime's two backends, in process: the parity rule itself, which models may choose which
backend and precision, the OpenVINO session's view of a graph, and its telemetry staying off."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from attnserve_server.errors import ModelLoadError
from attnserve_server.parity import TOP1_MARGIN, compare_logits
from attnserve_server.repository import ModelRepository
from attnserve_server.runtime import RuntimeOptions, open_runtime
from attnserve_server.settings import ServerSettings, load_settings

REPO = Path(__file__).resolve().parents[2]
DIGITS_VIT = REPO / "models" / "digits-vit" / "1" / "model.onnx"
needs_openvino = pytest.mark.skipif(
    importlib.util.find_spec("openvino") is None and not os.environ.get("CI"),
    reason="attnserve-server[openvino] is not installed; `make test` installs it",
)


# --- the parity rule ---------------------------------------------------------------------


def test_parity_passes_within_the_tolerance_relative_to_the_logits_scale() -> None:
    reference = np.array([[4.0, 1.0, 0.0], [0.0, 2.0, -1.0]])
    report = compare_logits(reference, reference + 0.15, tolerance=0.05)  # 0.15 / 4 = 0.0375
    assert report.passed and report.max_abs_diff == pytest.approx(0.15) and report.scale == 4.0
    assert not compare_logits(reference, reference + 0.25, tolerance=0.05).passed  # 0.25 / 4 > 0.05


def test_small_logits_are_measured_against_a_scale_of_at_least_one() -> None:
    reference = np.array([[0.01, 0.0]])
    assert compare_logits(reference, reference + 0.04, tolerance=0.05).passed
    assert not compare_logits(reference, reference + 0.06, tolerance=0.05).passed


def test_a_top1_swap_fails_only_where_the_reference_margin_is_above_the_rule() -> None:
    clear = np.array([[1.0, 1.0 + 2 * TOP1_MARGIN, 0.0]])  # top-1 is class 1 by 0.1
    near_tie = np.array([[1.0, 1.0 + TOP1_MARGIN / 2, 0.0]])  # by 0.025: a near tie
    swapped_clear = np.array([[1.0 + 2 * TOP1_MARGIN, 1.0, 0.0]])
    swapped_tie = np.array([[1.0 + TOP1_MARGIN / 2, 1.0, 0.0]])
    failed = compare_logits(clear, swapped_clear, tolerance=1.0)  # the values are within tolerance
    assert failed.decided == 1 and failed.top1_mismatches == 1 and not failed.passed
    tied = compare_logits(near_tie, swapped_tie, tolerance=1.0)
    assert tied.decided == 0 and tied.top1_mismatches == 0 and tied.passed


def test_parity_refuses_logits_of_another_shape() -> None:
    with pytest.raises(ValueError, match="shape"):
        compare_logits(np.zeros((2, 3)), np.zeros((2, 4)), tolerance=1.0)


# --- which models may choose what ----------------------------------------------------------


def load(root: Path, **settings: object) -> ModelRepository:
    repository = ModelRepository(root, settings=ServerSettings(model_repository=root, **settings))  # type: ignore[arg-type]
    with ThreadPoolExecutor(max_workers=1) as executor:
        for model_dir in repository.discover():
            repository.load_model(model_dir, executor)
    return repository


def with_config(source: Path, root: Path, config: str) -> Path:
    shutil.copytree(source, root / source.name)
    (root / source.name / "config.yaml").write_text(config)
    return root


def test_text_models_refuse_the_openvino_backend(tiny_repository: Path, tmp_path: Path) -> None:
    root = with_config(tiny_repository / "tiny-gpt", tmp_path, "backend: openvino\n")
    with pytest.raises(ModelLoadError, match="text-generation models run on onnxruntime only"):
        load(root)


def test_the_server_wide_image_backend_leaves_text_models_on_onnx_runtime(tiny_repository: Path) -> None:
    model = load(tiny_repository, image_backend="openvino").get("tiny-gpt")
    assert "text-generation" in model.task


def test_bf16_on_onnx_runtime_is_refused(image_repository: Path, tmp_path: Path) -> None:
    root = with_config(image_repository / "tiny-digits", tmp_path, "precision: bf16\n")
    with pytest.raises(ModelLoadError, match="precision bf16 on onnxruntime, which computes in f32 only"):
        load(root)


def test_config_yaml_refuses_an_unknown_backend(image_repository: Path, tmp_path: Path) -> None:
    root = with_config(image_repository / "tiny-digits", tmp_path, "backend: tensorrt\n")
    with pytest.raises(ModelLoadError, match="backend"):
        load(root)


def test_backend_flags() -> None:
    settings = load_settings(["--image-backend", "openvino", "--image-precision", "f32"])
    assert (settings.image_backend, settings.image_precision) == ("openvino", "f32")
    assert (load_settings([]).image_backend, load_settings([]).image_precision) == ("onnxruntime", "bf16")


# --- the OpenVINO session ------------------------------------------------------------------


@needs_openvino
def test_openvino_session_reads_the_graph_as_onnx_runtime_does() -> None:
    ort = open_runtime(DIGITS_VIT, RuntimeOptions(intra_op_threads=1))
    ov = open_runtime(DIGITS_VIT, RuntimeOptions(backend="openvino", precision="f32", intra_op_threads=1))
    assert (ov.backend, ov.precision, ov.threads) == ("openvino", "f32", 1)
    assert ov.input_names == ort.input_names and ov.output_names == ort.output_names
    assert ov.input_types == ort.input_types and ov.output_types == ort.output_types
    for name in ort.input_names:  # ONNX Runtime names the dynamic batch dimension, OpenVINO leaves it None
        assert ov.input_shapes[name][0] is None and ov.input_shapes[name][1:] == ort.input_shapes[name][1:]
    x = np.random.default_rng(1).standard_normal((3, 1, 16, 16)).astype(np.float32)
    (expected,) = ort.run(["logits"], {"pixel_values": x})
    (got,) = ov.run(["logits"], {"pixel_values": x})
    np.testing.assert_allclose(got, expected, atol=1e-4)


@needs_openvino
def test_openvino_refuses_a_file_it_cannot_read_without_naming_its_path(tmp_path: Path) -> None:
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"not an onnx model")
    with pytest.raises(RuntimeError, match=r"OpenVINO cannot load model\.onnx") as info:
        open_runtime(bad, RuntimeOptions(backend="openvino"))
    assert str(tmp_path) not in str(info.value)


TELEMETRY_PROBE = """
import pathlib, sys
import numpy as np
from attnserve_server.runtime import RuntimeOptions, open_runtime
session = open_runtime(pathlib.Path(sys.argv[1]), RuntimeOptions(backend="openvino"))
session.run(["logits"], {"pixel_values": np.zeros((2, 1, 16, 16), np.float32)})
from openvino_telemetry.main import Telemetry  # the class every OpenVINO tool sends through
print("telemetry instance:", Telemetry._SingletonMetaClass__single_instance)
"""


@needs_openvino
def test_openvino_sends_no_telemetry(tmp_path: Path) -> None:
    """Loading and running a model never creates OpenVINO's telemetry sender (a singleton), nor its
    consent file in the home directory."""
    pytest.importorskip("openvino_telemetry")
    result = subprocess.run(
        [sys.executable, "-c", TELEMETRY_PROBE, str(DIGITS_VIT)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        env={**os.environ, "HOME": str(tmp_path)},
    )
    assert "telemetry instance: None" in result.stdout, result.stdout + result.stderr
    assert not (tmp_path / "intel").exists()


# Opens an OpenVINO session in a fresh process whose cgroup root is argv[2]; prints its thread count.
THREAD_PROBE = """
import pathlib, sys
from attnserve_server import runtime
runtime.CGROUP_ROOT = pathlib.Path(sys.argv[2])
session = runtime.open_runtime(pathlib.Path(sys.argv[1]), runtime.RuntimeOptions(backend="openvino"))
print(session.threads)
"""


@needs_openvino
@pytest.mark.parametrize(("quota", "cpus"), [("50000 100000\n", 1), ("max 100000\n", None)])
def test_openvino_threads_follow_the_cgroup_quota(tmp_path: Path, quota: str, cpus: int | None) -> None:
    """The CPU plugin's own INFERENCE_NUM_THREADS, under a simulated cgroup v2 quota."""
    (tmp_path / "cpu.max").write_text(quota)
    result = subprocess.run(
        [sys.executable, "-c", THREAD_PROBE, str(DIGITS_VIT), str(tmp_path)],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    expected = len(os.sched_getaffinity(0)) if cpus is None else min(cpus, len(os.sched_getaffinity(0)))
    assert int(result.stdout.strip().splitlines()[-1]) == expected
