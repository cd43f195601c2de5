"""Text generation under load through the real server: continuous batching and load shedding.

For each model (the shipped ``shakespeare-gpt`` and ``gpt2-small`` with random weights), a real
``attnserve-server`` process is started on a free loopback port and driven by an asyncio load
generator in this process (one gRPC channel, ``AsyncClient`` with no retries):

1. **Concurrency sweep.** A closed loop of 1, 4 and 16 concurrent streams; each stream sends
   ``GenerateStream`` requests back to back. After ``--warmup`` seconds (so that the streams no
   longer start in step) a window of ``--seconds`` is measured: aggregate tokens/s counts the tokens
   that arrived in the window, and time to first token (TTFT) p50/p99 and request latency p50/p99
   are over the requests that started and ended in it; requests still running at its end are
   cancelled. Targets of issue 4: tokens/s at 16
   streams >= 6 x at 1 stream; TTFT p99 at 16 streams <= 3 x the idle TTFT (p50 at 1 stream).
2. **Overload.** A second server, configured to shed load (``--overload-active`` sequences in the
   batch, no wait queue). Its saturating rate is the request rate of a closed loop that keeps
   every slot busy; then requests arrive open-loop (Poisson) at twice that rate. Reported: how many
   were refused, how fast the refusal (RESOURCE_EXHAUSTED) came back (target: within 10 ms), and
   the latency p99 of admitted requests against the p99 of the same requests on the idle server
   (target: <= 2 x).

Every request uses the model's default sampling with its own seed. Prints JSON and writes
``benchmarks/results/text_throughput.{json,png}``.

    python benchmarks/text_throughput.py                       # both models
    python benchmarks/text_throughput.py --models shakespeare-gpt --seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from attnserve_client import AsyncClient, OverloadedError
from attnserve_server.runtime import available_cpus

sys.path.insert(0, str(Path(__file__).resolve().parent))
from server_ttft import PROMPT
from serving import start_server
from text_decode_latency import gpt2_small_entry

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
CONCURRENCY = (1, 4, 16)
MAX_NEW_TOKENS = {"shakespeare-gpt": 64, "gpt2-small": 32}


@dataclass
class Outcome:
    """One request as the client saw it."""

    ok: bool
    started: float = 0.0
    tokens: int = 0
    ttft_ms: float = 0.0
    latency_ms: float = 0.0
    refused: bool = False
    error: str = ""


@dataclass
class Window:
    outcomes: list[Outcome] = field(default_factory=list)
    seconds: float = 0.0
    # Tokens received in the window, whatever request they belong to (closed loops); None: those of
    # the completed requests (the open loop, which waits for every request).
    tokens_in_window: int | None = None
    # Requests that ended in the window, wherever they started (closed loops).
    completed_in_window: int | None = None

    def summary(self) -> dict[str, Any]:
        done = [o for o in self.outcomes if o.ok]
        tokens = sum(o.tokens for o in done) if self.tokens_in_window is None else self.tokens_in_window
        return {
            "requests": len(done),
            "tokens": tokens,
            "seconds": round(self.seconds, 2),
            "tokens_per_s": round(tokens / self.seconds, 1),
            "requests_per_s": round(
                (len(done) if self.completed_in_window is None else self.completed_in_window) / self.seconds, 3
            ),
            "ttft_ms": quantiles([o.ttft_ms for o in done]),
            "latency_ms": quantiles([o.latency_ms for o in done]),
            "errors": sorted({o.error for o in self.outcomes if not o.ok and o.error}),
        }


def quantiles(samples: list[float]) -> dict[str, float]:
    if not samples:
        return {"p50": float("nan"), "p99": float("nan")}
    data = np.asarray(samples)
    return {"p50": round(float(np.percentile(data, 50)), 2), "p99": round(float(np.percentile(data, 99)), 2)}


async def one_request(
    client: AsyncClient, model: str, max_new_tokens: int, seed: int, arrivals: list[float] | None = None
) -> Outcome:
    """One streamed generation; each token's arrival time goes to ``arrivals``."""
    start = time.perf_counter()
    first: float | None = None
    tokens = 0
    try:
        async for chunk in client.generate_stream(PROMPT, model=model, max_new_tokens=max_new_tokens, seed=seed):
            now = time.perf_counter()
            if first is None:
                first = now
            tokens += len(chunk.token_ids)
            if arrivals is not None:
                arrivals.extend([now] * len(chunk.token_ids))
    except OverloadedError:
        return Outcome(ok=False, refused=True, latency_ms=(time.perf_counter() - start) * 1e3)
    except Exception as exc:  # reported, not hidden: a benchmark must not crash on one failure
        return Outcome(ok=False, error=f"{type(exc).__name__}: {exc}"[:200])
    end = time.perf_counter()
    return Outcome(
        ok=True,
        started=start,
        tokens=tokens,
        ttft_ms=((first or end) - start) * 1e3,
        latency_ms=(end - start) * 1e3,
    )


async def closed_loop(
    address: str, model: str, concurrency: int, seconds: float, max_new_tokens: int, *, warmup: float
) -> Window:
    """``concurrency`` streams, each sending its next request as soon as the previous one ends.

    Only the steady state counts: tokens that arrive in ``[warmup, warmup + seconds]`` and requests
    that start and end in it.
    """
    arrivals: list[float] = []
    outcomes: list[Outcome] = []
    async with AsyncClient(address, timeout=300.0, retries=0) as client:
        # Connections, ORT arenas and batch shapes, before anything is timed.
        await asyncio.gather(*(one_request(client, model, 4, seed) for seed in range(concurrency)))
        window_start = time.perf_counter() + warmup
        window_end = window_start + seconds

        async def stream(worker: int) -> None:
            n = 0
            while True:
                outcomes.append(await one_request(client, model, max_new_tokens, worker * 100_000 + n, arrivals))
                n += 1

        workers = [asyncio.create_task(stream(w)) for w in range(concurrency)]
        await asyncio.sleep(window_end - time.perf_counter())
        for worker in workers:  # cut off the requests still running; their tokens so far are counted
            worker.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
    in_window = [o for o in outcomes if window_start <= o.started and o.started + o.latency_ms / 1e3 <= window_end]
    return Window(
        outcomes=in_window,
        seconds=seconds,
        tokens_in_window=sum(window_start <= t <= window_end for t in arrivals),
        completed_in_window=sum(
            o.ok and window_start <= o.started + o.latency_ms / 1e3 <= window_end for o in outcomes
        ),
    )


async def open_loop(address: str, model: str, rate: float, seconds: float, max_new_tokens: int) -> Window:
    """Poisson arrivals at ``rate`` requests/s for ``seconds``, whatever the server does."""
    window = Window()
    rng = random.Random(0)
    async with AsyncClient(address, timeout=300.0, retries=0) as client:
        tasks = []
        start = time.perf_counter()
        next_at = start
        n = 0
        while next_at < start + seconds:
            await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
            tasks.append(asyncio.create_task(one_request(client, model, max_new_tokens, n)))
            n += 1
            next_at += rng.expovariate(rate)
        window.outcomes = list(await asyncio.gather(*tasks))
        window.seconds = time.perf_counter() - start
    return window


def repository_for(name: str, shipped: Path) -> Path:
    if name != "gpt2-small":
        return shipped
    root = Path(tempfile.mkdtemp(prefix="attnserve-bench-repo-"))
    (root / "gpt2-small").symlink_to(gpt2_small_entry().parent, target_is_directory=True)
    return root


def stop(process: Any) -> None:
    process.send_signal(signal.SIGTERM)
    process.wait(60)


def bench_model(name: str, args: argparse.Namespace) -> dict[str, Any]:
    repository = repository_for(name, args.repository)
    tokens = MAX_NEW_TOKENS.get(name, 32)
    result: dict[str, Any] = {"model": name, "max_new_tokens": tokens, "threads": args.threads}

    process, address = start_server(repository, "--intra-op-threads", str(args.threads), "--max-active-sequences", "16")
    try:
        sweep = {}
        for concurrency in CONCURRENCY:
            window = asyncio.run(closed_loop(address, name, concurrency, args.seconds, tokens, warmup=args.warmup))
            sweep[concurrency] = window.summary()
            print(f"{name} c={concurrency}: {sweep[concurrency]}", file=sys.stderr)
    finally:
        stop(process)
    idle_ttft = sweep[1]["ttft_ms"]["p50"]
    speedup = sweep[16]["tokens_per_s"] / sweep[1]["tokens_per_s"]
    ttft_ratio = sweep[16]["ttft_ms"]["p99"] / idle_ttft
    result["concurrency"] = {str(c): s for c, s in sweep.items()}
    result["tokens_per_s_16_over_1"] = round(speedup, 2)
    result["ttft_p99_16_over_idle"] = round(ttft_ratio, 2)
    result["meets_targets"] = {"throughput_6x": speedup >= 6.0, "ttft_p99_3x": ttft_ratio <= 3.0}

    active = args.overload_active
    process, address = start_server(
        repository,
        "--intra-op-threads",
        str(args.threads),
        "--max-active-sequences",
        str(active),
        "--max-waiting-sequences",
        "0",
    )
    try:
        unloaded = asyncio.run(closed_loop(address, name, 1, args.seconds, tokens, warmup=args.warmup)).summary()
        saturated = asyncio.run(closed_loop(address, name, active, args.seconds, tokens, warmup=args.warmup)).summary()
        offered = 2.0 * saturated["requests_per_s"]
        overload = asyncio.run(open_loop(address, name, offered, args.seconds, tokens))
    finally:
        stop(process)
    admitted = overload.summary()
    refused = [o.latency_ms for o in overload.outcomes if o.refused]
    refused_within_10ms = sum(ms <= 10.0 for ms in refused)
    latency_ratio = admitted["latency_ms"]["p99"] / unloaded["latency_ms"]["p99"]
    result["overload"] = {
        "server": {"max_active_sequences": active, "max_waiting_sequences": 0},
        "unloaded": unloaded,
        "saturating_closed_loop": saturated,
        "offered_requests_per_s": round(offered, 3),
        "offered_requests": len(overload.outcomes),
        "admitted": admitted,
        "refused": len(refused),
        "refusal_ms": quantiles(refused) | {"max": round(max(refused), 2) if refused else float("nan")},
        "refused_within_10ms": refused_within_10ms,
        "admitted_latency_p99_over_unloaded_p99": round(latency_ratio, 2),
        "meets_targets": {
            "refusal_within_10ms": bool(refused) and refused_within_10ms == len(refused),
            "admitted_p99_2x": latency_ratio <= 2.0,
        },
    }
    print(f"{name} overload: {result['overload']}", file=sys.stderr)
    return result


def plot(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(results), 3, figsize=(15, 4.2 * len(results)), squeeze=False)
    for row, result in zip(axes, results, strict=True):
        levels = list(result["concurrency"])
        sweep = [result["concurrency"][c] for c in levels]
        row[0].bar(levels, [s["tokens_per_s"] for s in sweep], color="tab:blue")
        row[0].set_xlabel("concurrent streams")
        row[0].set_ylabel("aggregate tokens/s")
        row[0].set_title(f"{result['model']}: throughput ({result['tokens_per_s_16_over_1']}x at 16)")
        x = np.arange(len(levels))
        row[1].bar(x - 0.2, [s["ttft_ms"]["p50"] for s in sweep], 0.4, label="p50")
        row[1].bar(x + 0.2, [s["ttft_ms"]["p99"] for s in sweep], 0.4, label="p99")
        row[1].axhline(3 * sweep[0]["ttft_ms"]["p50"], color="red", linestyle="--", label="3 x idle TTFT")
        row[1].set_xticks(x, levels)
        row[1].set_xlabel("concurrent streams")
        row[1].set_ylabel("time to first token (ms)")
        row[1].legend()
        o = result["overload"]
        labels = ["unloaded p99", "admitted p99\n(2x load)", "refusal max"]
        values = [o["unloaded"]["latency_ms"]["p99"], o["admitted"]["latency_ms"]["p99"], o["refusal_ms"]["max"]]
        row[2].bar(labels, values, color=["tab:green", "tab:orange", "tab:red"])
        row[2].axhline(2 * values[0], color="gray", linestyle="--", label="2 x unloaded p99")
        row[2].set_yscale("log")
        row[2].set_ylabel("ms")
        row[2].set_title(f"overload: {o['refused']} of {o['offered_requests']} refused")
        row[2].legend()
        for ax in row:
            ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="shakespeare-gpt,gpt2-small")
    parser.add_argument("--repository", type=Path, default=REPO / "models")
    parser.add_argument("--threads", type=int, default=available_cpus(), help="the server's ONNX Runtime threads")
    parser.add_argument("--seconds", type=float, default=15.0, help="length of each measured window")
    parser.add_argument("--warmup", type=float, default=10.0, help="seconds of load before each closed-loop window")
    parser.add_argument(
        "--overload-active", type=int, default=4, help="max_active_sequences of the load-shedding server"
    )
    args = parser.parse_args()
    results = [bench_model(name, args) for name in args.models.split(",")]
    report = {
        "benchmark": "text_throughput",
        "cpus": available_cpus(),
        "seconds_per_window": args.seconds,
        "warmup_seconds": args.warmup,
        "prompt": PROMPT,
        "results": results,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "text_throughput.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(results, RESULTS / "text_throughput.png")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
