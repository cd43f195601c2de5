"""Continuous batching limits seen through the real server: a full wait queue gets RESOURCE_EXHAUSTED.

The limits come from the model's config.yaml (max_active_sequences: 1, max_waiting_sequences: 0),
which overrides the server-wide settings.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from attnserve_client.pb import text_generation_pb2, text_generation_pb2_grpc

MODEL = "long-gpt"


def request(max_new_tokens: int) -> text_generation_pb2.GenerateRequest:
    return text_generation_pb2.GenerateRequest(
        model=MODEL,
        prompt="Hello",
        parameters=text_generation_pb2.GenerationParameters(max_new_tokens=max_new_tokens, temperature=0.0),
    )


def test_full_wait_queue_is_refused_with_resource_exhausted(
    long_repository: Path, tmp_path: Path, server_launcher: Callable[..., Any]
) -> None:
    repository = tmp_path / "models"
    shutil.copytree(long_repository / MODEL, repository / MODEL)
    (repository / MODEL / "config.yaml").write_text(
        "max_new_tokens_limit: 1000\nmax_active_sequences: 1\nmax_waiting_sequences: 0\n"
    )
    server = server_launcher(repository)
    with grpc.insecure_channel(server.address) as channel:
        stub = text_generation_pb2_grpc.TextGenerationServiceStub(channel)
        running = stub.GenerateStream(request(1000), timeout=60)
        next(running)  # the one slot is taken
        with pytest.raises(grpc.RpcError) as info:
            stub.Generate(request(2), timeout=10)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "retry later" in (info.value.details() or "")
        running.cancel()
        # The slot frees once the stream is cancelled, and the server serves again.
        for _ in range(50):
            try:
                reply = stub.Generate(request(2), timeout=10)
                break
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                time.sleep(0.1)
        else:
            pytest.fail("the server kept refusing after the running stream was cancelled")
        assert reply.usage.completion_tokens >= 1


def test_invalid_batching_setting_in_config_fails_the_load(
    long_repository: Path, tmp_path: Path, server_launcher: Callable[..., Any]
) -> None:
    repository = tmp_path / "models"
    shutil.copytree(long_repository / MODEL, repository / MODEL)
    (repository / MODEL / "config.yaml").write_text("max_active_sequences: 0\n")
    server = server_launcher(repository, wait=False)
    assert server.process.wait(timeout=60) != 0
    assert "max_active_sequences" in server.stderr()
