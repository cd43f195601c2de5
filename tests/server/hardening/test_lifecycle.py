"""Issue 12's regressions that concern files, decoding work, shutdown and connections, each against
a real server process."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image
from tritonclient.grpc import service_pb2, service_pb2_grpc

from attnserve_client.pb import (
    image_classification_pb2,
    image_classification_pb2_grpc,
    models_pb2,
    models_pb2_grpc,
    text_generation_pb2,
    text_generation_pb2_grpc,
)

TEXT_MODEL = "tiny-gpt"
IMAGE_MODEL = "tiny-digits"
SECRET = "root:$6$s3cr3t-hash-line$:19000:0:99999:7:::"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def test_files_outside_the_repository_are_never_read_nor_shown(
    tmp_path: Path, tiny_repository: Path, server_launcher: Callable[..., Any]
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "shadow").write_text(SECRET + "\n")
    root = tmp_path / "models"
    # config.yaml and metadata.json that are links out of the repository: never read.
    shutil.copytree(tiny_repository / TEXT_MODEL, root / "config-link")
    (root / "config-link" / "config.yaml").unlink()
    (root / "config-link" / "config.yaml").symlink_to(outside / "shadow")
    shutil.copytree(tiny_repository / TEXT_MODEL, root / "metadata-link")
    (root / "metadata-link" / "1" / "metadata.json").unlink()
    (root / "metadata-link" / "1" / "metadata.json").symlink_to(outside / "shadow")
    # A model folder that is a link out of the repository.
    shutil.copytree(tiny_repository / TEXT_MODEL, outside / "elsewhere")
    (root / "folder-link").symlink_to(outside / "elsewhere", target_is_directory=True)
    # Links that stay inside (as a Kubernetes ConfigMap mount makes them) are followed.
    shutil.copytree(tiny_repository / TEXT_MODEL, root / "configmap")
    data = root / "configmap" / "..2026_11_29" / "config.yaml"
    data.parent.mkdir()
    (root / "configmap" / "config.yaml").rename(data)
    (root / "configmap" / "config.yaml").symlink_to(Path("..2026_11_29") / "config.yaml")

    server = server_launcher(root, "--no-exit-on-error", "--no-strict-readiness")
    with grpc.insecure_channel(server.address) as channel:
        listed = models_pb2_grpc.ModelServiceStub(channel).ListModels(models_pb2.ListModelsRequest(), timeout=10)
        index = service_pb2_grpc.GRPCInferenceServiceStub(channel).RepositoryIndex(
            service_pb2.RepositoryIndexRequest(), timeout=10
        )
    assert [m.name for m in listed.models] == ["configmap"]
    reasons = {m.name: m.reason for m in listed.unavailable}
    assert set(reasons) == {"config-link", "metadata-link", "folder-link"}
    for name, reason in reasons.items():
        assert "points outside the model repository" in reason, (name, reason)
    shown = json.dumps([reasons, [(m.name, m.reason) for m in index.models]])
    assert "s3cr3t" not in shown and str(tmp_path) not in shown and "/tmp" not in shown
    assert "s3cr3t" not in server.stderr()


def _big_png(side: int, seed: int) -> bytes:
    # Smooth, so the PNG stays small while decoding it still costs real work.
    ramp = np.linspace(0, 255, side, dtype=np.float32)
    pixels = (ramp[None, :, None] + ramp[:, None, None] * 0.5 + seed) % 256
    image = Image.fromarray(np.broadcast_to(pixels, (side, side, 3)).astype(np.uint8), mode="RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the server's CPU time from /proc")
def test_a_classify_that_expires_stops_decoding(image_repository: Path, server_launcher: Callable[..., Any]) -> None:
    """At 854ceee, 64 large images went on decoding for 7.5 s after the client gave up."""
    server = server_launcher(image_repository, "--intra-op-threads", "1")
    images = [_big_png(3000, seed) for seed in range(64)]
    with grpc.insecure_channel(server.address, options=[("grpc.max_send_message_length", 2**30)]) as channel:
        stub = image_classification_pb2_grpc.ImageClassificationServiceStub(channel)
        request = image_classification_pb2.ClassifyRequest(model=IMAGE_MODEL, images=images)
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as caught:
            stub.Classify(request, timeout=0.5)
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        # What one image costs here, so that the bound below means "it stopped", on any machine.
        one = image_classification_pb2.ClassifyRequest(model=IMAGE_MODEL, images=images[:1])
        before = _cpu_seconds(server.process.pid)
        stub.Classify(one, timeout=60)
        per_image = _cpu_seconds(server.process.pid) - before
        time.sleep(max(0.0, 1.0 - (time.monotonic() - started)))
        before = _cpu_seconds(server.process.pid)
        time.sleep(2.0)
        spent = _cpu_seconds(server.process.pid) - before
    # Decoding on would burn the 2 s window whole (64 images take far longer than 3 s of CPU).
    assert per_image * 64 > 3.0, f"images too cheap to tell ({per_image:.3f} s each)"
    assert spent < 0.5, f"the server burnt {spent:.2f} s of CPU in 2 s after the client gave up"


def test_sigterm_under_16_streams_with_a_watch_open(long_repository: Path, server_launcher: Callable[..., Any]) -> None:
    """Health is NOT_SERVING within 1 s, every stream finishes, the process exits within 2 s of the last.

    At 854ceee an open Watch held the drain for the whole grace period (30 s here).
    """
    server = server_launcher(long_repository, "--grace-period-s", "30")
    tokens = 150
    with grpc.insecure_channel(server.address) as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""), timeout=120)
        assert next(watch).status == SERVING
        stub = text_generation_pb2_grpc.TextGenerationServiceStub(channel)
        request = text_generation_pb2.GenerateRequest(
            model="long-gpt",
            prompt="Hello",
            parameters=text_generation_pb2.GenerationParameters(max_new_tokens=tokens, temperature=0.0),
        )
        streams = [stub.GenerateStream(request, timeout=120) for _ in range(16)]
        firsts = [next(s) for s in streams]  # all 16 are running
        results: list[int] = []
        finished_at: list[float] = []
        watched: dict[str, Any] = {}

        def drain(stream: Any, first: Any) -> None:
            count = len(first.token_ids) + sum(len(c.token_ids) for c in stream)
            results.append(count)
            finished_at.append(time.monotonic())

        def follow() -> None:
            statuses = []
            for reply in watch:  # ends by itself when the server stops
                statuses.append(reply.status)
                if reply.status == NOT_SERVING:
                    watched["not_serving_at"] = time.monotonic()
            watched["ended"] = statuses

        threads = [threading.Thread(target=drain, args=pair) for pair in zip(streams, firsts, strict=True)]
        threads.append(threading.Thread(target=follow))
        for thread in threads:
            thread.start()
        sent = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        for thread in threads:
            thread.join(timeout=60)
        assert server.process.wait(timeout=30) == 0
        exited = time.monotonic()
    assert results == [tokens] * 16
    assert watched["ended"][-1] == NOT_SERVING
    assert watched["not_serving_at"] - sent < 1.0
    assert exited - max(finished_at) < 2.0


def test_a_silent_connection_is_closed_after_the_handshake_timeout(
    tiny_repository: Path, server_launcher: Callable[..., Any]
) -> None:
    """At 854ceee sockets that never spoke HTTP/2 were held for gRPC's default 120 s."""
    server = server_launcher(tiny_repository, "--handshake-timeout-s", "2")
    host, port = server.address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as silent:
        opened = time.monotonic()
        while silent.recv(1024):  # the server's SETTINGS frame, then nothing until it closes
            pass
        closed_after = time.monotonic() - opened
    assert closed_after < 3.0
    with grpc.insecure_channel(server.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=10).status == SERVING
