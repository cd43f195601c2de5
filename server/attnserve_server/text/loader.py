"""Loading a text-generation version: tokenizer, ONNX session, graph checks and a test run."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from attnserve_server.errors import ModelLoadError
from attnserve_server.loading import open_session, version_file
from attnserve_server.runtime import OrtSession
from attnserve_server.task import LoadContext
from attnserve_server.text.continuous import BatchingLimits, ContinuousBatcher
from attnserve_server.text.engine import TextEngine
from attnserve_server.text.generator import TextGenerator, TextModelSpec
from attnserve_server.text.metadata import TextGenerationMetadata
from attnserve_server.text.tokenizer import TextTokenizer

_LIMIT_KEYS = ("max_active_sequences", "max_kv_cache_tokens", "max_waiting_sequences", "max_prefill_tokens_per_step")


def model_spec(name: str, meta: TextGenerationMetadata, tokenizer: TextTokenizer) -> TextModelSpec:
    """What the generator needs from the metadata, with the end-of-text token resolved."""
    eos_id = meta.eos_token_id
    if eos_id is None and meta.eos_token is not None:
        eos_id = tokenizer.token_to_id(meta.eos_token)
        if eos_id is None:
            raise ModelLoadError(name, f"eos_token {meta.eos_token!r} is not in the tokenizer's vocabulary")
    for what, token_id in (("eos_token_id", eos_id), ("pad_token_id", meta.pad_token_id)):
        if token_id is not None and token_id >= meta.vocab_size:
            raise ModelLoadError(name, f"{what} {token_id} is outside the vocabulary (vocab_size {meta.vocab_size})")
    layers = range(meta.num_layers)
    return TextModelSpec(
        context_length=meta.context_length,
        vocab_size=meta.vocab_size,
        num_layers=meta.num_layers,
        num_heads=meta.num_heads,
        head_dim=meta.head_dim,
        input_ids_name=meta.inputs.input_ids,
        attention_mask_name=meta.inputs.attention_mask or "",
        position_ids_name=meta.inputs.position_ids,
        kv_cache_layout=meta.kv_cache_layout,
        seqlens_k_name=meta.inputs.seqlens_k or "",
        total_sequence_length_name=meta.inputs.total_sequence_length or "",
        logits_name=meta.outputs.logits,
        past_key_names=tuple(meta.past_key_template.format(layer=i) for i in layers),
        past_value_names=tuple(meta.past_value_template.format(layer=i) for i in layers),
        present_key_names=tuple(meta.present_key_template.format(layer=i) for i in layers),
        present_value_names=tuple(meta.present_value_template.format(layer=i) for i in layers),
        eos_token_id=eos_id,
        pad_token_id=meta.pad_token_id,
    )


def check_graph(name: str, spec: TextModelSpec, session: OrtSession) -> None:
    """The ONNX graph must have the tensors the metadata promises."""
    wanted_inputs = {spec.input_ids_name, spec.position_ids_name}
    if spec.kv_cache_layout == "concat":
        wanted_inputs.add(spec.attention_mask_name)
    else:
        wanted_inputs.update((spec.seqlens_k_name, spec.total_sequence_length_name))
    wanted_inputs.update(spec.past_key_names + spec.past_value_names)
    missing = sorted(wanted_inputs - set(session.input_names))
    if missing:
        raise ModelLoadError(name, f"model.onnx lacks inputs named in metadata.json: {', '.join(missing)}")
    missing = sorted(set(spec.output_names) - set(session.output_names))
    if missing:
        raise ModelLoadError(name, f"model.onnx lacks outputs named in metadata.json: {', '.join(missing)}")


def run_one_token(name: str, generator: TextGenerator) -> None:
    """A one-token forward pass catches shape mismatches now rather than on the first request."""
    spec = generator.spec
    try:
        if spec.kv_cache_layout == "shared_buffer":
            logits = generator.new_kv_cache(slots=1).prefill(0, [0])[None, :]
            present: list[np.ndarray] = []  # written in place, nothing comes back
        else:
            logits, present = generator.forward(
                np.zeros((1, 1), dtype=np.int64),
                np.ones((1, 1), dtype=np.int64),
                np.zeros((1, 1), dtype=np.int64),
                generator.empty_past(batch=1),
            )
    except Exception as exc:  # ORT's errors carry the useful detail in their message
        raise ModelLoadError(name, f"test run of model.onnx failed: {exc}") from None
    if logits.shape != (1, spec.vocab_size):
        raise ModelLoadError(name, f"logits have shape {logits.shape[1:]}, metadata says vocab_size {spec.vocab_size}")
    expected = (1, spec.num_heads, 1, spec.head_dim)
    if any(p.shape != expected for p in present):
        raise ModelLoadError(name, f"present tensors do not have the shape {expected} that metadata.json implies")


def batching_limits(ctx: LoadContext) -> BatchingLimits:
    """The server-wide continuous batching limits with the model's ``config.yaml`` overrides."""
    overrides = {key: value for key in _LIMIT_KEYS if (value := getattr(ctx.config, key)) is not None}
    return replace(ctx.settings.batching_limits(), **overrides)


def load_tokenizer(ctx: LoadContext, tokenizer_file: str, vocab_size: int) -> TextTokenizer:
    """A text task's tokenizer, after the checks every text loader makes (config and vocabulary)."""
    if ctx.config.dynamic_batching is not None:
        raise ModelLoadError(
            ctx.model, "config.yaml sets dynamic_batching, which only applies to image-classification models"
        )
    tokenizer_path = version_file(ctx, tokenizer_file, "tokenizer_file")
    try:
        tokenizer = TextTokenizer.from_file(tokenizer_path)
    except Exception as exc:  # tokenizers raises a bare Exception for malformed files
        raise ModelLoadError(ctx.model, f"cannot load tokenizer {tokenizer_path.name}: {exc}") from None
    if tokenizer.vocab_size > vocab_size:
        raise ModelLoadError(
            ctx.model, f"tokenizer has {tokenizer.vocab_size} tokens but metadata vocab_size is {vocab_size}"
        )
    return tokenizer


def load_text_generation(ctx: LoadContext) -> TextEngine:
    """Load one text-generation version; ModelLoadError says what does not fit."""
    meta = ctx.metadata.section
    assert isinstance(meta, TextGenerationMetadata)  # the task table picked this loader for this section
    tokenizer = load_tokenizer(ctx, meta.tokenizer_file, meta.vocab_size)
    spec = model_spec(ctx.model, meta, tokenizer)
    # ONNX Runtime only (a backend in config.yaml is refused): the KV cache is updated in place
    # through its IO binding.
    session = open_session(ctx, ctx.metadata.model_file)
    assert isinstance(session, OrtSession)  # open_session's default runtime is ONNX Runtime
    check_graph(ctx.model, spec, session)
    generator = TextGenerator(spec, session, tokenizer, ctx.executor)
    run_one_token(ctx.model, generator)
    observer = ctx.metrics.text_scheduler(ctx.model) if ctx.metrics is not None else None
    return TextEngine(generator, ContinuousBatcher(generator, batching_limits(ctx), observer=observer))
