"""OpenVINO bf16 against ONNX Runtime fp32, in process, on the same ONNX files (random weights):
the vit-b16 and swin-t shapes, exported by attnserve-export's parity-checked exporter.

Engines, each through the server's own ``attnserve_server.runtime.open_runtime`` (the session
options, threads and OpenVINO properties that the server uses):

- ``ort-fp32``: ONNX Runtime, the server's default;
- ``ov-bf16``: OpenVINO, ``INFERENCE_PRECISION_HINT=bf16`` (the target);
- ``ov-f32``: OpenVINO, exact f32;
- ``ort-int8``: ONNX Runtime on the int8 dynamically quantized file (``attnserve-export quantize``'s
  ``quantize_file``).

Speed: ms per image at batch 1 and 8, engines interleaved call by call within each round (the
order rotates between rounds), medians over rounds. Targets: ov-bf16 ≥ 1.8× ort-fp32 at batch 1
and ≥ 2× at batch 8, on both models.

Agreement: ``--agreement`` generated inputs (standard normal, seed 1), each engine against ort-fp32
with the server's parity rule (``attnserve_server.parity.compare_logits``): max |Δlogit|, and top-1
mismatches where ort-fp32's top-1/top-2 margin is > 0.05.

    python benchmarks/openvino_speed.py [--rounds 5] [--agreement 256] [--threads 0]

Prints JSON and writes ``benchmarks/results/openvino_speed.{json,png}``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from attnserve_export import swin, vit
from attnserve_export.image_data import ImageSpec
from attnserve_export.image_export import export_classifier
from attnserve_export.quantize import quantize_file
from attnserve_server.parity import compare_logits
from attnserve_server.runtime import Precision, RuntimeOptions, RuntimeSession, available_cpus, open_runtime

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / "benchmarks" / ".cache" / "openvino"
RESULTS = REPO / "benchmarks" / "results"
MODELS = {"vit-b16": lambda: vit.ViT(vit.PRESETS["vit-b16"]), "swin-t": lambda: swin.Swin(swin.PRESETS["swin-t"])}
ENGINES = ("ort-fp32", "ov-bf16", "ov-f32", "ort-int8")
BATCHES = (1, 8)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
TARGETS = {1: 1.8, 8: 2.0}  # ov-bf16 speed-up over ort-fp32, by batch


def export(name: str) -> tuple[Path, Path]:
    """``CACHE/repo/name/1/model.onnx`` (exported once, seed 0; a model repository entry that the
    server can serve) and its int8 twin."""
    version_dir = CACHE / "repo" / name / "1"
    model_file, int8_file = version_dir / "model.onnx", CACHE / f"{name}-int8.onnx"
    if not model_file.exists():
        torch.manual_seed(0)
        model = MODELS[name]().eval()
        spec = ImageSpec(channels=3, height=224, width=224, resample="bicubic", resize_policy="resize",
                         mean=IMAGENET_MEAN, std=IMAGENET_STD)  # fmt: skip
        images = np.random.default_rng(0).standard_normal((2, 3, 224, 224)).astype(np.float32)
        labels = [f"class_{i}" for i in range(1000)]
        export_classifier(model, spec, labels, images, version_dir, description=f"{name} shape, random weights")
    if not int8_file.exists():
        quantize_file(model_file, int8_file)
    return model_file, int8_file


def sessions(model_file: Path, int8_file: Path, threads: int) -> dict[str, RuntimeSession]:
    def openvino(precision: Precision) -> RuntimeOptions:
        return RuntimeOptions(backend="openvino", precision=precision, intra_op_threads=threads)

    return {
        "ort-fp32": open_runtime(model_file, RuntimeOptions(intra_op_threads=threads)),
        "ov-bf16": open_runtime(model_file, openvino("bf16")),
        "ov-f32": open_runtime(model_file, openvino("f32")),
        "ort-int8": open_runtime(int8_file, RuntimeOptions(intra_op_threads=threads)),
    }


def run(session: RuntimeSession, x: np.ndarray) -> np.ndarray:
    (logits,) = session.run(["logits"], {"pixel_values": x})
    return logits


def load_average() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()


def speed(all_sessions: dict[str, dict[str, RuntimeSession]], rounds: int) -> dict[str, Any]:
    """ms per image by model, batch and engine: median over rounds, engines interleaved."""
    rng = np.random.default_rng(0)
    inputs = {b: rng.standard_normal((b, 3, 224, 224)).astype(np.float32) for b in BATCHES}
    samples: dict[tuple[str, int, str], list[float]] = {}
    for model in all_sessions.values():  # warm-up: first calls compile kernels for the shape
        for session in model.values():
            for x in inputs.values():
                run(session, x)
    for r in range(rounds):
        order = ENGINES[r % len(ENGINES) :] + ENGINES[: r % len(ENGINES)]
        for name, model in all_sessions.items():
            for batch, x in inputs.items():
                for engine in order:
                    start = time.perf_counter()
                    run(model[engine], x)
                    samples.setdefault((name, batch, engine), []).append((time.perf_counter() - start) * 1000 / batch)
    table: dict[str, Any] = {}
    for (name, batch, engine), values in samples.items():
        table.setdefault(name, {}).setdefault(str(batch), {})[engine] = {
            "ms_per_image": statistics.median(values),
            "samples": [round(v, 2) for v in values],
        }
    add_speedups(table)
    return table


def add_speedups(table: dict[str, Any]) -> None:
    """Each engine's speed-up over ort-fp32: the ratio of medians, and the median of the per-round
    ratios (the engines ran back to back within a round, so a round's ratio sees one machine load;
    the target is judged on it)."""
    for by_batch in table.values():
        for batch, row in by_batch.items():
            base = row["ort-fp32"]
            for engine in ENGINES:
                row[engine]["speedup_vs_ort_fp32"] = base["ms_per_image"] / row[engine]["ms_per_image"]
                per_round = [b / x for b, x in zip(base["samples"], row[engine]["samples"], strict=True)]
                row[engine]["speedup_median_of_rounds"] = statistics.median(per_round)
            target = TARGETS[int(batch)]
            row["target"] = f"ov-bf16 >= {target}x ort-fp32 (median of per-round ratios)"
            row["met"] = row["ov-bf16"]["speedup_median_of_rounds"] >= target


def agreement(all_sessions: dict[str, dict[str, RuntimeSession]], count: int) -> dict[str, Any]:
    """Each engine against ort-fp32 on ``count`` generated inputs, by the server's parity rule."""
    out: dict[str, Any] = {}
    for name, model in all_sessions.items():
        rng = np.random.default_rng(1)
        logits: dict[str, list[np.ndarray]] = {engine: [] for engine in ENGINES}
        for _ in range(0, count, 8):
            x = rng.standard_normal((8, 3, 224, 224)).astype(np.float32)
            for engine in ENGINES:
                logits[engine].append(run(model[engine], x))
        reference = np.concatenate(logits["ort-fp32"])
        out[name] = {}
        for engine in ENGINES[1:]:
            report = compare_logits(reference, np.concatenate(logits[engine]), tolerance=float("inf"))
            out[name][engine] = {
                "inputs": report.inputs,
                "max_abs_diff": report.max_abs_diff,
                "relative_diff": report.relative_diff,
                "decided_inputs": report.decided,
                "top1_mismatches_where_decided": report.top1_mismatches,
                "top1_agreement_all": float((reference.argmax(-1) == np.concatenate(logits[engine]).argmax(-1)).mean()),
            }
    return out


def plot(table: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = [(name, batch) for name in table for batch in table[name]]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    width = 0.8 / len(ENGINES)
    for i, engine in enumerate(ENGINES):
        values = [table[name][batch][engine]["ms_per_image"] for name, batch in groups]
        ax.bar([g + i * width for g in range(len(groups))], values, width, label=engine)
    ax.set_xticks([g + 0.4 - width / 2 for g in range(len(groups))])
    ax.set_xticklabels([f"{name}\nbatch {batch}" for name, batch in groups])
    ax.set_ylabel("ms per image (median)")
    ax.set_title("Same ONNX file: OpenVINO bf16 / f32 vs ONNX Runtime fp32 / int8 (in process)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--agreement", type=int, default=256, help="generated inputs for the top-1 agreement")
    parser.add_argument("--threads", type=int, default=0, help="0: the CPUs available (as the server)")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    args = parser.parse_args()
    threads = args.threads or available_cpus()
    before = load_average()
    all_sessions = {name: sessions(*export(name), threads) for name in args.models}
    started = time.monotonic()
    table = speed(all_sessions, args.rounds)
    agree = agreement(all_sessions, args.agreement)
    result = {
        "command": f"python benchmarks/openvino_speed.py --rounds {args.rounds} --agreement {args.agreement} "
        f"--threads {args.threads} --models {' '.join(args.models)}",
        "threads": threads,
        "cpu": os.uname().machine,
        "load_before": before,
        "load_after": load_average(),
        "seconds": round(time.monotonic() - started, 1),
        "speed": table,
        "agreement": agree,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "openvino_speed.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(table, RESULTS / "openvino_speed.png")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
