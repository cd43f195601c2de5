"""Parity-checked ONNX export of a :class:`~attnserve_export.gpt.GPT` into a model repository.

Every export, like timm's ONNX utilities, (1) runs ``onnx.checker``, (2) runs the
graph in ONNX Runtime and (3) compares it against PyTorch on a left-padded prefill
of prompts of different lengths and on several KV-cache decode steps. An export that
misses the tolerance raises :class:`ParityError` and leaves no ``model.onnx`` behind.

We use the ``torch.export``-based exporter (``dynamo=True``): in torch 2.13 it is the
default and maintained path, it handles a variable number of cache inputs and a
``past_len`` of 0, and it emits plain opset-18 ops (MatMul, Softmax,
LayerNormalization) that ONNX Runtime's CPU graph optimizer fuses well.
"""

from __future__ import annotations

import logging
import re
import shutil
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from tokenizers import Tokenizer
from torch import nn

from attnserve_export.gpt import GPT, KVCache, left_pad
from attnserve_export.onnx_gqa import OPSET as SHARED_BUFFER_OPSET
from attnserve_export.onnx_gqa import (
    SEQLENS_K,
    TOTAL_SEQUENCE_LENGTH,
    SharedBufferRunner,
    TensorNames,
    build_shared_buffer_graph,
    supports_shared_buffer,
)
from attnserve_export.tokenizer import EOS_TOKEN
from attnserve_server.model_format.metadata import ModelMetadata, write_metadata
from attnserve_server.text.metadata import (
    DefaultsMetadata,
    InputNames,
    KVCacheLayout,
    OutputNames,
    TextGenerationMetadata,
)

logger = logging.getLogger(__name__)

OPSET = 18
INPUT_IDS = "input_ids"
ATTENTION_MASK = "attention_mask"
POSITION_IDS = "position_ids"
LOGITS = "logits"
PAST_KEY = "past_key_values.{layer}.key"
PAST_VALUE = "past_key_values.{layer}.value"
PRESENT_KEY = "present.{layer}.key"
PRESENT_VALUE = "present.{layer}.value"
NAMES = TensorNames(INPUT_IDS, POSITION_IDS, LOGITS, PAST_KEY, PAST_VALUE, PRESENT_KEY, PRESENT_VALUE)
# "shared_buffer" (GroupQueryAttention, KV cache updated in place; onnx_gqa) or "concat" (torch.onnx
# export; each step returns past + new). See docs/model-repository.md.
KV_CACHE_LAYOUTS: tuple[KVCacheLayout, ...] = ("shared_buffer", "concat")
MODEL_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"

DEFAULT_GENERATION: dict[str, float | int] = {
    "max_new_tokens": 200,
    "temperature": 0.8,
    "top_k": 50,
    "top_p": 0.95,
    "repetition_penalty": 1.0,
}

# Prompts for the parity check: different lengths so that the batch is left-padded.
PARITY_PROMPTS = ("ROMEO.\nBut soft, what light", "To be", "Enter a Messenger.\n\nMESSENGER.\nMy lord, the", "Ay")
PARITY_DECODE_STEPS = 4


class ParityError(RuntimeError):
    """ONNX Runtime's outputs differ from PyTorch's by more than the tolerance."""


@dataclass
class ParityCase:
    """Figures for one comparison (one model call), over real (non-padding) positions only."""

    name: str
    max_abs_diff: float
    max_abs_logit: float
    argmax_mismatches: int
    argmax_ties: int
    present_max_abs_diff: float

    @property
    def rel_diff(self) -> float:
        return self.max_abs_diff / max(self.max_abs_logit, 1e-12)


@dataclass
class ParityReport:
    """The outcome of an export's parity check; ``to_dict`` goes into the metadata's provenance."""

    cases: list[ParityCase] = field(default_factory=list)
    max_abs_tolerance: float | None = None
    max_rel_tolerance: float | None = None
    onnx_checker: bool = False
    opset: int = OPSET
    exporter: str = "torch.onnx.export(dynamo=True)"
    export_seconds: float = 0.0
    model_bytes: int = 0

    @property
    def max_abs_diff(self) -> float:
        return max((c.max_abs_diff for c in self.cases), default=0.0)

    @property
    def max_rel_diff(self) -> float:
        return max((c.rel_diff for c in self.cases), default=0.0)

    @property
    def argmax_mismatches(self) -> int:
        return sum(c.argmax_mismatches for c in self.cases)

    @property
    def passed(self) -> bool:
        if self.max_abs_tolerance is not None and self.max_abs_diff > self.max_abs_tolerance:
            return False
        if self.max_rel_tolerance is not None and self.max_rel_diff > self.max_rel_tolerance:
            return False
        return self.onnx_checker and self.argmax_mismatches == 0

    def summary(self) -> str:
        return (
            f"max |Δlogit| {self.max_abs_diff:.3g}, max |Δlogit|/max|logit| {self.max_rel_diff:.3g}, "
            f"argmax mismatches {self.argmax_mismatches} over {len(self.cases)} calls"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "onnx_checker": self.onnx_checker,
            "exporter": self.exporter,
            "opset": self.opset,
            "max_abs_diff": self.max_abs_diff,
            "max_rel_diff": self.max_rel_diff,
            "argmax_mismatches": self.argmax_mismatches,
            "max_abs_tolerance": self.max_abs_tolerance,
            "max_rel_tolerance": self.max_rel_tolerance,
            "cases": [asdict(c) | {"rel_diff": c.rel_diff} for c in self.cases],
        }


def cache_input_names(num_layers: int) -> list[str]:
    """ONNX input names of the cache, in the order of the graph's inputs."""
    return [t.format(layer=i) for i in range(num_layers) for t in (PAST_KEY, PAST_VALUE)]


def cache_output_names(num_layers: int) -> list[str]:
    """ONNX output names of the updated cache, in the order of the graph's outputs."""
    return [t.format(layer=i) for i in range(num_layers) for t in (PRESENT_KEY, PRESENT_VALUE)]


class _FlatGPT(nn.Module):
    """Adapts :class:`GPT` to flat ONNX inputs and outputs (one tensor per cache entry)."""

    def __init__(self, model: GPT) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        *past: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        cache: KVCache = [(past[2 * i], past[2 * i + 1]) for i in range(len(past) // 2)]
        logits, presents = self.model(input_ids, attention_mask, position_ids, cache)
        return (logits, *(t for kv in presents for t in kv))


def export_onnx(model: GPT, path: Path) -> None:
    """Export ``model`` to an ONNX file with dynamic batch, sequence and past-length axes.

    The dynamic axes are keyed by the declared input names. The sample has batch 2,
    seq 5 and past 3: torch.export specializes dimensions of size 0 or 1, so none
    of the sample's dynamic sizes may be 0 or 1.
    """
    cfg = model.config
    batch, seq, past = 2, 5, 3
    input_names = [INPUT_IDS, ATTENTION_MASK, POSITION_IDS, *cache_input_names(cfg.num_layers)]
    output_names = [LOGITS, *cache_output_names(cfg.num_layers)]
    sample = (
        torch.randint(0, cfg.vocab_size, (batch, seq)),
        torch.ones(batch, past + seq, dtype=torch.int64),
        (torch.arange(seq) + past).expand(batch, seq).contiguous(),
        *(torch.zeros(batch, cfg.num_heads, past, cfg.head_dim) for _ in range(2 * cfg.num_layers)),
    )
    batch_dim = torch.export.Dim("batch")
    seq_dim = torch.export.Dim("seq")
    past_dim = torch.export.Dim("past_len")
    axes: dict[str, dict[int, Any]] = {
        INPUT_IDS: {0: batch_dim, 1: seq_dim},
        # past_len + seq: derived dims cannot be declared directly, so let torch.export infer it.
        ATTENTION_MASK: {0: batch_dim, 1: torch.export.Dim.DYNAMIC},
        POSITION_IDS: {0: batch_dim, 1: seq_dim},
        **{name: {0: batch_dim, 2: past_dim} for name in cache_input_names(cfg.num_layers)},
    }
    # torch.export matches dynamic_shapes to forward's parameters; the cache is the *past varargs.
    dynamic_shapes = {
        INPUT_IDS: axes[INPUT_IDS],
        ATTENTION_MASK: axes[ATTENTION_MASK],
        POSITION_IDS: axes[POSITION_IDS],
        "past": tuple(axes[name] for name in cache_input_names(cfg.num_layers)),
    }
    wrapper = _FlatGPT(model).eval()
    # The exporter warns that an axis name "will not be used" when it is shared by several
    # inputs, which is the point of sharing it; the names do end up in the graph.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*axis name.*will not be used.*")
        program = torch.onnx.export(
            wrapper,
            sample,
            dynamo=True,
            dynamic_shapes=dynamic_shapes,
            input_names=input_names,
            output_names=output_names,
            opset_version=OPSET,
            # Keep every parameter as an initializer named after it (no constant folding into
            # anonymous transposed copies): the file then documents its own weights, and tools
            # such as benchmarks/text_decode_latency.py can rebuild the PyTorch model from it.
            # ONNX Runtime folds the transposes when it loads the session, so serving is as fast.
            optimize=False,
            verbose=False,
        )
    if program is None:
        raise RuntimeError("torch.onnx.export returned no program")
    program.save(str(path))
    _tidy_graph(path)


def strip_debug_info(proto: onnx.ModelProto) -> None:
    """Drop the exporter's per-node stack traces: they only cost bytes in a file we ship."""
    for node in proto.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""


def save_program(program: Any, path: Path) -> None:
    """Save a ``torch.onnx.export`` program to ``path`` without the per-node debug metadata."""
    if program is None:
        raise RuntimeError("torch.onnx.export returned no program")
    program.save(str(path))
    proto = onnx.load(str(path))
    strip_debug_info(proto)
    onnx.save(proto, str(path))


def _tidy_graph(path: Path) -> None:
    """Name the attention mask's length axis and drop the exporter's per-node debug metadata.

    torch.export names the mask's second axis ``s<N>`` because it was inferred; giving it
    the presents' name (``past_len + seq``) makes the graph self-describing. The per-node
    stack traces only cost bytes in a file we ship.
    """
    proto = onnx.load(str(path))
    strip_debug_info(proto)
    present = next(o for o in proto.graph.output if o.name == PRESENT_KEY.format(layer=0))
    total_name = present.type.tensor_type.shape.dim[2].dim_param
    for inp in proto.graph.input:
        if inp.name == ATTENTION_MASK and total_name:
            dim = inp.type.tensor_type.shape.dim[1]
            if re.fullmatch(r"s\d+", dim.dim_param or ""):
                dim.dim_param = total_name
    onnx.save(proto, str(path))


def _session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = 2
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _compare(
    name: str,
    *,
    torch_logits: torch.Tensor,
    ort_logits: np.ndarray,
    real: torch.Tensor,
    torch_cache: KVCache,
    ort_cache: list[np.ndarray],
) -> ParityCase:
    """Compare logits at real positions (``real``: ``(B, T)`` bool) and the full updated cache."""
    expected = torch_logits.numpy()[real.numpy()]  # (N, vocab)
    got = ort_logits[real.numpy()]  # (N, vocab)
    diff = np.abs(expected - got)
    max_diff = float(diff.max())
    top2 = np.sort(expected, axis=-1)[:, -2:]  # (N, 2)
    gap = top2[:, 1] - top2[:, 0]
    differ = expected.argmax(-1) != got.argmax(-1)
    # A top-2 gap within the numerical error is a tie that no exporter could break identically.
    ties = differ & (gap <= max_diff)
    flat_torch = [t.numpy() for kv in torch_cache for t in kv]
    present_diff = max(
        float(np.abs(a - b).max()) if a.size else 0.0 for a, b in zip(flat_torch, ort_cache, strict=True)
    )
    return ParityCase(
        name=name,
        max_abs_diff=max_diff,
        max_abs_logit=float(np.abs(expected).max()),
        argmax_mismatches=int((differ & ~ties).sum()),
        argmax_ties=int(ties.sum()),
        present_max_abs_diff=present_diff,
    )


def _pair(
    torch_logits: torch.Tensor, ort_outputs: list[np.ndarray], real: torch.Tensor, torch_cache: KVCache
) -> dict[str, Any]:
    """Keyword arguments of :func:`_compare` for one model call."""
    return {
        "torch_logits": torch_logits,
        "ort_logits": ort_outputs[0],
        "real": real,
        "torch_cache": torch_cache,
        "ort_cache": ort_outputs[1:],
    }


def check_parity(
    model: GPT,
    onnx_path: Path,
    prompts: list[list[int]],
    pad_token_id: int,
    *,
    decode_steps: int = PARITY_DECODE_STEPS,
) -> list[ParityCase]:
    """Run PyTorch and ONNX Runtime side by side: a left-padded prefill, then greedy decode steps.

    Both sides decode from their own cache; the next token comes from PyTorch's logits so
    that the inputs stay identical even if an argmax differed.
    """
    cfg = model.config
    session = _session(onnx_path)
    cases: list[ParityCase] = []
    ids, mask, positions = left_pad(prompts, pad_token_id)
    batch = ids.shape[0]
    empty = np.zeros((batch, cfg.num_heads, 0, cfg.head_dim), dtype=np.float32)
    feed: dict[str, np.ndarray] = {
        INPUT_IDS: ids.numpy(),
        ATTENTION_MASK: mask.numpy(),
        POSITION_IDS: positions.numpy(),
        **dict.fromkeys(cache_input_names(cfg.num_layers), empty),
    }
    model.eval()
    with torch.inference_mode():
        logits, cache = model(ids, mask, positions)
        outputs = session.run(None, feed)
        cases.append(_compare("prefill (left-padded batch)", **_pair(logits, outputs, mask.bool(), cache)))
        ort_cache = outputs[1:]
        for step in range(decode_steps):
            next_ids = logits[:, -1].argmax(-1, keepdim=True)  # (B, 1)
            mask = torch.cat([mask, torch.ones(batch, 1, dtype=torch.int64)], dim=1)  # (B, P + 1)
            positions = positions[:, -1:] + 1  # (B, 1)
            logits, cache = model(next_ids, mask, positions, cache)
            feed = {
                INPUT_IDS: next_ids.numpy(),
                ATTENTION_MASK: mask.numpy(),
                POSITION_IDS: positions.numpy(),
                **dict(zip(cache_input_names(cfg.num_layers), ort_cache, strict=True)),
            }
            outputs = session.run(None, feed)
            real = torch.ones(batch, 1, dtype=torch.bool)
            cases.append(_compare(f"decode step {step + 1}", **_pair(logits, outputs, real, cache)))
            ort_cache = outputs[1:]
        # A single unpadded prompt, batch 1: the shape the server's simplest path uses.
        single = torch.tensor([max(prompts, key=len)], dtype=torch.int64)
        logits, cache = model(single, torch.ones_like(single), torch.arange(single.shape[1]).unsqueeze(0))
        outputs = session.run(
            None,
            {
                INPUT_IDS: single.numpy(),
                ATTENTION_MASK: np.ones_like(single.numpy()),
                POSITION_IDS: np.arange(single.shape[1], dtype=np.int64)[None],
                **dict.fromkeys(cache_input_names(cfg.num_layers), empty[:1]),
            },
        )
        real = torch.ones_like(single, dtype=torch.bool)
        cases.append(_compare("prefill (batch 1)", **_pair(logits, outputs, real, cache)))
    return cases


def _case(name: str, expected: np.ndarray, got: np.ndarray, present_diff: float) -> ParityCase:
    """A parity case from logits ``(N, vocab)`` of PyTorch and ONNX Runtime at real positions."""
    diff = float(np.abs(expected - got).max())
    top2 = np.sort(expected, axis=-1)[:, -2:]  # (N, 2)
    differ = expected.argmax(-1) != got.argmax(-1)
    ties = differ & ((top2[:, 1] - top2[:, 0]) <= diff)
    return ParityCase(
        name=name,
        max_abs_diff=diff,
        max_abs_logit=float(np.abs(expected).max()),
        argmax_mismatches=int((differ & ~ties).sum()),
        argmax_ties=int(ties.sum()),
        present_max_abs_diff=present_diff,
    )


def _cache_diff(torch_cache: KVCache, ort_cache: list[np.ndarray]) -> float:
    flat_torch = [t.numpy() for kv in torch_cache for t in kv]
    return max(float(np.abs(a - b).max()) for a, b in zip(flat_torch, ort_cache, strict=True))


def check_shared_buffer_parity(
    model: GPT, onnx_path: Path, prompts: list[list[int]], *, decode_steps: int = PARITY_DECODE_STEPS
) -> list[ParityCase]:
    """PyTorch against the ``shared_buffer`` graph, called as the server calls it.

    Each prompt is prefilled into its own slot (the first one in two chunks, as the server's
    chunked prefill does); then every step decodes all prompts in one call, each at its own
    position. PyTorch runs each sequence alone; the next tokens come from PyTorch's logits.
    """
    runner = SharedBufferRunner(str(onnx_path), model, len(prompts), NAMES)
    cases: list[ParityCase] = []
    caches: list[KVCache] = []
    next_ids: list[int] = []
    model.eval()
    with torch.inference_mode():
        for slot, prompt in enumerate(prompts):
            logits, cache = model(torch.tensor([prompt], dtype=torch.int64))
            split = len(prompt) // 2 if slot == 0 else 0
            if split:
                runner.run(slot, np.asarray([prompt[:split]], dtype=np.int64))
            ort_logits = runner.run(slot, np.asarray([prompt[split:]], dtype=np.int64))
            how = f"in chunks of {split} + {len(prompt) - split}" if split else "whole"
            cases.append(
                _case(
                    f"prefill of prompt {slot} ({how})",
                    logits[:, -1].numpy(),
                    ort_logits,
                    _cache_diff(cache, runner.cache_of(slot)),
                )
            )
            caches.append(cache)
            next_ids.append(int(logits[0, -1].argmax()))
        for step in range(decode_steps):
            ort_logits = runner.run(0, np.asarray(next_ids, dtype=np.int64)[:, None])  # (B, V)
            expected, present_diff = [], 0.0
            for row, token in enumerate(next_ids):
                logits, caches[row] = model(torch.tensor([[token]], dtype=torch.int64), past_key_values=caches[row])
                expected.append(logits[0, -1].numpy())
                present_diff = max(present_diff, _cache_diff(caches[row], runner.cache_of(row)))
            cases.append(_case(f"batched decode step {step + 1}", np.stack(expected), ort_logits, present_diff))
            next_ids = [int(row.argmax()) for row in expected]
    return cases


def build_metadata(
    model: GPT,
    tokenizer: Tokenizer,
    *,
    description: str,
    defaults: dict[str, float | int],
    provenance: dict[str, Any],
    kv_cache_layout: KVCacheLayout = "concat",
    eos_token: str | None = EOS_TOKEN,
    chat_template: str | None = None,
) -> ModelMetadata:
    """The validated ``metadata.json`` described in ``docs/model-repository.md``."""
    cfg = model.config
    eos_id: int | None = tokenizer.token_to_id(eos_token) if eos_token is not None else None
    inputs = (
        InputNames(input_ids=INPUT_IDS, attention_mask=ATTENTION_MASK, position_ids=POSITION_IDS)
        if kv_cache_layout == "concat"
        else InputNames(
            input_ids=INPUT_IDS,
            position_ids=POSITION_IDS,
            seqlens_k=SEQLENS_K,
            total_sequence_length=TOTAL_SEQUENCE_LENGTH,
        )
    )
    section = TextGenerationMetadata(
        tokenizer_file=TOKENIZER_FILE,
        context_length=cfg.context_length,
        vocab_size=cfg.vocab_size,
        num_layers=cfg.num_layers,
        num_heads=cfg.num_heads,
        head_dim=cfg.head_dim,
        inputs=inputs,
        outputs=OutputNames(logits=LOGITS),
        past_key_template=PAST_KEY,
        past_value_template=PAST_VALUE,
        present_key_template=PRESENT_KEY,
        present_value_template=PRESENT_VALUE,
        eos_token=eos_token if eos_id is not None else None,
        eos_token_id=eos_id,
        # Padding is masked out, so any valid id works; GPT-2 convention: reuse end-of-text.
        pad_token_id=eos_id if eos_id is not None else 0,
        kv_cache_layout=kv_cache_layout,
        defaults=DefaultsMetadata.model_validate(defaults),
        chat_template=chat_template,
    )
    return ModelMetadata.of(section, model_file=MODEL_FILE, description=description, provenance=provenance)


def export_gpt(
    model: GPT,
    tokenizer: Tokenizer,
    version_dir: Path,
    *,
    description: str = "",
    defaults: dict[str, float | int] | None = None,
    provenance: dict[str, Any] | None = None,
    max_abs_diff: float | None = None,
    max_rel_diff: float | None = 1e-4,
    kv_cache_layout: KVCacheLayout = "shared_buffer",
    eos_token: str | None = EOS_TOKEN,
    chat_template: str | None = None,
    explain: bool = True,
) -> ParityReport:
    """Export ``model`` with ``tokenizer`` into ``version_dir`` (created) and check parity.

    Writes ``model.onnx``, ``tokenizer.json`` and ``metadata.json``. The parity figures
    are added to the provenance under ``"parity"``.

    Args:
        max_abs_diff: fail if any real-position logit differs by more than this (None: unchecked).
        max_rel_diff: fail if max |Δlogit| / max |logit| exceeds this (None: unchecked).
        kv_cache_layout: ``"shared_buffer"`` (the server updates the cache in place; needs a head
            size that is a multiple of 16) or ``"concat"`` (the torch.onnx export).
        eos_token: the end-of-text token (its id ends generation and pads); None: the model has none.
        chat_template: a Jinja chat template to keep in the metadata (imported checkpoints).
        explain: also write ``explain.onnx``, the graph of every layer's attention probabilities and hidden
            states (:mod:`attnserve_export.explain_graph`); the metadata names it as both the explain
            and the embeddings graph.

    Raises:
        ParityError: the check failed; nothing is written to ``version_dir``.
        ValueError: the tokenizer has more ids than the model has logits, or the metadata would be
            invalid (e.g. a negative default temperature); nothing is written.
    """
    if kv_cache_layout not in KV_CACHE_LAYOUTS:
        raise ValueError(f"kv_cache_layout must be one of {', '.join(KV_CACHE_LAYOUTS)}, got {kv_cache_layout!r}")
    if kv_cache_layout == "shared_buffer" and not supports_shared_buffer(model):
        raise ValueError(
            f"head_dim {model.config.head_dim} is not a multiple of 16, which ONNX Runtime's GroupQueryAttention "
            "needs; export with kv_cache_layout='concat' (--kv-cache-layout concat)"
        )
    vocab = tokenizer.get_vocab_size(with_added_tokens=True)
    if vocab > model.config.vocab_size:
        raise ValueError(f"tokenizer has {vocab} ids but the model only {model.config.vocab_size} logits")
    # Built (and validated) before any work: metadata the server would refuse fails here.
    metadata = build_metadata(
        model,
        tokenizer,
        description=description,
        defaults={**DEFAULT_GENERATION, **(defaults or {})},
        provenance=provenance or {},
        kv_cache_layout=kv_cache_layout,
        eos_token=eos_token,
        chat_template=chat_template,
    )
    eos_id = tokenizer.token_to_id(eos_token) if eos_token is not None else None
    pad_id = eos_id if eos_id is not None else 0
    prompts = [tokenizer.encode(p).ids for p in PARITY_PROMPTS]
    # The prompts must fit the context with the decode steps, even for tiny models.
    prompts = [p[: model.config.context_length - PARITY_DECODE_STEPS] or [pad_id] for p in prompts]

    report = ParityReport(max_abs_tolerance=max_abs_diff, max_rel_tolerance=max_rel_diff)
    model = model.eval()
    with tempfile.TemporaryDirectory(prefix="attnserve-export-") as tmp:
        staged = Path(tmp) / MODEL_FILE
        start = time.perf_counter()
        if kv_cache_layout == "shared_buffer":
            onnx.save(build_shared_buffer_graph(model, NAMES), str(staged))
            report.exporter = "attnserve_export.onnx_gqa (onnx.helper, com.microsoft.GroupQueryAttention)"
            report.opset = SHARED_BUFFER_OPSET
        else:
            export_onnx(model, staged)
        report.export_seconds = time.perf_counter() - start
        onnx.checker.check_model(str(staged), full_check=True)
        report.onnx_checker = True
        if kv_cache_layout == "shared_buffer":
            report.cases = check_shared_buffer_parity(model, staged, prompts)
        else:
            report.cases = check_parity(model, staged, prompts, pad_id)
        report.model_bytes = staged.stat().st_size
        logger.info("parity: %s", report.summary())
        if not report.passed:
            raise ParityError(f"ONNX Runtime disagrees with PyTorch: {report.summary()}")
        if explain:  # the Explain and Embed RPCs' graph, parity-checked too
            # Imported here: explain_graph builds on this module's parity report.
            from attnserve_export.explain_graph import embeddings_entry, export_explain, with_explain  # noqa: PLC0415

            # Held to the tolerance the caller set for this model's logits (1e-4 unless it said otherwise).
            tolerance = max_rel_diff if max_rel_diff is not None else 1e-4
            entry, explain_report = export_explain(model, Path(tmp) / "explain", tolerance=tolerance)
        version_dir.mkdir(parents=True, exist_ok=True)
        shutil.move(str(staged), version_dir / MODEL_FILE)
        if explain:
            shutil.move(str(Path(tmp) / "explain" / entry.file), version_dir / entry.file)
            metadata = with_explain(metadata, entry, explain_report, embeddings_entry(model))
    tokenizer.save(str(version_dir / TOKENIZER_FILE))
    full_provenance = {
        **(provenance or {}),
        "model_config": model.config.to_dict(),
        "num_parameters": model.num_parameters(),
        "parity": report.to_dict(),
    }
    write_metadata(version_dir, metadata.replace(provenance={**metadata.provenance, **full_provenance}))
    logger.info("wrote %s (%.1f MB model)", version_dir, report.model_bytes / 1e6)
    return report


def next_version_dir(repository: Path, name: str) -> Path:
    """``repository/name/<N>`` where N is one more than the highest existing version (1 if none)."""
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise ValueError(f"invalid model name {name!r}: use letters, digits, '_', '.' and '-'")
    model_dir = repository / name
    versions = [int(p.name) for p in model_dir.glob("*") if p.is_dir() and p.name.isdigit()]
    return model_dir / str(max(versions, default=0) + 1)
