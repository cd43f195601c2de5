"""Process-level behaviour: health, reflection, startup failures and graceful shutdown."""

from __future__ import annotations

import io
import json
import shutil
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from PIL import Image

from attnserve_client import Client
from attnserve_client.pb import models_pb2, text_generation_pb2, text_generation_pb2_grpc

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def check(channel: grpc.Channel, service: str) -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    return int(stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status)


def test_health_overall_and_per_model(channel: grpc.Channel) -> None:
    assert check(channel, "") == SERVING
    assert check(channel, "tiny-gpt") == SERVING
    with pytest.raises(grpc.RpcError) as info:
        check(channel, "no-such-model")
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_reflection_lists_every_service(channel: grpc.Channel) -> None:
    services = set(ProtoReflectionDescriptorDatabase(channel).get_services())
    assert services >= {
        "attnserve.v1.TextGenerationService",
        "attnserve.v1.ModelService",
        "attnserve.v1.EmbeddingService",
        "attnserve.v1.ExplainService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    }


def test_reflection_describes_the_contract(channel: grpc.Channel) -> None:
    database = ProtoReflectionDescriptorDatabase(channel)
    descriptor = database.FindFileContainingSymbol("attnserve.v1.TextGenerationService")
    assert descriptor.package == "attnserve.v1"
    assert models_pb2.DESCRIPTOR.package == "attnserve.v1"


def test_model_that_fails_to_load_exits_nonzero_naming_it(
    tiny_repository: Path, tmp_path: Path, server_launcher: Callable[..., Any]
) -> None:
    root = tmp_path / "models"
    shutil.copytree(tiny_repository, root)
    shutil.copytree(root / "tiny-gpt", root / "broken-gpt")
    meta_path = root / "broken-gpt" / "1" / "metadata.json"
    meta = json.loads(meta_path.read_text())
    meta["text_generation"]["vocab_sise"] = 1
    meta_path.write_text(json.dumps(meta))

    server = server_launcher(root, wait=False)
    assert server.process.wait(timeout=60) != 0
    stderr = server.stderr()
    assert "broken-gpt" in stderr
    assert "vocab_sise" in stderr
    assert "Traceback" not in stderr


def test_missing_repository_exits_nonzero(tmp_path: Path, server_launcher: Callable[..., Any]) -> None:
    server = server_launcher(tmp_path / "absent", wait=False)
    assert server.process.wait(timeout=60) != 0
    assert "not a directory" in server.stderr()


def test_invalid_setting_exits_nonzero(tiny_repository: Path, server_launcher: Callable[..., Any]) -> None:
    server = server_launcher(tiny_repository, env={"ATTNSERVE_MAX_ACTIVE_SEQUENCES": "0"}, wait=False)
    assert server.process.wait(timeout=60) == 2
    assert "max_active_sequences" in server.stderr()


def long_request(max_new_tokens: int) -> text_generation_pb2.GenerateRequest:
    # Greedy decoding of this random model runs to max_new_tokens without sampling end-of-text.
    return text_generation_pb2.GenerateRequest(
        model="long-gpt",
        prompt="Hello",
        parameters=text_generation_pb2.GenerationParameters(max_new_tokens=max_new_tokens, temperature=0.0),
    )


def test_sigterm_drains_in_flight_streams(long_repository: Path, server_launcher: Callable[..., Any]) -> None:
    grace = 20.0
    server = server_launcher(long_repository, "--grace-period-s", str(grace))
    with grpc.insecure_channel(server.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        watch = health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=60)
        assert next(watch).status == SERVING
        statuses: list[int] = []

        def follow() -> None:
            try:
                for reply in watch:
                    statuses.append(reply.status)
                    if reply.status == NOT_SERVING:
                        watch.cancel()  # an open Watch would itself hold up the drain
                        return
            except grpc.RpcError:
                pass

        watcher = threading.Thread(target=follow)
        watcher.start()

        stub = text_generation_pb2_grpc.TextGenerationServiceStub(channel)
        responses = stub.GenerateStream(long_request(1000), timeout=60)
        first = next(responses)
        sent = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        watcher.join(timeout=30)
        assert NOT_SERVING in statuses  # the drain has begun

        # New work is refused while the drain goes on, as UNAVAILABLE (retry elsewhere), not by a
        # timeout or an error of the request. Health goes NOT_SERVING a moment before the server stops
        # taking calls: a call that slips in before is served (and drained), and the calls that arrive
        # while grpc-core stops taking them are CANCELLED (one or two, as the machine's timing goes);
        # every call after that is UNAVAILABLE.
        codes = []
        for _ in range(200):
            try:
                stub.Generate(long_request(1), timeout=30)
            except grpc.RpcError as refused:
                assert refused.code() in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE), refused
                codes.append(refused.code())
                if refused.code() == grpc.StatusCode.UNAVAILABLE:
                    break
        else:
            pytest.fail(f"no call was refused as UNAVAILABLE 200 calls into the drain: {codes[:5]}")
        assert len(codes) <= 4, codes  # only the calls that raced gRPC's stop were CANCELLED
        assert server.process.poll() is None  # still draining: the server exits once the stream is done

        rest = list(responses)  # the in-flight stream runs to the end
        chunks = [first, *rest]
        assert chunks[-1].finish_reason == text_generation_pb2.FINISH_REASON_LENGTH
        assert sum(len(c.token_ids) for c in chunks) == 1000

    assert server.process.wait(timeout=grace) == 0
    # The drain ends with the last stream, long before the grace period that would have cut it.
    assert time.monotonic() - sent < grace


def test_sigterm_cancels_what_outlives_the_grace_period(
    long_repository: Path, server_launcher: Callable[..., Any]
) -> None:
    # A 1000-token stream takes about a second here (it ran to the end in the test above); the grace
    # period is a small fraction of that, so the stream is cut by the server, and the bound is work.
    grace = 0.05
    server = server_launcher(long_repository, "--grace-period-s", str(grace))
    with grpc.insecure_channel(server.address) as channel:
        stub = text_generation_pb2_grpc.TextGenerationServiceStub(channel)
        responses = stub.GenerateStream(long_request(1000), timeout=60)
        received = len(next(responses).token_ids)
        server.process.send_signal(signal.SIGTERM)
        with pytest.raises(grpc.RpcError):
            for chunk in responses:
                received += len(chunk.token_ids)
        assert received < 1000  # the stream was cut, not drained to its end
    # The process then exits cleanly. 30 s is the margin a loaded machine needs for the interpreter's
    # own shutdown; the cut itself is measured in tokens above.
    assert server.process.wait(timeout=30) == 0


def _png(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (16, 16), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def test_sigterm_drains_an_image_batch_in_flight(
    image_repository: Path, image_server_address: str, tmp_path: Path, server_launcher: Callable[..., Any]
) -> None:
    """A request queued in the image batcher when SIGTERM comes still runs, and gets its answer."""
    shutil.copytree(image_repository / "tiny-digits", tmp_path / "tiny-digits")
    # The request waits 2 s in the queue for company: SIGTERM finds it there, not yet in a batch.
    (tmp_path / "tiny-digits" / "config.yaml").write_text(
        "dynamic_batching:\n  max_batch_size: 8\n  max_queue_delay_ms: 2000\n  adaptive_delay: false\n"
    )
    images = [_png(seed) for seed in range(3)]
    with Client(image_server_address) as shared:  # the same model file, served without the delay
        expected = shared.classify_batch(images, model="tiny-digits", top_k=10)
    server = server_launcher(tmp_path, "--grace-period-s", "30")
    with Client(server.address) as client, ThreadPoolExecutor(1) as pool:
        before = client.get_model("tiny-digits").counters
        pending = pool.submit(client.classify_batch, images, model="tiny-digits", top_k=10)
        deadline = time.monotonic() + 30
        while client.get_model("tiny-digits").counters.requests == before.requests:  # admitted: queued
            assert time.monotonic() < deadline and not pending.done(), "the request was not admitted"
            time.sleep(0.01)
        assert client.get_model("tiny-digits").counters.batches == before.batches  # still waiting
        server.process.send_signal(signal.SIGTERM)
        result = pending.result(timeout=60)
    assert [[p.index for p in r] for r in result] == [[p.index for p in r] for r in expected]
    for got, want in zip(result, expected, strict=True):
        assert [p.score for p in got] == pytest.approx([p.score for p in want], abs=1e-5)
    assert server.process.wait(timeout=30) == 0
    assert "shutting down" in server.stderr()
