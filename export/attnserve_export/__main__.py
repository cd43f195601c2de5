"""The ``attnserve-export`` command line: ``train gpt|vit|swin|translator``, ``onnx``, ``translator-onnx``,
``import``, ``quantize``, ``embeddings`` and ``explain``."""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from attnserve_export.embeddings_version import add_embeddings_version
from attnserve_export.explain_cli import add_explain
from attnserve_export.gpt import GPT, PRESETS
from attnserve_export.hf_import import add_import_parser
from attnserve_export.image_data import to_batch
from attnserve_export.image_export import export_classifier
from attnserve_export.image_train import (
    LABELS_FILE,
    ImageTrainConfig,
    build_model,
    image_spec_for,
    load_splits,
    load_trained_classifier,
    model_config,
    train_image,
)
from attnserve_export.onnx_export import (
    DEFAULT_GENERATION,
    KV_CACHE_LAYOUTS,
    ParityError,
    export_gpt,
    next_version_dir,
)
from attnserve_export.quantize import MAX_ACCURACY_DROP, MAX_BPC_INCREASE, SPEED_REPEATS, quantize_entry
from attnserve_export.swin import PRESETS as SWIN_PRESETS
from attnserve_export.tokenizer import load_tokenizer
from attnserve_export.train import TrainConfig, load_trained, train
from attnserve_export.translator_cli import add_train_translator, add_translator_onnx
from attnserve_export.vit import PRESETS as VIT_PRESETS

logger = logging.getLogger("attnserve_export")

MODEL_OVERRIDES = {
    "vocab_size": int,
    "context_length": int,
    "num_layers": int,
    "num_heads": int,
    "dim": int,
    "pos_encoding": str,
    "dropout": float,
}


def _add_train_gpt(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    d = TrainConfig()
    p = sub.add_parser("gpt", help="train a GPT text generator", description="Train a GPT on a text corpus.")
    p.add_argument("--preset", default=d.preset, choices=sorted(PRESETS))
    p.add_argument("--out", type=Path, required=True, help="run directory (checkpoint, tokenizer, results)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument(
        "--corpus", type=Path, nargs="+", default=None, help="your own text files or folders (default: Shakespeare)"
    )
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--max-steps", type=int, default=d.max_steps, help="total optimizer steps (sets the LR schedule)")
    p.add_argument("--max-minutes", type=float, default=None, help="checkpoint and stop after this long")
    p.add_argument("--stop-at-step", type=int, default=None, help="checkpoint and stop at this step (resume later)")
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--min-lr", type=float, default=d.min_lr)
    p.add_argument("--warmup-steps", type=int, default=d.warmup_steps)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--grad-clip", type=float, default=d.grad_clip)
    p.add_argument("--eval-interval", type=int, default=d.eval_interval)
    p.add_argument("--checkpoint-interval", type=int, default=d.checkpoint_interval)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    for name, kind in MODEL_OVERRIDES.items():
        p.add_argument(f"--{name.replace('_', '-')}", type=kind, default=None, help=f"override the preset's {name}")
    p.set_defaults(func=_run_train_gpt)


def _run_train_gpt(args: argparse.Namespace) -> int:
    overrides = {k: getattr(args, k) for k in MODEL_OVERRIDES if getattr(args, k) is not None}
    cfg = TrainConfig(
        preset=args.preset,
        model_overrides=overrides,
        seed=args.seed,
        corpus=[str(p) for p in args.corpus or []],
        batch_size=args.batch_size,
        max_steps=args.max_steps,
        lr=args.lr,
        min_lr=args.min_lr,
        warmup_steps=args.warmup_steps,
        weight_decay=args.weight_decay,
        grad_clip=args.grad_clip,
        eval_interval=args.eval_interval,
        checkpoint_interval=args.checkpoint_interval,
        max_minutes=args.max_minutes,
        stop_at_step=args.stop_at_step,
        threads=args.threads,
        command=shlex.join(["attnserve-export", *sys.argv[1:]]),
    )
    results = train(cfg, args.out, resume=args.resume)
    return 0 if results.get("finished") else 3


def _add_train_image(sub: argparse._SubParsersAction[argparse.ArgumentParser], family: str) -> None:
    d = ImageTrainConfig()
    presets = sorted(VIT_PRESETS if family == "vit" else SWIN_PRESETS)
    p = sub.add_parser(
        family,
        help=f"train a {family.upper()} image classifier",
        description=f"Train a {family.upper()} on scikit-learn's digits or an ImageFolder directory.",
    )
    p.add_argument("--preset", default=d.preset, choices=presets)
    p.add_argument("--out", type=Path, required=True, help="run directory (checkpoint, labels, results)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--data", type=Path, default=None, help="ImageFolder root root/<class>/*.png|jpg (default: digits)")
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--min-lr", type=float, default=d.min_lr)
    p.add_argument("--warmup-epochs", type=int, default=d.warmup_epochs)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--label-smoothing", type=float, default=d.label_smoothing)
    p.add_argument("--grad-clip", type=float, default=d.grad_clip)
    p.add_argument("--augment", type=float, default=d.augment, help="random affine strength (0: none)")
    p.add_argument("--resample", default=d.resample, choices=["nearest", "bilinear", "bicubic", "lanczos"])
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.set_defaults(func=_run_train_image, family=family)


def _run_train_image(args: argparse.Namespace) -> int:
    cfg = ImageTrainConfig(
        family=args.family,
        preset=args.preset,
        seed=args.seed,
        data=str(args.data) if args.data else "",
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        min_lr=args.min_lr,
        warmup_epochs=args.warmup_epochs,
        weight_decay=args.weight_decay,
        label_smoothing=args.label_smoothing,
        grad_clip=args.grad_clip,
        augment=args.augment,
        resample=args.resample,
        threads=args.threads,
        command=shlex.join(["attnserve-export", *sys.argv[1:]]),
    )
    results = train_image(cfg, args.out)
    return 0 if results.get("finished") else 3


def _add_onnx(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "onnx",
        help="export a trained run (or a randomly initialised preset) to a model repository",
        description="Export to <repository>/<name>/<next version>/ with a parity check.",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", type=Path, help="a run directory written by `train gpt`")
    src.add_argument(
        "--preset",
        choices=sorted(set(PRESETS) | set(VIT_PRESETS) | set(SWIN_PRESETS)),
        help="export this preset of --family with --random-init",
    )
    p.add_argument("--family", choices=["gpt", "vit", "swin"], default="gpt", help="model family of --preset")
    p.add_argument("--random-init", action="store_true", help="random weights (benchmarks and tests)")
    p.add_argument("--tokenizer", type=Path, help="tokenizer.json for --random-init (e.g. GPT-2's)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    p.add_argument("--name", required=True, help="model name in the repository")
    p.add_argument("--repository", type=Path, default=Path("models"))
    p.add_argument("--version", type=int, default=None, help="version number (default: the next one)")
    p.add_argument("--description", default="")
    p.add_argument(
        "--kv-cache-layout",
        choices=list(KV_CACHE_LAYOUTS),
        default="shared_buffer",
        help="GPT graph format: shared_buffer (GroupQueryAttention, the server updates the KV cache in place) "
        "or concat (each step returns past + new; needed when head_dim is not a multiple of 16)",
    )
    g = p.add_argument_group("generation defaults (metadata.json; what unset request fields take)")
    g.add_argument(
        "--max-new-tokens",
        type=int,
        default=None,
        help=f"default: {DEFAULT_GENERATION['max_new_tokens']} or half the context, whichever is smaller",
    )
    g.add_argument("--temperature", type=float, default=DEFAULT_GENERATION["temperature"])
    g.add_argument("--top-k", type=int, default=DEFAULT_GENERATION["top_k"])
    g.add_argument("--top-p", type=float, default=DEFAULT_GENERATION["top_p"])
    g.add_argument("--repetition-penalty", type=float, default=DEFAULT_GENERATION["repetition_penalty"])
    p.set_defaults(func=_run_onnx)


def _run_onnx(args: argparse.Namespace) -> int:
    provenance: dict[str, Any] = {"export_command": shlex.join(["attnserve-export", *sys.argv[1:]])}
    if (args.checkpoint and (args.checkpoint / LABELS_FILE).exists()) or args.family != "gpt":
        return _run_onnx_classifier(args, provenance)
    if args.checkpoint:
        model, tokenizer, info = load_trained(args.checkpoint)
        if not info["results"].get("finished"):
            logger.warning(
                "%s has not finished training (step %d); exporting its checkpoint", args.checkpoint, info["step"]
            )
        provenance |= {
            "preset": info["train_config"]["preset"],
            "training": info["results"],
            "train_config": info["train_config"],
            "validation_history": info["history"],
        }
        description = args.description or "GPT trained with attnserve-export"
        max_abs, max_rel = None, 1e-4
    else:
        if not args.random_init or not args.tokenizer:
            logger.error("--preset needs --random-init and --tokenizer")
            return 2
        tokenizer = load_tokenizer(args.tokenizer)
        config = PRESETS[args.preset]
        config = config.with_(vocab_size=max(config.vocab_size, tokenizer.get_vocab_size()))
        torch.manual_seed(args.seed)
        model = GPT(config)
        provenance |= {"preset": args.preset, "random_init": True, "seed": args.seed}
        description = args.description or f"{args.preset} GPT with random weights (for benchmarks, not for text)"
        # Random weights give flat logits: judge them absolutely, as for the tiny preset.
        max_abs, max_rel = 1e-4, None
    repository: Path = args.repository
    version_dir = (
        repository / args.name / str(args.version) if args.version else next_version_dir(repository, args.name)
    )
    # Half the context by default: a default completion must leave room for a prompt.
    max_new_tokens = args.max_new_tokens or min(
        int(DEFAULT_GENERATION["max_new_tokens"]), model.config.context_length // 2
    )
    defaults: dict[str, float | int] = {
        "max_new_tokens": max_new_tokens,
        "temperature": args.temperature,
        "top_k": args.top_k,
        "top_p": args.top_p,
        "repetition_penalty": args.repetition_penalty,
    }
    if defaults["max_new_tokens"] >= model.config.context_length:
        logger.error("--max-new-tokens must be below the context length (%d)", model.config.context_length)
        return 2
    report = export_gpt(
        model,
        tokenizer,
        version_dir,
        description=description,
        defaults=defaults,
        provenance=provenance,
        max_abs_diff=max_abs,
        max_rel_diff=max_rel,
        kv_cache_layout=args.kv_cache_layout,
    )
    logger.info("exported %s: %s", version_dir, report.summary())
    return 0


def _run_onnx_classifier(args: argparse.Namespace, provenance: dict[str, Any]) -> int:
    """Export a ViT or Swin: a trained run (parity on its whole test set) or a random-init preset."""
    repository: Path = args.repository
    version_dir = (
        repository / args.name / str(args.version) if args.version else next_version_dir(repository, args.name)
    )
    if args.checkpoint:
        run = load_trained_classifier(args.checkpoint)
        if not run.results.get("finished"):
            logger.warning("%s has not finished training; exporting its last checkpoint", args.checkpoint)
        model, spec, labels = run.model, run.spec, run.labels
        images, _ = to_batch(load_splits(run.train_config.get("data", "")).test, spec)
        provenance |= {
            "family": run.family,
            "preset": run.train_config["preset"],
            "seed": run.train_config["seed"],
            "command": run.train_config.get("command", ""),
            "test_accuracy": run.results.get("test_accuracy"),
            "training": run.results,
            "train_config": run.train_config,
            "validation_history": run.history,
        }
        description = args.description or f"{run.family.upper()} trained with attnserve-export"
    else:
        if not args.random_init:
            logger.error("--preset needs --random-init")
            return 2
        config = model_config(args.family, args.preset)
        torch.manual_seed(args.seed)
        model = build_model(args.family, config).eval()
        spec = image_spec_for(config)
        labels = [f"class_{i}" for i in range(config.num_classes)]
        generator = torch.Generator().manual_seed(args.seed)
        images = torch.randn(16, spec.channels, spec.height, spec.width, generator=generator)
        provenance |= {"family": args.family, "preset": args.preset, "random_init": True, "seed": args.seed}
        description = args.description or f"{args.preset} with random weights (for benchmarks)"
    config_dict = getattr(model, "config").to_dict()  # noqa: B009
    provenance["model_config"] = config_dict
    report = export_classifier(
        model, spec, labels, images.numpy(), version_dir, description=description, provenance=provenance
    )
    logger.info("exported %s: %s", version_dir, report.summary())
    return 0


def _add_quantize(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "quantize",
        help="write an int8 dynamically quantized version of a repository entry, if it is worth it",
        description="Quantize <repository>/<name>/<version> with ONNX Runtime's int8 dynamic quantization, "
        "measure its test accuracy (classifiers) or test bits per character (text) and its speed against the "
        "fp32 version, and write it as <repository>/<name>/<next version> only if it is faster and within the "
        "tolerance (or with --force). Prints the report as JSON; exit status 4 if it was not written.",
    )
    p.add_argument("--name", required=True, help="model name in the repository")
    p.add_argument("--repository", type=Path, default=Path("models"))
    p.add_argument("--from-version", default=None, help="the fp32 version to quantize (default: the latest)")
    p.add_argument("--version", type=int, default=None, help="version number to write (default: the next one)")
    p.add_argument(
        "--corpus",
        type=Path,
        nargs="+",
        default=None,
        help="text: score on the test split of these files (default: the corpus the model was trained on)",
    )
    p.add_argument(
        "--data",
        type=Path,
        default=None,
        help="classifiers: score on every image of this ImageFolder tree ROOT/<label>/* (needed for imported models)",
    )
    p.add_argument("--max-bpc-increase", type=float, default=MAX_BPC_INCREASE)
    p.add_argument("--max-accuracy-drop", type=float, default=MAX_ACCURACY_DROP, help="in percentage points")
    p.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads for the speed comparison")
    p.add_argument("--repeats", type=int, default=SPEED_REPEATS, help="timed calls per case and precision")
    p.add_argument("--force", action="store_true", help="write the new version even if it is slower or too lossy")
    p.add_argument(
        "--keep-lm-head-fp32",
        action="store_true",
        help="text: leave the output layer (the product onto the vocabulary) in fp32",
    )
    p.set_defaults(func=_run_quantize)


def _run_quantize(args: argparse.Namespace) -> int:
    try:
        report = quantize_entry(
            args.repository,
            args.name,
            from_version=args.from_version,
            version=args.version,
            corpus=args.corpus,
            data=args.data,
            threads=args.threads,
            repeats=args.repeats,
            max_bpc_increase=args.max_bpc_increase,
            max_accuracy_drop=args.max_accuracy_drop,
            force=args.force,
            keep_output_layer_fp32=args.keep_lm_head_fp32,
            command=shlex.join(["attnserve-export", *sys.argv[1:]]),
        )
    except (ValueError, FileNotFoundError, FileExistsError) as exc:
        sys.stderr.write(f"attnserve-export quantize: {exc}\n")
        return 2
    sys.stdout.write(json.dumps(report.to_dict(), indent=2) + "\n")
    return 0 if report.version is not None else 4


def _add_embeddings(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "embeddings",
        help="write a new version of a repository entry that adds the embeddings graph (for the Embed RPC)",
        description="Copy <model-dir>/<from-version> (serving graph, tokenizer or labels) into a new version and "
        "add embeddings.onnx, the graph of every layer's hidden states. The PyTorch module is rebuilt from the "
        "fp32 graph's initializers (a quantized version's source version) and parity-checked twice: the rebuilt "
        "module against that graph, then the new graph against the module (see docs/embeddings.md).",
    )
    p.add_argument("--model-dir", type=Path, required=True, help="e.g. models/digits-vit")
    p.add_argument("--from-version", default=None, help="the version to extend (default: the latest)")
    p.add_argument("--to-version", default=None, help="version number to write (default: the next one)")
    p.add_argument("--max-rel-diff", type=float, default=1e-4, help="parity tolerance, max |diff| / max |value|")
    p.set_defaults(func=_run_embeddings)


def _run_embeddings(args: argparse.Namespace) -> int:
    try:
        written = add_embeddings_version(
            args.model_dir, source=args.from_version, target=args.to_version, rel_tolerance=args.max_rel_diff
        )
    except (ValueError, FileNotFoundError, ParityError) as exc:
        sys.stderr.write(f"attnserve-export embeddings: {exc}\n")
        return 2
    sys.stdout.write(f"{written}\n")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="attnserve-export", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train a model")
    train_sub = train.add_subparsers(dest="model", required=True)
    _add_train_gpt(train_sub)
    _add_train_image(train_sub, "vit")
    _add_train_image(train_sub, "swin")
    add_train_translator(train_sub)
    _add_onnx(sub)
    add_translator_onnx(sub)
    add_import_parser(sub)
    _add_quantize(sub)
    _add_embeddings(sub)
    add_explain(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(argv) if argv is not None else sys.argv[1:]  # the command recorded in provenance
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # The ONNX tool chain logs every graph rewrite at INFO.
    for noisy in ("onnx_ir", "onnxscript", "torch.onnx", "torch.export"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
