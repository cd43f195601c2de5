"""The encoder–decoder's decode speed: cached cross-attention against recomputing it and PyTorch eager,
and tokens/s through the server at 1, 4 and 16 concurrent streams.

1. **Per-token decode latency at batch 1, in-process**, for the shipped ``numbers`` shape and the
   paper's Transformer-base (``base``, random weights: speed does not depend on them): the mean time
   of one decoder step over ``--steps`` steps after a 20-token source, for
   - ``onnx cached``: the served decoder graph, cross-attention keys/values computed once by the encoder
     graph (MatMul, Softmax, MatMul);
   - ``onnx mha``: the same through ONNX Runtime's ``MultiHeadAttention``;
   - ``onnx recomputed``: a decoder graph that projects the encoder's output to keys/values at every step;
   - ``torch eager``: the PyTorch module with its self-attention cache and precomputed cross keys/values.
   The setups run interleaved, round by round. Target: ``onnx cached`` >= 2x ``torch eager`` on ``base``.
2. **Through the server**: a real server on the shipped ``models/numbers-translator``, a closed loop of
   1, 4 and 16 concurrent greedy streams (asyncio client in this process, its CPU time reported);
   target: 16 streams >= 4x the tokens/s of one stream.

    python benchmarks/seq2seq_decode.py                 # both parts
    python benchmarks/seq2seq_decode.py --skip-server --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch

from attnserve_client import AsyncClient
from attnserve_export.number_data import fixed_set
from attnserve_export.onnx_seq2seq import (
    ENCODER_OUTPUT,
    build_decoder_graph,
    build_encoder_graph,
)
from attnserve_export.seq2seq import PRESETS, Seq2Seq
from attnserve_export.seq2seq_runner import Seq2SeqRunner

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serving import start_server

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
SOURCE_TOKENS = 20
CONCURRENCY = (1, 4, 16)


def write_graphs(model: Seq2Seq, folder: Path) -> dict[str, Path]:
    paths = {"encoder": folder / "encoder.onnx"}
    onnx.save(build_encoder_graph(model), str(paths["encoder"]))
    for mode in ("cached", "mha", "recomputed"):
        paths[mode] = folder / f"decoder-{mode}.onnx"
        onnx.save(build_decoder_graph(model, cross_attention=mode), str(paths[mode]))  # type: ignore[arg-type]
    return paths


def onnx_decode(model: Seq2Seq, paths: dict[str, Path], mode: str, steps: int, threads: int) -> Callable[[], None]:
    """``steps`` decoder steps at batch 1. The encoder runs before, untimed: once per request in every setup."""
    runner = Seq2SeqRunner(paths["encoder"], paths[mode], model, slots=1, threads=threads)
    source = np.arange(3, 3 + SOURCE_TOKENS, dtype=np.int64)[None, :]
    mask = np.ones_like(source)
    memory = model.encode(torch.from_numpy(source), torch.from_numpy(mask)).detach().numpy()
    if mode == "recomputed":
        # The baseline: a session whose step takes the encoder's output instead of its keys/values.
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        session = ort.InferenceSession(str(paths[mode]), options, providers=["CPUExecutionProvider"])
        cfg = model.config
        cache = (1, cfg.num_heads, cfg.target_context, cfg.head_dim)
        keys = [np.zeros(cache, np.float32) for _ in range(cfg.decoder_layers)]
        values = [np.zeros(cache, np.float32) for _ in range(cfg.decoder_layers)]

        def run() -> None:
            for step in range(steps):
                binding = session.io_binding()
                binding.bind_cpu_input("input_ids", np.asarray([[5]], np.int64))
                binding.bind_cpu_input("position_ids", np.asarray([[step]], np.int64))
                binding.bind_cpu_input("seqlens_k", np.asarray([step], np.int32))
                binding.bind_cpu_input("total_sequence_length", np.asarray(step + 1, np.int32))
                binding.bind_cpu_input("source_mask", mask)
                binding.bind_cpu_input(ENCODER_OUTPUT, memory)
                binding.bind_output("logits", "cpu")
                for layer in range(cfg.decoder_layers):
                    for buffers, kind in ((keys, "key"), (values, "value")):
                        value = ort.OrtValue.ortvalue_from_numpy(buffers[layer])
                        binding.bind_ortvalue_input(f"past_key_values.{layer}.{kind}", value)
                        binding.bind_ortvalue_output(f"present.{layer}.{kind}", value)
                session.run_with_iobinding(binding)

        return run

    runner.admit([0], source, mask)

    def run_cached() -> None:
        runner.lengths[0] = 0  # the source stays encoded; the target starts again
        for _ in range(steps):
            runner.step([0], np.asarray([5], np.int64))

    return run_cached


def torch_decode(model: Seq2Seq, steps: int) -> Callable[[], None]:
    source = torch.arange(3, 3 + SOURCE_TOKENS).unsqueeze(0)
    mask = torch.ones_like(source)

    with torch.no_grad():
        cross = model.cross_kv(model.encode(source, mask))

    @torch.no_grad()
    def run() -> None:
        past = None
        for step in range(steps):
            attention = torch.ones(1, step + 1, dtype=torch.int64)
            _, past = model.decode(torch.tensor([[5]]), cross, mask, attention_mask=attention, past=past)

    return run


def bench_shape(name: str, steps: int, rounds: int, threads: int) -> dict[str, Any]:
    torch.manual_seed(0)
    model = Seq2Seq(PRESETS[name].with_(dropout=0.0)).eval()
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_graphs(model, Path(tmp))
        setups = {f"onnx {m}": onnx_decode(model, paths, m, steps, threads) for m in ("cached", "mha", "recomputed")}
        setups["torch eager"] = torch_decode(model, steps)
        for run in setups.values():
            run()  # warm-up
        samples: dict[str, list[float]] = {k: [] for k in setups}
        for _ in range(rounds):
            for key, run in setups.items():
                start = time.perf_counter()
                run()
                samples[key].append((time.perf_counter() - start) * 1e3 / steps)
    ms = {k: round(statistics.median(v), 3) for k, v in samples.items()}
    return {
        "shape": name,
        "parameters": model.num_parameters(),
        "ms_per_token": ms,
        "speedup_cached_vs_torch": round(ms["torch eager"] / ms["onnx cached"], 2),
        "speedup_cached_vs_recomputed": round(ms["onnx recomputed"] / ms["onnx cached"], 2),
    }


async def closed_loop(address: str, model: str, concurrency: int, seconds: float, sources: list[str]) -> float:
    """Tokens/s of ``concurrency`` streams sending greedy requests back to back for ``seconds``."""
    tokens = 0
    async with AsyncClient(address, timeout=120.0, retries=0) as client:
        await asyncio.gather(*(client.generate(s, model=model, max_new_tokens=4) for s in sources[:concurrency]))
        end = time.perf_counter() + seconds

        async def stream(worker: int) -> None:
            nonlocal tokens
            n = worker
            while time.perf_counter() < end:
                async for chunk in client.generate_stream(sources[n % len(sources)], model=model, temperature=0.0):
                    tokens += len(chunk.token_ids)
                n += concurrency

        start = time.perf_counter()
        await asyncio.gather(*(stream(w) for w in range(concurrency)))
        return tokens / (time.perf_counter() - start)


def bench_server(seconds: float) -> dict[str, Any]:
    sources = [e.source for e in fixed_set("test", 200, 999_999)]
    process, address = start_server(REPO / "models")
    try:
        rates: dict[str, float] = {}
        cpu: dict[str, float] = {}
        for concurrency in CONCURRENCY:
            before = resource.getrusage(resource.RUSAGE_SELF)
            rates[str(concurrency)] = round(
                asyncio.run(closed_loop(address, "numbers-translator", concurrency, seconds, sources)), 1
            )
            after = resource.getrusage(resource.RUSAGE_SELF)
            cpu[str(concurrency)] = round(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 2)
    finally:
        process.terminate()
        process.wait(timeout=30)
    return {
        "model": "numbers-translator",
        "tokens_per_s": rates,
        "load_generator_cpu_s": cpu,
        "seconds_per_level": seconds,
        "ratio_16_vs_1": round(rates["16"] / rates["1"], 2),
    }


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shapes = results["decode"]
    count = len(shapes) + (1 if "server" in results else 0)
    fig, grid = plt.subplots(1, count, figsize=(5 * count, 4), squeeze=False)
    axes = list(grid[0])
    for ax, shape in zip(axes, shapes, strict=False):
        names = list(shape["ms_per_token"])
        ax.bar(names, [shape["ms_per_token"][n] for n in names])
        ax.set_title(f"{shape['shape']}: ms per decoder step, batch 1")
        ax.tick_params(axis="x", rotation=20)
    if "server" in results:
        server = results["server"]
        levels = list(server["tokens_per_s"])
        axes[-1].bar(levels, [server["tokens_per_s"][c] for c in levels])
        axes[-1].set_title("numbers-translator through the server: tokens/s")
        axes[-1].set_xlabel("concurrent streams")
    fig.tight_layout()
    fig.savefig(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=["numbers", "base"])
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=15.0, help="measured seconds per concurrency level")
    parser.add_argument("--skip-server", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results: dict[str, Any] = {"load_average_before": os.getloadavg()}
    results["decode"] = [bench_shape(s, args.steps, args.rounds, args.threads) for s in args.shapes]
    if not args.skip_server:
        results["server"] = bench_server(args.seconds)
    results["load_average_after"] = os.getloadavg()
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "seq2seq_decode.json").write_text(json.dumps(results, indent=2) + "\n")
    plot(results, RESULTS / "seq2seq_decode.png")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
