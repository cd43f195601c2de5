from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from attnserve_server.runtime import RuntimeSession, available_cpus, cgroup_cpu_limit, session_options


def test_thread_count_defaults_to_available_cpus() -> None:
    assert available_cpus() >= 1
    assert session_options(0).intra_op_num_threads == available_cpus()
    assert session_options(3).intra_op_num_threads == 3


def test_session_runs_the_exported_model_with_its_cache_updated_in_place(tiny_repository: Path) -> None:
    version_dir = tiny_repository / "tiny-gpt" / "1"
    text = json.loads((version_dir / "metadata.json").read_text())["text_generation"]
    assert text["kv_cache_layout"] == "shared_buffer"
    session = RuntimeSession(version_dir / "model.onnx", intra_op_threads=1)
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
