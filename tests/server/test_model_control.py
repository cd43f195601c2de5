"""Model management against real servers, through tritonclient: control modes, versions, hot reload,
load failures and containment of request-supplied names."""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.utils import InferenceServerException

from attnserve_client import Client
from attnserve_client.pb import models_pb2, models_pb2_grpc

SOURCE = "tiny-digits"
TIMEOUT = 30.0


@pytest.fixture
def repo(tmp_path: Path, image_repository: Path) -> Path:
    """A fresh repository with two copies of tiny-digits, ``alpha`` and ``beta``."""
    root = tmp_path / "models"
    for name in ("alpha", "beta"):
        shutil.copytree(image_repository / SOURCE, root / name)
    return root


def add_version(model_dir: Path, version: int, label_prefix: str) -> None:
    """Version ``version``: the same weights, labels renamed so responses tell the versions apart."""
    target = model_dir / str(version)
    shutil.copytree(model_dir / "1", target)
    labels = json.loads((target / "labels.json").read_text())
    (target / "labels.json").write_text(json.dumps([f"{label_prefix}{label}" for label in labels]))


def client_for(address: str) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(address)


def image_input(batch: int = 1) -> triton.InferInput:
    x = np.random.default_rng(0).standard_normal((batch, 1, 16, 16)).astype(np.float32)
    tensor = triton.InferInput("pixel_values", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    return tensor


def top_label(client: triton.InferenceServerClient, model: str, version: str = "") -> tuple[str, str]:
    result = client.infer(
        model,
        [image_input()],
        model_version=version,
        outputs=[triton.InferRequestedOutput("logits", class_count=1)],
        client_timeout=TIMEOUT,
    )
    label = result.as_numpy("logits")[0, 0].decode().split(":", 2)[2]
    return result.get_response().model_version, label


def health(address: str, service: str) -> int:
    with grpc.insecure_channel(address) as channel:
        return int(health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service)).status)


def index(client: triton.InferenceServerClient) -> dict[str, tuple[str, str, str]]:
    return {
        m.name + "/" + m.version: (m.state, m.reason, m.version) for m in client.get_model_repository_index().models
    }


def wait_for(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.1)


def test_explicit_mode_loads_and_unloads_on_request(repo: Path, server_launcher: Callable[..., Any]) -> None:
    server = server_launcher(repo, "--model-control-mode", "explicit", "--load-model", "alpha")
    client = client_for(server.address)
    assert client.is_model_ready("alpha") and not client.is_model_ready("beta")
    assert index(client)["beta/"][0] == ""  # on disk, never loaded
    assert health(server.address, "alpha") == health_pb2.HealthCheckResponse.SERVING

    client.load_model("beta")
    assert client.is_model_ready("beta")
    assert health(server.address, "beta") == health_pb2.HealthCheckResponse.SERVING
    assert top_label(client, "beta") == ("1", top_label(client, "alpha")[1])

    client.unload_model("alpha")
    assert not client.is_model_ready("alpha")
    assert health(server.address, "alpha") == health_pb2.HealthCheckResponse.NOT_SERVING
    assert index(client)["alpha/"][:2] == ("UNAVAILABLE", "unloaded")
    with pytest.raises(InferenceServerException) as info:
        top_label(client, "alpha")
    assert info.value.status() == "StatusCode.NOT_FOUND"
    assert client.is_server_ready()  # an unloaded model is no longer expected


@pytest.mark.parametrize("name", ["../alpha", "..", "/etc", "alpha/1", "link", ".hidden", "a\\b"])
def test_request_names_cannot_leave_the_repository(
    repo: Path, tmp_path: Path, server_launcher: Callable[..., Any], name: str
) -> None:
    outside = tmp_path / "outside"
    shutil.copytree(repo / "alpha", outside)
    (repo / "link").symlink_to(outside, target_is_directory=True)
    server = server_launcher(repo, "--model-control-mode", "explicit")
    client = client_for(server.address)
    with pytest.raises(InferenceServerException) as info:
        client.load_model(name)
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT", info.value
    assert not client.is_model_ready(name)
    client.load_model("alpha")  # still serving requests
    assert client.is_model_ready("alpha")


def test_load_rpcs_are_refused_outside_explicit_mode(repo: Path, server_launcher: Callable[..., Any]) -> None:
    server = server_launcher(repo)
    client = client_for(server.address)
    for call in (client.load_model, client.unload_model):
        with pytest.raises(InferenceServerException) as info:
            call("alpha")
        assert info.value.status() == "StatusCode.FAILED_PRECONDITION"
        assert "--model-control-mode explicit" in info.value.message()
    assert client.is_model_ready("alpha")


def test_reload_under_concurrent_requests_drops_none(repo: Path, server_launcher: Callable[..., Any]) -> None:
    server = server_launcher(repo, "--model-control-mode", "explicit", "--load-model", "alpha")
    stop = threading.Event()
    seen: list[tuple[str, str]] = []
    failures: list[BaseException] = []

    def hammer() -> None:
        with client_for(server.address) as own:
            while not stop.is_set():
                try:
                    seen.append(top_label(own, "alpha"))
                except BaseException as exc:  # any failure is what the test is about
                    failures.append(exc)

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        client = client_for(server.address)
        wait_for(lambda: len(seen) >= 20)
        add_version(repo / "alpha", 2, "v2-")
        client.load_model("alpha")  # reload: version 2 replaces version 1
        count = len(seen)
        wait_for(lambda: len(seen) >= count + 20)
        client.load_model("alpha")  # a reload of the same files, also under load
        count = len(seen)
        wait_for(lambda: len(seen) >= count + 20)
        client.load_model("beta")  # other models come and go while alpha serves
        client.unload_model("beta")
        count = len(seen)
        wait_for(lambda: len(seen) >= count + 20)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert failures == []
    versions = [version for version, _ in seen]
    assert versions[0] == "1" and versions[-1] == "2"
    assert all(label.startswith("v2-") == (version == "2") for version, label in seen)
    assert top_label(client, "alpha")[0] == "2"
    assert not client.is_model_ready("alpha", "1")


def test_version_policy_serves_several_versions(repo: Path, server_launcher: Callable[..., Any]) -> None:
    add_version(repo / "alpha", 2, "v2-")
    add_version(repo / "alpha", 3, "v3-")
    (repo / "alpha" / "config.yaml").write_text("version_policy:\n  specific:\n    versions: [1, 3]\n")
    (repo / "beta" / "config.yaml").write_text("version_policy:\n  latest:\n    num_versions: 2\n")
    add_version(repo / "beta", 2, "v2-")
    add_version(repo / "beta", 3, "v3-")
    server = server_launcher(repo)
    client = client_for(server.address)
    assert list(client.get_model_metadata("alpha").versions) == ["1", "3"]
    assert list(client.get_model_metadata("beta").versions) == ["2", "3"]
    assert top_label(client, "alpha")[0] == "3"  # the latest loaded version unless a request names one
    assert top_label(client, "alpha", "1")[1][:3] != "v3-"
    assert top_label(client, "alpha", "3")[1].startswith("v3-")
    assert not client.is_model_ready("alpha", "2")
    with pytest.raises(InferenceServerException) as info:
        top_label(client, "alpha", "2")
    assert info.value.status() == "StatusCode.NOT_FOUND"
    assert client.get_model_config("alpha").config.version_policy.specific.versions == [1, 3]
    # The attnserve ModelService reports the versions and the state too.
    with grpc.insecure_channel(server.address) as channel:
        info_alpha = models_pb2_grpc.ModelServiceStub(channel).GetModel(
            models_pb2.GetModelRequest(name="alpha"), timeout=TIMEOUT
        )
    assert list(info_alpha.versions) == ["1", "3"] and info_alpha.default_version == "3"
    assert info_alpha.state == "READY"
    with Client(server.address) as attnserve:
        typed = attnserve.get_model("alpha")
    assert (typed.versions, typed.default_version, typed.state) == (("1", "3"), "3", "READY")


def break_model(model_dir: Path) -> None:
    (model_dir / "1" / "metadata.json").write_text("{not json")


def test_a_load_failure_stops_startup_by_default(repo: Path, server_launcher: Callable[..., Any]) -> None:
    break_model(repo / "beta")
    server = server_launcher(repo, wait=False)
    assert server.process.wait(60) == 1
    assert "beta" in server.stderr() and "metadata.json" in server.stderr()


def test_without_exit_on_error_the_others_serve(repo: Path, server_launcher: Callable[..., Any]) -> None:
    break_model(repo / "beta")
    server = server_launcher(repo, "--exit-on-error=false", "--strict-readiness=false")
    client = client_for(server.address)
    assert client.is_server_ready()
    assert client.is_model_ready("alpha") and not client.is_model_ready("beta")
    state, reason, _ = index(client)["beta/"]
    assert state == "UNAVAILABLE" and "metadata.json" in reason
    assert top_label(client, "alpha")[0] == "1"
    with grpc.insecure_channel(server.address) as channel:
        listed = models_pb2_grpc.ModelServiceStub(channel).ListModels(models_pb2.ListModelsRequest(), timeout=TIMEOUT)
    assert [m.name for m in listed.models] == ["alpha"]
    assert [(m.name, m.state) for m in listed.unavailable] == [("beta", "UNAVAILABLE")]
    assert "metadata.json" in listed.unavailable[0].reason


def test_strict_readiness_needs_every_model(repo: Path, server_launcher: Callable[..., Any]) -> None:
    break_model(repo / "beta")
    server = server_launcher(repo, "--exit-on-error=false", wait=False)
    client = client_for(server.address)
    wait_for(lambda: _live(client) and client.is_model_ready("alpha"))
    assert not client.is_server_ready()
    assert health(server.address, "") == health_pb2.HealthCheckResponse.NOT_SERVING
    assert top_label(client, "alpha")[0] == "1"  # the others serve all the same


def _live(client: triton.InferenceServerClient) -> bool:
    try:
        return bool(client.is_server_live())
    except InferenceServerException:
        return False


def test_poll_mode_follows_the_repository(repo: Path, server_launcher: Callable[..., Any]) -> None:
    server = server_launcher(repo, "--model-control-mode", "poll", "--repository-poll-interval-s", "0.3")
    client = client_for(server.address)
    shutil.copytree(repo / "alpha", repo / "gamma")
    wait_for(lambda: client.is_model_ready("gamma"))
    add_version(repo / "gamma", 2, "v2-")
    wait_for(lambda: client.is_model_ready("gamma", "2"))
    assert top_label(client, "gamma") == ("2", top_label(client, "gamma")[1])
    assert top_label(client, "gamma")[1].startswith("v2-")
    shutil.rmtree(repo / "beta")
    wait_for(lambda: not client.is_model_ready("beta"))
    assert client.is_model_ready("alpha")


def test_onnx_external_data_outside_the_folder_is_refused(repo: Path, server_launcher: Callable[..., Any]) -> None:
    import onnx
    from onnx import TensorProto

    version_dir = repo / "beta" / "1"
    model = onnx.load(str(version_dir / "model.onnx"))
    weight = model.graph.initializer[0]
    weight.ClearField("raw_data")
    del weight.float_data[:]
    weight.data_location = TensorProto.EXTERNAL
    entry = weight.external_data.add()
    entry.key, entry.value = "location", "../../weights.bin"
    (repo / "weights.bin").write_bytes(b"\0" * 4096)
    onnx.save(model, str(version_dir / "model.onnx"))
    server = server_launcher(repo, "--model-control-mode", "explicit")
    client = client_for(server.address)
    with pytest.raises(InferenceServerException) as info:
        client.load_model("beta")
    assert "outside its folder" in info.value.message()
    assert "outside its folder" in index(client)["beta/"][1]
    client.load_model("alpha")
    assert client.is_model_ready("alpha")


def test_a_failed_load_after_startup_keeps_the_server_ready(repo: Path, server_launcher: Callable[..., Any]) -> None:
    break_model(repo / "beta")
    server = server_launcher(repo, "--model-control-mode", "explicit", "--load-model", "alpha")
    client = client_for(server.address)
    with pytest.raises(InferenceServerException) as info:
        client.load_model("beta")
    assert "metadata.json" in info.value.message()
    assert client.is_server_ready()  # one bad load request must not take the server out of rotation
    assert index(client)["beta/"][0] == "UNAVAILABLE"


def test_version_policy_takes_one_choice(repo: Path, server_launcher: Callable[..., Any]) -> None:
    (repo / "alpha" / "config.yaml").write_text("version_policy:\n  all: {}\n  latest:\n    num_versions: 2\n")
    server = server_launcher(repo, wait=False)
    assert server.process.wait(60) == 1
    assert "one of latest, all or specific" in server.stderr()


@pytest.mark.slow
def test_a_generation_running_across_a_reload_finishes_on_its_version(
    tmp_path: Path, long_repository: Path, server_launcher: Callable[..., Any]
) -> None:
    import functools
    import queue

    root = tmp_path / "models"
    shutil.copytree(long_repository / "long-gpt", root / "long-gpt")
    server = server_launcher(root, "--model-control-mode", "explicit", "--load-model", "long-gpt")
    client = client_for(server.address)
    responses: queue.Queue[Any] = queue.Queue()

    def collect(sink: queue.Queue[Any], result: Any, error: Any) -> None:
        sink.put((result, error, time.monotonic()))

    client.start_stream(callback=functools.partial(collect, responses))
    try:
        prompt = triton.InferInput("text_input", [1], "BYTES")
        prompt.set_data_from_numpy(np.array([b"The"], dtype=object))
        client.async_stream_infer("long-gpt", [prompt], parameters={"max_tokens": 1000, "temperature": 0.0})
        first, error, _ = responses.get(timeout=TIMEOUT)
        assert error is None
        shutil.copytree(root / "long-gpt" / "1", root / "long-gpt" / "2")
        with client_for(server.address) as other:
            other.load_model("long-gpt")
            reloaded_at = time.monotonic()
            assert top_version(other, "long-gpt") == "2"  # new requests get the new version at once
        versions = [first.get_response().model_version]
        arrived_after_reload = 0
        while True:
            result, error, at = responses.get(timeout=120)
            assert error is None, error
            response = result.get_response()
            versions.append(response.model_version)
            arrived_after_reload += at > reloaded_at
            if response.parameters["triton_final_response"].bool_param:
                break
    finally:
        client.stop_stream()
    assert set(versions) == {"1"}
    assert arrived_after_reload > 0  # the generation really was running across the reload


def top_version(client: triton.InferenceServerClient, model: str) -> str:
    prompt = triton.InferInput("text_input", [1], "BYTES")
    prompt.set_data_from_numpy(np.array([b"A"], dtype=object))
    result = client.infer(model, [prompt], parameters={"max_tokens": 1}, client_timeout=TIMEOUT)
    return str(result.get_response().model_version)
