"""``attnserve-export train translator`` and ``attnserve-export translator-onnx``: the numbers-translator."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import torch

from attnserve_export.number_data import LANGUAGES, fixed_set, per_direction, tag
from attnserve_export.onnx_export import next_version_dir
from attnserve_export.seq2seq import PRESETS
from attnserve_export.translator_export import export_translator
from attnserve_export.translator_train import (
    RESULTS_FILE,
    TranslatorTrainConfig,
    exact_match_by_direction,
    load_translator,
    train_translator,
)


def add_train_translator(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    d = TranslatorTrainConfig()
    p = sub.add_parser(
        "translator",
        help="train the numbers-translator (an encoder-decoder)",
        description="Train an encoder-decoder to translate numbers written in words between en, de, fr and nl.",
    )
    p.add_argument("--out", type=Path, required=True, help="run directory (tokenizer, weights, results)")
    p.add_argument("--preset", default=d.preset, choices=sorted(PRESETS))
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--max-number", type=int, default=d.max_number, help="numbers from 0 to this")
    p.add_argument("--vocab-size", type=int, default=d.vocab_size)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--max-steps", type=int, default=d.max_steps, help="total optimizer steps (sets the LR schedule)")
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--eval-interval", type=int, default=d.eval_interval)
    p.add_argument("--max-minutes", type=float, default=None, help="stop (and save) after this long")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.set_defaults(func=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    cfg = TranslatorTrainConfig(
        preset=args.preset,
        seed=args.seed,
        max_number=args.max_number,
        vocab_size=args.vocab_size,
        batch_size=args.batch_size,
        max_steps=args.max_steps,
        lr=args.lr,
        eval_interval=args.eval_interval,
        max_minutes=args.max_minutes,
        threads=args.threads,
        command=shlex.join(["attnserve-export", *args.argv]),
    )
    results = train_translator(cfg, args.out)
    last = results["history"][-1] if results["history"] else {}
    sys.stdout.write(json.dumps({"steps": results["steps"], "minutes": results["minutes"], **last}, indent=2) + "\n")
    return 0


def add_translator_onnx(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "translator-onnx",
        help="export a trained translator as a text2text-generation version",
        description="Export a `train translator` run as the next version of a model in a repository.",
    )
    p.add_argument("--run", type=Path, required=True, help="the run directory of `train translator`")
    p.add_argument("--repository", type=Path, default=Path("models"))
    p.add_argument("--name", default="numbers-translator")
    p.add_argument("--description", default="Numbers written in words, translated between en, de, fr and nl.")
    p.set_defaults(func=_run_onnx)


def _run_onnx(args: argparse.Namespace) -> int:
    torch.manual_seed(0)
    model, tokenizer = load_translator(args.run)
    results = json.loads((args.run / RESULTS_FILE).read_text())
    max_number = int(results["train_config"]["max_number"])
    test_set = per_direction("test", 100, max_number)
    test_exact_match = {k: round(v, 4) for k, v in exact_match_by_direction(model, tokenizer, test_set).items()}
    version_dir = next_version_dir(args.repository, args.name)
    provenance = {
        "command": shlex.join(["attnserve-export", *args.argv]),
        "training": {k: results[k] for k in ("train_config", "parameters", "steps", "minutes", "history")},
        "test_exact_match": {"examples_per_direction": 100, **test_exact_match},
    }
    metadata = export_translator(
        model,
        tokenizer,
        version_dir,
        target_tags=[tag(lang) for lang in LANGUAGES],
        parity_sources=[e.source for e in fixed_set("test", 8, max_number)],
        description=args.description,
        provenance=provenance,
    )
    report = {"version_dir": str(version_dir), "parity": metadata.provenance["parity"], "test": test_exact_match}
    sys.stdout.write(json.dumps(report, indent=2) + "\n")
    return 0
