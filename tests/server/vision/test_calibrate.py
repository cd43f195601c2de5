"""Choosing an image model's largest batch at load (vision/calibrate.py).

The engine here is a stand-in whose cost per batch size is known (it advances a fake clock), so
the choice itself is what is checked; the loader's use of it runs in every image-model test.
"""

from __future__ import annotations

import numpy as np
import pytest

from attnserve_server.vision.calibrate import calibrate, candidate_sizes, choose


@pytest.mark.parametrize(
    ("limit", "sizes"), [(1, [1]), (2, [1, 2]), (8, [1, 2, 4, 8]), (6, [1, 2, 4, 6]), (16, [1, 2, 4, 8, 16])]
)
def test_candidate_sizes(limit: int, sizes: list[int]) -> None:
    assert candidate_sizes(limit) == sizes


def test_choose_prefers_the_smallest_batch_within_five_percent_of_the_best() -> None:
    assert choose({1: 40.0, 2: 38.0, 4: 37.0, 8: 45.0}) == 2  # 38 is within 5 % of 37
    assert choose({1: 10.0, 2: 6.0, 4: 4.0, 8: 3.0}) == 8  # batching pays all the way
    assert choose({1: 17.0, 2: 20.0, 4: 25.0, 8: 40.0}) == 1  # batching never pays


class CostModel:
    """A forward whose call on a batch of n takes ``setup + n * per_image`` seconds of a fake clock;
    its first call of each size costs ``compile`` more, as a new shape's first call may."""

    def __init__(self, setup: float, per_image: float, compile_s: float = 1.0) -> None:
        self.now = 0.0
        self.setup, self.per_image, self.compile_s = setup, per_image, compile_s
        self.seen: set[int] = set()
        self.shapes: list[tuple[int, ...]] = []

    def clock(self) -> float:
        return self.now

    def forward(self, batch: np.ndarray) -> object:
        self.shapes.append(batch.shape)
        n = len(batch)
        self.now += self.setup + n * self.per_image + (self.compile_s if n not in self.seen else 0.0)
        self.seen.add(n)
        return None


def test_calibrate_times_each_size_and_ignores_the_first_call_of_a_shape() -> None:
    overhead_bound = CostModel(setup=0.010, per_image=0.001)  # a fixed cost per call: batching pays
    result = calibrate(overhead_bound.forward, (3, 8, 8), 8, clock=overhead_bound.clock)
    assert result.chosen == 8
    assert result.ms_per_image[1] == pytest.approx(11.0) and result.ms_per_image[8] == pytest.approx(2.25)
    assert [shape[0] for shape in overhead_bound.shapes] == [1, 2, 4, 8, 1, 2, 4, 8]  # two rounds
    assert all(shape[1:] == (3, 8, 8) for shape in overhead_bound.shapes)
    assert "max batch size 8" in result.summary()


def test_calibrate_keeps_batches_of_one_when_batching_costs_more() -> None:
    class GrowingCost(CostModel):
        def forward(self, batch: np.ndarray) -> object:
            n = len(batch)
            self.now += 0.040 * n * (1 + 0.2 * (n - 1))  # per image, bigger batches are slower
            return None

    engine = GrowingCost(setup=0.0, per_image=0.0)
    assert calibrate(engine.forward, (1, 4, 4), 8, clock=engine.clock).chosen == 1
