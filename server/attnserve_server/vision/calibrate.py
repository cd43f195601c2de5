"""Choosing an image model's largest batch at load: the size past which batching stops paying.

A batched call is not always cheaper per image. On a 2-core CPU, ONNX Runtime ran the DeiT-Ti
shape at 17.8 images/s at batch 1 and 7.4 at batch 8 (docs/results.md), while OpenVINO's bf16
kernels gain from batches. The batcher merges requests up to its ``max_batch_size``; a batch that
costs more per image than a smaller one only adds latency and loses throughput. So, unless the
model's ``config.yaml`` fixes ``dynamic_batching.max_batch_size``, the loader times the engine at
batch 1, 2, 4, ... up to the server's limit, and caps batches at the smallest size whose time per
image is within :data:`WITHIN` of the best (smaller batches wait less for company).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

# A batch size within 5 % of the best time per image counts as the best: on a shared machine,
# smaller differences are noise, and a smaller batch has less latency.
WITHIN = 0.05

Forward = Callable[[npt.NDArray[np.float32]], object]


@dataclass(frozen=True)
class Calibration:
    """What the loader measured: ms per image by batch size (the best of two calls), and the choice."""

    ms_per_image: dict[int, float]
    chosen: int

    def summary(self) -> str:
        measured = ", ".join(f"{size}: {ms:.3g}" for size, ms in self.ms_per_image.items())
        return f"max batch size {self.chosen} (ms per image by batch size: {measured})"


def candidate_sizes(max_batch_size: int) -> list[int]:
    """1, 2, 4, ... below ``max_batch_size``, and ``max_batch_size`` itself."""
    sizes = [1]
    while sizes[-1] * 2 < max_batch_size:
        sizes.append(sizes[-1] * 2)
    if sizes[-1] != max_batch_size:
        sizes.append(max_batch_size)
    return sizes


def choose(ms_per_image: dict[int, float]) -> int:
    """The smallest batch size whose ms per image is within WITHIN of the best."""
    best = min(ms_per_image.values())
    return min(size for size, ms in ms_per_image.items() if ms <= best * (1 + WITHIN))


def calibrate(
    forward: Forward,
    image_shape: tuple[int, int, int],
    max_batch_size: int,
    clock: Callable[[], float] = time.perf_counter,
) -> Calibration:
    """Time ``forward`` on generated ``(size, C, H, W)`` batches, in two rounds over every size (the
    first call of a new shape may compile kernels), keeping each size's faster call. Interleaving
    the sizes, rather than timing one size after the other, spreads a slow spell of a shared
    machine over all of them instead of pinning it on one."""
    images = np.random.default_rng(0).standard_normal((max_batch_size, *image_shape)).astype(np.float32)
    sizes = candidate_sizes(max_batch_size)
    fastest = dict.fromkeys(sizes, float("inf"))
    for _ in range(2):
        for size in sizes:
            batch = np.ascontiguousarray(images[:size])
            started = clock()
            forward(batch)
            fastest[size] = min(fastest[size], clock() - started)
    ms_per_image = {size: seconds * 1000 / size for size, seconds in fastest.items()}
    return Calibration(ms_per_image, choose(ms_per_image))
