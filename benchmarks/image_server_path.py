"""Images/s at c=8 through the server against the same work in process, and against MLServer 1.7.1,
on the DeiT-Ti and vit-b16 shapes (random weights), rounds interleaved.

Setups, per model and round:

- ``in-process/<engine>``: the server's own classifier (decode + preprocess + the engine) in this
  process, at batch 1, 2, 4 and 8; its best images/s is the limit a server can reach.
- ``batcher/<engine>``: the same classifier's request path without gRPC: 8 coroutines in this
  process, each awaiting ``ImageClassifier.classify`` of one PNG (the decode pool, the dynamic
  batcher and its thread), for ``--duration`` s. The gap to in-process is the batcher's; the gap
  from here to the server is gRPC's and the load generator's.
- ``attnserve/<engine>``: a real attnserve server (this checkout), ``--image-backend`` onnxruntime
  or openvino (bf16).
- ``attnserve-baseline/onnxruntime``: with ``--baseline-src DIR``, the same server from another
  checkout (e.g. a worktree of main), to show what this branch's server path changed.
- ``mlserver``, ``mlserver-adaptive``: MLServer 1.7.1 with a plain ONNX Runtime runtime
  (benchmarks/mlserver_onnx), without and with adaptive batching (8 images, 2 ms); same file, ORT
  fp32, same threads.

Every server gets the same load generator: ``benchmarks/mlserver_onnx/loadgen.py`` (KServe v2
ModelInfer, one PNG as a BYTES tensor, c=8 closed loop over ``--loadgen-processes`` processes),
run from MLServer's venv; its CPU time is reported. Targets: attnserve ≥ 0.85 × in-process best,
attnserve/onnxruntime ≥ 1.0 × the better MLServer.

    python benchmarks/image_server_path.py [--rounds 3] [--duration 8] [--models deit-ti vit-b16] \\
        [--baseline-src /tmp/main-src]

Prints JSON and writes ``benchmarks/results/image_server_path.{json,png}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from image_throughput import (
    CACHE,
    MLSERVER_RUNTIME,
    MLSERVER_VENV,
    combine,
    ensure_mlserver_venv,
    export_model,
    in_process,
    png_images,
    start_mlserver,
)
from openvino_speed import export as export_openvino_shape
from serving import start_server

from attnserve_server.repository import ModelRepository
from attnserve_server.runtime import available_cpus
from attnserve_server.settings import ServerSettings
from attnserve_server.vision.classifier import ImageClassifier

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
ENGINES = ("onnxruntime", "openvino")
CONCURRENCY = 8


def version_dirs(models: list[str]) -> dict[str, Path]:
    out = {}
    for name in models:
        if name == "deit-ti":
            out[name] = export_model()
        else:
            out[name] = export_openvino_shape(name)[0].parent
    return out


def classifier(version_dir: Path, engine: str, threads: int) -> ImageClassifier:
    root = version_dir.parent.parent
    settings = ServerSettings(model_repository=root, intra_op_threads=threads, image_backend=engine)  # type: ignore[arg-type]
    repository = ModelRepository(root, settings=settings)
    return repository.load_model(version_dir.parent, ThreadPoolExecutor(1)).version("").engine_as(ImageClassifier)


def batcher_path(engine_classifier: ImageClassifier, images: list[bytes], duration: float) -> dict[str, Any]:
    """Images/s of 8 concurrent ``classify`` calls through the batcher, in this process."""

    async def run() -> int:
        done = 0
        end = time.perf_counter() + duration

        async def worker(index: int) -> None:
            nonlocal done
            i = index
            while time.perf_counter() < end:
                await engine_classifier.classify([images[i % len(images)]], 5, max_pixels=10**9)
                done += 1
                i += 7

        await asyncio.gather(*(worker(w) for w in range(CONCURRENCY)))
        return done

    asyncio.run(run())  # warm-up: the first batches of each size
    started = time.perf_counter()
    done = asyncio.run(run())
    return {"throughput": done / (time.perf_counter() - started)}


def loadgen(address: str, model: str, input_name: str, images_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    out = subprocess.run(
        [str(MLSERVER_VENV / "bin" / "python"), str(MLSERVER_RUNTIME / "loadgen.py"), "--target", address,
         "--model", model, "--images", str(images_dir), "--concurrency", str(CONCURRENCY),
         "--duration", str(args.duration), "--warmup", "2", "--input-name", input_name,
         "--processes", str(args.loadgen_processes)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=8.0, help="measured seconds per server point")
    parser.add_argument("--models", nargs="+", default=["deit-ti", "vit-b16"])
    parser.add_argument("--threads", type=int, default=available_cpus())
    parser.add_argument("--loadgen-processes", type=int, default=2)
    parser.add_argument("--baseline-src", type=Path, default=None, help="a checkout of the baseline revision")
    parser.add_argument("--no-mlserver", action="store_true")
    args = parser.parse_args()
    before = uptime()
    dirs = version_dirs(args.models)
    images = png_images(32)
    images_dir = CACHE / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    for i, data in enumerate(images):
        (images_dir / f"{i:02d}.png").write_bytes(data)
    servers: dict[str, dict[str, tuple[subprocess.Popen[bytes], str]]] = {name: {} for name in dirs}
    threads = ["--intra-op-threads", str(args.threads)]
    try:
        for name, version_dir in dirs.items():
            # One model per server, so that a server's threads serve only the model measured.
            repository = version_dir.parent.parent
            flags = [*threads, "--model-control-mode", "explicit", "--load-model", name]
            for engine in ENGINES:
                servers[name][f"attnserve/{engine}"] = start_server(repository, *flags, "--image-backend", engine)
            if args.baseline_src is not None:
                src = args.baseline_src
                env = {**os.environ, "PYTHONPATH": f"{src / 'server'}:{src / 'client'}"}
                servers[name]["attnserve-baseline/onnxruntime"] = start_server(repository, *flags, env=env)
            if not args.no_mlserver:
                ensure_mlserver_venv()
                for adaptive in (False, True):
                    key = "mlserver-adaptive" if adaptive else "mlserver"
                    servers[name][key] = start_mlserver(version_dir, args.threads, adaptive, name=name)
        samples: dict[str, dict[str, list[Any]]] = {name: {} for name in dirs}
        for r in range(args.rounds):
            for name, version_dir in dirs.items():
                for engine in ENGINES:
                    engine_classifier = classifier(version_dir, engine, args.threads)
                    point = in_process(engine_classifier, images, repeats=3, duration=0.1)
                    samples[name].setdefault(f"in-process/{engine}", []).append(point)
                    batched = batcher_path(engine_classifier, images, args.duration / 2)
                    samples[name].setdefault(f"batcher/{engine}", []).append(batched)
                    engine_classifier.close()
                keys = list(servers[name])
                for key in keys[r % len(keys) :] + keys[: r % len(keys)]:
                    input_name = "images" if key.startswith("mlserver") else "image"
                    point = loadgen(servers[name][key][1], name, input_name, images_dir, args)
                    samples[name].setdefault(key, []).append(point)
                    print(f"round {r} {name} {key}: {point['throughput']:.2f} images/s", flush=True)
    finally:
        for per_model in servers.values():
            for process, _ in per_model.values():
                process.send_signal(signal.SIGTERM)
        for per_model in servers.values():
            for process, _ in per_model.values():
                try:
                    process.wait(30)
                except subprocess.TimeoutExpired:
                    process.kill()
    report = summarise(samples, args, before)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "image_server_path.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(report, RESULTS / "image_server_path.png")
    print(json.dumps(report, indent=2))


def summarise(samples: dict[str, dict[str, list[Any]]], args: argparse.Namespace, before: str) -> dict[str, Any]:
    models: dict[str, Any] = {}
    for name, per_setup in samples.items():
        row: dict[str, Any] = {}
        for key, points in per_setup.items():
            if key.startswith("in-process"):
                combined = combine(points)
                row[key] = {"best_batch": combined["best_batch"], "images_per_s": combined["best_images_per_s"]}
                row[key]["by_batch"] = {r["batch"]: round(r["images_per_s"], 2) for r in combined["batches"]}
            elif key.startswith("batcher"):
                row[key] = {"images_per_s": statistics.median(p["throughput"] for p in points)}
            else:
                row[key] = {
                    "images_per_s": statistics.median(p["throughput"] for p in points),
                    "p50_ms": statistics.median(p["p50_ms"] for p in points),
                    "rounds": [round(p["throughput"], 2) for p in points],
                    "errors": sum(p["errors"] for p in points),
                    "loadgen_cpu_s_per_wall_s": statistics.median(
                        p["loadgen_cpu_s"] / p["loadgen_wall_s"] for p in points
                    ),
                }
        targets = {}
        for engine in ENGINES:
            server, limit = row.get(f"attnserve/{engine}"), row.get(f"in-process/{engine}")
            if server and limit:
                ratio = server["images_per_s"] / limit["images_per_s"]
                targets[f"attnserve/{engine} over in-process best"] = {
                    "value": round(ratio, 3), "target": ">= 0.85", "met": ratio >= 0.85,
                }  # fmt: skip
        peers = [row[k]["images_per_s"] for k in ("mlserver", "mlserver-adaptive") if k in row]
        if peers and "attnserve/onnxruntime" in row:
            ratio = row["attnserve/onnxruntime"]["images_per_s"] / max(peers)
            targets["attnserve/onnxruntime over the better MLServer"] = {
                "value": round(ratio, 3), "target": ">= 1.0", "met": ratio >= 1.0,
            }  # fmt: skip
        models[name] = {"setups": row, "targets": targets}
    return {
        "benchmark": "image_server_path",
        "command": "python benchmarks/image_server_path.py "
        f"--rounds {args.rounds} --duration {args.duration} --models {' '.join(args.models)}"
        + (f" --baseline-src {args.baseline_src}" if args.baseline_src else ""),
        "threads": args.threads,
        "concurrency": CONCURRENCY,
        "loadgen_processes": args.loadgen_processes,
        "load_before": before,
        "load_after": uptime(),
        "models": models,
    }


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(report["models"]), figsize=(6 * len(report["models"]), 4.5), squeeze=False)
    for ax, (name, model) in zip(axes[0], report["models"].items(), strict=True):
        keys = list(model["setups"])
        ax.barh(keys, [model["setups"][k]["images_per_s"] for k in keys])
        ax.set_xlabel(f"images/s at c={report['concurrency']} (in-process: best batch)")
        ax.set_title(name)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
