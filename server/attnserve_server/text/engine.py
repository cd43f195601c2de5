"""The engine of a text-generation version: its generator and the continuous batcher that steps it."""

from __future__ import annotations

from dataclasses import dataclass

from attnserve_server.loaded import BatchStats
from attnserve_server.text.continuous import ContinuousBatcher
from attnserve_server.text.generator import TextGenerator


@dataclass
class TextEngine:
    """One loaded text model: calls of its graph, and the scheduler that batches every request's steps."""

    generator: TextGenerator
    batcher: ContinuousBatcher

    def describe(self) -> str:
        return self.generator.describe()

    def batch_stats(self) -> BatchStats:
        return BatchStats()  # the continuous batcher reports its steps as metrics instead

    def close(self) -> None:
        self.batcher.close()
