"""Soak: a mixed load at about 70 % of saturation for ``--minutes``, watching the server's memory.

1. The server serves the shipped repository (``models/``: shakespeare-gpt, numbers-translator, digits-vit, digits-swin).
2. Saturation: closed loops of 4, 8, 16, 32 and 64 workers send the mix below for
   ``--saturation-seconds`` each (after 3 s of warm-up); the best throughput X (requests/s) is
   the saturating rate (or ``--rate`` gives the soak's rate directly).
3. Soak: Poisson arrivals at ``--load-fraction`` (0.7) × X for ``--minutes`` (30), each request
   of a kind drawn from the mix:
   - ``generate`` and ``generate_stream``: attnserve.v1 text generation (8-24 new tokens);
   - ``classify``: attnserve.v1 Classify of 1-4 PNG digits on digits-vit or digits-swin;
   - ``v2_image`` (FP32 pixels as raw contents) and ``v2_text``: KServe v2 ModelInfer;
   - ``cancel``: a GenerateStream or a v2 ModelStreamInfer dropped after its first responses;
   - ``deadline``: a Generate or a Classify with a deadline of 1-5 ms;
   - ``bad``: requests the server must refuse (empty prompt, NaN temperature, unknown model,
     bytes that are no image, a v2 tensor of the wrong shape or datatype).
   The load generator is one process of grpc.aio, so it costs little CPU.
4. The server's resident memory (``VmRSS`` of ``/proc/<pid>/status``) is read every 5 s.

Report (JSON on stdout and in ``benchmarks/results/soak.json``, plot in ``soak.png``; with
``--leak``, ``soak-leak.{json,png}``): the RSS every minute and its growth from the middle of the
soak to its end, the status codes (overall and per kind), latency percentiles per kind, and the
load average before and after. Targets: growth <= 20 MB from the middle to the end, and no
INTERNAL or UNKNOWN status.

``--leak`` runs the server through ``benchmarks/leaky_server.py``, which keeps every text and
image request and a 64 KiB buffer: the negative control, whose growth the report must flag.

    python benchmarks/soak.py [--minutes 30] [--rate R] [--leak]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import math
import os
import random
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from closed_loop import percentile
from PIL import Image
from serving import start_server

from attnserve_client.pb import image_classification_pb2 as image_pb
from attnserve_client.pb import image_classification_pb2_grpc as image_grpc
from attnserve_client.pb import text_generation_pb2 as text_pb
from attnserve_client.pb import text_generation_pb2_grpc as text_grpc
from attnserve_server.kserve.pb import grpc_service_pb2 as v2
from attnserve_server.kserve.pb import grpc_service_pb2_grpc as v2_grpc

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
TEXT_MODEL = "shakespeare-gpt"
IMAGE_MODELS = ("digits-vit", "digits-swin")
GROWTH_TARGET_MB = 20.0
UNEXPECTED = ("INTERNAL", "UNKNOWN")
TIMEOUT_S = 30.0
RSS_EVERY_S = 5.0
BUCKET_S = 10.0
SATURATION_CONCURRENCIES = (4, 8, 16, 32, 64)

# The mix: kind -> share of the requests.
MIX = {
    "generate": 0.16,
    "generate_stream": 0.12,
    "classify": 0.20,
    "v2_image": 0.12,
    "v2_text": 0.08,
    "cancel": 0.10,
    "deadline": 0.10,
    "bad": 0.12,
}
# What each kind may get without it being a surprise (others are listed in the report).
EXPECTED = {
    "cancel": {"CANCELLED", "OK"},
    "deadline": {"DEADLINE_EXCEEDED", "OK"},
    "bad": {"INVALID_ARGUMENT", "NOT_FOUND", "FAILED_PRECONDITION"},
}
PROMPTS = ("ROMEO:\n", "JULIET:\nO Romeo", "First Citizen:\n", "KING HENRY:\nOnce more", "To be, or not", "HAMLET:\n")


def rss_mb(pid: int) -> float:
    """The resident set size of process ``pid`` in MB (``VmRSS`` of /proc/<pid>/status); NaN once it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return math.nan
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return math.nan  # a zombie has no VmRSS


def png_digits(count: int, seed: int = 0) -> list[bytes]:
    """Grey PNGs of a few sizes (the server resizes them to 16 × 16)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        size = (16, 28, 40)[i % 3]
        array = np.zeros((size, size), np.uint8)
        array[size // 4 : 3 * size // 4, size // 3 : 2 * size // 3] = rng.integers(128, 256)
        array = np.clip(array + rng.integers(0, 40, array.shape), 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(array, "L").save(buffer, format="PNG")
        out.append(buffer.getvalue())
    return out


class Traffic:
    """One request of each kind, on one grpc.aio channel."""

    def __init__(self, channel: grpc.aio.Channel, seed: int) -> None:
        self.text = text_grpc.TextGenerationServiceStub(channel)
        self.image = image_grpc.ImageClassificationServiceStub(channel)
        self.v2 = v2_grpc.GRPCInferenceServiceStub(channel)
        self.rng = random.Random(seed)
        self.pngs = png_digits(24, seed)
        self.pixels = [np.random.default_rng(seed + b).standard_normal((b, 1, 16, 16)).astype("<f4") for b in (1, 2, 4)]
        self.kinds = list(MIX)
        self.weights = list(MIX.values())

    def pick(self) -> str:
        return self.rng.choices(self.kinds, self.weights)[0]

    def generate_request(self, max_new_tokens: int) -> text_pb.GenerateRequest:
        return text_pb.GenerateRequest(
            model=TEXT_MODEL,
            prompt=self.rng.choice(PROMPTS),
            parameters=text_pb.GenerationParameters(
                max_new_tokens=max_new_tokens, temperature=0.8, top_k=40, seed=self.rng.randrange(2**32)
            ),
        )

    def text_tensor_request(self, max_tokens: int) -> v2.ModelInferRequest:
        request = v2.ModelInferRequest(model_name=TEXT_MODEL)
        tensor = request.inputs.add(name="text_input", datatype="BYTES", shape=[1])
        tensor.contents.bytes_contents.append(self.rng.choice(PROMPTS).encode())
        request.parameters["max_tokens"].int64_param = max_tokens
        request.parameters["seed"].int64_param = self.rng.randrange(2**31)
        return request

    async def run(self, kind: str) -> str:
        """Send one request of ``kind``; its status code name."""
        try:
            code: str | None = await getattr(self, kind)()
        except grpc.aio.AioRpcError as exc:
            return str(exc.code().name)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a client-side failure is reported, not fatal
            return f"client {type(exc).__name__}"
        return code or "OK"

    async def generate(self) -> None:
        await self.text.Generate(self.generate_request(self.rng.randint(8, 24)), timeout=TIMEOUT_S)

    async def generate_stream(self) -> None:
        async for _ in self.text.GenerateStream(self.generate_request(self.rng.randint(8, 24)), timeout=TIMEOUT_S):
            pass

    async def classify(self) -> None:
        images = self.rng.sample(self.pngs, self.rng.randint(1, 4))
        request = image_pb.ClassifyRequest(model=self.rng.choice(IMAGE_MODELS), images=images, top_k=3)
        await self.image.Classify(request, timeout=TIMEOUT_S)

    async def v2_image(self) -> None:
        pixels = self.rng.choice(self.pixels)
        request = v2.ModelInferRequest(model_name=self.rng.choice(IMAGE_MODELS))
        request.inputs.add(name="pixel_values", datatype="FP32", shape=list(pixels.shape))
        request.raw_input_contents.append(pixels.tobytes())
        await self.v2.ModelInfer(request, timeout=TIMEOUT_S)

    async def v2_text(self) -> None:
        await self.v2.ModelInfer(self.text_tensor_request(self.rng.randint(8, 16)), timeout=TIMEOUT_S)

    async def cancel(self) -> str:
        """A stream dropped after its first response(s): the client cancels, the server must clean up."""
        if self.rng.random() < 0.5:
            stream = self.text.GenerateStream(self.generate_request(64), timeout=TIMEOUT_S)
            keep = self.rng.randint(1, 3)
            async for _ in stream:
                keep -= 1
                if keep == 0:
                    stream.cancel()
                    break
            code = await stream.code()
        else:
            call = self.v2.ModelStreamInfer(timeout=TIMEOUT_S)
            await call.write(self.text_tensor_request(64))
            await call.read()
            call.cancel()
            code = await call.code()
        return str(code.name)

    async def deadline(self) -> None:
        if self.rng.random() < 0.5:
            await self.text.Generate(self.generate_request(24), timeout=self.rng.choice((0.002, 0.005)))
        else:
            request = image_pb.ClassifyRequest(model=self.rng.choice(IMAGE_MODELS), images=self.pngs[:4])
            await self.image.Classify(request, timeout=self.rng.choice((0.001, 0.003)))

    async def bad(self) -> None:
        choice = self.rng.randrange(7)
        if choice == 0:
            await self.text.Generate(text_pb.GenerateRequest(model=TEXT_MODEL, prompt=""), timeout=TIMEOUT_S)
        elif choice == 1:
            request = self.generate_request(8)
            request.parameters.temperature = math.nan
            await self.text.Generate(request, timeout=TIMEOUT_S)
        elif choice == 2:
            request = image_pb.ClassifyRequest(model="no-such-model", images=self.pngs[:1])
            await self.image.Classify(request, timeout=TIMEOUT_S)
        elif choice == 3:
            request = image_pb.ClassifyRequest(model=IMAGE_MODELS[0], images=[b"\x89PNG\r\n\x1a\n" + b"\x00" * 64])
            await self.image.Classify(request, timeout=TIMEOUT_S)
        elif choice == 4:
            request = v2.ModelInferRequest(model_name=IMAGE_MODELS[1])
            request.inputs.add(name="pixel_values", datatype="FP32", shape=[1, 3, 16, 16])
            request.raw_input_contents.append(bytes(3 * 16 * 16 * 4))
            await self.v2.ModelInfer(request, timeout=TIMEOUT_S)
        elif choice == 5:
            request = self.text_tensor_request(8)
            request.inputs[0].datatype = "FP32"
            await self.v2.ModelInfer(request, timeout=TIMEOUT_S)
        else:
            request = self.generate_request(8)
            request.parameters.max_new_tokens = 10**6
            await self.text.Generate(request, timeout=TIMEOUT_S)


@dataclass
class Record:
    t: float  # seconds since the phase began, at completion
    kind: str
    code: str
    latency_s: float


async def timed(traffic: Traffic, kind: str, start: float, records: list[Record]) -> None:
    sent = time.perf_counter()
    code = await traffic.run(kind)
    done = time.perf_counter()
    records.append(Record(done - start, kind, code, done - sent))


async def closed_loop_point(traffic: Traffic, concurrency: int, seconds: float) -> dict[str, Any]:
    """Closed loop of the mix: ``concurrency`` workers for 3 s of warm-up and then ``seconds``."""
    records: list[Record] = []
    start = time.perf_counter()
    end = start + 3.0 + seconds

    async def worker() -> None:
        while time.perf_counter() < end:
            await timed(traffic, traffic.pick(), start, records)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    measured = [r for r in records if 3.0 <= r.t <= 3.0 + seconds]
    return {
        "concurrency": concurrency,
        "seconds": seconds,
        "requests_per_s": len(measured) / seconds,
        "codes": dict(Counter(r.code for r in measured)),
    }


async def saturation(traffic: Traffic, seconds: float, progress: Callable[[str], None]) -> dict[str, Any]:
    """The best closed-loop throughput over concurrencies 4 to 64."""
    points: list[dict[str, Any]] = []
    for concurrency in SATURATION_CONCURRENCIES:
        points.append(await closed_loop_point(traffic, concurrency, seconds))
        progress(f"saturation: {concurrency} workers, {points[-1]['requests_per_s']:.1f} requests/s")
    best = max(points, key=lambda p: p["requests_per_s"])
    return {"requests_per_s": best["requests_per_s"], "concurrency": best["concurrency"], "points": points}


async def open_loop(
    traffic: Traffic, pid: int, rate: float, seconds: float, *, max_in_flight: int, progress: Callable[[str], None]
) -> tuple[list[Record], list[tuple[float, float]], int]:
    """Poisson arrivals at ``rate`` for ``seconds``; the records, the RSS samples (s, MB) and the
    arrivals left out because ``max_in_flight`` requests were already waiting."""
    records: list[Record] = []
    samples: list[tuple[float, float]] = []
    start = time.perf_counter()
    stop = asyncio.Event()

    async def sample_rss() -> None:
        next_minute = 60.0
        while not stop.is_set():
            now = time.perf_counter() - start
            samples.append((now, rss_mb(pid)))
            if now >= next_minute:
                done = [r for r in records if r.t >= now - 60]
                codes = Counter(r.code for r in done)
                progress(f"minute {now / 60:.0f}: RSS {samples[-1][1]:.1f} MB, {len(done)} answers, {dict(codes)}")
                next_minute += 60.0
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), RSS_EVERY_S)

    sampler = asyncio.create_task(sample_rss())
    in_flight: set[asyncio.Task[None]] = set()
    skipped = 0
    rng = random.Random(1)
    due = start
    while True:
        due += rng.expovariate(rate)
        if due - start >= seconds:
            break
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        if len(in_flight) >= max_in_flight:
            skipped += 1
            continue
        task = asyncio.create_task(timed(traffic, traffic.pick(), start, records))
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)
    await asyncio.sleep(max(0.0, start + seconds - time.perf_counter()))
    samples.append((time.perf_counter() - start, rss_mb(pid)))
    stop.set()
    await sampler
    if in_flight:
        await asyncio.wait(list(in_flight), timeout=TIMEOUT_S + 5)
    return records, samples, skipped


def window_median(samples: list[tuple[float, float]], lo: float, hi: float) -> float:
    inside = [mb for t, mb in samples if lo <= t <= hi]
    if not inside:  # the nearest sample to the window's centre
        centre = (lo + hi) / 2
        inside = [min(samples, key=lambda s: abs(s[0] - centre))[1]]
    return float(np.median(inside))


def summarize(
    records: list[Record], samples: list[tuple[float, float]], seconds: float, skipped: int
) -> dict[str, Any]:
    window = max(RSS_EVERY_S * 2, 0.05 * seconds)
    middle = window_median(samples, seconds / 2 - window / 2, seconds / 2 + window / 2)
    end = window_median(samples, seconds - window, seconds + 1)
    by_minute = [
        round(min(samples, key=lambda s, m=m: abs(s[0] - 60 * m))[1], 1) for m in range(int(seconds // 60) + 1)
    ]
    codes = Counter(r.code for r in records)
    by_kind: dict[str, Counter[str]] = {kind: Counter() for kind in MIX}
    latencies: dict[str, list[float]] = {kind: [] for kind in MIX}
    for r in records:
        by_kind[r.kind][r.code] += 1
        latencies[r.kind].append(r.latency_s * 1000)
    surprises = {
        kind: {code: n for code, n in counts.items() if code not in EXPECTED.get(kind, {"OK"})}
        for kind, counts in by_kind.items()
    }
    unexpected = sum(codes[c] for c in UNEXPECTED)
    growth = end - middle
    return {
        "sent": len(records) + skipped,
        "answered": len(records),
        "left_out_in_flight_cap": skipped,
        "achieved_rate": len(records) / seconds,
        "rss_mb": {
            "every_s": RSS_EVERY_S,
            "samples": [[round(t, 1), round(mb, 2)] for t, mb in samples],
            "by_minute": by_minute,
            "start": round(samples[0][1], 2),
            "middle": round(middle, 2),
            "end": round(end, 2),
            "window_s": window,
            "growth_middle_to_end": round(growth, 2),
        },
        "codes": dict(sorted(codes.items())),
        "codes_by_kind": {kind: dict(sorted(c.items())) for kind, c in by_kind.items()},
        "unexpected_codes_by_kind": {kind: s for kind, s in surprises.items() if s},
        "latency_ms": {
            kind: {
                "count": len(values),
                "ok": by_kind[kind]["OK"],
                "p50": round(percentile(values, 0.50), 2),
                "p90": round(percentile(values, 0.90), 2),
                "p99": round(percentile(values, 0.99), 2),
                "max": round(max(values), 2) if values else None,
            }
            for kind, values in latencies.items()
        },
        "targets": {
            "rss_growth_middle_to_end_mb": {
                "target": f"<= {GROWTH_TARGET_MB}",
                "value": round(growth, 2),
                "met": growth <= GROWTH_TARGET_MB,
            },
            "internal_or_unknown": {"target": "0", "value": unexpected, "met": unexpected == 0},
        },
    }


def plot(report: dict[str, Any], records: list[Record], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seconds = report["minutes"] * 60
    rss = report["rss_mb"]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 7), sharex=True)
    times = [t / 60 for t, _ in rss["samples"]]
    top.plot(times, [mb for _, mb in rss["samples"]], color="tab:blue", label="server RSS")
    for lo, hi, value, name in (
        (seconds / 2 - rss["window_s"] / 2, seconds / 2 + rss["window_s"] / 2, rss["middle"], "middle"),
        (seconds - rss["window_s"], seconds, rss["end"], "end"),
    ):
        top.axvspan(lo / 60, hi / 60, color="tab:gray", alpha=0.2)
        top.annotate(f"{name}: {value:.1f} MB", (hi / 60, value), fontsize=8, ha="right", va="bottom")
    met = report["targets"]["rss_growth_middle_to_end_mb"]["met"]
    top.set_title(
        f"attnserve soak{' (--leak)' if report['leak'] else ''}: {report['rate']:.1f} req/s "
        f"for {report['minutes']:g} min"
        f" — RSS growth middle→end {rss['growth_middle_to_end']:+.1f} MB "
        f"({'met' if met else 'missed'}, target ≤ {GROWTH_TARGET_MB:g} MB)",
        fontsize=9,
    )
    top.set_ylabel("RSS (MB)")
    top.grid(alpha=0.3)
    top.legend(loc="upper left", fontsize=8)

    buckets = max(1, math.ceil(seconds / BUCKET_S))
    classes = {"OK": [0] * buckets, "expected errors": [0] * buckets, "other errors": [0] * buckets}
    for r in records:
        b = min(int(r.t // BUCKET_S), buckets - 1)
        if r.code == "OK":
            classes["OK"][b] += 1
        elif r.code in EXPECTED.get(r.kind, set()):
            classes["expected errors"][b] += 1
        else:
            classes["other errors"][b] += 1
    x = [(b * BUCKET_S + BUCKET_S / 2) / 60 for b in range(buckets)]
    for (name, counts), color in zip(classes.items(), ("tab:green", "tab:orange", "tab:red"), strict=True):
        bottom.plot(x, [c / BUCKET_S for c in counts], label=name, color=color)
    bottom.set_xlabel("minutes")
    bottom.set_ylabel(f"answers/s ({BUCKET_S:g} s buckets)")
    bottom.grid(alpha=0.3)
    bottom.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


async def soak(args: argparse.Namespace, pid: int, address: str) -> tuple[dict[str, Any], list[Record]]:
    def progress(line: str) -> None:
        print(f"soak: {line}", file=sys.stderr, flush=True)

    async with grpc.aio.insecure_channel(address) as channel:
        traffic = Traffic(channel, args.seed)
        report: dict[str, Any] = {}
        if args.rate is None:
            report["saturation"] = await saturation(traffic, args.saturation_seconds, progress)
            rate = args.load_fraction * report["saturation"]["requests_per_s"]
        else:
            report["saturation"] = None
            rate = args.rate
        progress(f"soak at {rate:.1f} requests/s for {args.minutes:g} min (server pid {pid})")
        seconds = args.minutes * 60
        records, samples, skipped = await open_loop(
            traffic, pid, rate, seconds, max_in_flight=args.max_in_flight, progress=progress
        )
    report.update(rate=rate, **summarize(records, samples, seconds, skipped))
    return report, records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--rate", type=float, help="requests/s of the soak (default: --load-fraction of saturation)")
    parser.add_argument("--load-fraction", type=float, default=0.7)
    parser.add_argument("--saturation-seconds", type=float, default=8.0, help="per closed-loop concurrency")
    parser.add_argument("--max-in-flight", type=int, default=512, help="arrivals beyond this many waiting are left out")
    parser.add_argument("--repository", type=Path, default=HERE.parent / "models")
    parser.add_argument(
        "--leak",
        action="store_true",
        help="serve through benchmarks/leaky_server.py, the negative control (~1 GB/min: run it for a few minutes)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--output", type=Path, help="JSON path (default results/soak.json, or soak-leak.json with --leak)"
    )
    args = parser.parse_args()

    output = args.output or RESULTS / ("soak-leak.json" if args.leak else "soak.json")
    loadavg_before = os.getloadavg()
    program = (str(HERE / "leaky_server.py"),) if args.leak else ("-m", "attnserve_server")
    process, address = start_server(args.repository, program=program)
    try:
        report, records = asyncio.run(soak(args, process.pid, address))
        loadavg_after = os.getloadavg()
        alive = process.poll() is None
    finally:
        process.terminate()
        try:
            process.wait(60)
        except Exception:
            process.kill()
    report = {
        "benchmark": "soak",
        "leak": args.leak,
        "minutes": args.minutes,
        "repository": str(args.repository),
        "models": [TEXT_MODEL, *IMAGE_MODELS],
        "mix": MIX,
        "load_fraction": args.load_fraction if args.rate is None else None,
        "cpus": os.cpu_count(),
        "loadavg_before": [round(v, 2) for v in loadavg_before],
        "loadavg_after": [round(v, 2) for v in loadavg_after],
        "server_alive_at_end": alive,
        **report,
    }
    report["met"] = all(t["met"] for t in report["targets"].values())
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2) + "\n")
    plot(report, records, output.with_suffix(".png"))
    print(json.dumps(report, indent=2))
    for name, target in report["targets"].items():
        verdict = "met" if target["met"] else "MISSED"
        print(f"soak: {name}: {target['value']} (target {target['target']}): {verdict}", file=sys.stderr)


if __name__ == "__main__":
    main()
