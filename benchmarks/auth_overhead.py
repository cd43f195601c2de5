"""What TLS and an API key cost a unary call: Generate (shakespeare-gpt, a few tokens) and Classify (digits-vit).

Four real servers on the shipped models, one per setup: plaintext, plaintext with API keys, TLS,
and TLS with API keys (certificates from docker/dev-certs.sh, keys from ``attnserve-server keys add``;
the key file holds ``--keys`` keys, so the constant-time comparison runs over all of them). Clients
keep their channel (one TLS handshake, as a real client), and calls interleave the setups (one call
of each in turn) so that drift on the shared machine hits all alike. A round is ``--calls`` calls
of each setup and method; its p50 is taken per setup and method, and what is reported is the median
over ``--rounds`` rounds of those p50s, and the overheads as the median over rounds of the paired
differences of p50s (key: with keys - without, on plaintext and on TLS; TLS: TLS - plaintext).

The key check on its own is also timed in-process: ``AuthInterceptor.intercept_service`` (key file
``stat``, SHA-256, the comparisons, the scope and the token bucket) minus the bare continuation, in µs
per call. The issue's target is a key check of at most 0.1 ms.

    python benchmarks/auth_overhead.py [--rounds 15] [--calls 30] [--max-new-tokens 4] [--keys 10]

Prints JSON and writes ``benchmarks/results/auth_overhead.{json,png}``. Records the load average.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
from PIL import Image
from serving import start_server

from attnserve_client import Client
from attnserve_server.api.auth import AuthInterceptor
from attnserve_server.security.keys import KeyEntry, KeyFile, KeyStore, hash_key, new_key, write_key_file

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
TEXT_MODEL = "shakespeare-gpt"
IMAGE_MODEL = "digits-vit"
SETUPS = ("plaintext", "key", "tls", "tls_key")
METHODS = ("Generate", "Classify")


def make_secrets(folder: Path, keys: int) -> tuple[Path, Path, str]:
    """Certificates (docker/dev-certs.sh) and a key file of ``keys`` keys; returns (ca, key file, one key)."""
    subprocess.run([str(REPO / "docker" / "dev-certs.sh"), str(folder)], check=True, capture_output=True)
    key_file = folder / "api-keys.yaml"
    command = [sys.executable, "-m", "attnserve_server", "keys", "add"]
    for i in range(keys):
        scopes = "infer,models:read" if i == keys - 1 else "models:read"
        done = subprocess.run(
            [*command, f"client-{i}", "--scopes", scopes, "--key-file", str(key_file)],
            check=True,
            capture_output=True,
            text=True,
        )
        key = done.stdout.splitlines()[-1]  # the last one added is the one the benchmark calls with
    return folder / "ca.crt", key_file, key


def digit_png() -> bytes:
    pixels = np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def interceptor_check_us(keys: int, calls: int = 20000) -> dict[str, float]:
    """µs per call of the auth interceptor with a valid key, and of its bare continuation, in-process."""
    with tempfile.TemporaryDirectory() as folder:
        secrets = [new_key() for _ in range(keys)]
        entries = tuple(
            KeyEntry(name=f"k{i}", sha256=hash_key(secret), scopes=("infer",), rate=1e9, burst=10**9)
            for i, secret in enumerate(secrets)
        )
        path = Path(folder) / "keys.yaml"
        write_key_file(path, KeyFile(keys=entries))
        interceptor = AuthInterceptor(KeyStore(path))
        handler = object()
        details = SimpleNamespace(
            method="/attnserve.v1.TextGenerationService/Generate",
            invocation_metadata=(("user-agent", "grpc-python"), ("authorization", f"Bearer {secrets[-1]}")),
        )

        async def continuation(_: Any) -> Any:
            return handler

        async def timed(check: bool) -> float:
            start = time.perf_counter()
            for _ in range(calls):
                if check:
                    result = await interceptor.intercept_service(continuation, details)  # type: ignore[arg-type]
                else:
                    result = await continuation(details)
                assert result is handler
            return (time.perf_counter() - start) * 1e6 / calls

        async def measure() -> dict[str, float]:
            bare = statistics.median([await timed(False) for _ in range(5)])
            checked = statistics.median([await timed(True) for _ in range(5)])
            return {
                "bare_us": round(bare, 3),
                "with_key_check_us": round(checked, 3),
                "key_check_us": round(checked - bare, 3),
            }

        return asyncio.run(measure())


def measure(clients: dict[str, Client], rounds: int, calls: int, max_new_tokens: int) -> dict[str, Any]:
    image = digit_png()
    runs: dict[str, Callable[[Client], object]] = {
        "Generate": lambda c: c.generate("ROMEO:", model=TEXT_MODEL, max_new_tokens=max_new_tokens, temperature=0.0),
        "Classify": lambda c: c.classify(image, model=IMAGE_MODEL, top_k=3),
    }
    for client in clients.values():  # warm-up, and every setup answers the same
        for run in runs.values():
            for _ in range(5):
                run(client)
    texts = {name: client.generate("ROMEO:", model=TEXT_MODEL, max_new_tokens=8, temperature=0.0).text
             for name, client in clients.items()}  # fmt: skip
    if len(set(texts.values())) != 1:
        raise SystemExit(f"the setups answer differently: {texts}")
    p50s: dict[str, dict[str, list[float]]] = {m: {s: [] for s in clients} for m in runs}
    for _ in range(rounds):
        for method, run in runs.items():
            samples: dict[str, list[float]] = {s: [] for s in clients}
            for _ in range(calls):
                for setup, client in clients.items():  # one call of each setup in turn
                    start = time.perf_counter()
                    run(client)
                    samples[setup].append((time.perf_counter() - start) * 1000)
            for setup, values in samples.items():
                p50s[method][setup].append(statistics.median(values))

    def paired(method: str, setup: str, baseline: str) -> float:
        return round(
            statistics.median(a - b for a, b in zip(p50s[method][setup], p50s[method][baseline], strict=True)), 4
        )

    out: dict[str, Any] = {}
    for method in runs:
        out[method] = {
            "p50_ms": {s: round(statistics.median(v), 4) for s, v in p50s[method].items()},
            "p50_iqr_ms": {
                s: [round(q, 4) for q in statistics.quantiles(v, n=4)[::2]] for s, v in p50s[method].items()
            },
            "key_overhead_ms": paired(method, "key", "plaintext"),
            "key_overhead_over_tls_ms": paired(method, "tls_key", "tls"),
            "tls_overhead_ms": paired(method, "tls", "plaintext"),
            "tls_and_key_overhead_ms": paired(method, "tls_key", "plaintext"),
            "round_p50s_ms": {s: [round(x, 4) for x in v] for s, v in p50s[method].items()},
        }
    return out


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = {"plaintext": "plaintext", "key": "API key", "tls": "TLS", "tls_key": "TLS + API key"}
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.5))
    for ax, method in zip(axes, METHODS, strict=True):
        row = result["methods"][method]
        medians = [row["p50_ms"][s] for s in SETUPS]
        low = [row["p50_ms"][s] - row["p50_iqr_ms"][s][0] for s in SETUPS]
        high = [row["p50_iqr_ms"][s][1] - row["p50_ms"][s] for s in SETUPS]
        ax.bar(range(len(SETUPS)), medians, yerr=[low, high], capsize=4, color=["C0", "C1", "C2", "C3"])
        ax.set_xticks(range(len(SETUPS)))
        ax.set_xticklabels([labels[s] for s in SETUPS])
        ax.set_ylabel("p50 ms per call (median of rounds, IQR)")
        ax.set_title(
            f"{method}: key {row['key_overhead_ms'] * 1000:+.0f} µs, TLS {row['tls_overhead_ms'] * 1000:+.0f} µs",
            fontsize=10,
        )
    check = result["key_check_in_process"]["key_check_us"]
    fig.suptitle(f"TLS and API key overhead (unary calls; the key check alone: {check:.1f} µs in-process)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", type=Path, default=REPO / "models")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calls", type=int, default=30)
    parser.add_argument("--max-new-tokens", type=int, default=4)
    parser.add_argument("--keys", type=int, default=10, help="keys in the key file")
    args = parser.parse_args()
    load_before = os.getloadavg()
    check = interceptor_check_us(args.keys)
    with tempfile.TemporaryDirectory() as folder:
        ca, key_file, key = make_secrets(Path(folder), args.keys)
        tls = ["--tls-cert", f"{folder}/tls.crt", "--tls-key", f"{folder}/tls.key"]
        keyed = ["--api-key-file", str(key_file)]
        models = ["--model-control-mode", "explicit", "--load-model", TEXT_MODEL, "--load-model", IMAGE_MODEL]
        flags = {"plaintext": [], "key": keyed, "tls": tls, "tls_key": [*tls, *keyed]}
        servers = {s: start_server(args.repository, *models, *flags[s], health_port=True) for s in SETUPS}
        clients = {
            "plaintext": Client(servers["plaintext"][1], timeout=60),
            "key": Client(servers["key"][1], timeout=60, api_key=key),
            "tls": Client(servers["tls"][1], timeout=60, ca=ca),
            "tls_key": Client(servers["tls_key"][1], timeout=60, ca=ca, api_key=key),
        }
        try:
            methods = measure(clients, args.rounds, args.calls, args.max_new_tokens)
        finally:
            for client in clients.values():
                client.close()
            for process, _ in servers.values():
                process.terminate()
                process.wait(30)
    target_ms = 0.1
    key_ms = {m: methods[m]["key_overhead_ms"] for m in METHODS}
    result = {
        "benchmark": "auth_overhead",
        "models": {"Generate": TEXT_MODEL, "Classify": IMAGE_MODEL},
        "max_new_tokens": args.max_new_tokens,
        "rounds": args.rounds,
        "calls_per_round": args.calls,
        "keys_in_file": args.keys,
        "cpus": os.cpu_count(),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "key_check_in_process": check,
        "target_key_check_ms": target_ms,
        "key_check_target_met_in_process": check["key_check_us"] / 1000 <= target_ms,
        "key_overhead_end_to_end_ms": key_ms,
        "methods": methods,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "auth_overhead.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(result, RESULTS / "auth_overhead.png")
    summary = {
        **result,
        "methods": {m: {k: v for k, v in row.items() if k != "round_p50s_ms"} for m, row in methods.items()},
    }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
