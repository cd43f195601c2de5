"""Embeddings per second through the server (EmbeddingService.Embed) against in-process ONNX Runtime
on the same embeddings graph, for the shipped digits-vit and shakespeare-gpt.

- in-process: this process tokenizes (or decodes and preprocesses) one input, runs the version's
  embeddings graph (the file its metadata names: ``explain.onnx`` since the versions that added the
  explain graph, ``embeddings.onnx`` before) with the server's session options, and pools the last
  layer, at concurrency
  1 (one thread) and 8 (eight threads sharing the one session), plus batch 8 in one call (the
  ceiling that batching can reach).
- attnserve: a real server process on ``models/``; each worker is a ``Client`` sending one input
  per ``embed`` call, in a closed loop at concurrency 1 and 8. For digits-vit, ``classify`` of the
  same images at c=8 too: the server's per-request floor on that model, without embeddings.

Every setup runs for ``--duration`` seconds per round, the setups interleaved round by round, and
each figure is the median over ``--rounds``. The target: attnserve at c=8 >= 0.7 x in-process at c=8.

    python benchmarks/embeddings_throughput.py [--duration 4] [--rounds 3] [--threads 2]

Prints JSON and writes ``benchmarks/results/embeddings_throughput.{json,png}``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from closed_loop import closed_loop
from PIL import Image
from serving import start_server

from attnserve_client import Client
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
LINES = (
    "ROMEO. But soft, what light through yonder window breaks?",
    "To be, or not to be, that is the question.",
    "Now is the winter of our discontent made glorious summer by this sun of York;",
    "Friends, Romans, countrymen, lend me your ears; I come to bury Caesar, not to praise him.",
    "If music be the food of love, play on.",
    "All the world's a stage, and all the men and women merely players.",
    "O, beware, my lord, of jealousy; it is the green-eyed monster.",
    "The quality of mercy is not strained.",
)


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def digit_pngs(count: int) -> list[bytes]:
    rng = np.random.default_rng(0)
    out = []
    for _ in range(count):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8), mode="L").save(buffer, format="PNG")
        out.append(buffer.getvalue())
    return out


class InProcess:
    """One model's embeddings graph in this process: prepare one input, run it, pool the last layer."""

    def __init__(self, name: str, threads: int) -> None:
        model_dir = MODELS / name
        version_dir = max((p for p in model_dir.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
        self.version = version_dir.name
        section = read_metadata(version_dir, TaskTable().sections()).section
        graph = section.embeddings  # type: ignore[attr-defined]
        assert graph is not None, f"{version_dir} has no embeddings graph"
        self.graph = graph
        self.session = OrtSession(version_dir / graph.file, RuntimeOptions(intra_op_threads=threads))
        self.tokenizer: TextTokenizer | None = None
        self.classifier: ImageClassifier | None = None
        if graph.is_text:
            self.tokenizer = TextTokenizer.from_file(version_dir / section.tokenizer_file)  # type: ignore[attr-defined]
        else:  # the server's own decode and preprocess
            settings = ServerSettings(model_repository=MODELS, intra_op_threads=threads)
            loaded = ModelRepository(MODELS, settings=settings).load_model(model_dir, ThreadPoolExecutor(1))
            self.classifier = loaded.version("").engine_as(ImageClassifier)

    def embed(self, inputs: list[Any]) -> np.ndarray:
        last = self.graph.hidden_states[-1]
        if self.tokenizer is not None:
            ids = [self.tokenizer.encode(text) for text in inputs]
            width = max(map(len, ids))
            batch = np.zeros((len(ids), width), dtype=np.int64)
            mask = np.zeros((len(ids), width), dtype=np.int64)
            for row, tokens in enumerate(ids):
                batch[row, width - len(tokens) :] = tokens
                mask[row, width - len(tokens) :] = 1
            (states,) = self.session.run([last], dict(zip(self.graph.input_names, (batch, mask), strict=True)))
            return states[:, -1]  # (B, D): the last token, the GPT's default pooling
        assert self.classifier is not None
        pixels = self.classifier.prepare(inputs, 10**9)
        (states,) = self.session.run([last], {self.graph.input_names[0]: pixels})
        return states[:, 0]  # (B, D): the class token, the ViT's default pooling


def in_process_rate(model: InProcess, inputs: list[Any], concurrency: int, batch: int, duration: float) -> float:
    """Embeddings per second of ``concurrency`` threads each embedding ``batch`` inputs per call."""
    counts = [0] * concurrency
    end = time.perf_counter() + duration

    def worker(index: int) -> None:
        i = index
        while time.perf_counter() < end:
            chunk = [inputs[(i + k) % len(inputs)] for k in range(batch)]
            model.embed(chunk)
            counts[index] += batch
            i += batch

    started = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(w,)) for w in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / (time.perf_counter() - started)


def server_rate(
    address: str, name: str, inputs: list[Any], concurrency: int, duration: float, *, classify: bool = False
) -> float:
    """Embeddings per second of ``concurrency`` clients, one input per request (errors are fatal).

    With ``classify``, Classify calls on the same model instead: the server's per-request cost for
    the same images without embeddings, to tell the Embed path's own cost from the server's."""
    clients = [Client(address, timeout=60) for _ in range(concurrency)]

    def make_call(worker: int) -> Callable[[int], object]:
        client = clients[worker]
        if classify:
            return lambda i: client.classify(inputs[(worker * 3 + i) % len(inputs)], model=name, top_k=1)
        return lambda i: client.embed([inputs[(worker * 3 + i) % len(inputs)]], model=name)

    try:
        point = closed_loop(make_call, concurrency, duration, warmup_s=0.5)
    finally:
        for client in clients:
            client.close()
    if point["errors"]:
        raise SystemExit(f"{name}: {point['errors']} failed requests, the first: {point['first_error']}")
    return float(point["throughput"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per setup per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads (server and in-process)")
    args = parser.parse_args()
    load_before = load_average()
    inputs = {"digits-vit": digit_pngs(64), "shakespeare-gpt": list(LINES)}
    models = {name: InProcess(name, args.threads) for name in inputs}
    process, address = start_server(MODELS, "--intra-op-threads", str(args.threads))
    rows: dict[str, dict[str, list[float]]] = {name: {} for name in inputs}
    try:
        with Client(address) as client:  # open each graph before timing (it loads lazily)
            for name, items in inputs.items():
                client.embed(items[:1], model=name)
        for _ in range(args.rounds):
            for name, items in inputs.items():
                setups: dict[str, Callable[[], float]] = {
                    "in_process_c1": lambda m=models[name], x=items: in_process_rate(m, x, 1, 1, args.duration),
                    "in_process_c8": lambda m=models[name], x=items: in_process_rate(m, x, 8, 1, args.duration),
                    "in_process_batch8": lambda m=models[name], x=items: in_process_rate(m, x, 1, 8, args.duration),
                    "attnserve_c1": lambda n=name, x=items: server_rate(address, n, x, 1, args.duration),
                    "attnserve_c8": lambda n=name, x=items: server_rate(address, n, x, 8, args.duration),
                }
                if name == "digits-vit":
                    setups["attnserve_classify_c8"] = lambda n=name, x=items: server_rate(
                        address, n, x, 8, args.duration, classify=True
                    )
                for setup, run in setups.items():
                    rows[name].setdefault(setup, []).append(run())
    finally:
        process.terminate()
        process.wait(timeout=30)
    report: dict[str, Any] = {
        "command": "python benchmarks/embeddings_throughput.py " + " ".join(
            f"--{k} {v}" for k, v in (("duration", args.duration), ("rounds", args.rounds), ("threads", args.threads))
        ),
        "load_average_before": load_before,
        "load_average_after": load_average(),
        "models": {},
    }
    for name, setups in rows.items():
        medians = {setup: round(statistics.median(values), 1) for setup, values in setups.items()}
        ratio = medians["attnserve_c8"] / medians["in_process_c8"]
        report["models"][name] = {
            "version": models[name].version,
            "embeddings_per_s": medians,
            "rounds": {setup: [round(v, 1) for v in values] for setup, values in setups.items()},
            "attnserve_c8_over_in_process_c8": round(ratio, 3),
            "attnserve_c1_over_in_process_c1": round(medians["attnserve_c1"] / medians["in_process_c1"], 3),
            "target_met": ratio >= 0.7,
        }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "embeddings_throughput.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(report, RESULTS / "embeddings_throughput.png")
    print(json.dumps(report, indent=2))


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    setups = ("in_process_c1", "attnserve_c1", "in_process_c8", "attnserve_c8", "in_process_batch8")
    fig, axes = plt.subplots(1, len(report["models"]), figsize=(11, 4))
    for ax, (name, row) in zip(np.atleast_1d(axes), report["models"].items(), strict=True):
        values = [row["embeddings_per_s"][s] for s in setups]
        ax.bar(range(len(setups)), values, color=["#999", "#36c", "#999", "#36c", "#ccc"])
        ax.set_xticks(range(len(setups)), [s.replace("_", "\n") for s in setups], fontsize=8)
        ax.set_title(f"{name}/{row['version']}: c=8 ratio {row['attnserve_c8_over_in_process_c8']:.2f}")
        ax.set_ylabel("embeddings / s")
    fig.suptitle(f"Embed throughput (load {report['load_average_before']} -> {report['load_average_after']})")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
