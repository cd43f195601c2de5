"""Load shedding: offer an image model twice the load it can serve, and see what the refused and the
admitted requests get.

For each server configuration (``--configs``: the model's ``max_queue_size`` and ``max_batch_size``):
1. unloaded: a closed loop at concurrency 1 gives the unloaded p50/p99;
2. saturated: a closed loop at concurrency 8 gives the saturating throughput X (images/s);
3. overload: an open loop sends Poisson arrivals at 2X for ``--duration`` seconds, one image per
   request, without waiting for answers. Refused requests (RESOURCE_EXHAUSTED) report how fast
   they were refused; admitted ones report their latency.

Targets: refused within 10 ms (p99); admitted p99 <= 2x the unloaded p99.

    python benchmarks/image_overload.py [--duration 10] [--configs 256:8,8:8,2:1]

Uses the DeiT-Ti-shaped model of benchmarks/image_throughput.py. Prints JSON and writes
``benchmarks/results/image_overload.{json,png}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import signal
import sys
import time
from pathlib import Path
from typing import Any

from closed_loop import percentile
from image_throughput import MODEL, RESULTS, attnserve_point, export_model, png_images, start_attnserve

from attnserve_client import AsyncClient, OverloadedError
from attnserve_server.runtime import available_cpus

REFUSAL_TARGET_MS = 10.0


async def open_loop(address: str, images: list[bytes], rate: float, duration: float) -> dict[str, Any]:
    """Poisson arrivals at ``rate`` requests/s for ``duration`` s; every answer is awaited at the end."""
    admitted: list[float] = []
    refused: list[float] = []
    failed: list[str] = []
    rng = random.Random(0)

    async with AsyncClient(address, timeout=60, retries=0) as client:

        async def one(i: int) -> None:
            start = time.perf_counter()
            try:
                await client.classify(images[i % len(images)], model=MODEL, top_k=5)
            except OverloadedError:
                refused.append((time.perf_counter() - start) * 1000)
                return
            except Exception as exc:  # recorded, so that a failure shows in the report
                failed.append(repr(exc)[:200])
                return
            admitted.append((time.perf_counter() - start) * 1000)

        tasks = []
        begin = time.perf_counter()
        due = begin
        i = 0
        while due - begin < duration:
            due += rng.expovariate(rate)
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i)))
            i += 1
        offered_s = time.perf_counter() - begin
        await asyncio.gather(*tasks)
    return {
        "offered_rate": rate,
        "sent": len(tasks),
        "sent_rate": len(tasks) / offered_s,
        "admitted": len(admitted),
        "admitted_rate": len(admitted) / offered_s,
        "refused": len(refused),
        "failed": len(failed),
        "first_failure": failed[0] if failed else None,
        "admitted_p50_ms": percentile(admitted, 0.5),
        "admitted_p99_ms": percentile(admitted, 0.99),
        "refused_p50_ms": percentile(refused, 0.5),
        "refused_p99_ms": percentile(refused, 0.99),
        "refused_max_ms": max(refused, default=float("nan")),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=available_cpus())
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument(
        "--configs",
        default="256:8,8:8,2:1",
        help="server configurations, max_queue_size:max_batch_size each (256:8 is the default one)",
    )
    args = parser.parse_args()
    version_dir = export_model()
    images = png_images(32)
    rows = []
    for config in args.configs.split(","):
        queue_size, max_batch_size = (int(x) for x in config.split(":"))
        flags = ["--image-max-queue-size", str(queue_size), "--image-max-batch-size", str(max_batch_size)]
        process, address = start_attnserve(version_dir.parent.parent, args.threads, flags)
        try:
            unloaded = attnserve_point(address, images, 1, args.duration / 2)
            saturated = attnserve_point(address, images, 8, args.duration / 2)
            overload = asyncio.run(open_loop(address, images, 2 * saturated["throughput"], args.duration))
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(60)
        row = {
            "max_queue_size": queue_size,
            "max_batch_size": max_batch_size,
            "unloaded_p50_ms": unloaded["p50_ms"],
            "unloaded_p99_ms": unloaded["p99_ms"],
            "saturated_throughput": saturated["throughput"],
            "saturated_p99_ms": saturated["p99_ms"],
            **overload,
        }
        row["targets"] = {
            "refused_p99_within_10ms": row["refused_p99_ms"] <= REFUSAL_TARGET_MS if row["refused"] else None,
            "admitted_p99_over_unloaded_p99": round(row["admitted_p99_ms"] / row["unloaded_p99_ms"], 2),
            "admitted_p99_within_2x_unloaded": row["admitted_p99_ms"] <= 2 * row["unloaded_p99_ms"],
            "admitted_p99_over_saturated_p99": round(row["admitted_p99_ms"] / row["saturated_p99_ms"], 2),
        }
        # No refusals leave NaN quantiles: null in the JSON (NaN is not JSON).
        rows.append({k: None if isinstance(v, float) and math.isnan(v) else v for k, v in row.items()})
        print(rows[-1], file=sys.stderr)
    report = {"benchmark": "image_overload", "threads": args.threads, "duration_s": args.duration, "rows": rows}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "image_overload.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(rows, RESULTS / "image_overload.png")
    print(json.dumps(report, indent=2))


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    labels = ["unloaded p99", "saturated p99", "overload: admitted p99", "overload: refused p99"]
    keys = ["unloaded_p99_ms", "saturated_p99_ms", "admitted_p99_ms", "refused_p99_ms"]
    width = 0.8 / len(rows)
    for n, row in enumerate(rows):
        xs = [i + n * width for i in range(len(keys))]
        label = f"max_queue_size {row['max_queue_size']}, max_batch_size {row['max_batch_size']}"
        ax.bar(xs, [row[k] or 0 for k in keys], width=width, label=label)
    ax.set_xticks([i + width * (len(rows) - 1) / 2 for i in range(len(keys))], labels)
    ax.axhline(REFUSAL_TARGET_MS, color="grey", linestyle=":", label="10 ms (refusal target)")
    ax.set_yscale("log")
    ax.set_ylabel("ms")
    ax.set_title("2x the saturating load (open loop, Poisson arrivals)")
    ax.legend(fontsize=8)
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
