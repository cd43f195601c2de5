"""Per model version inference statistics, as the v2 protocol's statistics extension reports them.

The handlers record every request once, whichever API it came through. Kept by name and version
outside the repository's model entries, so they outlive a reload. Only touched from the event loop.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class Timings:
    """Where one request's time went, in nanoseconds: waiting for a free slot, then running the model."""

    queue_ns: int = 0
    compute_ns: int = 0


@dataclass
class Duration:
    """How many times something happened and how long it took in total."""

    count: int = 0
    ns: int = 0

    def add(self, ns: int) -> None:
        self.count += 1
        self.ns += ns


@dataclass
class VersionStatistics:
    """Counters of one model version since the server started."""

    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    # Items inferred (a batch of n counts n) and model executions (a batch counts once).
    inference_count: int = 0
    execution_count: int = 0
    # Milliseconds since the epoch of the last inference; 0 if none.
    last_inference_ms: int = 0


class Statistics:
    """Statistics of every model version that has served a request."""

    def __init__(self) -> None:
        self._by_version: dict[tuple[str, str], VersionStatistics] = {}

    def _entry(self, model: str, version: str) -> VersionStatistics:
        return self._by_version.setdefault((model, version), VersionStatistics())

    def record_success(
        self, model: str, version: str, *, total_ns: int, queue_ns: int, compute_ns: int, batch: int
    ) -> None:
        entry = self._entry(model, version)
        entry.success.add(total_ns)
        entry.queue.add(queue_ns)
        entry.compute_infer.add(compute_ns)
        entry.inference_count += batch
        entry.execution_count += 1
        entry.last_inference_ms = time.time_ns() // 1_000_000

    def record_failure(self, model: str, version: str, *, total_ns: int) -> None:
        self._entry(model, version).fail.add(total_ns)

    def of(self, model: str, version: str) -> VersionStatistics:
        """A version's statistics (all zero if it has served nothing yet)."""
        return self._by_version.get((model, version)) or VersionStatistics()
