"""Training the numbers-translator: a :class:`~attnserve_export.seq2seq.Seq2Seq` on :mod:`number_data`.

Deterministic under a seed: the data sampler is a ``random.Random(seed)`` and every batch
is drawn from it in order. Progress is reported as exact-match accuracy of greedy decoding
on a fixed validation set, which is what the shipped model is judged by.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer
from tqdm import tqdm

from attnserve_export.number_data import BOS, EOS, PAD, Example, fixed_set, sample, special_id, train_tokenizer
from attnserve_export.seq2seq import PRESETS, Seq2Seq, Seq2SeqConfig

logger = logging.getLogger(__name__)

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "model_config.json"
TOKENIZER_FILE = "tokenizer.json"
RESULTS_FILE = "results.json"


@dataclass
class TranslatorTrainConfig:
    """Everything that determines the trained weights, plus bookkeeping."""

    preset: str = "numbers"
    model_overrides: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    max_number: int = 999_999
    vocab_size: int = 512
    batch_size: int = 64
    max_steps: int = 3000
    lr: float = 1e-3
    min_lr: float = 5e-5
    warmup_steps: int = 300
    weight_decay: float = 0.01
    label_smoothing: float = 0.1
    grad_clip: float = 1.0
    eval_interval: int = 500
    eval_examples: int = 240
    # Not part of the result: when this run stops, and on how many threads.
    max_minutes: float | None = None
    threads: int | None = None
    command: str = ""


def lr_at(step: int, cfg: TranslatorTrainConfig) -> float:
    """Linear warmup, then cosine decay to ``min_lr`` at ``max_steps``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1.0 + math.cos(math.pi * progress))


@dataclass
class Batch:
    source_ids: torch.Tensor  # (B, S) right-padded
    source_mask: torch.Tensor  # (B, S)
    target_in: torch.Tensor  # (B, T) <s> + target, right-padded
    target_out: torch.Tensor  # (B, T) target + </s>, right-padded with <pad>


def encode_batch(tokenizer: Tokenizer, examples: list[Example]) -> Batch:
    """Tokenize and right-pad a batch; targets start with ``<s>`` and end with ``</s>``."""
    pad, bos, eos = (special_id(tokenizer, t) for t in (PAD, BOS, EOS))
    sources = [tokenizer.encode(e.source).ids for e in examples]
    targets = [tokenizer.encode(e.target).ids for e in examples]
    s_len, t_len = max(map(len, sources)), max(map(len, targets)) + 1
    batch = Batch(
        source_ids=torch.full((len(examples), s_len), pad, dtype=torch.int64),
        source_mask=torch.zeros((len(examples), s_len), dtype=torch.int64),
        target_in=torch.full((len(examples), t_len), pad, dtype=torch.int64),
        target_out=torch.full((len(examples), t_len), pad, dtype=torch.int64),
    )
    for row, (src, tgt) in enumerate(zip(sources, targets, strict=True)):
        batch.source_ids[row, : len(src)] = torch.tensor(src)
        batch.source_mask[row, : len(src)] = 1
        batch.target_in[row, : len(tgt) + 1] = torch.tensor([bos, *tgt])
        batch.target_out[row, : len(tgt) + 1] = torch.tensor([*tgt, eos])
    return batch


@torch.no_grad()
def greedy_translate(model: Seq2Seq, tokenizer: Tokenizer, sources: list[str], max_new_tokens: int = 64) -> list[str]:
    """Greedy decoding with the cached cross-attention and self-attention cache (the served algorithm)."""
    model.eval()
    bos, eos = special_id(tokenizer, BOS), special_id(tokenizer, EOS)
    encoded = [tokenizer.encode(s).ids for s in sources]
    width = max(map(len, encoded))
    source_ids = torch.full((len(sources), width), special_id(tokenizer, PAD), dtype=torch.int64)
    source_mask = torch.zeros_like(source_ids)
    for row, ids in enumerate(encoded):
        source_ids[row, : len(ids)], source_mask[row, : len(ids)] = torch.tensor(ids), 1
    cross = model.cross_kv(model.encode(source_ids, source_mask))
    tokens = torch.full((len(sources), 1), bos, dtype=torch.int64)
    outputs: list[list[int]] = [[] for _ in sources]
    done = [False] * len(sources)
    past = None
    for step in range(max_new_tokens):
        mask = torch.ones(len(sources), step + 1, dtype=torch.int64)
        logits, past = model.decode(tokens, cross, source_mask, attention_mask=mask, past=past)
        tokens = logits[:, -1].argmax(dim=-1, keepdim=True)
        for row, token in enumerate(tokens[:, 0].tolist()):
            if not done[row]:
                done[row] = token == eos
                if not done[row]:
                    outputs[row].append(token)
        if all(done):
            break
    return [tokenizer.decode(ids) for ids in outputs]


def exact_match(model: Seq2Seq, tokenizer: Tokenizer, examples: list[Example], batch_size: int = 64) -> float:
    hits = 0
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        outputs = greedy_translate(model, tokenizer, [e.source for e in chunk])
        hits += sum(out == e.target for out, e in zip(outputs, chunk, strict=True))
    return hits / max(1, len(examples))


def exact_match_by_direction(model: Seq2Seq, tokenizer: Tokenizer, examples: list[Example]) -> dict[str, float]:
    """Greedy exact match per ``source->target`` direction, and ``"all"``."""
    by_direction: dict[str, list[Example]] = {}
    for e in examples:
        by_direction.setdefault(f"{e.source_language}->{e.target_language}", []).append(e)
    scores = {key: exact_match(model, tokenizer, group) for key, group in sorted(by_direction.items())}
    scores["all"] = exact_match(model, tokenizer, examples)
    return scores


def train_translator(cfg: TranslatorTrainConfig, out: Path) -> dict[str, Any]:
    """Train in ``out`` (tokenizer, weights, config and results); returns the results."""
    out.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    tokenizer = train_tokenizer(cfg.max_number, cfg.vocab_size)
    tokenizer.save(str(out / TOKENIZER_FILE))
    config = PRESETS[cfg.preset].with_(vocab_size=tokenizer.get_vocab_size(), **cfg.model_overrides)
    model = Seq2Seq(config)
    pad = special_id(tokenizer, PAD)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.98), weight_decay=cfg.weight_decay)
    validation = fixed_set("validation", cfg.eval_examples, cfg.max_number)
    history: list[dict[str, float]] = []
    started = time.monotonic()
    step, interval_losses = 0, []
    progress = tqdm(total=cfg.max_steps, desc="train", unit="step", mininterval=5.0)
    while step < cfg.max_steps:
        model.train()
        batch = encode_batch(tokenizer, sample(rng, cfg.batch_size, "train", cfg.max_number))
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, cfg)
        loss = model.loss(
            batch.source_ids,
            batch.source_mask,
            batch.target_in,
            batch.target_out,
            pad_id=pad,
            label_smoothing=cfg.label_smoothing,
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        interval_losses.append(loss.item())
        step += 1
        progress.update(1)
        out_of_time = cfg.max_minutes is not None and time.monotonic() - started > cfg.max_minutes * 60
        if step % cfg.eval_interval == 0 or step == cfg.max_steps or out_of_time:
            accuracy = exact_match(model, tokenizer, validation)
            minutes = (time.monotonic() - started) / 60
            mean_loss = sum(interval_losses) / len(interval_losses)  # over the steps since the last evaluation
            interval_losses = []
            history.append({"step": step, "loss": mean_loss, "validation_exact_match": accuracy, "minutes": minutes})
            logger.info("step %d loss %.3f validation exact match %.3f (%.1f min)", step, mean_loss, accuracy, minutes)
        if out_of_time:
            break
    progress.close()
    save_file(model.state_dict(), str(out / MODEL_FILE))
    (out / CONFIG_FILE).write_text(json.dumps(config.to_dict(), indent=2) + "\n")
    results = {
        "train_config": asdict(cfg),
        "model_config": config.to_dict(),
        "parameters": model.num_parameters(),
        "steps": step,
        "minutes": (time.monotonic() - started) / 60,
        "history": history,
    }
    (out / RESULTS_FILE).write_text(json.dumps(results, indent=2) + "\n")
    return results


def load_translator(run_dir: Path) -> tuple[Seq2Seq, Tokenizer]:
    """The trained model (eval mode) and its tokenizer from a run directory."""
    config = Seq2SeqConfig(**json.loads((run_dir / CONFIG_FILE).read_text()))
    model = Seq2Seq(config)
    model.load_state_dict(load_file(str(run_dir / MODEL_FILE)))
    return model.eval(), Tokenizer.from_file(str(run_dir / TOKENIZER_FILE))
