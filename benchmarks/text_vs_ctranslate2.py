"""The text engine against CTranslate2 on the same weights: fp32 and int8, batch 1 and batch 16.

The gpt2-small shape (124M parameters, 50,257 tokens) with random weights, written once as a
Hugging Face folder by transformers' ``save_pretrained`` (``text_decode_latency.gpt2_small_folder``).
attnserve's side is that folder brought in with ``attnserve-export import`` (the ``shared_buffer``
graph) and run in-process through the server's own generator and KV cache (batched prefill, then
one batched decode call per token, greedy); its int8 graph is what ``attnserve-export quantize``
writes (per-row activations, ``quantize.quantize_file``), and ``int8 per-tensor`` is ONNX Runtime's
plain ``quantize_dynamic`` for reference (one activation scale per tensor, so a row's result depends
on its batch). CTranslate2 converts the same folder with its ``TransformersConverter`` (``int8``:
its own weight quantization) and generates greedily (``sampling_topk=1``).

Every setup, in alternating rounds (the machine drifts): a 128-token prompt, then
- batch 1: 32 new tokens, timed in two parts within the run: the prefill (to the first token)
  and the 31 decode steps after it; decode ms/token is the second over 31 (best of 3 per round);
- batch 16: 16 different 128-token prompts, 32 new tokens each, timed the same way: tokens/s is
  16 x 31 / decode time (decode only) and 16 x 32 / (prefill + decode) (prefill included).
  CTranslate2's first-token time comes from its per-token callback.
Medians over the rounds. Greedy tokens are compared between engines and precisions.
Targets (issue 18): int8 decode at batch 1 >= 1.5x faster than CTranslate2 int8, and int8
tokens/s at batch 16 >= 1.8x CTranslate2 int8 (judged with and without the prefill). Prints JSON and writes
``benchmarks/results/text_vs_ctranslate2.{json,png}``. Needs ``requirements/bench.txt``.

    python benchmarks/text_vs_ctranslate2.py --rounds 5
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from onnxruntime.quantization import QuantType, quantize_dynamic
from onnxruntime.quantization.shape_inference import quant_pre_process

from attnserve_export.quantize import quantize_file
from attnserve_export.quantize_text import load_generator
from attnserve_server.model_format.metadata import read_metadata
from attnserve_server.task_table import TaskTable
from attnserve_server.text.metadata import TextGenerationMetadata

sys.path.insert(0, str(Path(__file__).resolve().parent))
from text_decode_latency import CACHE, gpt2_small_entry, gpt2_small_folder

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
PROMPT_TOKENS = 128
NEW_TOKENS = 32
BATCH = 16

# generate(prompts, new_tokens) -> (greedy tokens per prompt, ms to the first token, ms for the rest)
Generate = Callable[[Sequence[Sequence[int]], int], tuple[list[list[int]], float, float]]


def int8_graphs(version_dir: Path) -> dict[str, Path]:
    """The entry's graph quantized as ``attnserve-export quantize`` does it, and by plain quantize_dynamic (cached)."""
    out = {"per_row": CACHE / "gpt2-small-int8.onnx", "per_tensor": CACHE / "gpt2-small-int8-per-tensor.onnx"}
    if not out["per_row"].exists():
        quantize_file(version_dir / "model.onnx", out["per_row"])
    if not out["per_tensor"].exists():
        prepared = CACHE / "gpt2-small-prep.onnx"
        quant_pre_process(str(version_dir / "model.onnx"), str(prepared), skip_symbolic_shape=True)
        quantize_dynamic(prepared, out["per_tensor"], weight_type=QuantType.QInt8, per_channel=True,
                         op_types_to_quantize=["MatMul", "Gemm"])  # fmt: skip
        prepared.unlink()
    return out


def ctranslate2_models(folder: Path) -> dict[str, Path]:
    """The Hugging Face folder converted by CTranslate2, in fp32 and in its int8 (cached)."""
    from ctranslate2.converters import TransformersConverter

    out = {}
    for name, quantization in (("float32", None), ("int8", "int8")):
        target = CACHE / f"ct2-gpt2-small-{name}"
        if not (target / "model.bin").exists():
            shutil.rmtree(target, ignore_errors=True)
            TransformersConverter(str(folder)).convert(str(target), quantization=quantization)
        out[name] = target
    return out


def attnserve_engine(version_dir: Path, model_file: Path, threads: int, executor: ThreadPoolExecutor) -> Generate:
    """Greedy generation through the server's generator and KV cache (as quantize_text.greedy_tokens), timed."""
    metadata = read_metadata(version_dir, TaskTable().sections())
    section = metadata.section
    assert isinstance(section, TextGenerationMetadata)
    generator = load_generator(version_dir, model_file, section, threads=threads, executor=executor)

    def generate(prompts: Sequence[Sequence[int]], new_tokens: int) -> tuple[list[list[int]], float, float]:
        start = time.perf_counter()
        cache = generator.new_kv_cache(len(prompts))
        first = cache.prefill_many([(slot, list(prompt)) for slot, prompt in enumerate(prompts)])
        tokens = [[int(token)] for token in first.argmax(-1)]
        first_at = time.perf_counter()
        seq_ids = list(range(len(prompts)))
        for _ in range(new_tokens - 1):
            logits = cache.decode(seq_ids, [t[-1] for t in tokens])
            for row, generated in enumerate(tokens):
                generated.append(int(np.argmax(logits[row])))
        end = time.perf_counter()
        return tokens, (first_at - start) * 1e3, (end - first_at) * 1e3

    return generate


def ctranslate2_engine(model_dir: Path, compute_type: str, threads: int, folder: Path) -> Generate:
    """Greedy generation by CTranslate2; its per-token callback times the first token."""
    import ctranslate2

    generator = ctranslate2.Generator(
        str(model_dir), device="cpu", compute_type=compute_type, intra_threads=threads, inter_threads=1
    )
    vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    token_of = {index: token for token, index in vocab.items()}

    def generate(prompts: Sequence[Sequence[int]], new_tokens: int) -> tuple[list[list[int]], float, float]:
        first_at: list[float] = []

        def on_token(step: Any) -> bool:
            if not first_at:
                first_at.append(time.perf_counter())
            return False  # go on

        start = time.perf_counter()
        results = generator.generate_batch(
            [[token_of[i] for i in prompt] for prompt in prompts],
            max_length=new_tokens,
            min_length=new_tokens,  # never stop early at end-of-text: every engine decodes the same count
            sampling_topk=1,
            include_prompt_in_result=False,
            callback=on_token,
        )
        end = time.perf_counter()
        tokens = [list(r.sequences_ids[0]) for r in results]
        return tokens, (first_at[0] - start) * 1e3, (end - first_at[0]) * 1e3

    return generate


def measure(engines: dict[str, Generate], prompts: list[list[int]], rounds: int) -> dict[str, dict[str, float]]:
    """Medians over ``rounds`` alternating rounds: prefill (to the first token) and decode (the other 31
    tokens) times of each engine, at batch 1 (best of 3 per round) and batch 16 (one run per round)."""
    one = prompts[:1]
    samples: dict[str, dict[str, list[float]]] = {name: {} for name in engines}
    for generate in engines.values():  # warm-up: arenas, caches, lazy initialisation
        generate(one, 2)
        generate(prompts, 2)
    for round_index in range(rounds):
        for name, generate in engines.items():
            b1 = [generate(one, NEW_TOKENS)[1:] for _ in range(3)]
            _, b16_prefill, b16_decode = generate(prompts, NEW_TOKENS)
            timings = {
                "b1_prefill_ms": min(p for p, _ in b1),
                "b1_decode_ms": min(d for _, d in b1),
                "b16_prefill_ms": b16_prefill,
                "b16_decode_ms": b16_decode,
            }
            for key, value in timings.items():
                samples[name].setdefault(key, []).append(value)
            print(f"round {round_index} {name}: {timings}", file=sys.stderr)
    return {name: {k: statistics.median(v) for k, v in per.items()} for name, per in samples.items()}


def summarize(medians: dict[str, float]) -> dict[str, float]:
    rest = NEW_TOKENS - 1
    return {
        "decode_ms_per_token_batch1": round(medians["b1_decode_ms"] / rest, 2),
        "prefill_ms_batch1": round(medians["b1_prefill_ms"], 1),
        "prefill_ms_batch16": round(medians["b16_prefill_ms"], 1),
        # The 31 tokens after the first, without the prefill.
        "decode_tokens_per_s_batch16": round(BATCH * rest / (medians["b16_decode_ms"] / 1e3), 1),
        # All 32 tokens, prefill included.
        "tokens_per_s_batch16": round(
            BATCH * NEW_TOKENS / ((medians["b16_prefill_ms"] + medians["b16_decode_ms"]) / 1e3), 1
        ),
    }


def agreement(a: list[list[int]], b: list[list[int]]) -> dict[str, int]:
    return {
        "identical_sequences": sum(x == y for x, y in zip(a, b, strict=True)),
        "first_token_agreement": sum(x[0] == y[0] for x, y in zip(a, b, strict=True)),
        "sequences": len(a),
    }


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["engines"]
    names = list(rows)
    colors = ["tab:blue" if n.startswith("attnserve") else "tab:orange" for n in names]
    fig, axes = plt.subplots(1, 3, figsize=(19, 4.5))
    for ax, key, label in (
        (axes[0], "decode_ms_per_token_batch1", "decode ms/token, batch 1 (lower is better)"),
        (axes[1], "decode_tokens_per_s_batch16", "decode tokens/s, batch 16 (higher is better)"),
        (axes[2], "tokens_per_s_batch16", "tokens/s, batch 16, prefill included (higher is better)"),
    ):
        values = [rows[n][key] for n in names]
        bars = ax.barh(names, values, color=colors)
        ax.bar_label(bars, fmt="%.1f")
        ax.set_xlabel(label)
        ax.invert_yaxis()
        ax.grid(True, axis="x", alpha=0.3)
    fig.suptitle(
        f"gpt2-small shape, random weights, {PROMPT_TOKENS}-token prompt, {NEW_TOKENS} new tokens, "
        f"{report['threads']} threads (load {report['load_average_before']} -> {report['load_average_after']})"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    load_before = os.getloadavg()
    folder, entry = gpt2_small_folder(), gpt2_small_entry()
    int8 = int8_graphs(entry)
    converted = ctranslate2_models(folder)
    rng = np.random.default_rng(0)
    prompts = rng.integers(0, 50256, size=(BATCH, PROMPT_TOKENS)).tolist()  # no end-of-text token
    with ThreadPoolExecutor(max_workers=1) as executor:
        engines: dict[str, Generate] = {
            "attnserve fp32": attnserve_engine(entry, entry / "model.onnx", args.threads, executor),
            "attnserve int8": attnserve_engine(entry, int8["per_row"], args.threads, executor),
            "attnserve int8 per-tensor": attnserve_engine(entry, int8["per_tensor"], args.threads, executor),
            "CTranslate2 float32": ctranslate2_engine(converted["float32"], "float32", args.threads, folder),
            "CTranslate2 int8": ctranslate2_engine(converted["int8"], "int8", args.threads, folder),
        }
        tokens = {name: generate(prompts, NEW_TOKENS)[0] for name, generate in engines.items()}
        medians = measure(engines, prompts, args.rounds)
    rows = {name: summarize(m) for name, m in medians.items()}
    ours, theirs = rows["attnserve int8"], rows["CTranslate2 int8"]
    decode_ratio = theirs["decode_ms_per_token_batch1"] / ours["decode_ms_per_token_batch1"]
    throughput_ratio = ours["tokens_per_s_batch16"] / theirs["tokens_per_s_batch16"]
    decode_throughput_ratio = ours["decode_tokens_per_s_batch16"] / theirs["decode_tokens_per_s_batch16"]
    import ctranslate2
    import onnxruntime

    report = {
        "benchmark": "text_vs_ctranslate2",
        "model": "gpt2-small shape (124M), random weights (transformers GPT2LMHeadModel, seed 0)",
        "prompt_tokens": PROMPT_TOKENS,
        "new_tokens": NEW_TOKENS,
        "batch": BATCH,
        "threads": args.threads,
        "rounds": args.rounds,
        "onnxruntime": onnxruntime.__version__,
        "ctranslate2": ctranslate2.__version__,
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "engines": rows,
        "raw_medians_ms": {name: {k: round(v, 2) for k, v in m.items()} for name, m in medians.items()},
        "greedy_agreement_batch16": {
            "attnserve fp32 vs CTranslate2 float32": agreement(tokens["attnserve fp32"], tokens["CTranslate2 float32"]),
            "attnserve int8 vs attnserve fp32": agreement(tokens["attnserve int8"], tokens["attnserve fp32"]),
            "attnserve int8 per-tensor vs attnserve fp32": agreement(
                tokens["attnserve int8 per-tensor"], tokens["attnserve fp32"]
            ),
            "CTranslate2 int8 vs CTranslate2 float32": agreement(
                tokens["CTranslate2 int8"], tokens["CTranslate2 float32"]
            ),
        },
        "int8_decode_batch1_speedup_over_ctranslate2_int8": round(decode_ratio, 2),
        "int8_tokens_per_s_batch16_over_ctranslate2_int8": round(throughput_ratio, 2),
        "int8_decode_tokens_per_s_batch16_over_ctranslate2_int8": round(decode_throughput_ratio, 2),
        "meets_targets": {
            "decode_batch1_1.5x": decode_ratio >= 1.5,
            "tokens_per_s_batch16_1.8x (prefill included)": throughput_ratio >= 1.8,
            "tokens_per_s_batch16_1.8x (decode only)": decode_throughput_ratio >= 1.8,
        },
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "text_vs_ctranslate2.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(report, RESULTS / "text_vs_ctranslate2.png")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
