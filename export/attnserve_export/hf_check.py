"""``--check-with-transformers``: an imported version's ONNX graph against transformers' own model.

The import's parity check compares the ONNX graph with attnserve's PyTorch model; this one closes
the loop to the source: the same inputs through transformers' ``GPT2LMHeadModel``,
``ViTForImageClassification`` or ``SwinForImageClassification`` loaded from the folder.

- Text: a left-padded batch (transformers gets ``attention_mask`` and ``position_ids``), then
  decode steps with its KV cache; the graph is called as the server calls its layout.
- Images: transformers' PIL image processor against the model format's ``preprocess`` (the
  server's), then the logits of each model on its own pixels, and the top-5 classes.

transformers is imported only here, and only when asked for: importing a folder never needs it.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, cast

import numpy as np
import onnxruntime as ort
import torch
from PIL import Image
from tokenizers import Tokenizer

from attnserve_export.gpt import GPTConfig, left_pad
from attnserve_export.hf_checkpoint import CheckpointError
from attnserve_export.onnx_export import PARITY_DECODE_STEPS, PARITY_PROMPTS, cache_input_names
from attnserve_export.onnx_gqa import SharedBufferRunner, TensorNames
from attnserve_server.model_format.metadata import ModelMetadata, read_metadata
from attnserve_server.model_format.preprocess import preprocess
from attnserve_server.task_table import TaskTable
from attnserve_server.text.metadata import TextGenerationMetadata
from attnserve_server.vision.metadata import ImageClassificationMetadata

REL_TOLERANCE = 1e-4  # max |Δlogit| / max |logit|
PIXEL_TOLERANCE = 1e-5  # max |Δpixel| after normalisation
MARGIN = 1e-3  # a top-k rank is exempt where the reference's gap is <= MARGIN x max |logit|
TOP_K = 5


def transformers_module() -> Any:
    """The transformers package, or a CheckpointError that says how to get it."""
    try:
        return importlib.import_module("transformers")
    except ImportError:
        raise CheckpointError(
            "--check-with-transformers needs the transformers package (pip install transformers)"
        ) from None


def _metadata(version_dir: Path) -> ModelMetadata:
    return read_metadata(version_dir, TaskTable().sections())


def logit_case(name: str, reference: np.ndarray, got: np.ndarray) -> dict[str, Any]:
    """Figures of one comparison of logits ``(N, classes)``; an argmax that differs within the error is a tie."""
    diff = float(np.abs(reference - got).max())
    scale = float(np.abs(reference).max())
    top2 = np.sort(reference, axis=-1)[:, -2:]
    differ = reference.argmax(-1) != got.argmax(-1)
    ties = differ & ((top2[:, 1] - top2[:, 0]) <= diff)
    return {
        "name": name,
        "max_abs_diff": diff,
        "max_abs_logit": scale,
        "rel_diff": diff / max(scale, 1e-12),
        "argmax_mismatches": int((differ & ~ties).sum()),
        "argmax_ties": int(ties.sum()),
    }


def top_k_agreement(reference: np.ndarray, got: np.ndarray, margin: float = MARGIN) -> dict[str, int]:
    """Compare the top-k class lists ``got`` ``(N, k)`` with the reference logits ``(N, classes)``.

    Rank r agrees when ``got[:, r]`` is the reference's r-th class; it is exempt when it is another
    class whose reference logit is within ``margin`` x max |logit| of the r-th one (a near-tie);
    anything else is a mismatch.
    """
    order = np.argsort(-reference, axis=-1, kind="stable")[:, : got.shape[1]]
    scale = np.abs(reference).max(axis=-1, keepdims=True)
    rows = np.arange(len(reference))[:, None]
    close = np.abs(reference[rows, got] - reference[rows, order]) <= margin * scale
    same = got == order
    return {"ranks": int(same.size), "mismatches": int((~same & ~close).sum()), "exempt": int((~same & close).sum())}


def _summary(cases: list[dict[str, Any]], extra: dict[str, Any], ok: bool, tolerance: float) -> dict[str, Any]:
    """The report: passed when max |Δlogit| / max |logit| is within ``tolerance`` and ``ok``."""
    rel = max(c["rel_diff"] for c in cases)
    return {
        "passed": bool(rel <= tolerance and ok),
        "transformers_version": transformers_module().__version__,
        "max_rel_diff": rel,
        "max_abs_diff": max(c["max_abs_diff"] for c in cases),
        "max_rel_tolerance": tolerance,
        **extra,
        "cases": cases,
    }


class _TextGraph:
    """The version's graph called as the server calls its layout (prefill, then batched decode steps)."""

    def __init__(self, version_dir: Path, meta: ModelMetadata, config: GPTConfig, batch: int) -> None:
        self.tg = tg = cast(TextGenerationMetadata, meta.section)
        path = str(version_dir / meta.model_file)
        names = TensorNames(
            tg.inputs.input_ids,
            tg.inputs.position_ids,
            tg.outputs.logits,
            tg.past_key_template,
            tg.past_value_template,
            tg.present_key_template,
            tg.present_value_template,
        )
        self.shared = tg.kv_cache_layout == "shared_buffer"
        if self.shared:
            self.runner = SharedBufferRunner(path, config, batch, names)
        else:
            self.session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
            empty = np.zeros((batch, tg.num_heads, 0, tg.head_dim), dtype=np.float32)
            self.past: dict[str, np.ndarray] = dict.fromkeys(cache_input_names(tg.num_layers), empty)
            self.present = [
                t.format(layer=i)
                for i in range(tg.num_layers)
                for t in (tg.present_key_template, tg.present_value_template)
            ]

    def _concat(self, ids: np.ndarray, mask: np.ndarray, positions: np.ndarray) -> np.ndarray:
        inputs = self.tg.inputs
        # The metadata requires attention_mask in the concat layout.
        feed = {inputs.input_ids: ids, str(inputs.attention_mask): mask, inputs.position_ids: positions, **self.past}
        logits, *presents = self.session.run([self.tg.outputs.logits, *self.present], feed)
        self.past = {name: np.asarray(t) for name, t in zip(self.past, presents, strict=True)}
        return np.asarray(logits)

    def prefill(self, prompts: list[list[int]], ids: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor) -> np.ndarray:
        """``(B, T, V)`` (concat: every position) or ``(B, 1, V)`` (shared_buffer: the last one)."""
        if not self.shared:
            return self._concat(ids.numpy(), mask.numpy(), pos.numpy())
        rows = [self.runner.run(slot, np.asarray([p], dtype=np.int64)) for slot, p in enumerate(prompts)]
        return np.concatenate(rows)[:, None, :]

    def decode(self, next_ids: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor) -> np.ndarray:
        if not self.shared:
            return self._concat(next_ids.numpy(), mask.numpy(), pos.numpy())
        return self.runner.run(0, next_ids.numpy())[:, None, :]


def check_gpt2(
    folder: Path, version_dir: Path, *, decode_steps: int = PARITY_DECODE_STEPS, tolerance: float = REL_TOLERANCE
) -> dict[str, Any]:
    """The version's logits against ``GPT2LMHeadModel``'s: a left-padded batch, then ``decode_steps`` steps."""
    transformers = transformers_module()
    meta = _metadata(version_dir)
    tg = cast(TextGenerationMetadata, meta.section)
    config = GPTConfig(**meta.provenance["model_config"])
    tokenizer = Tokenizer.from_file(str(version_dir / tg.tokenizer_file))
    prompts = [tokenizer.encode(p).ids[: tg.context_length - decode_steps] or [tg.pad_token_id] for p in PARITY_PROMPTS]
    ids, mask, positions = left_pad(prompts, tg.pad_token_id)
    reference = transformers.GPT2LMHeadModel.from_pretrained(str(folder), dtype=torch.float32).eval()
    graph = _TextGraph(version_dir, meta, config, len(prompts))
    cases = []
    with torch.inference_mode():
        out = reference(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)
        got = graph.prefill(prompts, ids, mask, positions)
        real = mask.bool().numpy() if got.shape[1] > 1 else np.ones((len(prompts), 1), dtype=bool)
        expected = out.logits.numpy()[:, -got.shape[1] :]
        cases.append(logit_case("prefill (transformers: left-padded batch)", expected[real], got[real]))
        for step in range(decode_steps):
            next_ids = out.logits[:, -1:].argmax(-1)  # (B, 1): transformers' greedy choice feeds both
            mask = torch.cat([mask, torch.ones_like(next_ids)], dim=1)
            positions = positions[:, -1:] + 1
            out = reference(
                input_ids=next_ids,
                attention_mask=mask,
                position_ids=positions,
                past_key_values=out.past_key_values,
                use_cache=True,
            )
            got = graph.decode(next_ids, mask, positions)
            cases.append(logit_case(f"decode step {step + 1}", out.logits[:, -1].numpy(), got[:, -1]))
    mismatches = sum(c["argmax_mismatches"] for c in cases)
    extra = {"kv_cache_layout": tg.kv_cache_layout, "prompts": len(prompts), "argmax_mismatches": mismatches}
    return _summary(cases, extra, mismatches == 0, tolerance)


def processor_pixels(folder: Path, images: list[Image.Image]) -> np.ndarray:
    """transformers' PIL image processor of the folder, on ``images``: ``(N, 3, H, W)`` float32."""
    transformers = transformers_module()
    processor = transformers.AutoImageProcessor.from_pretrained(str(folder), backend="pil")
    return np.stack([processor(image, return_tensors="np")["pixel_values"][0] for image in images]).astype(np.float32)


def check_classifier(
    folder: Path, version_dir: Path, images: list[Image.Image], *, tolerance: float = REL_TOLERANCE
) -> dict[str, Any]:
    """Preprocessing, logits and top-5 of the version against transformers' processor and model."""
    transformers = transformers_module()
    meta = _metadata(version_dir)
    section = cast(ImageClassificationMetadata, meta.section)
    spec = section.input_spec()
    ours = np.stack([preprocess(image, spec) for image in images])
    theirs = processor_pixels(folder, images)
    pixel_diff = float(np.abs(ours - theirs).max())
    reference = transformers.AutoModelForImageClassification.from_pretrained(str(folder), dtype=torch.float32)
    with torch.inference_mode():
        expected = reference.eval()(pixel_values=torch.from_numpy(theirs)).logits.numpy()
    session = ort.InferenceSession(str(version_dir / meta.model_file), providers=["CPUExecutionProvider"])
    (got,) = session.run([section.output_name], {section.input_name: ours})
    top = top_k_agreement(expected, np.argsort(-got, axis=-1, kind="stable")[:, : min(TOP_K, got.shape[-1])])
    extra = {"images": len(images), "max_pixel_diff": pixel_diff, "pixel_tolerance": PIXEL_TOLERANCE, "top_k": top}
    ok = pixel_diff <= PIXEL_TOLERANCE and top["mismatches"] == 0
    return _summary([logit_case(f"{len(images)} images", expected, np.asarray(got))], extra, ok, tolerance)
