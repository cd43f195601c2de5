"""A closed-loop load generator: ``concurrency`` workers, each sending its next request as soon as
the previous one answers. Standard library only, so it runs in any venv (MLServer's too).
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable
from typing import Any


def percentile(samples: list[float], q: float) -> float:
    """The q-quantile (0..1) by linear interpolation; NaN if there are no samples."""
    if not samples:
        return float("nan")
    ordered = sorted(samples)
    pos = q * (len(ordered) - 1)
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def closed_loop(
    make_call: Callable[[int], Callable[[int], object]], concurrency: int, duration_s: float, warmup_s: float = 1.0
) -> dict[str, Any]:
    """Run ``concurrency`` workers for ``warmup_s + duration_s``; measure the last ``duration_s``.

    ``make_call(worker)`` returns that worker's ``call(i)``, which sends request ``i`` and blocks
    until it answers. Returns images/s (one image per request), p50/p99 latency in ms, the
    request count and the errors.
    """
    start = time.perf_counter() + 0.2
    measure_from, end = start + warmup_s, start + warmup_s + duration_s
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    errors: list[str] = []

    def worker(index: int) -> None:
        call = make_call(index)
        i = 0
        while time.perf_counter() < start:
            time.sleep(0.001)
        while True:
            sent = time.perf_counter()
            if sent >= end:
                return
            try:
                call(i)
            except Exception as exc:  # a benchmark records failures instead of dying on the first
                errors.append(repr(exc)[:200])
                continue
            done = time.perf_counter()
            if sent >= measure_from and done <= end:
                latencies[index].append(done - sent)
            i += 1

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    flat = [x for per in latencies for x in per]
    return {
        "concurrency": concurrency,
        "requests": len(flat),
        "throughput": len(flat) / duration_s,
        "p50_ms": percentile(flat, 0.5) * 1000,
        "p99_ms": percentile(flat, 0.99) * 1000,
        "mean_ms": statistics.fmean(flat) * 1000 if flat else float("nan"),
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
    }
