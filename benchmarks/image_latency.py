"""Image classification latency: PyTorch eager, in-process ONNX Runtime and the server, on the
paper-sized ViT-B/16 and Swin-T (random weights), plus ONNX Runtime latency against resolution.

Per model and batch size (1 and 8), ms per image (median), the setups interleaved round by round:
- torch eager: ``inference_mode``, same thread count, after a warm-up, on the preprocessed tensor;
- ORT in-process: the server's own decode + preprocess + ONNX Runtime session, in this process,
  with the server's default settings, and again with ORT's worker threads spinning;
- server: ``Client.classify_batch`` with the same PNG bytes, against a real server process.
Ratios are medians of the per-round ratios.

    python benchmarks/image_latency.py [--repeats 20] [--resolutions 112,224,448]

Exports are cached under ``benchmarks/.cache``. Prints JSON and writes
``benchmarks/results/image_latency.{json,png}``.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import os
import signal
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from serving import start_server

from attnserve_client import Client
from attnserve_export import swin, vit
from attnserve_export.image_data import ImageSpec
from attnserve_export.image_export import export_classifier
from attnserve_server.repository import ModelRepository
from attnserve_server.runtime import OrtSession, RuntimeOptions, available_cpus
from attnserve_server.settings import ServerSettings
from attnserve_server.vision.classifier import ImageClassifier  # the server's own loading path

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / "benchmarks" / ".cache" / "images"
RESULTS = REPO / "benchmarks" / "results"
FAMILIES = {"vit-b16": (vit.ViT, vit.PRESETS["vit-b16"]), "swin-t": (swin.Swin, swin.PRESETS["swin-t"])}
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def build(family: str, resolution: int) -> tuple[torch.nn.Module, ImageSpec]:
    cls, config = FAMILIES[family]
    config = dataclasses.replace(config, image_size=resolution)
    torch.manual_seed(0)
    spec = ImageSpec(
        channels=3,
        height=resolution,
        width=resolution,
        resample="bicubic",
        resize_policy="resize",
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
    )
    return cls(config).eval(), spec


def entry(family: str, resolution: int) -> tuple[torch.nn.Module, ImageSpec, Path]:
    """The model, its spec and a repository entry ``CACHE/<family>-<res>/<family>/1`` (exported once)."""
    model, spec = build(family, resolution)
    # One repository per entry, so that a server started on it loads only this model.
    version_dir = CACHE / f"{family}-{resolution}" / family / "1"
    if not (version_dir / "metadata.json").exists():
        images = np.random.default_rng(0).standard_normal((2, 3, resolution, resolution)).astype(np.float32)
        labels = [f"class_{i}" for i in range(1000)]
        export_classifier(model, spec, labels, images, version_dir, description=f"random {family}")
    return model, spec, version_dir


def ms_per_image(fn: Callable[[], object], batch: int, repeats: int) -> float:
    fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1e3 / batch)
    return statistics.median(samples)


def interleaved_ms(setups: dict[str, Callable[[], object]], batch: int, repeats: int) -> dict[str, list[float]]:
    """ms per image of every setup, one call of each per round, so that the machine's drift (this
    box is shared and noisy) hits all setups alike instead of whichever happened to run last."""
    for fn in setups.values():
        fn()
    samples: dict[str, list[float]] = {name: [] for name in setups}
    for _ in range(repeats):
        for name, fn in setups.items():
            start = time.perf_counter()
            fn()
            samples[name].append((time.perf_counter() - start) * 1e3 / batch)
    return samples


def median_ratio(numerator: list[float], denominator: list[float]) -> float:
    """Median of the per-round ratios: robust to a slow round that hit both setups."""
    return statistics.median(n / d for n, d in zip(numerator, denominator, strict=True))


def png_images(batch: int, resolution: int) -> list[bytes]:
    rng = np.random.default_rng(1)
    out = []
    for _ in range(batch):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (resolution, resolution, 3), dtype=np.uint8)).save(buffer, "PNG")
        out.append(buffer.getvalue())
    return out


def measure_row(
    family: str,
    *,
    model: torch.nn.Module,
    classifier: Any,
    spinning: OrtSession,
    client: Client,
    batch: int,
    repeats: int,
) -> dict[str, Any]:
    """ms per image for every setup at one batch size, on the same PNG bytes, interleaved."""
    images = png_images(batch, 224)
    tensor = torch.from_numpy(classifier.prepare(images, 10**9))
    feed_name, output_name = spinning.input_names[0], spinning.output_names[0]

    def eager() -> None:
        with torch.inference_mode():
            model(tensor)

    samples = interleaved_ms(
        {
            "torch_eager": eager,
            # The server's own decode + preprocess + session, as the server is configured by default.
            "ort_in_process": lambda: classifier.forward(classifier.prepare(images, 10**9)),
            # The same with ORT's worker threads spinning between calls (--allow-spinning).
            "ort_in_process_spinning": lambda: spinning.run(
                [output_name], {feed_name: classifier.prepare(images, 10**9)}
            ),
            "server": lambda: client.classify_batch(images, model=family, top_k=5),
        },
        batch,
        repeats,
    )
    row: dict[str, Any] = {"model": family, "batch": batch}
    row.update({f"{name}_ms": round(statistics.median(values), 2) for name, values in samples.items()})
    row["ort_speedup_vs_torch"] = round(median_ratio(samples["torch_eager"], samples["ort_in_process"]), 3)
    row["ort_spinning_speedup_vs_torch"] = round(
        median_ratio(samples["torch_eager"], samples["ort_in_process_spinning"]), 3
    )
    row["server_over_in_process"] = round(median_ratio(samples["server"], samples["ort_in_process"]), 3)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=available_cpus())
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--resolutions", default="112,224,448", help="resolution sweep; empty to skip it")
    parser.add_argument("--tag", default="", help="write results/image_latency-TAG.{json,png} instead")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    executor = ThreadPoolExecutor(2)
    # Other work on the box skews the comparison (PyTorch's OpenMP threads suffer more from
    # preemption than ORT's), so the report says how loaded the machine was.
    load_before = os.getloadavg()
    rows: list[dict[str, Any]] = []
    for family in FAMILIES:
        model, _, version_dir = entry(family, 224)
        repo_dir = version_dir.parent.parent
        repository = ModelRepository(
            repo_dir, settings=ServerSettings(model_repository=repo_dir, intra_op_threads=args.threads)
        )
        loaded = repository.load_model(version_dir.parent, executor)
        classifier = loaded.version("").engine_as(ImageClassifier)
        spinning = OrtSession(
            version_dir / "model.onnx", RuntimeOptions(intra_op_threads=args.threads, allow_spinning=True)
        )
        process, address = start_server(repo_dir, "--intra-op-threads", str(args.threads))
        try:
            with Client(address, timeout=300) as client:
                for batch in (1, 8):
                    row = measure_row(
                        family,
                        model=model,
                        classifier=classifier,
                        spinning=spinning,
                        client=client,
                        batch=batch,
                        repeats=args.repeats,
                    )
                    rows.append(row)
                    print(rows[-1], file=sys.stderr)
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(60)

    sweep: list[dict[str, Any]] = []
    for family in FAMILIES:
        for resolution in (int(r) for r in args.resolutions.split(",") if r):
            _, _, version_dir = entry(family, resolution)
            session = OrtSession(version_dir / "model.onnx", RuntimeOptions(intra_op_threads=args.threads))
            x = np.random.default_rng(0).standard_normal((1, 3, resolution, resolution)).astype(np.float32)
            feed = {session.input_names[0]: x}
            ms = ms_per_image(lambda: session.run(session.output_names, feed), 1, max(3, args.repeats // 2))  # noqa: B023
            sweep.append({"model": family, "resolution": resolution, "ort_ms": round(ms, 2)})
            print(sweep[-1], file=sys.stderr)

    report = {
        "benchmark": "image_latency",
        "threads": args.threads,
        "repeats": args.repeats,
        "load_average_1min": {"before": round(load_before[0], 2), "after": round(os.getloadavg()[0], 2)},
        "rows": rows,
        "resolution_sweep": sweep,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = "image_latency" + (f"-{args.tag}" if args.tag else "")
    (RESULTS / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(rows, sweep, RESULTS / f"{stem}.png")
    print(json.dumps(report, indent=2))


def plot(rows: list[dict[str, Any]], sweep: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    labels = [f"{r['model']}\nbatch {r['batch']}" for r in rows]
    x = np.arange(len(rows))
    for offset, key, label in (
        (-0.3, "torch_eager_ms", "PyTorch eager"),
        (-0.1, "ort_in_process_ms", "ORT in-process"),
        (0.1, "ort_in_process_spinning_ms", "ORT in-process, spinning"),
        (0.3, "server_ms", "attnserve server"),
    ):
        left.bar(x + offset, [r[key] for r in rows], width=0.2, label=label)
    left.set_xticks(x, labels)
    left.set_ylabel("ms per image (median)")
    left.legend()
    left.grid(True, axis="y", alpha=0.3)
    if not sweep:  # run with --resolutions ""
        right.set_visible(False)
    for family in FAMILIES if sweep else ():
        points = [s for s in sweep if s["model"] == family]
        right.plot([s["resolution"] ** 2 for s in points], [s["ort_ms"] for s in points], marker="o", label=family)
    if sweep:
        right.set_xscale("log")
        right.set_yscale("log")
    right.set_xlabel("input area (pixels)")
    right.set_ylabel("ORT ms per image, batch 1")
    right.legend()
    right.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
