"""Overhead of the KServe v2 API against the typed Classify RPC, on the same image model and bytes.

Setups, each against the same real server process, per batch size (1 and 8), ms per request:
- typed: ``attnserve_client.Client.classify_batch`` (ImageClassificationService.Classify), top 5;
- typed stub: the same Classify request through the bare generated stub (no client-side checks),
  which isolates the server's share;
- v2 raw image: tritonclient ``infer`` with the encoded PNGs as a raw BYTES ``image`` tensor and
  ``classification`` 5 on the output: the same decode, preprocess, model call and top-k;
- v2 raw pixels (for reference): the preprocessed FP32 tensor as raw contents, logits back.

Calls interleave the setups (typed, typed stub, v2 image, v2 pixels, typed, ...) so that drift
on the shared machine hits all alike; a round is ``--calls`` calls of each; ms per request is the
median over ``--rounds`` rounds. Overhead is the median over rounds of the paired ratio
v2 image / typed - 1 (also reported against the bare stub).

    python benchmarks/kserve_overhead.py [--model digits-vit] [--rounds 15] [--calls 20]

Prints JSON and writes ``benchmarks/results/kserve_overhead.{json,png}``.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import tritonclient.grpc as triton
from PIL import Image
from serving import start_server

from attnserve_client import Client
from attnserve_client.pb import image_classification_pb2, image_classification_pb2_grpc

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
TOP_K = 5


def png_images(count: int, size: int) -> list[bytes]:
    rng = np.random.default_rng(0)
    out = []
    for _ in range(count):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8), mode="L").save(buffer, format="PNG")
        out.append(buffer.getvalue())
    return out


def ms_per_call(fn: Callable[[], object], calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) * 1000 / calls


def measure(address: str, model: str, *, batch: int, image_size: int, rounds: int, calls: int) -> dict[str, Any]:
    images = png_images(batch, image_size)
    with (
        Client(address, timeout=60) as typed,
        triton.InferenceServerClient(address) as v2,
        grpc.insecure_channel(address) as channel,
    ):
        stub = image_classification_pb2_grpc.ImageClassificationServiceStub(channel)
        metadata = v2.get_model_metadata(model)
        pixel_input = next(t for t in metadata.inputs if t.datatype == "FP32")
        output = metadata.outputs[0].name
        image_tensor = triton.InferInput("image", [batch], "BYTES")
        image_tensor.set_data_from_numpy(np.array(images, dtype=object))
        shape = [batch, *pixel_input.shape[1:]]
        pixel_tensor = triton.InferInput(pixel_input.name, shape, "FP32")
        pixel_tensor.set_data_from_numpy(np.random.default_rng(0).standard_normal(shape).astype(np.float32))
        top = [triton.InferRequestedOutput(output, class_count=TOP_K)]

        def run_typed() -> object:
            return typed.classify_batch(images, model=model, top_k=TOP_K)

        classify_request = image_classification_pb2.ClassifyRequest(model=model, images=images, top_k=TOP_K)

        def run_typed_stub() -> object:
            return stub.Classify(classify_request, timeout=60)

        def run_v2_image() -> object:
            return v2.infer(model, [image_tensor], outputs=top, client_timeout=60)

        def run_v2_pixels() -> object:
            return v2.infer(model, [pixel_tensor], client_timeout=60)

        # The two paths must agree before their speed means anything.
        typed_top = [p.index for p in run_typed()[0]]
        v2_top = [int(e.decode().split(":")[1]) for e in run_v2_image().as_numpy(output)[0]]
        if typed_top != v2_top:
            raise SystemExit(f"typed and v2 disagree: {typed_top} vs {v2_top}")
        setups = {
            "typed": run_typed,
            "typed_stub": run_typed_stub,
            "v2_image": run_v2_image,
            "v2_pixels": run_v2_pixels,
        }
        for fn in setups.values():  # warm-up
            ms_per_call(fn, 3)
        samples: dict[str, list[float]] = {name: [] for name in setups}
        for _ in range(rounds):
            totals = dict.fromkeys(setups, 0.0)
            for _ in range(calls):  # one call of each setup in turn: they share the machine's moods
                for name, fn in setups.items():
                    start = time.perf_counter()
                    fn()
                    totals[name] += time.perf_counter() - start
            for name, total in totals.items():
                samples[name].append(total * 1000 / calls)
    medians = {name: statistics.median(values) for name, values in samples.items()}

    def overhead(name: str, baseline: str) -> float:
        """Median over rounds of the paired ratio: robust to load that changes between rounds."""
        ratios = [a / b for a, b in zip(samples[name], samples[baseline], strict=True)]
        return round((statistics.median(ratios) - 1) * 100, 2)

    return {
        "batch": batch,
        "ms_per_request": {name: round(value, 4) for name, value in medians.items()},
        "v2_image_overhead_pct": overhead("v2_image", "typed"),
        "v2_image_overhead_vs_stub_pct": overhead("v2_image", "typed_stub"),
        "samples_ms": {name: [round(v, 4) for v in values] for name, values in samples.items()},
    }


def plot(rows: list[dict[str, Any]], model: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    setups = [
        ("typed", "typed Classify"),
        ("typed_stub", "typed Classify, bare stub"),
        ("v2_image", "v2 ModelInfer, raw BYTES image"),
        ("v2_pixels", "v2, raw FP32"),
    ]
    width = 0.2
    for i, (key, label) in enumerate(setups):
        xs = [j + (i - 1.5) * width for j in range(len(rows))]
        ax.bar(xs, [r["ms_per_request"][key] for r in rows], width, label=label)
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels(
        [
            f"batch {r['batch']}\nv2 image vs typed {r['v2_image_overhead_pct']:+.1f}%, "
            f"vs stub {r['v2_image_overhead_vs_stub_pct']:+.1f}%"
            for r in rows
        ]
    )
    ax.set_ylabel("ms per request (median of rounds)")
    ax.set_title(f"KServe v2 (tritonclient) vs typed Classify, {model}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", type=Path, default=REPO / "models")
    parser.add_argument("--model", default="digits-vit")
    parser.add_argument("--image-size", type=int, default=64, help="side of the PNG images sent")
    parser.add_argument("--rounds", type=int, default=25)
    parser.add_argument("--calls", type=int, default=20)
    args = parser.parse_args()
    process, address = start_server(args.repository, "--model-control-mode", "explicit", "--load-model", args.model)
    try:
        rows = [
            measure(address, args.model, batch=b, image_size=args.image_size, rounds=args.rounds, calls=args.calls)
            for b in (1, 8)
        ]
    finally:
        process.terminate()
        process.wait(30)
    result = {
        "benchmark": "kserve_overhead",
        "model": args.model,
        "image_size": args.image_size,
        "rounds": args.rounds,
        "calls_per_round": args.calls,
        "top_k": TOP_K,
        "rows": rows,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "kserve_overhead.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(rows, args.model, RESULTS / "kserve_overhead.png")
    summary = {**result, "rows": [{k: v for k, v in r.items() if k != "samples_ms"} for r in rows]}
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
