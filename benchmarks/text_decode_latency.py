"""Per-token decode latency of the GPT models: ONNX Runtime with a KV cache in both graph layouts,
ONNX Runtime recomputing the whole prefix, and PyTorch eager with a KV cache, on the same weights.

KV cache layouts (docs/model-repository.md): ``concat`` returns ``past + new`` as a fresh tensor,
so every step copies the whole cache; ``shared_buffer`` (GroupQueryAttention) updates a
preallocated buffer in place through IO binding, the way the server runs it.

For each model and each position p, one token is decoded after a p-token context, repeated
``--repeats`` times; the median is reported. All setups use the same thread count. The report
holds latency(512) / latency(32) of each layout next to FLOPs(512) / FLOPs(32), and whether
the target latency ratio <= 1.1 x FLOP ratio is met.
Prints one JSON object and writes ``benchmarks/results/text_decode_latency.{json,png}``.

    python benchmarks/text_decode_latency.py                  # both models
    python benchmarks/text_decode_latency.py --models shakespeare-gpt --repeats 50

The shipped model's PyTorch weights are read back from its ONNX file (the exporter keeps the
parameters as named initializers). gpt2-small is a Hugging Face folder at the real ``gpt2`` shape
(124M parameters, 50,257 tokens) with random weights, written by transformers' ``save_pretrained``
(``attnserve_export.hf_random``, a test dependency) and brought in with ``attnserve-export import``,
the way a user's own checkpoint is. The folder and both layouts of each model are made
(parity-checked) once and cached under ``benchmarks/.cache``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tokenizers import Tokenizer

from attnserve_export.gpt import GPT, GPTConfig
from attnserve_export.hf_import import import_checkpoint
from attnserve_export.onnx_export import export_gpt
from attnserve_export.rebuild import gpt_from_onnx
from attnserve_server.runtime import OrtSession, RuntimeOptions, available_cpus

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
CACHE = REPO / "benchmarks" / ".cache"
POSITIONS = (32, 128, 512)


def latest_version_dir(model_dir: Path) -> Path:
    versions = sorted((p for p in model_dir.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
    if not versions:
        raise SystemExit(f"no versions under {model_dir}")
    return versions[-1]


def torch_model_from_onnx(version_dir: Path) -> GPT:
    """Rebuild the PyTorch GPT of a repository entry from its ONNX initializers."""
    return gpt_from_onnx(version_dir)


def gpt2_small_folder() -> Path:
    """A Hugging Face folder with a random-weight GPT2LMHeadModel at the gpt2 shape (written once, then cached)."""
    folder = CACHE / "hf-gpt2-small"
    if not (folder / "model.safetensors").exists():
        from attnserve_export.hf_random import random_gpt2  # needs transformers (requirements/test.txt)

        random_gpt2(folder, seed=0)  # GPT2Config's defaults are the gpt2 shape
    return folder


def gpt2_small_entry(layout: str = "shared_buffer") -> Path:
    """The gpt2-small folder imported with attnserve-export import in ``layout`` (once, then cached)."""
    name = "gpt2-small" if layout == "shared_buffer" else f"gpt2-small-{layout}"
    version_dir = CACHE / "imported" / name / "1"
    if not (version_dir / "metadata.json").exists():
        import_checkpoint(gpt2_small_folder(), CACHE / "imported", name, version=1, kv_cache_layout=layout)
    return version_dir


def layout_entry(name: str, version_dir: Path, model: GPT, layout: str) -> Path:
    """``version_dir`` if it already has ``layout``, else the same weights exported in it (cached)."""
    metadata = json.loads((version_dir / "metadata.json").read_text())
    if metadata["text_generation"].get("kv_cache_layout", "concat") == layout:
        return version_dir
    if name == "gpt2-small":
        return gpt2_small_entry(layout)
    cached = CACHE / f"{name}-{layout}" / "1"
    if not (cached / "metadata.json").exists():
        tokenizer = Tokenizer.from_file(str(version_dir / metadata["text_generation"]["tokenizer_file"]))
        export_gpt(model, tokenizer, cached, description=f"{name} as {layout}", kv_cache_layout=layout)
    return cached


def timed_ms(fn: Callable[[], object], repeats: int) -> list[float]:
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1e3)
    return samples


def interleaved_medians(setups: dict[str, Callable[[], object]], repeats: int, rounds: int = 5) -> dict[str, float]:
    """Median ms of each setup, measured in alternating rounds.

    This machine's speed drifts over seconds; timing the setups one after another in a few rounds,
    instead of each in one block, lets the drift hit all of them alike.
    """
    for fn in setups.values():  # warm-up: arenas, caches, lazy initialisation
        timed_ms(fn, 3)
    samples: dict[str, list[float]] = {name: [] for name in setups}
    for _ in range(rounds):
        for name, fn in setups.items():
            samples[name] += timed_ms(fn, max(1, repeats // rounds))
    return {name: statistics.median(values) for name, values in samples.items()}


def decode_flops(config: GPTConfig, position: int) -> float:
    """Multiply-adds x2 to decode one token after ``position`` cached tokens (weights + attention)."""
    d, layers = config.dim, config.num_layers
    weights = layers * (4 * d * d + 2 * config.hidden_dim * d) + d * config.vocab_size
    attention = layers * 2 * (position + 1) * d  # q·K and p·V over the cached keys
    return 2.0 * (weights + attention)


class SharedBufferDecoder:
    """Decode steps of a ``shared_buffer`` entry through the server's OrtSession.run_in_place."""

    def __init__(self, version_dir: Path, threads: int) -> None:
        metadata = json.loads((version_dir / "metadata.json").read_text())
        self.tg = tg = metadata["text_generation"]
        self.session = OrtSession(version_dir / metadata["model_file"], RuntimeOptions(intra_op_threads=threads))
        capacity = max(POSITIONS) + 1
        shape = (1, tg["num_heads"], capacity, tg["head_dim"])
        self.past = {
            tg[f"past_{kind}_template"].format(layer=i): np.zeros(shape, dtype=np.float32)
            for i in range(tg["num_layers"])
            for kind in ("key", "value")
        }
        self.in_place = {
            tg[f"past_{kind}_template"].format(layer=i): tg[f"present_{kind}_template"].format(layer=i)
            for i in range(tg["num_layers"])
            for kind in ("key", "value")
        }

    def run(self, ids: np.ndarray, start: int) -> np.ndarray:
        """Feed ``ids`` (1, T) after ``start`` cached tokens (the buffer is written at start..start+T-1)."""
        tg, new = self.tg, ids.shape[1]
        names = tg["inputs"]
        feed = {
            names["input_ids"]: ids,
            names["position_ids"]: np.arange(start, start + new, dtype=np.int64)[None, :],
            names["seqlens_k"]: np.asarray([start + new - 1], dtype=np.int32),
            names["total_sequence_length"]: np.asarray(start + new, dtype=np.int32),
            **self.past,
        }
        return self.session.run_in_place([tg["outputs"]["logits"]], feed, self.in_place)[0]


def bench_model(name: str, version_dir: Path, threads: int, repeats: int) -> dict[str, Any]:
    model = torch_model_from_onnx(version_dir)
    config = model.config
    version_dir = layout_entry(name, version_dir, model, "concat")
    shared = SharedBufferDecoder(layout_entry(name, version_dir, model, "shared_buffer"), threads)
    metadata = json.loads((version_dir / "metadata.json").read_text())
    tg = metadata["text_generation"]
    session = OrtSession(version_dir / metadata["model_file"], RuntimeOptions(intra_op_threads=threads))
    layers = config.num_layers
    past_names = [tg[f"past_{kind}_template"].format(layer=i) for i in range(layers) for kind in ("key", "value")]
    present_names = [tg[f"present_{kind}_template"].format(layer=i) for i in range(layers) for kind in ("key", "value")]
    logits_name = tg["outputs"]["logits"]
    names = tg["inputs"]
    rng = np.random.default_rng(0)
    torch.set_num_threads(threads)

    def ort_run(ids: np.ndarray, past: list[np.ndarray]) -> list[np.ndarray]:
        past_len = past[0].shape[2]
        feed = {
            names["input_ids"]: ids,
            names["attention_mask"]: np.ones((1, past_len + ids.shape[1]), dtype=np.int64),
            names["position_ids"]: np.arange(past_len, past_len + ids.shape[1], dtype=np.int64)[None, :],
            **dict(zip(past_names, past, strict=True)),
        }
        return session.run([logits_name, *present_names], feed)

    empty = [np.zeros((1, config.num_heads, 0, config.head_dim), dtype=np.float32) for _ in past_names]
    # Every setup at every position is timed in the same alternating rounds, so that the machine's
    # drift over minutes hits positions alike and the 512/32 ratios compare like with like.
    # The shared_buffer decoder holds the longest context once: a step at position p reads
    # positions 0..p-1 and writes p, whatever the values there, so each position costs what it would.
    longest = rng.integers(0, tg["vocab_size"], size=(1, max(POSITIONS)), dtype=np.int64)
    shared.run(longest, 0)
    setups: dict[str, Callable[[], object]] = {}
    recompute: dict[str, Callable[[], object]] = {}
    with torch.inference_mode():
        for position in POSITIONS:
            context = longest[:, :position]
            next_token = rng.integers(0, tg["vocab_size"], size=(1, 1), dtype=np.int64)
            past = ort_run(context, empty)[1:]
            _, torch_past = model(torch.from_numpy(context))
            token = torch.from_numpy(next_token)
            full = np.concatenate([context, next_token], axis=1)
            setups[f"onnx_kv@{position}"] = lambda t=next_token, p=past: ort_run(t, p)
            setups[f"onnx_shared_kv@{position}"] = lambda t=next_token, p=position: shared.run(t, p)
            setups[f"torch_kv@{position}"] = lambda t=token, p=torch_past: model(t, past_key_values=p)
            recompute[f"onnx_full@{position}"] = lambda f=full: ort_run(f, empty)
        medians = interleaved_medians(setups, repeats)
        # The recompute is far slower and is only the reference; fewer samples do.
        medians |= interleaved_medians(recompute, max(5, repeats // 3))
    rows = []
    for position in POSITIONS:
        ort_kv, torch_kv = medians[f"onnx_kv@{position}"], medians[f"torch_kv@{position}"]
        ort_full = medians[f"onnx_full@{position}"]
        rows.append(
            {
                "position": position,
                "onnx_shared_kv_ms": round(medians[f"onnx_shared_kv@{position}"], 3),
                "onnx_kv_ms": round(ort_kv, 3),
                "onnx_recompute_ms": round(ort_full, 3),
                "torch_eager_kv_ms": round(torch_kv, 3),
                "onnx_kv_speedup_vs_torch": round(torch_kv / ort_kv, 2),
                "onnx_kv_speedup_vs_recompute": round(ort_full / ort_kv, 2),
            }
        )
        print(f"{name} p={position}: {rows[-1]}", file=sys.stderr)
    by_pos = {r["position"]: r for r in rows}
    flop_ratio = decode_flops(config, 512) / decode_flops(config, 32)
    shared_ratio = by_pos[512]["onnx_shared_kv_ms"] / by_pos[32]["onnx_shared_kv_ms"]
    concat_ratio = by_pos[512]["onnx_kv_ms"] / by_pos[32]["onnx_kv_ms"]
    return {
        "model": name,
        "version_dir": str(version_dir),
        "parameters": model.num_parameters(),
        "rows": rows,
        "flop_ratio_512_over_32": round(flop_ratio, 3),
        "latency_ratio_512_over_32": {"shared_buffer": round(shared_ratio, 3), "concat": round(concat_ratio, 3)},
        # Target of issue 4: latency(512) / latency(32) <= 1.1 x FLOPs(512) / FLOPs(32).
        "target_latency_ratio": round(1.1 * flop_ratio, 3),
        "meets_target": {"shared_buffer": shared_ratio <= 1.1 * flop_ratio, "concat": concat_ratio <= 1.1 * flop_ratio},
    }


def plot(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4.5), squeeze=False)
    for ax, result in zip(axes[0], results, strict=True):
        positions = [r["position"] for r in result["rows"]]
        for key, label in (
            ("onnx_shared_kv_ms", "ONNX Runtime, KV cache in place (shared_buffer)"),
            ("onnx_kv_ms", "ONNX Runtime, KV cache copied (concat)"),
            ("onnx_recompute_ms", "ONNX Runtime, recompute"),
            ("torch_eager_kv_ms", "PyTorch eager, KV cache"),
        ):
            ax.plot(positions, [r[key] for r in result["rows"]], marker="o", label=label)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(positions, [str(p) for p in positions])
        ax.set_xlabel("position of the decoded token")
        ax.set_ylabel("ms per token (median, batch 1)")
        ax.set_title(f"{result['model']} ({result['parameters'] / 1e6:.1f}M params)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="shakespeare-gpt,gpt2-small")
    parser.add_argument("--repository", type=Path, default=REPO / "models")
    parser.add_argument("--threads", type=int, default=available_cpus(), help="threads for both ORT and torch")
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()

    results = []
    for name in args.models.split(","):
        version_dir = gpt2_small_entry() if name == "gpt2-small" else latest_version_dir(args.repository / name)
        results.append(bench_model(name, version_dir, args.threads, args.repeats))
    report = {
        "benchmark": "text_decode_latency",
        "threads": args.threads,
        "repeats": args.repeats,
        "torch": torch.__version__,
        "results": results,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "text_decode_latency.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(results, RESULTS / "text_decode_latency.png")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
