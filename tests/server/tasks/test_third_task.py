"""A third task proves the task table: a test-only package (``vector_scaling``) and one row.

The server loads the row with ``--task-plugin``; the model is listed, described, shows its
tensors through the v2 API and serves a v2 request, all through the real server.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from attnserve_client import Client

triton = pytest.importorskip("tritonclient.grpc")

HERE = Path(__file__).parent
MODEL = "scaler"
WIDTH = 4


def write_scaler(root: Path) -> Path:
    """``root/scaler/1``: y = 2 * x over float32 (batch, 4), and its metadata.json."""
    version = root / MODEL / "1"
    version.mkdir(parents=True)
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "two"], ["y"])],
        "scale",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", WIDTH])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", WIDTH])],
        [helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, version / "model.onnx")
    metadata = {
        "format_version": 1,
        "task": "vector-scaling",
        "description": "doubles its input",
        "model_file": "model.onnx",
        "vector_scaling": {"input_name": "x", "output_name": "y", "width": WIDTH},
    }
    (version / "metadata.json").write_text(json.dumps(metadata))
    return root


def test_a_plugin_task_loads_is_listed_and_serves(
    tmp_path: Path, tiny_repository: Path, server_launcher: Callable[..., Any]
) -> None:
    root = write_scaler(tmp_path / "models")
    server = server_launcher(root, "--task-plugin", "vector_scaling:TASK", env={"PYTHONPATH": str(HERE)})
    with Client(server.address, timeout=30) as client:
        (info,) = client.models()
        assert (info.name, info.task, info.versions) == (MODEL, "vector-scaling", ("1",))
        assert client.get_model(MODEL).description == "doubles its input"

    v2 = triton.InferenceServerClient(server.address)
    meta = v2.get_model_metadata(MODEL, as_json=True)
    assert [(t["name"], t["datatype"], t["shape"]) for t in meta["inputs"]] == [("x", "FP32", ["-1", str(WIDTH)])]
    x = np.arange(12, dtype=np.float32).reshape(3, WIDTH)
    tensor = triton.InferInput("x", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    result = v2.infer(MODEL, [tensor], client_timeout=30)
    np.testing.assert_array_equal(result.as_numpy("y"), 2 * x)
    (stats,) = v2.get_inference_statistics(MODEL).model_stats
    assert stats.inference_count == 3
    wrong = triton.InferInput("x", [1, 3], "FP32")
    wrong.set_data_from_numpy(np.zeros((1, 3), dtype=np.float32))
    with pytest.raises(triton.InferenceServerException, match="shape"):
        v2.infer(MODEL, [wrong], client_timeout=30)
    assert v2.is_server_live()
    v2.close()


def test_an_unknown_task_plugin_stops_the_server(tmp_path: Path, server_launcher: Callable[..., Any]) -> None:
    root = write_scaler(tmp_path / "models")
    server = server_launcher(root, "--task-plugin", "no_such_module:TASK", wait=False)
    assert server.process.wait(60) != 0
    assert "cannot import task plugin 'no_such_module:TASK'" in server.stderr()


def test_a_model_of_an_unserved_task_names_the_served_ones(tmp_path: Path, server_launcher: Callable[..., Any]) -> None:
    root = write_scaler(tmp_path / "models")
    server = server_launcher(root, "--no-exit-on-error", "--no-strict-readiness")
    with Client(server.address, timeout=30) as client:
        assert client.models() == []
    served = "image-classification, text-generation, text2text-generation"
    assert f"unknown task 'vector-scaling' (this server serves: {served})" in server.stderr()
