"""Time to first token through the server, against in-process prefill of the same prompt.

The server (a real ``attnserve-server`` process on a free loopback port) streams one token
for a prompt; the client measures the time to the first chunk. In the same run, ONNX Runtime
in this process runs the prefill of the same prompt with the same session options and samples
the first token. The difference of the medians is what the server adds: gRPC, validation,
tokenization, scheduling and detokenization.

    python benchmarks/server_ttft.py --model shakespeare-gpt --repeats 50

Prints JSON and writes ``benchmarks/results/server_ttft.{json,png}``.
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
from serving import start_server

from attnserve_client import Client
from attnserve_server.runtime import OrtSession, RuntimeOptions, available_cpus
from attnserve_server.text.tokenizer import TextTokenizer

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
ROUNDS = 5
PROMPT = "ROMEO.\nBut soft, what light through yonder window breaks? It is the east, and Juliet is the sun.\n"


def percentile(samples: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(samples), q))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="shakespeare-gpt")
    parser.add_argument("--repository", type=Path, default=REPO / "models")
    parser.add_argument("--threads", type=int, default=available_cpus())
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()

    model_dir = args.repository / args.model
    version_dir = max((p for p in model_dir.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
    metadata = json.loads((version_dir / "metadata.json").read_text())
    tg = metadata["text_generation"]
    tokenizer = TextTokenizer.from_file(version_dir / tg["tokenizer_file"])
    prompt_ids = tokenizer.encode(PROMPT)
    session = OrtSession(version_dir / metadata["model_file"], RuntimeOptions(intra_op_threads=args.threads))
    past_names = [
        tg[f"past_{kind}_template"].format(layer=i) for i in range(tg["num_layers"]) for kind in ("key", "value")
    ]
    n = len(prompt_ids)
    feed = {
        tg["inputs"]["input_ids"]: np.asarray([prompt_ids], dtype=np.int64),
        tg["inputs"]["position_ids"]: np.arange(n, dtype=np.int64)[None, :],
    }
    in_place: dict[str, str] = {}
    if tg.get("kv_cache_layout", "concat") == "shared_buffer":
        # As the server runs it: the prompt's keys and values go straight into the cache buffers.
        feed[tg["inputs"]["seqlens_k"]] = np.asarray([n - 1], dtype=np.int32)
        feed[tg["inputs"]["total_sequence_length"]] = np.asarray(n, dtype=np.int32)
        for i in range(tg["num_layers"]):
            for kind in ("key", "value"):
                past = tg[f"past_{kind}_template"].format(layer=i)
                feed[past] = np.zeros((1, tg["num_heads"], tg["context_length"], tg["head_dim"]), dtype=np.float32)
                in_place[past] = tg[f"present_{kind}_template"].format(layer=i)
    else:
        feed[tg["inputs"]["attention_mask"]] = np.ones((1, n), dtype=np.int64)
        feed |= {name: np.zeros((1, tg["num_heads"], 0, tg["head_dim"]), dtype=np.float32) for name in past_names}

    def in_process_prefill() -> None:
        if in_place:
            logits = session.run_in_place([tg["outputs"]["logits"]], feed, in_place)[0]
        else:
            logits = session.run([tg["outputs"]["logits"]], feed)[0]
        int(np.argmax(logits[0, -1]))

    process, address = start_server(args.repository, "--intra-op-threads", str(args.threads))
    server_ms: list[float] = []
    local_ms: list[float] = []
    try:
        with Client(address, timeout=30.0) as client:

            def first_token_ms() -> float:
                start = time.perf_counter()
                stream = client.generate_stream(PROMPT, model=args.model, max_new_tokens=1, temperature=0.0)
                next(iter(stream))
                elapsed = (time.perf_counter() - start) * 1e3
                for _ in stream:  # drain: the single-token stream ends right after
                    pass
                return elapsed

            for _ in range(5):  # warm-up: connections, ORT arenas, tokenizer caches
                first_token_ms()
                in_process_prefill()
            # Alternate in blocks, so that slow drifts in machine noise hit both alike. Not one by
            # one: the server's copy of the weights and this process's copy would then evict each
            # other from the shared L3 cache, and both would always run cold.
            for _ in range(ROUNDS):
                for _ in range(args.repeats // ROUNDS):
                    server_ms.append(first_token_ms())
                for _ in range(args.repeats // ROUNDS):
                    start = time.perf_counter()
                    in_process_prefill()
                    local_ms.append((time.perf_counter() - start) * 1e3)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)

    report: dict[str, Any] = {
        "benchmark": "server_ttft",
        "model": args.model,
        "version": version_dir.name,
        "prompt_tokens": len(prompt_ids),
        "threads": args.threads,
        "repeats": args.repeats,
        "server_ttft_ms": {"p50": round(statistics.median(server_ms), 3), "p90": round(percentile(server_ms, 90), 3)},
        "in_process_prefill_ms": {
            "p50": round(statistics.median(local_ms), 3),
            "p90": round(percentile(local_ms, 90), 3),
        },
    }
    overhead = report["server_ttft_ms"]["p50"] - report["in_process_prefill_ms"]["p50"]
    report["server_overhead_ms_p50"] = round(overhead, 3)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "server_ttft.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(server_ms, local_ms, RESULTS / "server_ttft.png", args.model)
    print(json.dumps(report, indent=2))


def plot(server_ms: list[float], local_ms: list[float], path: Path, model: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.boxplot([local_ms, server_ms], showfliers=False)
    ax.set_xticks([1, 2], ["in-process prefill", "server time to first token"])
    ax.set_ylabel("ms")
    ax.set_title(f"{model}: what the server adds to the first token")
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
