"""The same requests against two revisions of the server, interleaved round by round.

Starts one server from this checkout and one from ``--baseline-src`` (a worktree of another
revision, e.g. ``git worktree add /tmp/base 854ceee``; it runs with that tree's ``server`` and
``client`` folders first on PYTHONPATH), both on the shipped models. Each round measures every
setup on both servers, in an order that alternates between rounds:

- ``classify``: typed Classify of one PNG (kserve_overhead.py's ``typed``);
- ``v2_image``: v2 ModelInfer of the same PNG as a BYTES tensor, top-k by the classification extension;
- ``v2_pixels``: v2 ModelInfer of a preprocessed FP32 tensor, raw contents;
- ``ttft``: time to the first streamed token of a greedy GenerateStream (server_ttft.py's measure);
- ``generate16``: a unary greedy Generate of 16 tokens.

It reports the medians and the median of the per-round ratios new / baseline (1.0 = no change),
as JSON on stdout and in ``results/revision_compare.json``, with a plot.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc as triton
from kserve_overhead import png_images
from serving import start_server

from attnserve_client import Client

REPO = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
PROMPT = "ROMEO.\nBut soft, what light through yonder window breaks?"


def setups(address: str, image_model: str, text_model: str) -> tuple[dict[str, Callable[[], object]], list[Any]]:
    """The calls of one server; the second item holds what must be closed afterwards."""
    typed = Client(address, timeout=60)
    v2 = triton.InferenceServerClient(address)
    (image,) = png_images(1, 64)
    metadata = v2.get_model_metadata(image_model)
    pixel_input = next(t for t in metadata.inputs if t.datatype == "FP32")
    output = metadata.outputs[0].name
    image_tensor = triton.InferInput("image", [1], "BYTES")
    image_tensor.set_data_from_numpy(np.array([image], dtype=object))
    shape = [1, *pixel_input.shape[1:]]
    pixel_tensor = triton.InferInput(pixel_input.name, shape, "FP32")
    pixel_tensor.set_data_from_numpy(np.random.default_rng(0).standard_normal(shape).astype(np.float32))
    top = [triton.InferRequestedOutput(output, class_count=3)]

    def ttft() -> object:
        stream = typed.generate_stream(PROMPT, model=text_model, max_new_tokens=1, temperature=0.0)
        first = next(iter(stream))
        for _ in stream:
            pass
        return first

    calls: dict[str, Callable[[], object]] = {
        "classify": lambda: typed.classify(image, model=image_model, top_k=3),
        "v2_image": lambda: v2.infer(image_model, [image_tensor], outputs=top, client_timeout=60),
        "v2_pixels": lambda: v2.infer(image_model, [pixel_tensor], client_timeout=60),
        "ttft": ttft,
        "generate16": lambda: typed.generate(PROMPT, model=text_model, max_new_tokens=16, temperature=0.0),
    }
    return calls, [typed, v2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline-src", type=Path, required=True, help="a checkout of the baseline revision")
    parser.add_argument("--repository", type=Path, default=REPO / "models")
    parser.add_argument("--image-model", default="digits-vit")
    parser.add_argument("--text-model", default="shakespeare-gpt")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calls", type=int, default=20, help="calls of each setup per round and server")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads of each server")
    args = parser.parse_args()

    base_env = dict(os.environ)
    base_src = args.baseline_src.resolve()
    base_env["PYTHONPATH"] = os.pathsep.join([str(base_src / "server"), str(base_src / "client")])
    flags = ("--intra-op-threads", str(args.threads))
    servers = {
        "new": start_server(args.repository, *flags),
        "baseline": start_server(args.repository, *flags, env=base_env),
    }
    load_before = os.getloadavg()
    samples: dict[str, dict[str, list[float]]] = {}
    closers: list[Any] = []
    try:
        calls = {}
        for name, (_, address) in servers.items():
            calls[name], closing = setups(address, args.image_model, args.text_model)
            closers += closing
        # Same answers first: a greedy generation and a top class must not depend on the revision.
        answers = {name: (c["generate16"]().text, c["classify"]()[0].index) for name, c in calls.items()}  # type: ignore[attr-defined]
        if answers["new"] != answers["baseline"]:
            raise SystemExit(f"the revisions answer differently: {answers}")
        for c in calls.values():  # warm-up
            for fn in c.values():
                for _ in range(3):
                    fn()
        samples = {name: {setup: [] for setup in calls[name]} for name in calls}
        order = list(calls)
        for round_index in range(args.rounds):
            for name in order if round_index % 2 == 0 else reversed(order):
                for setup, fn in calls[name].items():
                    start = time.perf_counter()
                    for _ in range(args.calls):
                        fn()
                    samples[name][setup].append((time.perf_counter() - start) * 1000 / args.calls)
    finally:
        for closer in closers:
            closer.close()
        for process, _ in servers.values():
            process.send_signal(signal.SIGTERM)
            process.wait(30)
    load_after = os.getloadavg()

    report: dict[str, Any] = {
        "benchmark": "revision_compare",
        "baseline_src": str(base_src),
        "rounds": args.rounds,
        "calls_per_round": args.calls,
        "threads": args.threads,
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in load_after],
        "ms_median": {
            name: {setup: round(statistics.median(v), 4) for setup, v in by_setup.items()}
            for name, by_setup in samples.items()
        },
        "ratio_new_over_baseline": {
            setup: round(
                statistics.median(
                    a / b for a, b in zip(samples["new"][setup], samples["baseline"][setup], strict=True)
                ),
                4,
            )
            for setup in samples["new"]
        },
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "revision_compare.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(report, RESULTS / "revision_compare.png")
    print(json.dumps(report, indent=2))


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ratios = report["ratio_new_over_baseline"]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.bar(list(ratios), list(ratios.values()), color="tab:blue")
    ax.axhline(1.0, color="black", linewidth=0.8)
    for bound in (0.9, 1.1):
        ax.axhline(bound, color="tab:red", linewidth=0.8, linestyle="--")
    ax.set_ylabel("new / baseline (median of rounds)")
    ax.set_title(f"Same requests, two revisions ({report['rounds']} interleaved rounds)")
    ax.set_ylim(0.5, 1.5)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
