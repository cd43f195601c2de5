"""Image classification under concurrent load: attnserve's dynamic batching against in-process
ONNX Runtime (the limit) and Seldon MLServer, on one DeiT-Ti-shaped ViT file (random weights).

- in-process: the server's own decode + preprocess + ONNX Runtime session, in this process, at
  batch 1, 2, 4 and 8 (median of repeats). Its best images/s is the limit a server can reach
  doing the same work; its batch-1 latency is the c=1 reference. Plain ``session.run`` on a
  ready tensor is reported too.
- attnserve: a real server process, ``Client.classify`` of one PNG per request.
- MLServer: ``mlserver start`` with a plain ONNX Runtime ``MLModel`` (benchmarks/mlserver_onnx),
  without and with adaptive batching (``max_batch_size`` 8, ``max_batch_time`` 2 ms), driven by
  the same closed loop from MLServer's venv over its gRPC endpoint.

A closed loop at concurrency 1, 4, 8 and 16 reports images/s and p50/p99 latency. The systems
run in turn at each concurrency, and every point is the median of ``--repeats`` runs.

    python benchmarks/image_throughput.py [--duration 5] [--repeats 3] [--no-mlserver]

MLServer lives in its own venv, ``benchmarks/.cache/mlserver-venv`` (its pins conflict with the
test venv's), which the first run creates from ``benchmarks/mlserver_onnx/requirements.txt``.
Prints JSON and writes ``benchmarks/results/image_throughput.{json,png}``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from closed_loop import closed_loop, percentile
from PIL import Image
from serving import free_port, start_server

from attnserve_client import Client
from attnserve_export import vit
from attnserve_export.image_data import ImageSpec
from attnserve_export.image_export import export_classifier
from attnserve_server.repository import ModelRepository
from attnserve_server.runtime import available_cpus
from attnserve_server.settings import ServerSettings
from attnserve_server.vision.classifier import ImageClassifier

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / "benchmarks" / ".cache" / "throughput"
MLSERVER_VENV = REPO / "benchmarks" / ".cache" / "mlserver-venv"
MLSERVER_RUNTIME = REPO / "benchmarks" / "mlserver_onnx"
RESULTS = REPO / "benchmarks" / "results"
MODEL = "deit-ti"
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CONCURRENCY = (1, 4, 8, 16)
BATCHES = (1, 2, 4, 8)
DEFAULT_MAX_BATCH = 8  # the server's --image-max-batch-size default


def export_model() -> Path:
    """``CACHE/repo/deit-ti/1``, exported once with the parity-checked exporter."""
    version_dir = CACHE / "repo" / MODEL / "1"
    if not (version_dir / "metadata.json").exists():
        torch.manual_seed(0)
        model = vit.ViT(vit.PRESETS["deit-ti"]).eval()
        spec = ImageSpec(
            channels=3, height=224, width=224, resample="bicubic", resize_policy="resize",
            mean=IMAGENET_MEAN, std=IMAGENET_STD,
        )  # fmt: skip
        images = np.random.default_rng(0).standard_normal((4, 3, 224, 224)).astype(np.float32)
        labels = [f"class_{i}" for i in range(1000)]
        export_classifier(model, spec, labels, images, version_dir, description="DeiT-Ti shape, random weights")
    return version_dir


def png_images(count: int) -> list[bytes]:
    """224x224 photos-like PNGs: smooth random fields (noise would make decoding dominate)."""
    rng = np.random.default_rng(1)
    out = []
    for _ in range(count):
        small = Image.fromarray(rng.integers(0, 256, (28, 28, 3), dtype=np.uint8))
        buffer = io.BytesIO()
        small.resize((224, 224), Image.BICUBIC).save(buffer, "PNG")
        out.append(buffer.getvalue())
    return out


def load_classifier(version_dir: Path, threads: int) -> Any:
    """The server's own classifier (decode, preprocess, ONNX Runtime session), in this process."""
    root = version_dir.parent.parent
    repository = ModelRepository(root, settings=ServerSettings(model_repository=root, intra_op_threads=threads))
    return repository.load_model(version_dir.parent, ThreadPoolExecutor(1)).version("").engine_as(ImageClassifier)


def in_process(classifier: Any, images: list[bytes], repeats: int, duration: float) -> dict[str, Any]:
    """ms per call at each batch (median of ``repeats``), and batch-1 latency over ``duration`` s."""
    rows = []
    for batch in BATCHES:
        chunk = images[:batch]
        tensor = classifier.prepare(chunk, 10**9)

        def full(chunk: list[bytes] = chunk) -> object:
            return classifier.forward(classifier.prepare(chunk, 10**9))

        def ort_only(tensor: np.ndarray = tensor) -> object:
            return classifier.forward(tensor)

        rows.append({"batch": batch, "ms": statistics.median(timed(full, repeats)),
                     "ort_only_ms": statistics.median(timed(ort_only, repeats))})  # fmt: skip
    single: list[float] = []
    end = time.perf_counter() + duration
    while time.perf_counter() < end:
        single += timed(lambda: classifier.forward(classifier.prepare(images[:1], 10**9)), 1)
    return {"batches": rows, "c1_p50_ms": percentile(single, 0.5), "c1_p99_ms": percentile(single, 0.99)}


def combine(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over repeats of :func:`in_process`, with images/s and the best batch."""
    rows = []
    for i, batch in enumerate(BATCHES):
        ms = statistics.median(r["batches"][i]["ms"] for r in runs)
        ort_ms = statistics.median(r["batches"][i]["ort_only_ms"] for r in runs)
        rows.append({"batch": batch, "ms": ms, "images_per_s": batch * 1000 / ms, "ort_only_ms": ort_ms,
                     "ort_only_images_per_s": batch * 1000 / ort_ms})  # fmt: skip
    best = max(rows, key=lambda r: r["images_per_s"])
    return {
        "batches": rows,
        "c1_p50_ms": statistics.median(r["c1_p50_ms"] for r in runs),
        "c1_p99_ms": statistics.median(r["c1_p99_ms"] for r in runs),
        "best_batch": best["batch"],
        "best_images_per_s": best["images_per_s"],
    }


def timed(fn: Callable[[], object], repeats: int) -> list[float]:
    fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000)
    return samples


def start_attnserve(repository: Path, threads: int, extra: list[str]) -> tuple[subprocess.Popen[bytes], str]:
    return start_server(repository, "--intra-op-threads", str(threads), *extra)


def wait_until(ready: Callable[[], bool], process: subprocess.Popen[bytes], what: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if ready():
                return
        except Exception:  # not up yet
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise SystemExit(f"{what} did not start")
        time.sleep(0.5)


def ensure_mlserver_venv() -> None:
    if (MLSERVER_VENV / "bin" / "mlserver").exists():
        return
    subprocess.run([sys.executable, "-m", "venv", str(MLSERVER_VENV)], check=True)
    pip = [str(MLSERVER_VENV / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    subprocess.run([*pip, "-r", str(MLSERVER_RUNTIME / "requirements.txt")], check=True)


def start_mlserver(
    version_dir: Path, threads: int, adaptive: bool, name: str = MODEL
) -> tuple[subprocess.Popen[bytes], str]:
    """An MLServer with the model folder ``CACHE/mlserver-<mode>/<name>`` (runtime.py + model-settings.json)."""
    root = CACHE / f"mlserver-{'adaptive' if adaptive else 'plain'}-{name}"
    model_dir = root / name
    model_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(MLSERVER_RUNTIME / "runtime.py", model_dir / "runtime.py")
    settings: dict[str, Any] = {
        "name": name,
        "implementation": "runtime.OnnxImageClassifier",
        "parameters": {"uri": str(version_dir), "extra": {"threads": threads}},
    }
    if adaptive:
        settings |= {"max_batch_size": 8, "max_batch_time": 0.002}
    (model_dir / "model-settings.json").write_text(json.dumps(settings, indent=2))
    grpc_port, http_port, metrics_port = free_port(), free_port(), free_port()
    (root / "settings.json").write_text(json.dumps({
        "http_port": http_port, "grpc_port": grpc_port, "metrics_port": metrics_port, "debug": False,
    }))  # fmt: skip
    env = {**os.environ, "PATH": f"{MLSERVER_VENV / 'bin'}:{os.environ['PATH']}"}
    env.pop("VIRTUAL_ENV", None)
    log = open(root / "mlserver.log", "wb")  # noqa: SIM115 (lives as long as the process)
    process = subprocess.Popen([str(MLSERVER_VENV / "bin" / "mlserver"), "start", str(root)], cwd=root, env=env,
                               stdout=log, stderr=subprocess.STDOUT)  # fmt: skip

    def ready() -> bool:
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/v2/models/{name}/ready", timeout=2) as reply:
            return bool(reply.status == 200)

    wait_until(ready, process, f"MLServer ({root / 'mlserver.log'})")
    return process, f"127.0.0.1:{grpc_port}"


def attnserve_point(address: str, images: list[bytes], concurrency: int, duration: float) -> dict[str, Any]:
    clients = [Client(address, timeout=60) for _ in range(concurrency)]

    def make_call(worker: int) -> Callable[[int], object]:
        client = clients[worker]
        return lambda i: client.classify(images[(worker * 7 + i) % len(images)], model=MODEL, top_k=5)

    try:
        return closed_loop(make_call, concurrency, duration)
    finally:
        for client in clients:
            client.close()


def mlserver_point(address: str, images_dir: Path, concurrency: int, duration: float) -> dict[str, Any]:
    out = subprocess.run(
        [str(MLSERVER_VENV / "bin" / "python"), str(MLSERVER_RUNTIME / "loadgen.py"), "--target", address,
         "--model", MODEL, "--images", str(images_dir), "--concurrency", str(concurrency),
         "--duration", str(duration)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def median_point(runs: list[dict[str, Any]]) -> dict[str, Any]:
    keys = ("throughput", "p50_ms", "p99_ms")
    return {
        "concurrency": runs[0]["concurrency"],
        **{k: statistics.median(r[k] for r in runs) for k in keys},
        "runs": [{k: round(r[k], 2) for k in keys} for r in runs],
        "errors": sum(r["errors"] for r in runs),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=available_cpus())
    parser.add_argument("--duration", type=float, default=5.0, help="measured seconds per point")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--concurrency", default=",".join(map(str, CONCURRENCY)))
    parser.add_argument("--no-mlserver", action="store_true")
    parser.add_argument("--tag", default="", help="write results/image_throughput-TAG.{json,png} instead")
    parser.add_argument(
        "--server-args", default="", help="extra attnserve-server flags, e.g. '--image-max-batch-size 8'"
    )
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    torch.set_num_threads(args.threads)

    version_dir = export_model()
    images = png_images(32)
    images_dir = CACHE / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    for i, data in enumerate(images):
        (images_dir / f"{i:02d}.png").write_bytes(data)

    classifier = load_classifier(version_dir, args.threads)
    # The limit is measured in every repeat, so that it sees the same machine load as the servers.
    baselines = [in_process(classifier, images, repeats=3, duration=args.duration)]
    print(f"repeat 0 in-process: {baselines[-1]}", file=sys.stderr)
    # Besides the defaults, attnserve tuned to this machine: batches no larger than the in-process best.
    tuned_batch = combine(baselines)["best_batch"]
    servers: dict[str, tuple[subprocess.Popen[bytes], str]] = {}
    try:
        repository = version_dir.parent.parent
        servers["attnserve"] = start_attnserve(repository, args.threads, args.server_args.split())
        if tuned_batch != DEFAULT_MAX_BATCH:
            tuned_flags = ["--image-max-batch-size", str(tuned_batch)]
            servers[f"attnserve-max-batch-{tuned_batch}"] = start_attnserve(repository, args.threads, tuned_flags)
        if not args.no_mlserver:
            ensure_mlserver_venv()
            servers["mlserver"] = start_mlserver(version_dir, args.threads, adaptive=False)
            servers["mlserver-adaptive"] = start_mlserver(version_dir, args.threads, adaptive=True)
        runs: dict[str, dict[int, list[dict[str, Any]]]] = {name: {c: [] for c in levels} for name in servers}
        for repeat in range(args.repeats):
            if repeat:
                baselines.append(in_process(classifier, images, repeats=3, duration=args.duration))
                print(f"repeat {repeat} in-process: {baselines[-1]}", file=sys.stderr)
            for c in levels:
                for name, (_, address) in servers.items():
                    if name.startswith("attnserve"):
                        point = attnserve_point(address, images, c, args.duration)
                    else:
                        point = mlserver_point(address, images_dir, c, args.duration)
                    runs[name][c].append(point)
                    print(f"repeat {repeat} {name} c={c}: {point}", file=sys.stderr)
        mean_batch = {}
        for name, (_, address) in servers.items():
            if name.startswith("attnserve"):
                with Client(address) as client:
                    counters = client.get_model(MODEL).counters
                mean_batch[name] = round(counters.batched_items / max(1, counters.batches), 2)
    finally:
        for process, _ in servers.values():
            process.send_signal(signal.SIGTERM)
        for process, _ in servers.values():
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()

    baseline = combine(baselines)
    results = {name: [median_point(per_c[c]) for c in levels] for name, per_c in runs.items()}
    report = {
        "benchmark": "image_throughput",
        "model": "DeiT-Ti shape (ViT, patch 16, 224 px, dim 192, depth 12, 3 heads), random weights",
        "threads": args.threads,
        "cpus": os.cpu_count(),
        "duration_s": args.duration,
        "repeats": args.repeats,
        "server_args": args.server_args,
        "in_process": baseline,
        "servers": results,
        "attnserve_mean_batch": mean_batch,
        "targets": {name: targets(baseline, results, name) for name in results if name.startswith("attnserve")},
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = "image_throughput" + (f"-{args.tag}" if args.tag else "")
    (RESULTS / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(report, RESULTS / f"{stem}.png")
    print(json.dumps(report, indent=2))


def targets(baseline: dict[str, Any], results: dict[str, list[dict[str, Any]]], server: str) -> dict[str, Any]:
    def at(name: str, c: int) -> dict[str, Any] | None:
        return next((p for p in results.get(name, []) if p["concurrency"] == c), None)

    out: dict[str, Any] = {}
    one, eight = at(server, 1), at(server, 8)
    if one:
        ratio = one["p50_ms"] / baseline["c1_p50_ms"]
        out["c1_p50_over_in_process"] = {"value": round(ratio, 3), "target": "<= 1.1", "met": ratio <= 1.1}
    if eight:
        ratio = eight["throughput"] / baseline["best_images_per_s"]
        out["c8_throughput_over_in_process_best"] = {"value": round(ratio, 3), "target": ">= 0.9", "met": ratio >= 0.9}
        peers = [p for p in (at("mlserver", 8), at("mlserver-adaptive", 8)) if p]
        if peers:
            best_peer = max(p["throughput"] for p in peers)
            ratio = eight["throughput"] / best_peer
            out["c8_throughput_over_best_mlserver"] = {
                "value": round(ratio, 3),
                "target": ">= 1.5",
                "met": ratio >= 1.5,
            }
    return out


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for name, points in report["servers"].items():
        cs = [p["concurrency"] for p in points]
        left.plot(cs, [p["throughput"] for p in points], marker="o", label=name)
        right.plot(cs, [p["p50_ms"] for p in points], marker="o", label=f"{name} p50")
        right.plot(cs, [p["p99_ms"] for p in points], marker="x", linestyle="--", label=f"{name} p99")
    best = report["in_process"]["best_images_per_s"]
    left.axhline(
        best, color="grey", linestyle=":", label=f"in-process best batch ({report['in_process']['best_batch']})"
    )
    right.axhline(report["in_process"]["c1_p50_ms"], color="grey", linestyle=":", label="in-process batch-1 p50")
    left.set_xlabel("concurrent clients (closed loop)")
    left.set_ylabel("images/s (median of repeats)")
    right.set_xlabel("concurrent clients (closed loop)")
    right.set_ylabel("latency ms")
    right.set_yscale("log")
    for ax in (left, right):
        ax.set_xticks(list(CONCURRENCY))
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"{report['model']}, {report['threads']} ORT threads")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
