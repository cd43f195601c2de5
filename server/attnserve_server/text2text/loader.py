"""Loading a text2text-generation version: tokenizer, the two ONNX sessions, graph checks and a test run."""

from __future__ import annotations

from attnserve_server.errors import ModelLoadError
from attnserve_server.loading import open_session
from attnserve_server.runtime import OrtSession
from attnserve_server.task import LoadContext
from attnserve_server.text.continuous import ContinuousBatcher
from attnserve_server.text.engine import TextEngine
from attnserve_server.text.generator import TextModelSpec
from attnserve_server.text.loader import batching_limits, load_tokenizer
from attnserve_server.text2text.generator import Seq2SeqGenerator
from attnserve_server.text2text.metadata import Text2TextGenerationMetadata


def decoder_spec(meta: Text2TextGenerationMetadata) -> TextModelSpec:
    """The decoder step as the text task's generator sees it: a ``shared_buffer`` graph over the target."""
    names, layers = meta.decoder, range(meta.num_decoder_layers)
    return TextModelSpec(
        context_length=meta.target_context_length,
        vocab_size=meta.vocab_size,
        num_layers=meta.num_decoder_layers,
        num_heads=meta.num_heads,
        head_dim=meta.head_dim,
        input_ids_name=names.input_ids,
        attention_mask_name="",
        position_ids_name=names.position_ids,
        kv_cache_layout="shared_buffer",
        seqlens_k_name=names.seqlens_k,
        total_sequence_length_name=names.total_sequence_length,
        logits_name=names.logits,
        past_key_names=tuple(names.past_key_template.format(layer=i) for i in layers),
        past_value_names=tuple(names.past_value_template.format(layer=i) for i in layers),
        present_key_names=tuple(names.present_key_template.format(layer=i) for i in layers),
        present_value_names=tuple(names.present_value_template.format(layer=i) for i in layers),
        eos_token_id=meta.eos_token_id,
        pad_token_id=meta.pad_token_id,
    )


def _check_names(model: str, file: str, kind: str, wanted: set[str], present: tuple[str, ...]) -> None:
    missing = sorted(wanted - set(present))
    if missing:
        raise ModelLoadError(model, f"{file} lacks {kind} named in metadata.json: {', '.join(missing)}")


def check_graphs(
    model: str, generator: Seq2SeqGenerator, encoder: OrtSession, decoder: OrtSession, files: tuple[str, str]
) -> None:
    """Both graphs must have the tensors the metadata promises."""
    meta, spec = generator.meta, generator.spec
    cross = set(generator.cross_key_names + generator.cross_value_names)
    _check_names(model, files[0], "inputs", {meta.encoder.source_ids, meta.encoder.source_mask}, encoder.input_names)
    _check_names(model, files[0], "outputs", cross, encoder.output_names)
    wanted = {spec.input_ids_name, spec.position_ids_name, spec.seqlens_k_name, spec.total_sequence_length_name}
    wanted |= set(spec.past_key_names + spec.past_value_names) | cross | {meta.encoder.source_mask}
    _check_names(model, files[1], "inputs", wanted, decoder.input_names)
    _check_names(model, files[1], "outputs", set(spec.output_names), decoder.output_names)


def run_one_source(model: str, generator: Seq2SeqGenerator) -> None:
    """Encode a one-token source and take one decoder step: shape mismatches show now, not on a request."""
    try:
        logits = generator.new_kv_cache(slots=1).prefill(0, [generator.meta.bos_token_id])
    except Exception as exc:  # ORT's errors carry the useful detail in their message
        raise ModelLoadError(model, f"test run of the encoder and decoder failed: {exc}") from None
    if logits.shape != (generator.spec.vocab_size,):
        raise ModelLoadError(
            model, f"logits have shape {logits.shape}, metadata says vocab_size {generator.spec.vocab_size}"
        )


def load_text2text_generation(ctx: LoadContext) -> TextEngine:
    """Load one text2text-generation version; ModelLoadError says what does not fit."""
    meta = ctx.metadata.section
    assert isinstance(meta, Text2TextGenerationMetadata)  # the task table picked this loader for this section
    tokenizer = load_tokenizer(ctx, meta.tokenizer_file, meta.vocab_size)
    for tag in meta.target_tags:
        if tokenizer.token_to_id(tag) is None:
            raise ModelLoadError(ctx.model, f"target tag {tag!r} is not a token of the tokenizer")
    # ONNX Runtime only (a backend in config.yaml is refused): the decoder's cache is updated in
    # place through its IO binding.
    encoder = open_session(ctx, meta.encoder_file, "encoder_file")
    decoder = open_session(ctx, ctx.metadata.model_file)
    assert isinstance(encoder, OrtSession) and isinstance(decoder, OrtSession)  # open_session's default
    generator = Seq2SeqGenerator(decoder_spec(meta), decoder, tokenizer, ctx.executor, encoder=encoder, meta=meta)
    check_graphs(ctx.model, generator, encoder, decoder, (meta.encoder_file, ctx.metadata.model_file))
    run_one_source(ctx.model, generator)
    observer = ctx.metrics.text_scheduler(ctx.model) if ctx.metrics is not None else None
    return TextEngine(generator, ContinuousBatcher(generator, batching_limits(ctx), observer=observer))
