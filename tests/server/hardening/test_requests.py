"""Issue 12's request regressions, each against a real server: no client input stalls it or gets
INTERNAL/UNKNOWN, error messages stay short, and unparseable or unoffered calls log one line."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc

from attnserve_client.pb import models_pb2, models_pb2_grpc, text_generation_pb2, text_generation_pb2_grpc

TEXT_MODEL = "tiny-gpt"
IMAGE_MODEL = "tiny-digits"


@pytest.fixture(scope="module")
def channel(image_server_address: str) -> Iterator[grpc.Channel]:
    options = [("grpc.max_send_message_length", 64 * 1024 * 1024)]
    with grpc.insecure_channel(image_server_address, options=options) as channel:
        yield channel


@pytest.fixture(scope="module")
def v2(channel: grpc.Channel) -> service_pb2_grpc.GRPCInferenceServiceStub:
    return service_pb2_grpc.GRPCInferenceServiceStub(channel)


def _code(call: object) -> grpc.StatusCode:
    assert isinstance(call, grpc.RpcError)
    return call.code()  # type: ignore[no-any-return,attr-defined]


def test_a_huge_prompt_is_refused_before_tokenizing_and_health_keeps_answering(channel: grpc.Channel) -> None:
    """At 854ceee a 20 MB prompt blocked health checks for 29 s and grew RSS by 1.7 GB."""
    stub = text_generation_pb2_grpc.TextGenerationServiceStub(channel)
    health = health_pb2_grpc.HealthStub(channel)
    prompt = "To be, or not to be " * 1_000_000  # 20 MB
    outcome: dict[str, object] = {}

    def generate() -> None:
        try:
            stub.Generate(text_generation_pb2.GenerateRequest(model=TEXT_MODEL, prompt=prompt), timeout=20)
        except grpc.RpcError as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=generate)
    thread.start()
    answered = 0
    while thread.is_alive():
        # A deadline of 2 s: at 854ceee the tokenizer held the GIL, and these calls stalled with it.
        health.Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
        answered += 1
        time.sleep(0.05)
    thread.join()
    error = outcome["error"]
    assert _code(error) == grpc.StatusCode.INVALID_ARGUMENT
    details = error.details()  # type: ignore[attr-defined]
    assert "shorten it" in details and "To be" not in details and len(details) < 300


def test_a_prompt_under_the_byte_cap_but_over_the_context_is_still_refused(channel: grpc.Channel) -> None:
    stub = text_generation_pb2_grpc.TextGenerationServiceStub(channel)
    info = models_pb2_grpc.ModelServiceStub(channel).GetModel(models_pb2.GetModelRequest(name=TEXT_MODEL), timeout=10)
    prompt = "ab " * info.text_generation.context_length  # many tokens, few bytes each
    with pytest.raises(grpc.RpcError) as caught:
        stub.Generate(text_generation_pb2.GenerateRequest(model=TEXT_MODEL, prompt=prompt), timeout=20)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "context" in caught.value.details()


def _pixels_request(shape: list[int]) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name=IMAGE_MODEL)
    request.inputs.add(name="pixel_values", datatype="FP32", shape=shape)
    request.raw_input_contents.append(b"")
    return request


@pytest.mark.parametrize("shape", [[1] * 65, [0, 2**62], [2**62, 2**62, 0]], ids=["65-dims", "0x2^62", "2^62x2^62x0"])
def test_shapes_numpy_cannot_build_are_invalid_argument(
    v2: service_pb2_grpc.GRPCInferenceServiceStub, shape: list[int]
) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        v2.ModelInfer(_pixels_request(shape), timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "pixel_values" in caught.value.details() and len(caught.value.details()) < 500


def test_a_negative_v2_seed_is_invalid_argument(v2: service_pb2_grpc.GRPCInferenceServiceStub) -> None:
    request = service_pb2.ModelInferRequest(model_name=TEXT_MODEL)
    tensor = request.inputs.add(name="text_input", datatype="BYTES", shape=[1])
    tensor.contents.bytes_contents.append(b"ROMEO.")
    request.parameters["seed"].int64_param = -1
    with pytest.raises(grpc.RpcError) as caught:
        v2.ModelInfer(request, timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "seed" in caught.value.details()


def test_a_long_model_name_gets_not_found_with_a_short_message(channel: grpc.Channel) -> None:
    """At 854ceee the echoed name overflowed gRPC's 16 KB trailing metadata: RESOURCE_EXHAUSTED."""
    stub = models_pb2_grpc.ModelServiceStub(channel)
    name = "m" * 20_000
    with pytest.raises(grpc.RpcError) as caught:
        stub.GetModel(models_pb2.GetModelRequest(name=name), timeout=10)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert len(caught.value.details()) < 400 and "20002 characters" in caught.value.details()


def test_long_tensor_and_parameter_names_are_cut(v2: service_pb2_grpc.GRPCInferenceServiceStub) -> None:
    request = service_pb2.ModelInferRequest(model_name=IMAGE_MODEL)
    request.inputs.add(name="x" * 50_000, datatype="FP32", shape=[1])
    request.inputs[0].contents.fp32_contents.append(0.0)
    with pytest.raises(grpc.RpcError) as caught:
        v2.ModelInfer(request, timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert len(caught.value.details()) < 400


def test_unoffered_v2_rpcs_and_health_list_log_no_traceback(
    image_repository: Path, server_launcher: Callable[..., Any], image_server_address: str
) -> None:
    server = server_launcher(image_repository)  # a server of its own, so its log holds only these calls
    with grpc.insecure_channel(server.address) as channel:
        v2 = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        for call, request in (
            (v2.SystemSharedMemoryStatus, service_pb2.SystemSharedMemoryStatusRequest()),
            (v2.CudaSharedMemoryRegister, service_pb2.CudaSharedMemoryRegisterRequest()),
            (v2.TraceSetting, service_pb2.TraceSettingRequest()),
            (v2.LogSettings, service_pb2.LogSettingsRequest()),
        ):
            with pytest.raises(grpc.RpcError) as caught:
                call(request, timeout=10)
            assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
        health = health_pb2_grpc.HealthStub(channel)
        listed = health.List(health_pb2.HealthListRequest(), timeout=10)
        assert listed.statuses[""].status == health_pb2.HealthCheckResponse.SERVING
        assert listed.statuses[IMAGE_MODEL].status == health_pb2.HealthCheckResponse.SERVING
        # Bytes that are no protobuf message at all, to health and to reflection.
        garbage = b"\xff\xff\xff\xff\x0f"
        check = channel.unary_unary("/grpc.health.v1.Health/Check")
        with pytest.raises(grpc.RpcError) as caught:
            check(garbage, timeout=10)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        reflect = channel.stream_stream("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo")
        with pytest.raises(grpc.RpcError) as caught:
            list(reflect(iter([garbage]), timeout=10))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (
            health.Check(health_pb2.HealthCheckRequest(), timeout=10).status == health_pb2.HealthCheckResponse.SERVING
        )
    log = server.stderr()
    assert "Traceback" not in log and "ERROR" not in log, log[-3000:]
    assert log.count("is not implemented by this server") == 4


def test_repository_load_refuses_parameters(tiny_repository: Path, server_launcher: Callable[..., Any]) -> None:
    server = server_launcher(tiny_repository, "--model-control-mode", "explicit")
    with grpc.insecure_channel(server.address) as channel:
        v2 = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        for key in ("config", "file:1/model.onnx"):
            request = service_pb2.RepositoryModelLoadRequest(model_name=TEXT_MODEL)
            request.parameters[key].string_param = "{}"
            with pytest.raises(grpc.RpcError) as caught:
                v2.RepositoryModelLoad(request, timeout=30)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "not supported" in caught.value.details()
        ready = v2.ModelReady(service_pb2.ModelReadyRequest(name=TEXT_MODEL), timeout=10)
        assert not ready.ready  # nothing was loaded behind the client's back
        v2.RepositoryModelLoad(service_pb2.RepositoryModelLoadRequest(model_name=TEXT_MODEL), timeout=60)
        assert v2.ModelReady(service_pb2.ModelReadyRequest(name=TEXT_MODEL), timeout=10).ready


def test_a_model_name_longer_than_a_file_name_is_invalid_argument(
    tiny_repository: Path, server_launcher: Callable[..., Any]
) -> None:
    """Found by the fuzz tier: at 256 characters the OS refused the lookup and the client got INTERNAL."""
    server = server_launcher(tiny_repository, "--model-control-mode", "explicit")
    with grpc.insecure_channel(server.address) as channel:
        v2 = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        for call, request in (
            (v2.RepositoryModelLoad, service_pb2.RepositoryModelLoadRequest(model_name="a" * 256)),
            (v2.RepositoryModelUnload, service_pb2.RepositoryModelUnloadRequest(model_name="a" * 256)),
        ):
            with pytest.raises(grpc.RpcError) as caught:
                call(request, timeout=30)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "at most 255 characters" in caught.value.details()
    assert "Traceback" not in server.stderr()
