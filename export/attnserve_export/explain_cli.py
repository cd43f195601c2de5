"""``attnserve-export explain``: write a new version of a repository entry that adds the explain graph."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from attnserve_export.explain_version import add_explain_version
from attnserve_export.onnx_export import ParityError


def add_explain(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "explain",
        help="write a new version of a repository entry that adds the explain graph (for the Explain RPC)",
        description="Copy <model-dir>/<from-version> (serving graphs, tokenizer or labels) into a new version and "
        "add explain.onnx, the graph of every layer's attention probabilities. The PyTorch module is rebuilt from "
        "the fp32 graphs' initializers (a quantized version's source version) and parity-checked twice: the "
        "rebuilt module against those graphs, then the new graph against the module. For a GPT, ViT or Swin the "
        "graph returns the hidden states too and replaces embeddings.onnx (see docs/model-repository.md).",
    )
    p.add_argument("--model-dir", type=Path, required=True, help="e.g. models/digits-vit")
    p.add_argument("--from-version", default=None, help="the version to extend (default: the latest)")
    p.add_argument("--to-version", default=None, help="version number to write (default: the next one)")
    p.add_argument(
        "--tolerance",
        type=float,
        default=1e-4,
        help="parity tolerance: absolute on probabilities, relative to the largest magnitude elsewhere",
    )
    p.set_defaults(func=_run_explain)


def _run_explain(args: argparse.Namespace) -> int:
    try:
        written = add_explain_version(
            args.model_dir, source=args.from_version, target=args.to_version, tolerance=args.tolerance
        )
    except (ValueError, FileNotFoundError, ParityError) as exc:
        sys.stderr.write(f"attnserve-export explain: {exc}\n")
        return 2
    sys.stdout.write(f"{written}\n")
    return 0
