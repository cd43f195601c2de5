"""Dynamic batching of image requests, against a real server through the real client.

One repository serves the same tiny ViT under several names, each with its own
``dynamic_batching`` in config.yaml. Merging and splitting are read from the public counters
(``ModelInfo.counters.batches`` / ``batched_items``), and every batched result is compared with
the result of the same image classified alone.
"""

from __future__ import annotations

import asyncio
import io
import shutil
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as triton
from PIL import Image

from attnserve_client import (
    AsyncClient,
    Client,
    DeadlineExceededError,
    InvalidArgumentError,
    ModelCounters,
    OverloadedError,
    Prediction,
)

MERGE = "merge"  # waits long enough that concurrent requests always meet
SPLIT = "split"  # batches of 4, no waiting
SLOW = "slow-queue"  # a long delay, so a request sits in the queue
FULL = "tiny-queue"  # room for 2 queued images
ADAPTIVE = "adaptive"  # a long delay that a lone request skips

ALWAYS_WAIT = "  adaptive_delay: false\n"
CONFIGS = {
    MERGE: "dynamic_batching:\n  max_batch_size: 16\n  max_queue_delay_ms: 1000\n" + ALWAYS_WAIT,
    SPLIT: "dynamic_batching:\n  max_batch_size: 4\n  max_queue_delay_ms: 0\n",
    SLOW: "dynamic_batching:\n  max_batch_size: 8\n  max_queue_delay_ms: 1500\n" + ALWAYS_WAIT,
    FULL: "dynamic_batching:\n  max_batch_size: 8\n  max_queue_delay_ms: 2000\n  max_queue_size: 2\n" + ALWAYS_WAIT,
    ADAPTIVE: "dynamic_batching:\n  max_batch_size: 8\n  max_queue_delay_ms: 5000\n",
}
TOP_K = 10  # every class, so the whole score vector is compared


@pytest.fixture(scope="module")
def batching_address(
    tmp_path_factory: pytest.TempPathFactory,
    export_image_classifier: Callable[..., Path],
    session_server_launcher: Callable[..., Any],
) -> str:
    root = tmp_path_factory.mktemp("batching-models")
    source = export_image_classifier(root, "source")
    for name, config in CONFIGS.items():
        shutil.copytree(source, root / name)
        (root / name / "config.yaml").write_text(config)
    shutil.rmtree(source)
    return str(session_server_launcher(root).address)


def png(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (16, 16), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def counters(client: Client, model: str) -> ModelCounters:
    return client.get_model(model).counters


def wait_until_admitted(client: Client, model: str, requests: int) -> None:
    """Poll GetModel until ``model`` has admitted ``requests`` requests in all. A request is counted
    as its images are reserved in the batcher's queue (the same step), so once it shows, it is queued."""
    deadline = time.monotonic() + 30
    while counters(client, model).requests < requests:
        assert time.monotonic() < deadline, f"{model} did not admit request {requests} within 30 s"
        time.sleep(0.01)


def queue_seconds(address: str, model: str) -> tuple[int, float]:
    """(requests, total seconds they waited in the batcher's queue), from v2 ModelStatistics."""
    with triton.InferenceServerClient(address) as v2:
        (stats,) = v2.get_inference_statistics(model).model_stats
    return int(stats.inference_stats.queue.count), stats.inference_stats.queue.ns / 1e9


def assert_same(batched: list[Prediction], alone: list[Prediction]) -> None:
    assert [p.index for p in batched] == [p.index for p in alone]
    assert [p.score for p in batched] == pytest.approx([p.score for p in alone], abs=1e-5)


def test_concurrent_requests_merge_and_each_caller_gets_its_own_results(batching_address: str) -> None:
    images = [[png(10 * r + i) for i in range(1 + r % 2)] for r in range(6)]  # 6 requests, 9 images
    with Client(batching_address) as client:
        # The same weights without waiting (SPLIT has no delay), one image per call.
        alone = {image: client.classify(image, model=SPLIT, top_k=TOP_K) for request in images for image in request}
        before = counters(client, MERGE)
        barrier = threading.Barrier(len(images))

        def send(request: list[bytes]) -> list[list[Prediction]]:
            barrier.wait()
            return client.classify_batch(request, model=MERGE, top_k=TOP_K)

        with ThreadPoolExecutor(len(images)) as pool:
            results = list(pool.map(send, images))
        after = counters(client, MERGE)
    for request, result in zip(images, results, strict=True):
        assert len(result) == len(request)
        for image, predictions in zip(request, result, strict=True):
            assert_same(predictions, alone[image])
    assert after.batched_items - before.batched_items == 9
    # Six requests that arrive within the 1 s delay share calls: fewer calls than requests.
    assert after.batches - before.batches < len(images)
    assert after.requests - before.requests == len(images)


def test_with_adaptive_delay_a_lone_request_does_not_wait_for_company(batching_address: str) -> None:
    with Client(batching_address) as client:
        before = counters(client, ADAPTIVE)
        queued_before = queue_seconds(batching_address, ADAPTIVE)
        for seed in range(3):
            client.classify(png(seed), model=ADAPTIVE)
        after = counters(client, ADAPTIVE)
        queued_after = queue_seconds(batching_address, ADAPTIVE)
    assert after.batches - before.batches == 3
    # The server's own account of the queue wait (not the client's stopwatch): the three together
    # waited less than ONE 5 s delay; waiting for company would have cost each of them the whole delay.
    assert queued_after[0] - queued_before[0] == 3
    assert queued_after[1] - queued_before[1] < 5.0


def test_a_request_larger_than_the_batch_is_split(batching_address: str) -> None:
    images = [png(100 + i) for i in range(10)]
    with Client(batching_address) as client:
        alone = [client.classify(image, model=SPLIT, top_k=TOP_K) for image in images]
        before = counters(client, SPLIT)
        result = client.classify_batch(images, model=SPLIT, top_k=TOP_K)
        after = counters(client, SPLIT)
    assert after.batches - before.batches == 3  # 4 + 4 + 2
    assert after.batched_items - before.batched_items == 10
    for batched, single in zip(result, alone, strict=True):
        assert_same(batched, single)


def test_a_request_whose_deadline_passes_in_the_queue_never_reaches_the_model(batching_address: str) -> None:
    with Client(batching_address) as client:
        before = counters(client, SLOW)
        with pytest.raises(DeadlineExceededError):
            client.classify(png(1), model=SLOW, timeout=0.3)
        # The next request runs alone: the expired one was dropped, not merged into its call.
        assert len(client.classify(png(2), model=SLOW)) == 5
        after = counters(client, SLOW)
    assert after.batches - before.batches == 1
    assert after.batched_items - before.batched_items == 1


async def test_a_cancelled_request_never_reaches_the_model(batching_address: str) -> None:
    async with AsyncClient(batching_address) as client:
        before = (await client.get_model(SLOW)).counters
        task = asyncio.create_task(client.classify_batch([png(3), png(4)], model=SLOW))
        while (await client.get_model(SLOW)).counters.requests == before.requests:
            await asyncio.sleep(0.01)  # until admitted: then it waits in the queue for its 1.5 s delay
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert len(await client.classify(png(5), model=SLOW)) == 5
        after = (await client.get_model(SLOW)).counters
    assert after.batches - before.batches == 1
    assert after.batched_items - before.batched_items == 1


def test_a_full_queue_refuses_at_once_with_overloaded(batching_address: str) -> None:
    with Client(batching_address) as client, ThreadPoolExecutor(1) as pool:
        before = counters(client, FULL)
        waiting = pool.submit(client.classify_batch, [png(6), png(7)], model=FULL)  # fills the queue
        wait_until_admitted(client, FULL, before.requests + 1)
        with pytest.raises(OverloadedError) as info:
            client.classify(png(8), model=FULL)
        # Refused at once, while the queued request still waits out its 2 s delay: no call has run yet.
        assert counters(client, FULL).batches == before.batches
        assert "max_queue_size" in info.value.details
        assert len(waiting.result()) == 2
    with Client(batching_address) as client, pytest.raises(InvalidArgumentError, match="max_queue_size"):
        client.classify_batch([png(i) for i in range(3)], model=FULL)


def test_the_client_retries_overloaded_only_when_asked(batching_address: str) -> None:
    with (
        Client(batching_address) as client,
        Client(batching_address, retries=10, retry_overloaded=True) as patient,
        ThreadPoolExecutor(1) as pool,
    ):
        before = counters(client, FULL)
        waiting = pool.submit(client.classify_batch, [png(9), png(10)], model=FULL)
        wait_until_admitted(client, FULL, before.requests + 1)
        with pytest.raises(OverloadedError):
            client.classify(png(11), model=FULL)
        # Retried with backoff until the queued request has run and made room.
        assert len(patient.classify(png(11), model=FULL)) == 5
        assert len(waiting.result()) == 2
