"""A fault inside the real server comes back as INTERNAL, with a request id and nothing of its details.

The fault is a real one, not a mock: ``odd-digits`` is an image classifier whose ONNX graph (built here
with onnx.helper) passes every load check, the batch-of-two test run included, but fails in ONNX
Runtime for an odd batch size (its logits go through a Reshape to ``[4, -1]``, which needs an even
number of rows). A one-image request therefore hits a genuine runtime error in the model call.
"""

from __future__ import annotations

import io
import json
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnx
import pytest
import tritonclient.grpc as triton
from onnx import TensorProto, helper, numpy_helper
from PIL import Image
from tritonclient.utils import InferenceServerException

from attnserve_client import Client, ServerError
from attnserve_client.pb import image_classification_pb2, image_classification_pb2_grpc

MODEL = "odd-digits"
KEY = "x-request-id"
GENERIC = "internal server error (see the server log)"
TIMEOUT = 30.0
# Words of ONNX Runtime's error and of the graph that must stay in the server's log.
LEAKS = ("Reshape", "onnxruntime", "ONNXRuntimeError", "Traceback", "model.onnx", "odd_rows", "/")


def even_batches_only(channels: int, size: int, classes: int) -> onnx.ModelProto:
    """pixel_values (N, C, H, W) -> Flatten -> MatMul -> Reshape [4, -1] -> Reshape [-1, classes] -> logits.

    Valid ONNX with a dynamic batch and the declared output shape (N, classes); ONNX Runtime runs it
    for even N and fails for odd N, since N * classes is then not a multiple of 4 (classes is 10).
    """
    weights = np.random.default_rng(0).standard_normal((channels * size * size, classes)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Flatten", ["pixel_values"], ["flat"], axis=1),
            helper.make_node("MatMul", ["flat", "weights"], ["scores"]),
            helper.make_node("Reshape", ["scores", "odd_rows"], ["fours"], name="odd_rows_fail_here"),
            helper.make_node("Reshape", ["fours", "rows"], ["logits"]),
        ],
        "even-batches-only",
        [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, ["batch", channels, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])],
        initializer=[
            numpy_helper.from_array(weights, "weights"),
            numpy_helper.from_array(np.asarray([4, -1], dtype=np.int64), "odd_rows"),
            numpy_helper.from_array(np.asarray([-1, classes], dtype=np.int64), "rows"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model, full_check=True)
    return model


@pytest.fixture(scope="module")
def odd_server(
    image_repository: Path, tmp_path_factory: pytest.TempPathFactory, session_server_launcher: Callable[..., Any]
) -> Any:
    root = tmp_path_factory.mktemp("odd-models")
    shutil.copytree(image_repository / "tiny-digits", root / MODEL)  # its metadata and labels
    meta = json.loads((root / MODEL / "1" / "metadata.json").read_text())["image_classification"]
    model = even_batches_only(meta["channels"], meta["height"], meta["num_classes"])
    onnx.save(model, str(root / MODEL / "1" / "model.onnx"))
    # It loads: the load checks and the batch-of-2 test run pass. The batch calibration would time a
    # batch of 1 at load and catch the fault there, so it is off: this test needs the fault at run time.
    return session_server_launcher(root, "--image-batch-calibration=false")


@pytest.fixture(scope="module")
def stub(odd_server: Any) -> Iterator[image_classification_pb2_grpc.ImageClassificationServiceStub]:
    with grpc.insecure_channel(odd_server.address) as channel:
        yield image_classification_pb2_grpc.ImageClassificationServiceStub(channel)  # type: ignore[no-untyped-call]


def png(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (16, 16), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def classify(
    stub: image_classification_pb2_grpc.ImageClassificationServiceStub, count: int, **kwargs: Any
) -> image_classification_pb2.ClassifyResponse:
    request = image_classification_pb2.ClassifyRequest(model=MODEL, images=[png(i) for i in range(count)], top_k=3)
    response: image_classification_pb2.ClassifyResponse = stub.Classify(request, timeout=TIMEOUT, **kwargs)
    return response


def test_the_model_works_for_an_even_batch(stub: image_classification_pb2_grpc.ImageClassificationServiceStub) -> None:
    assert len(classify(stub, 2).classifications) == 2  # the premise: the server serves this model


def test_a_runtime_fault_is_internal_with_a_request_id_and_no_details(
    stub: image_classification_pb2_grpc.ImageClassificationServiceStub, odd_server: Any
) -> None:
    with pytest.raises(grpc.RpcError) as info:
        classify(stub, 1, metadata=[(KEY, "odd-batch-1")])
    error: Any = info.value
    assert error.code() == grpc.StatusCode.INTERNAL
    assert error.details() == GENERIC
    assert not any(leak in error.details() for leak in LEAKS)
    assert dict(error.trailing_metadata() or ())[KEY] == "odd-batch-1"
    # The details are in the log, under that id, for whoever runs the server.
    log = odd_server.stderr()
    assert "odd-batch-1" in log and "Reshape" in log
    # One bad call does not take the model down.
    assert len(classify(stub, 4).classifications) == 4


def test_without_an_id_the_server_makes_one(stub: image_classification_pb2_grpc.ImageClassificationServiceStub) -> None:
    with pytest.raises(grpc.RpcError) as info:
        classify(stub, 3)
    error: Any = info.value
    assert error.code() == grpc.StatusCode.INTERNAL and error.details() == GENERIC
    assert re.fullmatch(r"[0-9a-f]{32}", dict(error.trailing_metadata() or ())[KEY])


def test_the_client_raises_server_error_carrying_the_id(odd_server: Any) -> None:
    with Client(odd_server.address) as client:
        before = client.get_model(MODEL).counters
        with pytest.raises(ServerError) as info:
            client.classify(png(0), model=MODEL)
        after = client.get_model(MODEL).counters
    assert info.value.code == grpc.StatusCode.INTERNAL
    assert info.value.details == GENERIC
    assert info.value.request_id and re.fullmatch(r"[0-9a-f]{32}", info.value.request_id)
    assert after.failures - before.failures == 1  # a failure of the model, counted as one


def test_v2_model_infer_is_internal_too(odd_server: Any) -> None:
    x = np.random.default_rng(0).standard_normal((1, 1, 16, 16)).astype(np.float32)
    tensor = triton.InferInput("pixel_values", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    with triton.InferenceServerClient(odd_server.address) as client:
        with pytest.raises(InferenceServerException) as info:
            client.infer(MODEL, [tensor], client_timeout=TIMEOUT)
        assert info.value.status() == "StatusCode.INTERNAL"
        assert info.value.message() == GENERIC
        x2 = np.concatenate([x, x])
        ok = triton.InferInput("pixel_values", list(x2.shape), "FP32")
        ok.set_data_from_numpy(x2)
        assert client.infer(MODEL, [ok], client_timeout=TIMEOUT).as_numpy("logits").shape == (2, 10)


def test_with_batch_calibration_the_fault_refuses_the_load(
    image_repository: Path, tmp_path: Path, server_launcher: Callable[..., Any]
) -> None:
    """The default batch calibration times a batch of 1 at load, so this model fails there, with a reason."""
    root = tmp_path / "models"
    shutil.copytree(image_repository / "tiny-digits", root / MODEL)
    meta = json.loads((root / MODEL / "1" / "metadata.json").read_text())["image_classification"]
    onnx.save(
        even_batches_only(meta["channels"], meta["height"], meta["num_classes"]), str(root / MODEL / "1" / "model.onnx")
    )
    server = server_launcher(root, "--exit-on-error=false", "--strict-readiness=false")
    with triton.InferenceServerClient(server.address) as client:
        (entry,) = client.get_model_repository_index().models
    assert entry.state == "UNAVAILABLE"
    assert "test run of model.onnx failed" in entry.reason
