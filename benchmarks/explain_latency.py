"""Latency of one Explain call through the server against the same explain graph in process, and
against the PyTorch module's own ``attention_maps``, for the shipped models.

- in-process ONNX Runtime: this process tokenizes the text (or preprocesses the image as the server
  does), runs the version's ``explain.onnx`` with the server's thread count, asking for every
  attention output the request needs (an encoder-decoder: one run per generated token, greedy, as
  the server does);
- PyTorch eager: the module rebuilt from the version's fp32 weights (``attnserve_export.rebuild``),
  ``attention_maps`` on the same input (an encoder-decoder: its greedy loop too);
- attnserve: a real server process on ``models/``, one Explain call at a time through the generated
  ``attnserve.v1`` stub (every layer and head; GPT: a 32-token prompt).

Every setup makes ``--calls`` calls per round, the setups interleaved round by round; figures are
medians over all calls, and ``server_over_ort`` is the median server latency over the median
in-process one. The issue names no target: this measures what the RPC adds to the graph.

    python benchmarks/explain_latency.py [--rounds 5] [--calls 10] [--threads 2]

Prints JSON and writes ``benchmarks/results/explain_latency.json``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import torch
from PIL import Image
from serving import start_server

from attnserve_client.pb import explain_pb2, explain_pb2_grpc
from attnserve_export.embeddings_version import weights_version
from attnserve_export.rebuild import module_from_onnx
from attnserve_server.model_format.metadata import read_metadata
from attnserve_server.repository import ModelRepository
from attnserve_server.runtime import OrtSession, RuntimeOptions
from attnserve_server.settings import ServerSettings
from attnserve_server.task_table import TaskTable
from attnserve_server.text.tokenizer import TextTokenizer
from attnserve_server.vision.classifier import ImageClassifier

REPO = Path(__file__).resolve().parent.parent
MODELS = REPO / "models"
RESULTS = REPO / "benchmarks" / "results"
PROMPT = "ROMEO. But soft, what light through yonder window breaks? It is the east, and Juliet is the sun."
SOURCE = "<2fr> four thousand three hundred and twenty-one"
INPUTS: dict[str, Any] = {"shakespeare-gpt": PROMPT, "numbers-translator": SOURCE}


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def digit_png() -> bytes:
    from sklearn.datasets import load_digits

    pixels = (load_digits().images[0] * 16).clip(0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


class Local:
    """One model's explain graph in this process (ORT) and its module (PyTorch), on one input."""

    def __init__(self, name: str, raw: Any, threads: int) -> None:
        model_dir = MODELS / name
        version_dir = max((p for p in model_dir.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
        self.version = version_dir.name
        metadata = read_metadata(version_dir, TaskTable().sections())
        section: Any = metadata.section
        self.graph = section.explain
        assert self.graph is not None, f"{version_dir} has no explain graph"
        self.session = OrtSession(version_dir / self.graph.file, RuntimeOptions(intra_op_threads=threads))
        torch.set_num_threads(threads)
        self.module = module_from_onnx(model_dir / weights_version(metadata, version_dir.name)).eval()
        self.seq2seq = self.graph.layout == "encoder_decoder"
        if self.graph.layout in ("causal_text", "encoder_decoder"):
            tokenizer = TextTokenizer.from_file(version_dir / section.tokenizer_file)
            self.ids = np.asarray([tokenizer.encode(raw)], dtype=np.int64)  # (1, T)
            self.feed: dict[str, np.ndarray] = dict(
                zip(self.graph.input_names[:2], (self.ids, np.ones_like(self.ids)), strict=True)
            )
            self.bos, self.eos = getattr(section, "bos_token_id", 0), getattr(section, "eos_token_id", 0)
        else:  # the server's own decode and preprocess
            settings = ServerSettings(model_repository=MODELS, intra_op_threads=threads)
            loaded = ModelRepository(MODELS, settings=settings).load_model(model_dir, ThreadPoolExecutor(1))
            pixels = loaded.version("").engine_as(ImageClassifier).prepare([raw], 10**9)
            self.feed = {self.graph.input_names[0]: pixels}
        self.outputs = list(self.graph.outputs())

    def ort(self) -> None:
        if not self.seq2seq:
            self.session.run(self.outputs, self.feed)
            return
        target = [self.bos]
        for _ in range(32):
            feed = {**self.feed, self.graph.input_names[2]: np.asarray([target], dtype=np.int64)}
            logits = self.session.run(self.outputs, feed)[-1]
            token = int(np.argmax(logits[0, -1]))
            if token == self.eos:
                return
            target.append(token)

    def torch_eager(self) -> None:
        with torch.no_grad():
            tensors = [torch.from_numpy(v) for v in self.feed.values()]
            if not self.seq2seq:
                self.module.attention_maps(*tensors)
                return
            target = [self.bos]
            for _ in range(32):
                step = self.module.attention_maps(*tensors, torch.tensor([target]))
                token = int(step.logits[0, -1].argmax())
                if token == self.eos:
                    return
                target.append(token)


def timed(call: Callable[[], object], calls: int) -> list[float]:
    out = []
    for _ in range(calls):
        start = time.perf_counter()
        call()
        out.append((time.perf_counter() - start) * 1000)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=10, help="calls per setup per round")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime and torch threads")
    args = parser.parse_args()
    load_before = load_average()
    inputs = {**INPUTS, "digits-vit": digit_png(), "digits-swin": digit_png()}
    local = {name: Local(name, raw, args.threads) for name, raw in inputs.items()}
    process, address = start_server(MODELS, "--intra-op-threads", str(args.threads))
    samples: dict[str, dict[str, list[float]]] = {name: {} for name in inputs}
    try:
        with grpc.insecure_channel(address) as channel:
            stub = explain_pb2_grpc.ExplainServiceStub(channel)
            requests = {
                name: explain_pb2.ExplainRequest(
                    model=name, **({"image": raw} if isinstance(raw, bytes) else {"text": raw})
                )
                for name, raw in inputs.items()
            }
            for request in requests.values():  # open each graph before timing (it loads lazily)
                stub.Explain(request, timeout=120)
            for _ in range(args.rounds):
                for name, request in requests.items():
                    setups: dict[str, Callable[[], object]] = {
                        "onnxruntime_in_process": local[name].ort,
                        "pytorch_eager": local[name].torch_eager,
                        "attnserve": lambda r=request: stub.Explain(r, timeout=120),
                    }
                    for setup, call in setups.items():
                        samples[name].setdefault(setup, []).extend(timed(call, args.calls))
    finally:
        process.terminate()
        process.wait(timeout=30)
    models: dict[str, Any] = {}
    for name, setups in samples.items():
        medians = {setup: round(statistics.median(values), 3) for setup, values in setups.items()}
        models[name] = {
            "version": local[name].version,
            "median_ms": medians,
            "server_over_ort": round(medians["attnserve"] / medians["onnxruntime_in_process"], 2),
            "ort_speedup_over_pytorch": round(medians["pytorch_eager"] / medians["onnxruntime_in_process"], 2),
        }
    report = {
        "command": f"python benchmarks/explain_latency.py --rounds {args.rounds} --calls {args.calls} "
        f"--threads {args.threads}",
        "load_average_before": load_before,
        "load_average_after": load_average(),
        "models": models,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "explain_latency.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
