"""``attnserve explain``: attention maps of one text or image, as a picture, JSON or a short summary.

Whether INPUT is a text or an image file is the model's task (GetModel) that says, never the
string itself: ``attnserve explain digit.png --model shakespeare-gpt`` explains the text "digit.png".
The pictures need Pillow and numpy (the ``attnserve-client[images]`` extra); the summary and the
JSON need neither.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

from attnserve_client.client import Client
from attnserve_client.convert import IMAGE_CLASSIFICATION, TEXT2TEXT_GENERATION, TEXT_GENERATION
from attnserve_client.errors import InvalidArgumentError
from attnserve_client.explain import Explanation, SwinAttention, Text2TextAttention, TextAttention, VitAttention

__all__ = ["add_arguments", "int_list", "run"]

EXTRA_HINT = "pip install 'attnserve-client[images]'"
# Panels per row of the pictures: a row per layer (or block) when its heads fit.
MAX_COLUMNS = 6


def int_list(text: str) -> list[int]:
    """``"0,1,-1"`` -> ``[0, 1, -1]`` (an argparse type)."""
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of integers: {text!r}") from None


def _query(text: str) -> tuple[int, int]:
    numbers = int_list(text)
    if len(numbers) != 2:
        raise argparse.ArgumentTypeError(f"--query takes ROW,COL, got {text!r}")
    return numbers[0], numbers[1]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``attnserve explain``."""
    parser.add_argument("input", metavar="INPUT", help="a text (text models) or an image file (image models)")
    parser.add_argument("--model", required=True, help="model name; its task says what INPUT is")
    parser.add_argument("--model-version", help="model version (default: the model's default version)")
    parser.add_argument("--out", metavar="FILE.png", help="write a picture of the maps (needs Pillow and numpy)")
    parser.add_argument("--json", action="store_true", help="print the whole result as JSON")
    parser.add_argument(
        "--layers",
        type=int_list,
        metavar="L,...",
        help="layers (Swin: blocks of the stage), negative from the end (default: text models the last, "
        "image models all)",
    )
    parser.add_argument("--heads", type=int_list, metavar="H,...", help="heads of each layer (default: all)")
    parser.add_argument("--stage", type=int, help="Swin: the stage (default 0, the finest)")
    parser.add_argument("--query", type=_query, metavar="ROW,COL", help="Swin: the query patch (default: the centre)")
    parser.add_argument("--max-new-tokens", type=int, help="encoder-decoder: tokens to generate for the maps")


def run(args: argparse.Namespace, client: Client) -> str:
    """Explains ``args.input`` with ``client``, writes ``--out``; returns what to print on stdout."""
    draw = _pictures(args.out) if args.out else None
    task = client.get_model(args.model).task
    # stage, query and max_new_tokens go as given: the client refuses the ones the input's kind takes not.
    inputs: dict[str, Any] = {"stage": args.stage, "query": args.query, "max_new_tokens": args.max_new_tokens}
    if task in (TEXT_GENERATION, TEXT2TEXT_GENERATION):
        # One layer by default: a T x T map per head per layer is much to look at, and to send.
        layers = args.layers if args.layers is not None else [-1]
        inputs["text"] = args.input
    elif task == IMAGE_CLASSIFICATION:
        layers = args.layers
        inputs["image"] = Path(args.input)
    else:
        raise InvalidArgumentError(f"model {args.model!r} has task {task!r}: it takes no text or image to explain")
    result = client.explain(
        **inputs, model=args.model, model_version=args.model_version, layers=layers, heads=args.heads
    )
    printed = json.dumps(_jsonable(result), ensure_ascii=False) + "\n" if args.json else ""
    if draw is not None:
        picture = _picture(draw, result, inputs.get("image"))
        picture.save(args.out)
        if not args.json:
            printed = f"wrote {args.out} ({picture.width}x{picture.height}): {_what(result)}\n"
    elif not args.json:
        printed = summary(result)
    return printed


def _pictures(out: str) -> Any:
    """The pictures module, once ``out`` is known to name a format Pillow writes (before any call is sent)."""
    # A ValueError: the command's usage errors exit 2.
    try:
        from PIL import Image  # noqa: PLC0415 (only --out needs Pillow and numpy)

        from attnserve_client import pictures  # noqa: PLC0415
    except ImportError:
        raise ValueError(f"--out needs numpy and Pillow: {EXTRA_HINT}") from None
    suffix = Path(out).suffix.lower()
    if suffix not in Image.registered_extensions():
        raise ValueError(f"--out {out!r}: Pillow writes no format with the extension {suffix!r}; use .png")
    return pictures


def _picture(pictures: Any, result: Explanation, image: Path | None) -> Any:
    """The picture of ``result`` (a PIL image)."""
    if isinstance(result, TextAttention):
        return _token_panels(pictures, result.tokens, result.tokens, result.attention, result)
    if isinstance(result, Text2TextAttention):
        # Each generated token's attention over the source: what the decoder read to write it.
        return _token_panels(pictures, result.source_tokens, result.generated_tokens, result.cross_attention, result)
    if isinstance(result, VitAttention):
        # The rollout spreads over every patch: its own range shows where it is more or less.
        return pictures.rollout_overlay(image, result.rollout, vmin=None)
    titles = [f"stage {result.stage} block {b} head {h}" for b in result.layers for h in result.heads]
    return pictures.attention_panels(
        image,
        result.attention,
        titles=titles,
        columns=min(len(result.heads), MAX_COLUMNS),
        mark=result.query,
        # One flat square per patch: the window's edge is where the map drops to zero.
        resample="nearest",
    )


def _token_panels(
    pictures: Any, columns: Sequence[str], rows: Sequence[str], attention: Any, result: Explanation
) -> Any:
    shape = attention.shape  # (layers, heads, rows, cols)
    titles = [f"layer {layer} head {head}" for layer in result.layers for head in result.heads]
    return pictures.token_heatmaps(
        columns,
        attention.reshape(shape[0] * shape[1], shape[2], shape[3]),  # (layers * heads, rows, cols)
        row_tokens=rows,
        titles=titles,
        # Long texts make wide panels (about 6 px per token past 85 tokens): fewer of them per row.
        columns=min(len(result.heads), MAX_COLUMNS if len(columns) <= 64 else 2),
    )


def _what(result: Explanation) -> str:
    if isinstance(result, VitAttention):
        return f"attention rollout over the {result.grid[0]}x{result.grid[1]} patches"
    kind = {TextAttention: "token", Text2TextAttention: "cross-attention", SwinAttention: "query patch"}[type(result)]
    maps = len(result.layers) * len(result.heads)
    return f"{maps} {kind} maps (layers {_ints(result.layers)}, heads {_ints(result.heads)})"


def _ints(numbers: Sequence[int]) -> str:
    return ",".join(str(n) for n in numbers)


def _tolist(array: Any) -> Any:
    return array.tolist() if hasattr(array, "tolist") else array


def _jsonable(result: Explanation) -> dict[str, Any]:
    out: dict[str, Any] = {"kind": type(result).__name__}
    for field in fields(result):
        value = getattr(result, field.name)
        if field.name == "windows":
            value = [{f.name: getattr(w, f.name) for f in fields(w)} for w in value]
        out[field.name] = _tolist(value)
    return out


def _top(weights: Sequence[float]) -> tuple[int, float]:
    best = max(range(len(weights)), key=lambda i: weights[i])
    return best, float(weights[best])


def _mean_rows(attention: Any) -> list[list[float]]:
    """(layers, heads, R, C) -> (R, C): the mean over the chosen layers and heads (no numpy needed)."""
    maps = [head for layer in _tolist(attention) for head in layer]
    rows, cols = len(maps[0]), len(maps[0][0]) if maps[0] else 0
    return [[sum(m[i][j] for m in maps) / len(maps) for j in range(cols)] for i in range(rows)]


def summary(result: Explanation) -> str:
    """A few lines about ``result``: for each token (or patch), what it attends to most."""
    lines = [
        f"model={result.model} version={result.model_version} layers={_ints(result.layers)} heads={_ints(result.heads)}"
    ]
    if isinstance(result, (TextAttention, Text2TextAttention)):
        if isinstance(result, TextAttention):
            rows, cols, attention = result.tokens, result.tokens, result.attention
        else:
            lines.append(f"output: {result.output_text!r}")
            rows, cols, attention = result.generated_tokens, result.source_tokens, result.cross_attention
            lines.append("each generated token's most attended source token (mean over the layers and heads):")
        if rows and cols and result.layers and result.heads:
            mean = _mean_rows(attention)
            for i, token in enumerate(rows):
                j, weight = _top(mean[i])
                lines.append(f"  {token!r:>16} -> {cols[j]!r:<16} {weight:.3f}")
    elif isinstance(result, VitAttention):
        lines.append(f"attention rollout over the {result.grid[0]}x{result.grid[1]} patches of {result.patch_size} px:")
        lines += ["  " + " ".join(f"{v:.3f}" for v in row) for row in _tolist(result.rollout)]
    else:
        lines.append(
            f"stage {result.stage}, query patch {result.query} of the {result.grid[0]}x{result.grid[1]} grid "
            f"({result.cell_size} px per patch)"
        )
        attention = _tolist(result.attention)
        for b, window in enumerate(result.windows):
            lines.append(
                f"  block {window.block}: shift {window.shift}, window {window.window} of {window.window_size}x"
                f"{window.window_size}, {window.patches} patches"
            )
            for h, head in enumerate(result.heads):
                flat = [v for row in attention[b][h] for v in row]
                k, weight = _top(flat) if flat else (0, 0.0)
                lines.append(f"    head {head}: most attended patch {divmod(k, result.grid[1])} {weight:.3f}")
    return "\n".join(lines) + "\n"
