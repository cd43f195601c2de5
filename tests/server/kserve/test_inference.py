"""The KServe v2 API through tritonclient.grpc, an independent client, against a real server.

The server serves ``tiny-digits`` (a random-weight ViT) and ``tiny-gpt``. Results are checked
against a direct ONNX Runtime run of the same model file.
"""

from __future__ import annotations

import functools
import io
import json
import queue
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as triton
from PIL import Image
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from attnserve_client.pb import image_classification_pb2, image_classification_pb2_grpc

IMAGE_MODEL = "tiny-digits"
TEXT_MODEL = "tiny-gpt"
TIMEOUT = 30.0


@pytest.fixture(scope="module")
def client(image_server_address: str) -> Iterator[triton.InferenceServerClient]:
    with triton.InferenceServerClient(image_server_address) as c:
        yield c


@pytest.fixture(scope="module")
def raw_stub(image_server_address: str) -> Iterator[service_pb2_grpc.GRPCInferenceServiceStub]:
    """tritonclient's own bundled stubs, for what its public API does not send (typed contents)."""
    with grpc.insecure_channel(image_server_address) as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


@pytest.fixture(scope="module")
def image_meta(image_repository: Path) -> dict[str, Any]:
    meta: dict[str, Any] = json.loads((image_repository / IMAGE_MODEL / "1" / "metadata.json").read_text())
    return meta


@pytest.fixture(scope="module")
def reference(image_repository: Path) -> ort.InferenceSession:
    """The same model file, run directly by ONNX Runtime."""
    return ort.InferenceSession(str(image_repository / IMAGE_MODEL / "1" / "model.onnx"))


def pixels(batch: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, 1, 16, 16)).astype(np.float32)


def png(seed: int) -> bytes:
    array = np.random.default_rng(seed).integers(0, 256, (40, 40), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def collect(sink: queue.Queue[Any], result: Any, error: Any) -> None:
    """A tritonclient stream callback that queues what arrives."""
    sink.put((result, error))


def expect_invalid(call: Any, *needles: str) -> None:
    with pytest.raises(InferenceServerException) as info:
        call()
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT", info.value
    for needle in needles:
        assert needle in info.value.message(), info.value.message()


def test_live_ready_and_server_metadata(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready(IMAGE_MODEL)
    assert client.is_model_ready(IMAGE_MODEL, "1")
    assert not client.is_model_ready(IMAGE_MODEL, "7")
    assert not client.is_model_ready("no-such-model")
    meta = client.get_server_metadata()
    assert meta.name == "attnserve"
    assert {"classification", "model_repository", "statistics", "model_configuration"} <= set(meta.extensions)


def test_image_model_metadata_and_config(client: triton.InferenceServerClient, image_meta: dict[str, Any]) -> None:
    ic = image_meta["image_classification"]
    meta = client.get_model_metadata(IMAGE_MODEL)
    assert meta.name == IMAGE_MODEL and list(meta.versions) == ["1"]
    inputs = {t.name: (t.datatype, list(t.shape)) for t in meta.inputs}
    assert inputs == {ic["input_name"]: ("FP32", [-1, 1, 16, 16]), "image": ("BYTES", [-1])}
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.outputs] == [(ic["output_name"], "FP32", [-1, 10])]
    config = client.get_model_config(IMAGE_MODEL).config
    assert config.name == IMAGE_MODEL and config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == 64
    assert [(i.name, list(i.dims)) for i in config.input] == [(ic["input_name"], [1, 16, 16]), ("image", [1])]
    assert [(o.name, list(o.dims)) for o in config.output] == [(ic["output_name"], [10])]
    assert config.version_policy.latest.num_versions == 1


def test_text_model_metadata_and_config(client: triton.InferenceServerClient) -> None:
    meta = client.get_model_metadata(TEXT_MODEL)
    assert [(t.name, t.datatype) for t in meta.inputs] == [("text_input", "BYTES")]
    assert [(t.name, t.datatype) for t in meta.outputs] == [("text_output", "BYTES")]
    config = client.get_model_config(TEXT_MODEL).config
    assert config.model_transaction_policy.decoupled
    assert config.parameters["task"].string_value == "text-generation"


def test_unknown_model_is_not_found(client: triton.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException) as info:
        client.get_model_metadata("no-such-model")
    assert info.value.status() == "StatusCode.NOT_FOUND"


def test_raw_infer_matches_onnx_runtime(
    client: triton.InferenceServerClient, image_meta: dict[str, Any], reference: ort.InferenceSession
) -> None:
    ic = image_meta["image_classification"]
    x = pixels(3)
    tensor = triton.InferInput(ic["input_name"], list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    result = client.infer(IMAGE_MODEL, [tensor], request_id="req-7", client_timeout=TIMEOUT)
    response = result.get_response()
    assert response.id == "req-7" and response.model_version == "1"
    assert len(response.raw_output_contents) == 1  # raw in, raw out
    (expected,) = reference.run([ic["output_name"]], {ic["input_name"]: x})
    np.testing.assert_allclose(result.as_numpy(ic["output_name"]), expected, rtol=1e-5, atol=1e-5)


def test_fp16_raw_pixels_are_accepted(
    client: triton.InferenceServerClient, image_meta: dict[str, Any], reference: ort.InferenceSession
) -> None:
    ic = image_meta["image_classification"]
    x = pixels(2).astype(np.float16)
    tensor = triton.InferInput(ic["input_name"], list(x.shape), "FP16")
    tensor.set_data_from_numpy(x)
    result = client.infer(IMAGE_MODEL, [tensor], client_timeout=TIMEOUT)
    (expected,) = reference.run([ic["output_name"]], {ic["input_name"]: x.astype(np.float32)})
    np.testing.assert_allclose(result.as_numpy(ic["output_name"]), expected, rtol=1e-5, atol=1e-5)


def test_typed_contents_infer_matches_onnx_runtime(
    raw_stub: service_pb2_grpc.GRPCInferenceServiceStub, image_meta: dict[str, Any], reference: ort.InferenceSession
) -> None:
    ic = image_meta["image_classification"]
    x = pixels(2, seed=5)
    request = service_pb2.ModelInferRequest(model_name=IMAGE_MODEL, id="typed")
    tensor = request.inputs.add(name=ic["input_name"], datatype="FP32", shape=list(x.shape))
    tensor.contents.fp32_contents.extend(x.reshape(-1).tolist())
    request.parameters["note"].string_param = "carried"
    response = raw_stub.ModelInfer(request, timeout=TIMEOUT)
    assert response.id == "typed" and not response.raw_output_contents
    (out,) = response.outputs
    assert (out.name, out.datatype, list(out.shape)) == (ic["output_name"], "FP32", [2, 10])
    (expected,) = reference.run([ic["output_name"]], {ic["input_name"]: x})
    np.testing.assert_allclose(np.array(out.contents.fp32_contents).reshape(2, 10), expected, rtol=1e-5, atol=1e-5)


def test_encoded_images_with_classification_top_k(
    client: triton.InferenceServerClient, image_server_address: str
) -> None:
    images = [png(1), png(2)]
    tensor = triton.InferInput("image", [2], "BYTES")
    tensor.set_data_from_numpy(np.array(images, dtype=object))
    top = triton.InferRequestedOutput("logits", class_count=3)
    result = client.infer(IMAGE_MODEL, [tensor], outputs=[top], client_timeout=TIMEOUT)
    entries = result.as_numpy("logits")
    assert entries.shape == (2, 3)
    # The typed Classify RPC ranks the same classes in the same order for the same bytes.
    with grpc.insecure_channel(image_server_address) as channel:
        classify = image_classification_pb2_grpc.ImageClassificationServiceStub(channel).Classify(
            image_classification_pb2.ClassifyRequest(model=IMAGE_MODEL, images=images, top_k=3), timeout=TIMEOUT
        )
    for row, typed in zip(entries, classify.classifications, strict=True):
        parsed = [e.decode().split(":") for e in row]
        scores = [float(score) for score, _, _ in parsed]
        assert scores == sorted(scores, reverse=True)
        assert [(int(index), label) for _, index, label in parsed] == [(p.index, p.label) for p in typed.predictions]
    # Without the classification parameter the same request returns the logits, whose order agrees.
    logits = client.infer(IMAGE_MODEL, [tensor], client_timeout=TIMEOUT).as_numpy("logits")
    assert logits.shape == (2, 10)
    for row, top_row in zip(logits, entries, strict=True):
        assert [int(e.decode().split(":")[1]) for e in top_row] == list(np.argsort(-row, kind="stable")[:3])
        assert float(top_row[0].decode().split(":")[0]) == pytest.approx(float(row.max()), abs=1e-5)


def test_streamed_generation_marks_the_final_response(client: triton.InferenceServerClient) -> None:
    for empty_final in (False, True):
        responses: queue.Queue[Any] = queue.Queue()
        client.start_stream(callback=functools.partial(collect, responses))
        try:
            prompt = triton.InferInput("text_input", [1], "BYTES")
            prompt.set_data_from_numpy(np.array([b"ROMEO."], dtype=object))
            # Enough tokens that the stream cannot end as one message: a consumer that falls behind gets
            # the tokens queued for it joined (under load, all 12 of a short run came as one).
            parameters = {"max_tokens": 48, "temperature": 0.0, "seed": 1}
            client.async_stream_infer(
                TEXT_MODEL,
                [prompt],
                request_id="gen",
                parameters=parameters,
                enable_empty_final_response=empty_final,
            )
            texts, finals = [], []
            while True:
                result, error = responses.get(timeout=TIMEOUT)
                assert error is None, error
                response = result.get_response()
                assert response.id == "gen"
                final = response.parameters["triton_final_response"].bool_param
                finals.append(final)
                if result.as_numpy("text_output") is not None:
                    texts.append(result.as_numpy("text_output")[0].decode())
                elif not empty_final:
                    pytest.fail("only the empty final response may come without text_output")
                if final:
                    break
        finally:
            client.stop_stream()
        assert finals[-1] and not any(finals[:-1])
        assert len(finals) >= 2  # chunks of tokens, not one response at the end
        # The unary path returns the same greedy completion whole.
        whole = client.infer(TEXT_MODEL, [prompt], parameters=parameters, client_timeout=TIMEOUT)
        assert "".join(texts) == whole.as_numpy("text_output")[0].decode()
        assert "".join(texts)


def test_stream_reports_a_bad_request_and_goes_on(client: triton.InferenceServerClient) -> None:
    responses: queue.Queue[Any] = queue.Queue()
    client.start_stream(callback=functools.partial(collect, responses))
    try:
        bad = triton.InferInput("prompt", [1], "BYTES")
        bad.set_data_from_numpy(np.array([b"x"], dtype=object))
        client.async_stream_infer(TEXT_MODEL, [bad], request_id="bad")
        _, error = responses.get(timeout=TIMEOUT)
        assert error is not None and "unknown input 'prompt'" in str(error)
        good = triton.InferInput("text_input", [1], "BYTES")
        good.set_data_from_numpy(np.array([b"To be"], dtype=object))
        client.async_stream_infer(TEXT_MODEL, [good], request_id="good", parameters={"max_tokens": 2})
        while True:
            result, error = responses.get(timeout=TIMEOUT)
            assert error is None
            if result.get_response().parameters["triton_final_response"].bool_param:
                break
    finally:
        client.stop_stream()


def test_statistics_count_inferences(client: triton.InferenceServerClient, image_meta: dict[str, Any]) -> None:
    def stats() -> Any:
        (entry,) = client.get_inference_statistics(IMAGE_MODEL).model_stats
        return entry

    before = stats()
    ic = image_meta["image_classification"]
    x = pixels(4)
    tensor = triton.InferInput(ic["input_name"], list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    client.infer(IMAGE_MODEL, [tensor], client_timeout=TIMEOUT)
    wrong = triton.InferInput(ic["input_name"], [1, 1, 8, 8], "FP32")
    wrong.set_data_from_numpy(np.zeros((1, 1, 8, 8), dtype=np.float32))
    with pytest.raises(InferenceServerException):
        client.infer(IMAGE_MODEL, [wrong], client_timeout=TIMEOUT)
    after = stats()
    assert (after.name, after.version) == (IMAGE_MODEL, "1")
    assert after.inference_count - before.inference_count == 4
    assert after.execution_count - before.execution_count == 1
    s, b = after.inference_stats, before.inference_stats
    assert s.success.count - b.success.count == 1 and s.success.ns > b.success.ns
    assert s.fail.count - b.fail.count == 1
    assert s.queue.count - b.queue.count == 1
    assert s.compute_infer.count - b.compute_infer.count == 1 and s.compute_infer.ns > b.compute_infer.ns
    assert after.last_inference > 0
    every = {(m.name, m.version) for m in client.get_inference_statistics().model_stats}
    assert {(IMAGE_MODEL, "1"), (TEXT_MODEL, "1")} <= every


def test_statistics_count_the_typed_api_too(client: triton.InferenceServerClient, image_server_address: str) -> None:
    """ModelStatistics is per model version, whichever API the inference came through."""
    from attnserve_client import Client
    from attnserve_client.errors import InvalidArgumentError

    def stats(model: str) -> Any:
        (entry,) = client.get_inference_statistics(model).model_stats
        return entry

    image_before, text_before = stats(IMAGE_MODEL), stats(TEXT_MODEL)
    with Client(image_server_address, timeout=TIMEOUT) as typed:
        typed.classify_batch([png(1), png(2), png(3)], model=IMAGE_MODEL)
        with pytest.raises(InvalidArgumentError):
            typed.classify(b"not an image", model=IMAGE_MODEL)
        typed.generate("To be", model=TEXT_MODEL, max_new_tokens=3)
        list(typed.generate_stream("To be", model=TEXT_MODEL, max_new_tokens=3))
    image, text = stats(IMAGE_MODEL), stats(TEXT_MODEL)
    assert image.inference_count - image_before.inference_count == 3
    assert image.inference_stats.success.count - image_before.inference_stats.success.count == 1
    assert image.inference_stats.fail.count - image_before.inference_stats.fail.count == 1
    assert image.inference_stats.compute_infer.ns > image_before.inference_stats.compute_infer.ns
    assert text.inference_stats.success.count - text_before.inference_stats.success.count == 2
    assert text.inference_count - text_before.inference_count == 2


def _infer_raw(stub: service_pb2_grpc.GRPCInferenceServiceStub, request: service_pb2.ModelInferRequest) -> None:
    stub.ModelInfer(request, timeout=TIMEOUT)


def _pixel_request(name: str, datatype: str, shape: list[int], raw: bytes | None) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name=IMAGE_MODEL)
    request.inputs.add(name=name, datatype=datatype, shape=shape)
    if raw is not None:
        request.raw_input_contents.append(raw)
    return request


@pytest.mark.parametrize(
    ("build", "needles"),
    [
        # shape does not fit the model
        (lambda n: _pixel_request(n, "FP32", [1, 1, 8, 8], b"\0" * 256), ["{input}", "[-1, 1, 16, 16]"]),
        # raw size does not fit the shape
        (lambda n: _pixel_request(n, "FP32", [1, 1, 16, 16], b"\0" * 10), ["raw contents are 10 bytes", "1024"]),
        # wrong datatype for the model
        (lambda n: _pixel_request(n, "INT64", [1, 1, 16, 16], b"\0" * 2048), ["must be FP32", "INT64"]),
        # unknown datatype
        (lambda n: _pixel_request(n, "FP8", [1, 1, 16, 16], b"\0" * 256), ["unknown datatype 'FP8'"]),
        # unknown input
        (lambda n: _pixel_request("pixels", "FP32", [1], b"\0" * 4), ["unknown input 'pixels'"]),
        # a negative dimension
        (lambda n: _pixel_request(n, "FP32", [-1, 1, 16, 16], b""), ["negative dimension"]),
        # typed contents with the wrong element count
        (lambda n: _typed(n, [1.0] * 3), ["fp32_contents holds 3 elements", "256"]),
        # FP16 has no typed contents
        (lambda n: _pixel_request(n, "FP16", [1, 1, 16, 16], None), ["FP16 has no typed contents"]),
        # BYTES whose length prefix overruns
        (lambda n: _pixel_request("image", "BYTES", [1], struct.pack("<I", 99) + b"abc"), ["claims 99 bytes"]),
        # BYTES element count differs from the shape
        (lambda n: _pixel_request("image", "BYTES", [2], struct.pack("<I", 1) + b"a"), ["hold 1 elements", "2"]),
    ],
    ids=[
        "shape",
        "raw-size",
        "datatype",
        "unknown-datatype",
        "unknown-input",
        "negative-dim",
        "typed-count",
        "fp16-typed",
        "bytes-overrun",
        "bytes-count",
    ],
)
def test_invalid_tensors_are_invalid_argument_naming_the_tensor(
    raw_stub: service_pb2_grpc.GRPCInferenceServiceStub,
    image_meta: dict[str, Any],
    build: Any,
    needles: list[str],
) -> None:
    name = image_meta["image_classification"]["input_name"]
    with pytest.raises(grpc.RpcError) as info:
        _infer_raw(raw_stub, build(name))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    message = info.value.details() or ""
    for needle in needles:
        assert needle.format(input=name) in message, message
    # The server keeps serving.
    assert raw_stub.ServerLive(service_pb2.ServerLiveRequest(), timeout=TIMEOUT).live


def _typed(name: str, values: list[float]) -> service_pb2.ModelInferRequest:
    request = _pixel_request(name, "FP32", [1, 1, 16, 16], None)
    request.inputs[0].contents.fp32_contents.extend(values)
    return request


def test_missing_input_two_inputs_and_unknown_output(
    client: triton.InferenceServerClient, image_meta: dict[str, Any]
) -> None:
    ic = image_meta["image_classification"]
    x = pixels(1)
    tensor = triton.InferInput(ic["input_name"], list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    image = triton.InferInput("image", [1], "BYTES")
    image.set_data_from_numpy(np.array([png(0)], dtype=object))
    expect_invalid(lambda: client.infer(IMAGE_MODEL, [tensor, image]), "exactly one", "got 2")
    expect_invalid(lambda: client.infer(IMAGE_MODEL, []), "exactly one", "got 0")
    expect_invalid(
        lambda: client.infer(IMAGE_MODEL, [tensor], outputs=[triton.InferRequestedOutput("probs")]),
        "unknown requested output 'probs'",
    )
    expect_invalid(
        lambda: client.infer(IMAGE_MODEL, [tensor], outputs=[triton.InferRequestedOutput("logits", class_count=11)]),
        "classification must be in [1, 10]",
    )
    text = triton.InferInput("text_input", [1], "BYTES")
    text.set_data_from_numpy(np.array([b"hi"], dtype=object))
    expect_invalid(lambda: client.infer(TEXT_MODEL, []), "missing input 'text_input'")
    expect_invalid(
        lambda: client.infer(TEXT_MODEL, [text], parameters={"max_tokens": "many"}), "'max_tokens' must be an integer"
    )
    not_an_image = triton.InferInput("image", [1], "BYTES")
    not_an_image.set_data_from_numpy(np.array([b"not an image"], dtype=object))
    expect_invalid(lambda: client.infer(IMAGE_MODEL, [not_an_image]), "image 0")


# Every v2 datatype, as numpy builds it from the same pixels.
DATATYPES = {
    "FP32": np.float32, "FP16": np.float16, "FP64": np.float64,
    "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64,
    "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
    "BOOL": np.bool_, "BYTES": object,
}  # fmt: skip
PIXEL_DATATYPES = ("FP32", "FP16", "FP64")


def _as(datatype: str, x: np.ndarray) -> np.ndarray:
    if datatype == "BYTES":
        return np.array([str(v).encode() for v in x.reshape(-1)], dtype=object).reshape(x.shape)
    return x.astype(DATATYPES[datatype])


@pytest.mark.parametrize("datatype", list(DATATYPES))
def test_every_datatype_through_model_infer(
    client: triton.InferenceServerClient,
    image_meta: dict[str, Any],
    reference: ort.InferenceSession,
    datatype: str,
) -> None:
    """The pixel input takes FP32, FP16 and FP64 (converted to the graph's FP32); every other datatype
    is INVALID_ARGUMENT naming the input and the datatype. The encoded-image input takes BYTES only."""
    ic = image_meta["image_classification"]
    x = _as(datatype, pixels(2, seed=3) * 4)  # integers of a few units, so the integer types differ from 0
    tensor = triton.InferInput(ic["input_name"], list(x.shape), datatype)
    tensor.set_data_from_numpy(x)
    if datatype in PIXEL_DATATYPES:
        result = client.infer(IMAGE_MODEL, [tensor], client_timeout=TIMEOUT)
        (expected,) = reference.run([ic["output_name"]], {ic["input_name"]: x.astype(np.float32)})
        np.testing.assert_allclose(result.as_numpy(ic["output_name"]), expected, rtol=1e-5, atol=1e-5)
    else:
        expect_invalid(lambda: client.infer(IMAGE_MODEL, [tensor]), repr(ic["input_name"]), repr(datatype))
    if datatype != "BYTES":
        image = triton.InferInput("image", [2], datatype)
        image.set_data_from_numpy(x.reshape(2, -1)[:, 0])
        expect_invalid(lambda: client.infer(IMAGE_MODEL, [image]), "'image' must be BYTES", repr(datatype))
    assert client.is_server_ready()


def test_malformed_request_is_invalid_argument(image_server_address: str) -> None:
    with grpc.insecure_channel(image_server_address) as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        with pytest.raises(grpc.RpcError) as info:
            call(b"\x0a\x05\xff\xfe\xfd\xfc\xfb", timeout=TIMEOUT)  # model_name with invalid UTF-8
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_unimplemented_rpcs_answer_unimplemented(raw_stub: service_pb2_grpc.GRPCInferenceServiceStub) -> None:
    with pytest.raises(grpc.RpcError) as info:
        raw_stub.SystemSharedMemoryStatus(service_pb2.SystemSharedMemoryStatusRequest(), timeout=TIMEOUT)
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
