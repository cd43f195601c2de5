"""Closed-loop load against a KServe v2 gRPC endpoint (MLServer's, or attnserve's: the same
protocol, one encoded PNG per ModelInfer as a BYTES tensor); runs in MLServer's own venv.

    python loadgen.py --target 127.0.0.1:PORT --model NAME --images DIR --concurrency 8 --duration 5 \
        [--input-name images] [--processes 2]

With ``--processes N`` the workers are spread over N processes (each with its own channel), so
that one process's GIL does not throttle the load. Prints one JSON object (see
benchmarks/closed_loop.py); with several processes, throughput and requests are summed, p50 is
the median of the processes' p50s and p99 the largest of their p99s. ``loadgen_cpu_s`` is the CPU
time (user + system) that the load generator's processes spent, over ``loadgen_wall_s``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import grpc
from mlserver.grpc import dataplane_pb2 as pb
from mlserver.grpc import dataplane_pb2_grpc as pb_grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from closed_loop import closed_loop


def run(args: argparse.Namespace, concurrency: int, results: Any) -> None:
    """One process's share of the workers: a closed loop on its own channel."""
    images = [p.read_bytes() for p in sorted(args.images.glob("*.png"))]
    channel = grpc.insecure_channel(args.target, options=[("grpc.max_receive_message_length", 64 << 20)])
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    offset = os.getpid()

    def make_call(worker: int):
        def call(i: int) -> object:
            data = images[(offset + worker * 7 + i) % len(images)]
            request = pb.ModelInferRequest(
                model_name=args.model,
                inputs=[
                    pb.ModelInferRequest.InferInputTensor(
                        name=args.input_name,
                        datatype="BYTES",
                        shape=[1],
                        contents=pb.InferTensorContents(bytes_contents=[data]),
                    )
                ],
            )
            return stub.ModelInfer(request, timeout=120)

        return call

    results.put(closed_loop(make_call, concurrency, args.duration, args.warmup))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--target", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--images", type=Path, required=True)
    parser.add_argument("--concurrency", type=int, required=True)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--input-name", default="images", help="BYTES input: images (MLServer), image (attnserve)")
    parser.add_argument("--processes", type=int, default=1)
    args = parser.parse_args()
    processes = max(1, min(args.processes, args.concurrency))
    shares = [args.concurrency // processes + (i < args.concurrency % processes) for i in range(processes)]
    context = multiprocessing.get_context("spawn")  # fresh processes: no grpc state crosses a fork
    results = context.Queue()
    started = time.perf_counter()
    workers = [context.Process(target=run, args=(args, share, results)) for share in shares]
    for worker in workers:
        worker.start()
    points = [results.get() for _ in workers]
    for worker in workers:
        worker.join()
    wall = time.perf_counter() - started
    usage = os.times()
    cpu = usage.children_user + usage.children_system + usage.user + usage.system
    point = dict(points[0])
    if len(points) > 1:
        point.update(
            concurrency=args.concurrency,
            requests=sum(p["requests"] for p in points),
            throughput=sum(p["throughput"] for p in points),
            p50_ms=statistics.median(p["p50_ms"] for p in points),
            p99_ms=max(p["p99_ms"] for p in points),
            mean_ms=statistics.fmean(p["mean_ms"] for p in points),
            errors=sum(p["errors"] for p in points),
            first_error=next((p["first_error"] for p in points if p["first_error"]), None),
        )
    point.update(processes=processes, loadgen_cpu_s=round(cpu, 2), loadgen_wall_s=round(wall, 2))
    print(json.dumps(point))


if __name__ == "__main__":
    main()
