"""Tokens/s of 16 streams through the server against the same graph's batch-16 decode in-process.

For each model, a real ``attnserve-server`` (``--max-active-sequences 16``) is started on a free
loopback port, and ``stream_load.py`` (a separate process, raw gRPC aio stubs, reports its own CPU
time) keeps ``--streams`` GenerateStream calls running back to back. In the same rounds, with the
server idle, the same graph decodes a batch of 16 in-process through the server's own generator
and KV cache (the prompt prefilled for 16 sequences, then one batched decode call per token,
greedy): the engine's ceiling. A second reference runs 16 whole requests in-process (their
prompts prefilled in one batched call, then the decode calls): the same work per token as the
server's, prefill included. With ``--baseline-server PATH`` a second server runs another
checkout's code (its ``server``, ``client`` and ``export`` folders on PYTHONPATH) in the same
rounds, so that before and after are measured side by side.

Models: ``gpt2-small`` (the gpt2 shape, random weights, imported; fp32) and the shipped
``shakespeare-gpt`` (its default version). Target (issue 18): server tokens/s at 16 streams
>= 0.8 x the in-process batch-16 decode, for gpt2-small. Prints JSON and writes
``benchmarks/results/text_server_streams.{json,png}``.

    python benchmarks/text_server_streams.py --rounds 3 --seconds 10
    python benchmarks/text_server_streams.py --baseline-server /path/to/other/checkout
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from attnserve_export.quantize_text import load_generator
from attnserve_server.model_format.metadata import read_metadata
from attnserve_server.task_table import TaskTable
from attnserve_server.text.generator import TextGenerator
from attnserve_server.text.metadata import TextGenerationMetadata

sys.path.insert(0, str(Path(__file__).resolve().parent))
from server_ttft import PROMPT
from serving import start_server
from text_decode_latency import gpt2_small_entry
from text_throughput import MAX_NEW_TOKENS, stop

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
HERE = Path(__file__).resolve().parent
STREAMS = 16


def repository_for(name: str, shipped: Path) -> Path:
    """The shipped repository, or for gpt2-small a temporary one whose files are hard links to the cached
    import (the server refuses a model directory that is a symbolic link out of its repository)."""
    if name != "gpt2-small":
        return shipped
    root = Path(tempfile.mkdtemp(prefix="attnserve-bench-repo-"))
    source = gpt2_small_entry()
    target = root / "gpt2-small" / source.name
    target.mkdir(parents=True)
    for file in source.iterdir():
        os.link(file, target / file.name)
    return root


def default_version_dir(repository: Path, name: str) -> Path:
    versions = sorted((p for p in (repository / name).iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
    return versions[-1]


def in_process_decode(generator: TextGenerator, prompt_ids: list[int], steps: int) -> float:
    """Tokens/s of ``steps`` batch-16 decode calls after a batched prefill of ``prompt_ids`` x 16."""
    cache = generator.new_kv_cache(STREAMS)
    first = cache.prefill_many([(slot, prompt_ids) for slot in range(STREAMS)])
    tokens = [int(t) for t in first.argmax(-1)]
    seq_ids = list(range(STREAMS))
    start = time.perf_counter()
    for _ in range(steps):
        tokens = [int(t) for t in cache.decode(seq_ids, tokens).argmax(-1)]
    return STREAMS * steps / (time.perf_counter() - start)


def in_process_requests(generator: TextGenerator, prompt_ids: list[int], tokens: int) -> float:
    """Tokens/s of 16 whole requests in-process: their prompts prefilled in one batched call, then
    ``tokens - 1`` batch-16 decode calls: the server's work per request with perfect batching."""
    start = time.perf_counter()
    cache = generator.new_kv_cache(STREAMS)
    first = cache.prefill_many([(slot, prompt_ids) for slot in range(STREAMS)])
    next_tokens = [int(t) for t in first.argmax(-1)]
    seq_ids = list(range(STREAMS))
    for _ in range(tokens - 1):
        next_tokens = [int(t) for t in cache.decode(seq_ids, next_tokens).argmax(-1)]
    return STREAMS * tokens / (time.perf_counter() - start)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load_window(address: str, pid: int, model: str, tokens: int, args: argparse.Namespace) -> dict[str, Any]:
    """One measured window of ``stream_load.py`` against a server, with the server's CPU time in it."""
    command = [sys.executable, str(HERE / "stream_load.py"), "--target", address, "--model", model,
               "--streams", str(STREAMS), "--max-new-tokens", str(tokens), "--prompt", PROMPT,
               "--warmup", str(args.warmup), "--seconds", str(args.seconds)]  # fmt: skip
    loader = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    time.sleep(args.warmup)
    server_cpu = cpu_seconds(pid)
    out, _ = loader.communicate(timeout=args.warmup + args.seconds + 120)
    server_cpu = cpu_seconds(pid) - server_cpu
    result: dict[str, Any] = json.loads(out)
    result["server_cpu_share"] = round(server_cpu / args.seconds, 3)  # of one core (window + the loader's stop)
    return result


def bench_model(name: str, args: argparse.Namespace) -> dict[str, Any]:
    repository = repository_for(name, args.repository)
    version_dir = default_version_dir(repository, name)
    tokens = args.max_new_tokens or MAX_NEW_TOKENS.get(name, 32)
    metadata = read_metadata(version_dir, TaskTable().sections())
    section = metadata.section
    assert isinstance(section, TextGenerationMetadata)
    flags = ("--intra-op-threads", str(args.threads), "--max-active-sequences", str(STREAMS))
    servers = {"this": start_server(repository, *flags)}
    if args.baseline_server is not None:
        other = args.baseline_server.resolve()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(other / p) for p in ("server", "client", "export"))}
        servers["baseline"] = start_server(repository, *flags, env=env)
    samples: dict[str, list[Any]] = {"in_process": [], "in_process_requests": [], **{k: [] for k in servers}}
    try:
        with ThreadPoolExecutor(max_workers=1) as executor:
            generator = load_generator(
                version_dir, version_dir / metadata.model_file, section, threads=args.threads, executor=executor
            )
            prompt_ids = generator.tokenizer.encode(PROMPT)
            in_process_decode(generator, prompt_ids, 4)  # warm-up
            for round_index in range(args.rounds):
                rate = statistics.median(in_process_decode(generator, prompt_ids, tokens) for _ in range(3))
                samples["in_process"].append(rate)
                samples["in_process_requests"].append(in_process_requests(generator, prompt_ids, tokens))
                for label, (process, address) in servers.items():
                    window = load_window(address, process.pid, name, tokens, args)
                    samples[label].append(window)
                    print(f"{name} round {round_index} {label}: {window} (in-process {rate:.1f})", file=sys.stderr)
            prompt_tokens = len(prompt_ids)
            del generator
    finally:
        for process, _ in servers.values():
            stop(process)
    ceiling = statistics.median(samples["in_process"])
    result: dict[str, Any] = {
        "model": name,
        "version": version_dir.name,
        "max_new_tokens": tokens,
        "in_process_batch16_decode_tokens_per_s": round(ceiling, 1),
        "in_process_rounds": [round(x, 1) for x in samples["in_process"]],
        "prompt_tokens": prompt_tokens,
        # 16 whole requests (batched prefill + decode) in-process: the same work per token as the server's.
        "in_process_requests_tokens_per_s": round(statistics.median(samples["in_process_requests"]), 1),
    }
    for label in servers:
        windows = samples[label]
        rate = statistics.median(w["tokens_per_s"] for w in windows)
        result[label] = {
            "tokens_per_s_16_streams": round(rate, 1),
            "ratio_to_in_process": round(rate / ceiling, 3),
            "ratio_to_in_process_requests": round(rate / result["in_process_requests_tokens_per_s"], 3),
            "tokens_per_message": statistics.median(w["tokens_per_message"] for w in windows),
            "load_generator_cpu_share": statistics.median(w["load_generator_cpu_share"] for w in windows),
            "server_cpu_share": statistics.median(w["server_cpu_share"] for w in windows),
            "windows": windows,
        }
    result["meets_target_0.8x"] = result["this"]["ratio_to_in_process"] >= 0.8
    return result


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = report["results"]
    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4.5), squeeze=False)
    for ax, result in zip(axes[0], results, strict=True):
        labels = ["in-process\nbatch-16 decode"]
        values = [result["in_process_batch16_decode_tokens_per_s"]]
        for label in ("baseline", "this"):
            if label in result:
                labels.append(f"server, 16 streams\n({label})")
                values.append(result[label]["tokens_per_s_16_streams"])
        bars = ax.bar(labels, values, color=["tab:gray", *(["tab:orange"] if "baseline" in result else []), "tab:blue"])
        ax.bar_label(bars, fmt="%.0f")
        ax.axhline(0.8 * values[0], color="red", linestyle="--", label="0.8 x in-process")
        ax.set_ylabel("tokens/s")
        ax.set_title(f"{result['model']} (version {result['version']}): {result['this']['ratio_to_in_process']}x")
        ax.legend()
        ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="gpt2-small,shakespeare-gpt")
    parser.add_argument("--repository", type=Path, default=REPO / "models")
    parser.add_argument("--threads", type=int, default=2, help="the server's (and the in-process) ORT threads")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=4.0)
    parser.add_argument(
        "--max-new-tokens", type=int, default=None, help="per request (default: text_throughput's, 32 or 64)"
    )
    parser.add_argument("--baseline-server", type=Path, default=None, help="another checkout to compare against")
    args = parser.parse_args()
    load_before = [round(x, 2) for x in os.getloadavg()]
    results = [bench_model(name, args) for name in args.models.split(",")]
    report = {
        "benchmark": "text_server_streams",
        "streams": STREAMS,
        "threads": args.threads,
        "rounds": args.rounds,
        "seconds_per_window": args.seconds,
        "prompt": PROMPT,
        "sampling": "each model's defaults, a seed per request (server); greedy (in-process)",
        "load_average_before": load_before,
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "results": results,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = "text_server_streams" + (f"-{args.max_new_tokens}-tokens" if args.max_new_tokens else "")
    (RESULTS / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(report, RESULTS / f"{stem}.png")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
