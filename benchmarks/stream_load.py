"""A lean load generator for GenerateStream: ``--streams`` closed-loop streams on one gRPC aio channel.

It uses the generated stubs directly (no client library layer) and does nothing per message but
count its tokens, so that on a machine with few cores it takes as little CPU from the server as
it can. It reports its own CPU time. Run by ``text_server_streams.py`` in a separate process.

    python benchmarks/stream_load.py --target 127.0.0.1:50051 --model shakespeare-gpt --streams 16
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time

import grpc

from attnserve_client.pb import text_generation_pb2, text_generation_pb2_grpc


async def run(args: argparse.Namespace) -> dict[str, object]:
    tokens = messages = requests = 0
    window_start = time.perf_counter() + args.warmup
    window_end = window_start + args.seconds
    async with grpc.aio.insecure_channel(args.target) as channel:
        stub = text_generation_pb2_grpc.TextGenerationServiceStub(channel)

        async def stream(worker: int) -> None:
            nonlocal tokens, messages, requests
            n = 0
            while True:
                parameters = text_generation_pb2.GenerationParameters(
                    max_new_tokens=args.max_new_tokens, seed=worker * 100_000 + n
                )
                if args.temperature is not None:
                    parameters.temperature = args.temperature
                request = text_generation_pb2.GenerateRequest(
                    model=args.model, model_version=args.version, prompt=args.prompt, parameters=parameters
                )
                async for message in stub.GenerateStream(request, timeout=300):
                    now = time.perf_counter()
                    if window_start <= now <= window_end:
                        tokens += len(message.token_ids)
                        messages += 1
                if window_start <= time.perf_counter() <= window_end:
                    requests += 1
                n += 1

        workers = [asyncio.create_task(stream(w)) for w in range(args.streams)]
        cpu_start = None
        await asyncio.sleep(window_start - time.perf_counter())
        cpu_start = time.process_time()
        await asyncio.sleep(window_end - time.perf_counter())
        cpu = time.process_time() - cpu_start
        for worker in workers:
            worker.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
    return {
        "streams": args.streams,
        "seconds": args.seconds,
        "tokens": tokens,
        "messages": messages,
        "requests_completed": requests,
        "tokens_per_s": round(tokens / args.seconds, 1),
        "tokens_per_message": round(tokens / max(1, messages), 2),
        "load_generator_cpu_s": round(cpu, 2),
        "load_generator_cpu_share": round(cpu / args.seconds, 3),  # of one core
        "pid": os.getpid(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--version", default="")
    parser.add_argument("--streams", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--temperature", type=float, default=None, help="default: the model's")
    parser.add_argument("--prompt", default="ROMEO.\n")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args))))


if __name__ == "__main__":
    main()
