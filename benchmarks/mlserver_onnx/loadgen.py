"""Closed-loop load against MLServer's gRPC (KServe v2) endpoint; runs in MLServer's own venv.

    python loadgen.py --target 127.0.0.1:PORT --model NAME --images DIR --concurrency 8 --duration 5

Prints one JSON object (see benchmarks/closed_loop.py).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import grpc
from mlserver.grpc import dataplane_pb2 as pb
from mlserver.grpc import dataplane_pb2_grpc as pb_grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from closed_loop import closed_loop


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--target", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--images", type=Path, required=True)
    parser.add_argument("--concurrency", type=int, required=True)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    args = parser.parse_args()
    images = [p.read_bytes() for p in sorted(args.images.glob("*.png"))]
    channel = grpc.insecure_channel(args.target, options=[("grpc.max_receive_message_length", 64 << 20)])
    stub = pb_grpc.GRPCInferenceServiceStub(channel)

    def make_call(worker: int):
        def call(i: int) -> object:
            data = images[(worker * 7 + i) % len(images)]
            request = pb.ModelInferRequest(
                model_name=args.model,
                inputs=[
                    pb.ModelInferRequest.InferInputTensor(
                        name="images",
                        datatype="BYTES",
                        shape=[1],
                        contents=pb.InferTensorContents(bytes_contents=[data]),
                    )
                ],
            )
            return stub.ModelInfer(request, timeout=60)

        return call

    print(json.dumps(closed_loop(make_call, args.concurrency, args.duration, args.warmup)))


if __name__ == "__main__":
    main()
