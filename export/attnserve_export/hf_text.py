"""``GPT2LMHeadModel`` folders onto attnserve's own :class:`~attnserve_export.gpt.GPT`.

GPT-2 is this project's GPT with learned positions, biases and tied embeddings; what differs is
spelled out in ``config.json`` (GELU variant, LayerNorm epsilon, MLP width) and mapped onto
:class:`GPTConfig`. Its linear layers are ``Conv1D`` modules that store weights as
``(in, out)``, so they are transposed into ``nn.Linear``'s ``(out, in)``.

The tokenizer is the folder's ``tokenizer.json``, or one built with ``tokenizers`` from
``vocab.json`` + ``merges.txt`` exactly as transformers' ``GPT2Tokenizer`` builds it. The end-of-text
token and the generation defaults come from ``generation_config.json`` where present, and a
``chat_template`` from ``tokenizer_config.json`` (or ``chat_template.jinja``) is kept in the metadata.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from tokenizers import AddedToken, Tokenizer, decoders, pre_tokenizers, processors
from tokenizers.models import BPE

from attnserve_export.gpt import GPTConfig
from attnserve_export.hf_checkpoint import CheckpointError, check_all_used, read_json, strip_prefix, take
from attnserve_export.onnx_export import DEFAULT_GENERATION

GPT2 = "GPT2LMHeadModel"
# transformers' activation names → GPTConfig.activation.
ACTIVATIONS = {
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_fast": "gelu_tanh",
    "gelu": "gelu",
    "gelu_python": "gelu",
}
TOKENIZER_JSON = "tokenizer.json"
VOCAB_JSON = "vocab.json"
MERGES_TXT = "merges.txt"
TOKENIZER_CONFIG = "tokenizer_config.json"
SPECIAL_TOKENS_MAP = "special_tokens_map.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"
GENERATION_CONFIG = "generation_config.json"
# transformers' GenerationConfig defaults, for the fields a generation_config.json leaves out.
HF_SAMPLING_DEFAULTS: dict[str, float | int] = {
    "temperature": 1.0,
    "top_k": 50,
    "top_p": 1.0,
    "repetition_penalty": 1.0,
}


def _int(config: dict[str, Any], *keys: str) -> int:
    for key in keys:
        value = config.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    raise CheckpointError(f"config.json needs a positive integer {keys[0]}")


def gpt2_config(config: dict[str, Any]) -> GPTConfig:
    """The :class:`GPTConfig` of a GPT-2 ``config.json``; refuses options that this GPT does not have."""
    refused = {
        "scale_attn_weights": (False, "attention scores not scaled by 1/sqrt(head_dim)"),
        "scale_attn_by_inverse_layer_idx": (True, "attention scaled by the inverse layer index"),
        "add_cross_attention": (True, "cross-attention layers"),
        "tie_word_embeddings": (False, "an output layer that is not tied to the token embedding"),
    }
    for key, (bad, what) in refused.items():
        if config.get(key, not bad) == bad:
            raise CheckpointError(f"config.json asks for {what} ({key}={bad}), which attnserve's GPT does not have")
    activation = config.get("activation_function", "gelu_new")
    if activation not in ACTIVATIONS:
        raise CheckpointError(
            f"activation_function {activation!r} is not supported (supported: {', '.join(sorted(ACTIVATIONS))})"
        )
    dim = _int(config, "n_embd", "hidden_size")
    n_inner = config.get("n_inner")
    eps = config.get("layer_norm_epsilon", 1e-5)
    if not isinstance(eps, (int, float)) or eps <= 0:
        raise CheckpointError(f"layer_norm_epsilon must be a positive number, got {eps!r}")
    try:
        return GPTConfig(
            vocab_size=_int(config, "vocab_size"),
            context_length=_int(config, "n_positions", "max_position_embeddings"),
            num_layers=_int(config, "n_layer", "num_hidden_layers"),
            num_heads=_int(config, "n_head", "num_attention_heads"),
            dim=dim,
            pos_encoding="learned",
            bias=True,
            dropout=0.0,
            mlp_hidden_dim=None if n_inner is None else _int(config, "n_inner"),
            activation=ACTIVATIONS[activation],  # type: ignore[arg-type]  # a key of ACTIVATIONS' values
            ln_eps=float(eps),
        )
    except ValueError as exc:
        raise CheckpointError(f"config.json describes no valid GPT: {exc}") from None


def gpt2_state_dict(weights: dict[str, torch.Tensor], cfg: GPTConfig) -> dict[str, torch.Tensor]:
    """The GPT's state dict from GPT-2 tensors (``transformer.`` prefix or none; Conv1D transposed)."""
    w = strip_prefix(weights, "transformer.")
    lm_head = w.pop("lm_head.weight", None)
    for i in range(cfg.num_layers):  # causal-mask buffers that old checkpoints saved
        w.pop(f"h.{i}.attn.bias", None)
        w.pop(f"h.{i}.attn.masked_bias", None)
    c, hidden = cfg.dim, cfg.hidden_dim
    state = {"wte.weight": take(w, "wte.weight", (cfg.vocab_size, c), explain=" (vocab_size x n_embd)")}
    if lm_head is not None and not torch.equal(lm_head, state["wte.weight"]):
        raise CheckpointError("lm_head.weight differs from the token embedding: attnserve's GPT ties the two")
    state["lm_head.weight"] = state["wte.weight"]
    state["wpe.weight"] = take(w, "wpe.weight", (cfg.context_length, c), explain=" (n_positions x n_embd)")
    conv1d = {  # ours: (theirs, in, out)
        "attn.qkv": ("attn.c_attn", c, 3 * c),
        "attn.proj": ("attn.c_proj", c, c),
        "mlp.fc": ("mlp.c_fc", c, hidden),
        "mlp.proj": ("mlp.c_proj", hidden, c),
    }
    for i in range(cfg.num_layers):
        for norm in ("ln_1", "ln_2"):
            for part in ("weight", "bias"):
                state[f"blocks.{i}.{norm}.{part}"] = take(w, f"h.{i}.{norm}.{part}", (c,))
        for ours, (theirs, fan_in, fan_out) in conv1d.items():
            state[f"blocks.{i}.{ours}.weight"] = take(w, f"h.{i}.{theirs}.weight", (fan_in, fan_out)).t().contiguous()
            state[f"blocks.{i}.{ours}.bias"] = take(w, f"h.{i}.{theirs}.bias", (fan_out,))
    for part in ("weight", "bias"):
        state[f"ln_f.{part}"] = take(w, f"ln_f.{part}", (c,))
    check_all_used(w)
    return state


def _token_text(value: Any) -> str | None:
    """A special token of tokenizer_config.json: a string or an AddedToken dict ``{"content": ...}``."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _tokenizer_config(folder: Path) -> dict[str, Any]:
    path = folder / TOKENIZER_CONFIG
    data = read_json(path, TOKENIZER_CONFIG) if path.exists() else {}
    return data if isinstance(data, dict) else {}


def special_tokens(folder: Path) -> list[str]:
    """The special tokens that tokenizer_config.json and special_tokens_map.json name (GPT-2's default: end of text)."""
    found: list[str] = []
    sources = [_tokenizer_config(folder)]
    if (folder / SPECIAL_TOKENS_MAP).exists():
        sources.append(read_json(folder / SPECIAL_TOKENS_MAP, SPECIAL_TOKENS_MAP))
    for source in sources:
        if not isinstance(source, dict):
            continue
        for key in ("bos_token", "eos_token", "unk_token", "pad_token"):
            token = _token_text(source.get(key))
            if token and token not in found:
                found.append(token)
        decoder = source.get("added_tokens_decoder")
        if isinstance(decoder, dict):
            for entry in decoder.values():
                token = _token_text(entry)
                if token and isinstance(entry, dict) and entry.get("special") and token not in found:
                    found.append(token)
    return found or ["<|endoftext|>"]


def load_gpt2_tokenizer(folder: Path) -> tuple[Tokenizer, str]:
    """The folder's tokenizer and which files it came from."""
    if (folder / TOKENIZER_JSON).is_file():
        try:
            return Tokenizer.from_file(str(folder / TOKENIZER_JSON)), TOKENIZER_JSON
        except Exception as exc:  # tokenizers raises its own Exception type on a bad file
            raise CheckpointError(f"{TOKENIZER_JSON} cannot be read: {exc}") from None
    if not ((folder / VOCAB_JSON).is_file() and (folder / MERGES_TXT).is_file()):
        raise CheckpointError(
            f"{folder} has no tokenizer: a GPT-2 folder needs {TOKENIZER_JSON}, or {VOCAB_JSON} and {MERGES_TXT}"
        )
    try:
        vocab, merges = BPE.read_file(str(folder / VOCAB_JSON), str(folder / MERGES_TXT))
    except Exception as exc:
        raise CheckpointError(f"{VOCAB_JSON} and {MERGES_TXT} cannot be read: {exc}") from None
    # As transformers' GPT2Tokenizer builds it (and the project's own byte-level BPE is laid out).
    tokenizer = Tokenizer(
        BPE(vocab, merges, dropout=None, continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False)
    )
    add_prefix_space = bool(_tokenizer_config(folder).get("add_prefix_space", False))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=add_prefix_space)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    tokenizer.add_special_tokens([AddedToken(token, special=True) for token in special_tokens(folder)])
    return tokenizer, f"{VOCAB_JSON} + {MERGES_TXT}"


def chat_template(folder: Path) -> str | None:
    """``chat_template.jinja``, or ``tokenizer_config.json``'s ``chat_template`` (its "default" if named)."""
    if (folder / CHAT_TEMPLATE_FILE).is_file():
        return (folder / CHAT_TEMPLATE_FILE).read_text(encoding="utf-8")
    template = _tokenizer_config(folder).get("chat_template")
    if template is None or isinstance(template, str):
        return template
    if isinstance(template, list):
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        chosen = named.get("default")
        if isinstance(chosen, str):
            return chosen
    raise CheckpointError(f"{TOKENIZER_CONFIG}'s chat_template is neither a string nor a list with a 'default'")


def generation_settings(
    folder: Path, config: dict[str, Any], tokenizer: Tokenizer, context_length: int
) -> tuple[str | None, dict[str, float | int], dict[str, Any]]:
    """``(eos_token, defaults, notes)``: the end-of-text token and the metadata's generation defaults.

    With a ``generation_config.json``, the defaults are transformers' for that file: greedy unless
    ``do_sample`` is true. Without one, attnserve's own defaults apply. ``max_new_tokens`` stays
    below the context (at most half of it when the file does not set it).
    """
    path = folder / GENERATION_CONFIG
    generation = read_json(path, GENERATION_CONFIG) if path.exists() else {}
    if not isinstance(generation, dict):
        raise CheckpointError(f"{GENERATION_CONFIG} must hold a JSON object")
    notes: dict[str, Any] = {"generation_config": path.exists()}
    eos = generation.get("eos_token_id", config.get("eos_token_id"))
    if isinstance(eos, list):
        notes["eos_token_ids"] = eos
        eos = eos[0] if eos else None
    eos_token = None
    if eos is not None:
        eos_token = tokenizer.id_to_token(int(eos)) if isinstance(eos, int) else None
        if eos_token is None:
            raise CheckpointError(f"eos_token_id {eos!r} is not an id of the tokenizer")
    if path.exists():
        sampling = bool(generation.get("do_sample", False))
        defaults: dict[str, float | int] = dict(HF_SAMPLING_DEFAULTS)
        defaults |= {key: generation[key] for key in HF_SAMPLING_DEFAULTS if generation.get(key) is not None}
        if not sampling:
            defaults["temperature"] = 0.0  # transformers decodes greedily unless do_sample is set
        max_new = generation.get("max_new_tokens")
    else:
        defaults = {k: v for k, v in DEFAULT_GENERATION.items() if k != "max_new_tokens"}
        max_new = None
    if not isinstance(max_new, int) or max_new <= 0:
        max_new = min(int(DEFAULT_GENERATION["max_new_tokens"]), context_length // 2)
    defaults["max_new_tokens"] = min(max_new, context_length - 1)
    return eos_token, defaults, notes
