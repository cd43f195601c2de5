"""The dynamic batcher on its own, with a small numpy model: the loop's lifetime and its reports."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from attnserve_server.vision.batcher import BatchingConfig, DynamicBatcher


def row_sums(batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """A stand-in model: one logit per image, its pixel sum."""
    return batch.reshape(len(batch), -1).sum(axis=1, keepdims=True).astype(np.float32)


async def test_an_idle_batcher_ends_its_task_and_the_next_request_restarts_it() -> None:
    # A task waiting forever would keep an unloaded or replaced version (its session) alive.
    seen: list[tuple[int, int]] = []

    def observe(model: str, size: int, waits: Sequence[float], compute_s: float) -> None:
        assert model == "sums" and compute_s >= 0 and all(w >= 0 for w in waits)
        seen.append((size, len(waits)))

    batcher = DynamicBatcher("sums", row_sums, BatchingConfig(max_batch_size=4), observer=observe)
    images = np.arange(2 * 3 * 2 * 2, dtype=np.float32).reshape(2, 3, 2, 2)
    for _ in range(2):
        with batcher.reserve(2) as reservation:
            logits = await reservation.run(images)
        np.testing.assert_allclose(logits[:, 0], images.reshape(2, -1).sum(axis=1))
        assert reservation.timing.compute_s > 0
        for _ in range(100):
            if not batcher.running:
                break
            await asyncio.sleep(0.01)
        assert not batcher.running
    assert seen == [(2, 1), (2, 1)]
    assert batcher.stats.batches == 2 and batcher.stats.items == 4
    batcher.close()
