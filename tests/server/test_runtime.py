from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from attnserve_server.runtime import OrtSession, RuntimeOptions, available_cpus, cgroup_cpu_limit, session_options


def test_thread_count_defaults_to_available_cpus() -> None:
    assert available_cpus() >= 1
    assert session_options(RuntimeOptions()).intra_op_num_threads == available_cpus()
    assert session_options(RuntimeOptions(intra_op_threads=3)).intra_op_num_threads == 3


def test_graph_optimisation_and_spinning_come_from_the_options() -> None:
    import onnxruntime as ort

    default = session_options(RuntimeOptions())
    assert default.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert default.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    tuned = session_options(RuntimeOptions(graph_optimization="basic", allow_spinning=True))
    assert tuned.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    assert tuned.get_session_config_entry("session.intra_op.allow_spinning") == "1"


def test_settings_build_the_runtime_options() -> None:
    from attnserve_server.settings import load_settings

    settings = load_settings(["--intra-op-threads", "2", "--graph-optimization", "extended", "--allow-spinning"])
    assert settings.runtime_options() == RuntimeOptions(
        intra_op_threads=2, graph_optimization="extended", allow_spinning=True
    )
    assert load_settings(["--allow-spinning=false"]).runtime_options().allow_spinning is False
    assert load_settings([]).runtime_options() == RuntimeOptions()


def test_session_runs_the_exported_model_with_its_cache_updated_in_place(tiny_repository: Path) -> None:
    version_dir = tiny_repository / "tiny-gpt" / "1"
    text = json.loads((version_dir / "metadata.json").read_text())["text_generation"]
    assert text["kv_cache_layout"] == "shared_buffer"
    session = OrtSession(version_dir / "model.onnx", RuntimeOptions(intra_op_threads=1))
    assert "input_ids" in session.input_names
    assert "logits" in session.output_names
    capacity = 8
    feed: dict[str, np.ndarray] = {
        "input_ids": np.array([[1, 2, 3]], dtype=np.int64),
        "position_ids": np.arange(3, dtype=np.int64)[None, :],
        "seqlens_k": np.array([2], dtype=np.int32),
        "total_sequence_length": np.array(3, dtype=np.int32),
    }
    in_place = {}
    for name in session.input_names:
        if name.startswith("past_key_values"):
            feed[name] = np.zeros((1, text["num_heads"], capacity, text["head_dim"]), dtype=np.float32)
            in_place[name] = name.replace("past_key_values", "present")
    (logits,) = session.run_in_place(["logits"], feed, in_place)
    assert logits.shape == (1, 1, text["vocab_size"])
    for name in in_place:
        buffer = feed[name]
        assert np.abs(buffer[:, :, :3]).sum() > 0, f"{name}: the three new positions were not written in place"
        assert not buffer[:, :, 3:].any(), f"{name}: positions past the sequence were touched"


def test_cgroup_v2_quota(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cgroup_cpu_limit(tmp_path) == 1.5
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_limit(tmp_path) is None


def test_cgroup_v1_quota(tmp_path: Path) -> None:
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("200000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_limit(tmp_path) == 2.0
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert cgroup_cpu_limit(tmp_path) is None


def test_no_cgroup(tmp_path: Path) -> None:
    assert cgroup_cpu_limit(tmp_path) is None


# Fake cgroup trees: (files relative to the root, the CPUs their quota allows; None = no quota).
CGROUPS = {
    "v2-half-cpu": ({"cpu.max": "50000 100000\n"}, 1),
    "v2-one-and-a-half": ({"cpu.max": "150000 100000\n"}, 2),
    "v2-unlimited": ({"cpu.max": "max 100000\n"}, None),
    "v1-one-cpu": ({"cpu/cpu.cfs_quota_us": "100000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 1),
    "v1-unlimited": ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
    "no-cgroup": ({}, None),
}

# Counts the threads that one ONNX Runtime session adds to a fresh process whose cgroup root is argv[2].
THREAD_PROBE = """
import os, pathlib, sys
from attnserve_server import runtime
runtime.CGROUP_ROOT = pathlib.Path(sys.argv[2])
before = len(os.listdir("/proc/self/task"))
session = runtime.OrtSession(pathlib.Path(sys.argv[1]))
print(len(os.listdir("/proc/self/task")) - before)
"""


def fake_cgroup(root: Path, files: dict[str, str]) -> Path:
    for relative, text in files.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text(text)
    return root


def expected_cpus(quota_cpus: int | None) -> int:
    cpus = len(os.sched_getaffinity(0))
    return cpus if quota_cpus is None else min(cpus, quota_cpus)


@pytest.mark.parametrize("layout", CGROUPS, ids=list(CGROUPS))
def test_available_cpus_under_a_simulated_quota(tmp_path: Path, layout: str) -> None:
    files, quota_cpus = CGROUPS[layout]
    assert available_cpus(fake_cgroup(tmp_path, files)) == expected_cpus(quota_cpus)


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="counts threads through Linux's /proc")
@pytest.mark.parametrize("layout", ["v2-half-cpu", "v1-one-cpu", "v2-one-and-a-half", "no-cgroup"])
def test_thread_count_under_a_simulated_quota(tiny_repository: Path, tmp_path: Path, layout: str) -> None:
    """A session starts one intra-op worker per allowed CPU beyond the caller's own thread, so a 1-CPU
    container gets none, whatever the host's core count."""
    files, quota_cpus = CGROUPS[layout]
    root = fake_cgroup(tmp_path / "cgroup", files)
    model = tiny_repository / "tiny-gpt" / "1" / "model.onnx"
    result = subprocess.run(
        [sys.executable, "-c", THREAD_PROBE, str(model), str(root)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    assert int(result.stdout.strip()) == expected_cpus(quota_cpus) - 1
