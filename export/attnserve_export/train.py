"""Training loop for :class:`~attnserve_export.gpt.GPT` on a text corpus.

Deterministic under a seed and resumable bit for bit: a checkpoint holds the model,
the AdamW moments, the data sampler's and torch's RNG states (all as safetensors) and
the step counter and settings (JSON). Nothing is pickled. The learning-rate schedule
is a function of the step only, so a run stopped by ``--max-minutes`` and resumed
ends with exactly the weights of an uninterrupted run.

Losses are reported in bits per character (total nats over a split / ln 2 / number
of characters), which compares models with different tokenizers fairly.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer
from torch import nn
from tqdm import tqdm

from attnserve_export.gpt import GPT, PRESETS, GPTConfig
from attnserve_export.text_data import CorpusSplits, Document, load_corpus
from attnserve_export.tokenizer import EOS_TOKEN, load_tokenizer, train_bpe_tokenizer

logger = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoint"
MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "state.json"
TOKENIZER_FILE = "tokenizer.json"
RESULTS_FILE = "results.json"


@dataclass
class TrainConfig:
    """Settings of one training run (everything that determines the weights, plus bookkeeping)."""

    preset: str = "shakespeare"
    model_overrides: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    corpus: list[str] = field(default_factory=list)  # empty: the Shakespeare corpus
    # Defaults: the settings that trained the shipped models/shakespeare-gpt.
    batch_size: int = 12
    max_steps: int = 1800
    lr: float = 2e-3
    min_lr: float = 1e-4
    warmup_steps: int = 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    eval_interval: int = 300
    checkpoint_interval: int = 100
    eval_stride_fraction: float = 0.5
    # Not part of the result: when this invocation stops (resume goes on) and on how many threads.
    max_minutes: float | None = None
    stop_at_step: int | None = None
    threads: int | None = None
    command: str = ""


def cosine_lr(step: int, *, lr: float, min_lr: float, warmup_steps: int, max_steps: int) -> float:
    """Linear warmup, then cosine decay to ``min_lr`` at ``max_steps``."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def lr_at(step: int, cfg: TrainConfig) -> float:
    """The learning rate of a GPT run at ``step``."""
    return cosine_lr(step, lr=cfg.lr, min_lr=cfg.min_lr, warmup_steps=cfg.warmup_steps, max_steps=cfg.max_steps)


def encode_documents(tokenizer: Tokenizer, docs: list[Document]) -> torch.Tensor:
    """One token stream: every document preceded by ``<|endoftext|>``, as GPT-2 separates documents."""
    eos = tokenizer.token_to_id(EOS_TOKEN)
    if eos is None:
        raise ValueError(f"the tokenizer has no {EOS_TOKEN} token to separate documents with")
    ids: list[int] = []
    for encoding in tokenizer.encode_batch([d.text for d in docs]):
        ids.append(eos)
        ids.extend(encoding.ids)
    return torch.tensor(ids, dtype=torch.int64)


def sample_batch(
    stream: torch.Tensor, batch_size: int, context: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random windows of ``context + 1`` tokens: inputs and next-token targets, each ``(B, T)``."""
    starts = torch.randint(0, len(stream) - context - 1, (batch_size,), generator=generator)
    windows = torch.stack([stream[s : s + context + 1] for s in starts.tolist()])  # (B, T + 1)
    return windows[:, :-1], windows[:, 1:]


def scoring_windows(length: int, context: int, stride: int) -> list[tuple[int, int, int]]:
    """Sliding windows over a sequence of ``length`` ids for scoring: ``(start, end, first)``.

    The window's inputs are ``ids[start:end - 1]`` and its targets ``ids[start + 1:end]``;
    only targets from index ``first`` on are new (an earlier window scored the rest).
    Target 0 is never scored: ``ids[0]`` is the ``<|endoftext|>`` separator.
    """
    windows = []
    scored, start = 1, 0
    while scored < length:
        end = min(start + context + 1, length)
        windows.append((start, end, scored))
        scored = end
        # The next window scores `stride` new targets after a history of context - stride tokens.
        start = max(0, scored + stride - context - 1)
    return windows


@torch.no_grad()
def evaluate_bpc(
    model: GPT, tokenizer: Tokenizer, docs: list[Document], stride_fraction: float = 0.5, batch_size: int = 16
) -> float:
    """Bits per character of ``docs`` under ``model`` (see :func:`score_bpc`)."""
    was_training = model.training
    model.eval()
    try:
        return score_bpc(
            lambda batch: model(batch)[0],
            model.config.context_length,
            tokenizer,
            docs,
            stride_fraction=stride_fraction,
            batch_size=batch_size,
        )
    finally:
        model.train(was_training)


@torch.no_grad()
def score_bpc(
    logits_of: Callable[[torch.Tensor], torch.Tensor],
    context: int,
    tokenizer: Tokenizer,
    docs: list[Document],
    *,
    stride_fraction: float = 0.5,
    batch_size: int = 16,
) -> float:
    """Bits per character of ``docs``: total next-token nats / ln 2 / characters.

    ``logits_of`` maps token ids ``(B, T)`` to logits ``(B, T, vocab)``: a PyTorch model, or an
    exported ONNX graph (so a quantized export is scored exactly like its checkpoint).
    Each document is scored on its own, starting after an ``<|endoftext|>`` so that its
    first token is predicted too. Windows of the full context slide by
    ``stride_fraction`` of it, so every token after the first window sees at least
    ``context * (1 - stride_fraction)`` tokens of history. Windows of equal length are
    batched: a batch-1 forward pass wastes most of a CPU's throughput.
    """
    stride = max(1, int(context * stride_fraction))
    eos = tokenizer.token_to_id(EOS_TOKEN)
    total_nats = 0.0
    total_chars = 0
    for doc in docs:
        ids = torch.tensor([eos, *tokenizer.encode(doc.text).ids], dtype=torch.int64)
        total_chars += len(doc.text)
        windows = scoring_windows(len(ids), context, stride)
        full = [w for w in windows if w[1] - w[0] == context + 1]
        groups = [full[i : i + batch_size] for i in range(0, len(full), batch_size)]
        groups += [[w] for w in windows if w[1] - w[0] != context + 1]
        for group in groups:
            batch = torch.stack([ids[s:e] for s, e, _ in group])  # (B, T + 1)
            logits = logits_of(batch[:, :-1])  # (B, T, vocab)
            nats = F.cross_entropy(logits.transpose(1, 2), batch[:, 1:], reduction="none")  # (B, T)
            for row, (s, _, first) in enumerate(group):
                # nats[row, j] scores ids[s + 1 + j]
                total_nats += float(nats[row, first - s - 1 :].sum())
    return total_nats / math.log(2) / max(1, total_chars)


def decay_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on matrices (including the tied embedding, as nanoGPT), not on norms and biases."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict without GPT's tied output weight (safetensors refuses shared storage)."""
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}


def load_model_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or set(missing) - {"lm_head.weight"}:
        raise ValueError(f"checkpoint does not fit the model: missing {missing}, unexpected {unexpected}")


def save_checkpoint(
    run_dir: Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.AdamW,
    generator: torch.Generator,
    step: int,
    extra: dict[str, Any],
) -> None:
    """Write the checkpoint to a temporary directory, then swap it in, so a kill never leaves half a checkpoint."""
    tmp = run_dir / (CHECKPOINT_DIR + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    save_file(model_state(model), str(tmp / MODEL_FILE))
    tensors: dict[str, torch.Tensor] = {
        "rng.sampler": generator.get_state(),
        "rng.torch": torch.get_rng_state(),
    }
    for index, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            tensors[f"optimizer.{index}.{key}"] = torch.as_tensor(value).detach().clone().contiguous()
    save_file(tensors, str(tmp / OPTIMIZER_FILE))
    (tmp / STATE_FILE).write_text(json.dumps({"step": step, **extra}, indent=2) + "\n")
    final = run_dir / CHECKPOINT_DIR
    old = run_dir / (CHECKPOINT_DIR + ".old")
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    if old.exists():
        for path in old.iterdir():
            path.unlink()
        old.rmdir()


def load_checkpoint(
    run_dir: Path, model: nn.Module, optimizer: torch.optim.AdamW, generator: torch.Generator
) -> dict[str, Any]:
    """Restore what :func:`save_checkpoint` wrote; returns the JSON state (``step`` etc.)."""
    ckpt = run_dir / CHECKPOINT_DIR
    load_model_state(model, load_file(str(ckpt / MODEL_FILE)))
    tensors = load_file(str(ckpt / OPTIMIZER_FILE))
    generator.set_state(tensors.pop("rng.sampler"))
    torch.set_rng_state(tensors.pop("rng.torch"))
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        _, index, key = name.split(".", 2)
        state.setdefault(int(index), {})[key] = value
    opt_state = optimizer.state_dict()
    opt_state["state"] = state
    optimizer.load_state_dict(opt_state)
    loaded: dict[str, Any] = json.loads((ckpt / STATE_FILE).read_text())
    return loaded


def load_trained(run_dir: Path) -> tuple[GPT, Tokenizer, dict[str, Any]]:
    """The model and tokenizer of a run directory, and what is known of the run, for export.

    Returns:
        ``model, tokenizer, info`` with ``info["train_config"]``, ``info["step"]`` and
        ``info["results"]`` (empty if the run has not finished).
    """
    state = json.loads((run_dir / CHECKPOINT_DIR / STATE_FILE).read_text())
    model = GPT(GPTConfig(**state["model_config"]))
    load_model_state(model, load_file(str(run_dir / CHECKPOINT_DIR / MODEL_FILE)))
    results_path = run_dir / RESULTS_FILE
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    train_config = json.loads((run_dir / "train_config.json").read_text())
    for transient in ("max_minutes", "stop_at_step", "threads"):
        train_config.pop(transient, None)
    info = {"train_config": train_config, "step": state["step"], "results": results, "history": state["history"]}
    return model.eval(), load_tokenizer(run_dir / TOKENIZER_FILE), info


def _prepare_tokenizer(run_dir: Path, splits: CorpusSplits, vocab_size: int, resume: bool) -> Tokenizer:
    path = run_dir / TOKENIZER_FILE
    if resume and path.exists():
        return load_tokenizer(path)
    start = time.perf_counter()
    tokenizer = train_bpe_tokenizer((d.text for d in splits.train), vocab_size)
    tokenizer.save(str(path))
    logger.info("trained a %d-token BPE in %.1fs", tokenizer.get_vocab_size(), time.perf_counter() - start)
    return tokenizer


def train(cfg: TrainConfig, run_dir: Path, *, resume: bool = False) -> dict[str, Any]:
    """Train (or resume) a run in ``run_dir``; returns the results (also written to ``results.json``).

    Stops at ``max_steps`` or, with a checkpoint, after ``max_minutes`` (resume to go on).
    """
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    run_dir.mkdir(parents=True, exist_ok=True)
    if resume and not (run_dir / CHECKPOINT_DIR).exists():
        raise FileNotFoundError(f"nothing to resume in {run_dir}")
    if resume:
        # The settings that determine the weights come from the run, not from this command line.
        saved = json.loads((run_dir / "train_config.json").read_text())
        cfg = TrainConfig(
            **{**saved, "max_minutes": cfg.max_minutes, "stop_at_step": cfg.stop_at_step, "threads": cfg.threads}
        )
    else:
        (run_dir / "train_config.json").write_text(json.dumps(asdict(cfg), indent=2) + "\n")

    torch.manual_seed(cfg.seed)
    splits = load_corpus([Path(p) for p in cfg.corpus] or None)
    base = PRESETS[cfg.preset].with_(**cfg.model_overrides)
    tokenizer = _prepare_tokenizer(run_dir, splits, base.vocab_size, resume)
    model_config = base.with_(vocab_size=tokenizer.get_vocab_size())
    train_stream = encode_documents(tokenizer, splits.train)
    chars_per_token = sum(len(d.text) for d in splits.train) / len(train_stream)
    logger.info("train stream: %d tokens (%.2f chars/token)", len(train_stream), chars_per_token)

    model = GPT(model_config)
    logger.info("model: %s, %.2fM parameters", model_config, model.num_parameters() / 1e6)
    optimizer = torch.optim.AdamW(
        decay_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=False, foreach=False
    )
    generator = torch.Generator().manual_seed(cfg.seed)
    step = 0
    elapsed_before = 0.0
    history: list[dict[str, float]] = []
    if resume:
        state = load_checkpoint(run_dir, model, optimizer, generator)
        step, elapsed_before, history = state["step"], state["train_seconds"], state["history"]
        logger.info("resumed %s at step %d", run_dir, step)

    def extra() -> dict[str, Any]:
        return {
            "model_config": model_config.to_dict(),
            "train_seconds": elapsed_before + (time.perf_counter() - start),
            "history": history,
        }

    start = time.perf_counter()
    deadline = start + cfg.max_minutes * 60 if cfg.max_minutes else math.inf
    model.train()
    tokens_per_step = cfg.batch_size * model_config.context_length
    first_step = step
    bar = tqdm(total=cfg.max_steps, initial=step, desc="train", unit="step", dynamic_ncols=True, mininterval=5)
    loss_ema: float | None = None
    while step < cfg.max_steps:
        lr = lr_at(step, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        inputs, targets = sample_batch(train_stream, cfg.batch_size, model_config.context_length, generator)
        loss = model.loss(inputs, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        step += 1
        value = float(loss.detach())
        loss_ema = value if loss_ema is None else 0.95 * loss_ema + 0.05 * value
        seconds = time.perf_counter() - start
        bar.update(1)
        bar.set_postfix(
            loss=f"{loss_ema:.3f}",
            lr=f"{lr:.2e}",
            tok_s=f"{tokens_per_step * (step - first_step) / max(seconds, 1e-9):.0f}",
        )
        if step % cfg.eval_interval == 0 or step == cfg.max_steps:
            # Non-overlapping windows: half the cost of the final, overlapping evaluation, slightly pessimistic.
            val_bpc = evaluate_bpc(model, tokenizer, splits.validation, 1.0)
            history.append({"step": step, "train_loss": loss_ema, "val_bpc": val_bpc})
            logger.info("step %d: train loss %.4f nats/token, validation %.4f bits/char", step, loss_ema, val_bpc)
        if step % cfg.checkpoint_interval == 0 or step == cfg.max_steps:
            save_checkpoint(run_dir, model=model, optimizer=optimizer, generator=generator, step=step, extra=extra())
        if (time.perf_counter() > deadline or step == cfg.stop_at_step) and step < cfg.max_steps:
            save_checkpoint(run_dir, model=model, optimizer=optimizer, generator=generator, step=step, extra=extra())
            logger.warning("stopped at step %d of %d; --resume continues", step, cfg.max_steps)
            bar.close()
            return {"step": step, "finished": False}
    bar.close()

    train_seconds = extra()["train_seconds"]
    val_bpc = evaluate_bpc(model, tokenizer, splits.validation, cfg.eval_stride_fraction)
    test_bpc = evaluate_bpc(model, tokenizer, splits.test, cfg.eval_stride_fraction)
    results = {
        "finished": True,
        "step": step,
        "seed": cfg.seed,
        "command": cfg.command,
        "train_seconds": round(train_seconds, 1),
        "tokens_seen": step * tokens_per_step,
        "train_tokens": len(train_stream),
        "chars_per_token": round(chars_per_token, 3),
        "validation_bpc": round(val_bpc, 4),
        "test_bpc": round(test_bpc, 4),
        "validation_files": [d.name for d in splits.validation],
        "test_files": [d.name for d in splits.test],
        "num_parameters": model.num_parameters(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
    }
    (run_dir / RESULTS_FILE).write_text(json.dumps(results, indent=2) + "\n")
    logger.info("done: validation %.4f bpc, test %.4f bpc in %.0fs", val_bpc, test_bpc, train_seconds)
    return results
