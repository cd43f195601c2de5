"""``explain``: the request (validated before it is sent) and the typed result of ExplainService.Explain.

One text (a text model) or one image (an image model) in; out, one result per kind of model:
:class:`TextAttention` (a GPT), :class:`Text2TextAttention` (an encoder-decoder),
:class:`VitAttention` and :class:`SwinAttention`. Every map is a numpy float32 array when numpy is
installed (the ``attnserve-client[images]`` extra), nested lists of floats otherwise. Each map's
shape is checked against its values and against the layers, heads and tokens the response names,
so a malformed response raises :class:`~attnserve_client.ServerError` here, not an IndexError later.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

from attnserve_client.errors import InvalidArgumentError, ServerError
from attnserve_client.images import encode_image
from attnserve_client.limits import INT32_MAX
from attnserve_client.pb import explain_pb2

__all__ = [
    "ExplainRequest",
    "Explanation",
    "SwinAttention",
    "SwinWindow",
    "Text2TextAttention",
    "TextAttention",
    "VitAttention",
    "to_explanation",
]


@dataclass(frozen=True, slots=True)
class ExplainRequest:
    """The arguments of ``explain``, validated, with the image encoded.

    The limits that need the model (how many layers, heads, stages, the stage's grid, the caps on
    tokens and maps) are the server's to check; it answers INVALID_ARGUMENT saying what to reduce.
    """

    text: str | None = None
    image: bytes | None = None
    model: str | None = None
    layers: tuple[int, ...] = ()
    heads: tuple[int, ...] = ()
    stage: int | None = None
    query: tuple[int, int] | None = None
    max_new_tokens: int | None = None
    model_version: str | None = None

    @classmethod
    def create(
        cls,
        *,
        text: str | None,
        image: object,
        model: str | None,
        layers: int | Sequence[int] | None,
        heads: int | Sequence[int] | None,
        stage: int | None,
        query: Sequence[int] | None,
        max_new_tokens: int | None,
        model_version: str | None,
    ) -> ExplainRequest:
        if (text is None) == (image is None):
            raise InvalidArgumentError("pass exactly one input: text= (a text model) or image= (an image model)")
        if text is not None and (not isinstance(text, str) or not text):
            raise InvalidArgumentError("text must be a non-empty string")
        if model is not None and (not isinstance(model, str) or not model):
            raise InvalidArgumentError("model must be a non-empty string, or None to use the only served model")
        if model_version is not None and not isinstance(model_version, str):
            raise InvalidArgumentError("model_version must be a string (a version directory name) or None")
        chosen_layers = _int_list("layers", layers, low=-INT32_MAX, hint="negative counts from the end")
        chosen_heads = _int_list("heads", heads, low=0, hint="heads count from 0")
        _check_int("stage", stage, low=0)
        where = None
        if query is not None:
            if isinstance(query, (str, bytes)) or not isinstance(query, Sequence) or len(query) != 2:
                raise InvalidArgumentError(f"query must be a (row, col) pair of integers, got {query!r}")
            _check_int("query row", query[0], low=0)
            _check_int("query col", query[1], low=0)
            where = (int(query[0]), int(query[1]))
        _check_int("max_new_tokens", max_new_tokens, low=1, hint="None: the model's explain.max_new_tokens")
        if text is not None and (stage is not None or where is not None):
            raise InvalidArgumentError("stage and query choose a Swin's patch; they take an image, not a text")
        if image is not None and max_new_tokens is not None:
            raise InvalidArgumentError("max_new_tokens is for an encoder-decoder's text, not for an image")
        try:
            encoded = encode_image(image) if image is not None else None
        except InvalidArgumentError as error:  # its message names "image 0": this call takes one image
            raise InvalidArgumentError(error.details.replace("image 0", "the image", 1)) from None
        return cls(
            text=text,
            image=encoded,
            model=model,
            layers=chosen_layers,
            heads=chosen_heads,
            stage=stage,
            query=where,
            max_new_tokens=max_new_tokens,
            model_version=model_version,
        )

    @property
    def is_text(self) -> bool:
        return self.text is not None

    def to_proto(self, model: str) -> explain_pb2.ExplainRequest:
        message = explain_pb2.ExplainRequest(
            model=model,
            model_version=self.model_version or "",
            layers=self.layers,
            heads=self.heads,
            max_new_tokens=self.max_new_tokens or 0,
        )
        if self.text is not None:
            message.text = self.text
        else:
            message.image = self.image or b""
        # `optional` fields: assigning marks them present; unset ones take the server's defaults.
        if self.stage is not None:
            message.stage = self.stage
        if self.query is not None:
            message.query_row, message.query_col = self.query
        return message


def _check_int(name: str, value: object, *, low: int, high: int = INT32_MAX, hint: str = "") -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgumentError(f"{name} must be an integer, got {value!r}")
    if not low <= value <= high:
        note = f" ({hint})" if hint else ""
        raise InvalidArgumentError(f"{name} must be in [{low}, {high}]{note}, got {value}")


def _int_list(name: str, value: int | Sequence[int] | None, *, low: int, hint: str) -> tuple[int, ...]:
    """A list of distinct int32s (or one int); None and [] mean "all"."""
    if value is None:
        return ()
    items = [value] if isinstance(value, int) and not isinstance(value, bool) else value
    if isinstance(items, (str, bytes)) or not isinstance(items, Sequence):
        raise InvalidArgumentError(f"{name} must be a list of integers (or one integer), got {value!r}")
    for item in items:
        _check_int(f"each of {name}", item, low=low, hint=hint)
    if len(set(items)) != len(items):
        raise InvalidArgumentError(f"{name} must not repeat a number, got {list(items)}")
    return tuple(items)


# --- the typed results ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Maps:
    """What every result holds: who answered, and which layers and heads the maps are of.

    Attributes:
        model: the model that answered.
        model_version: the version that answered.
        layers: the layers (Swin: the blocks of the stage) the maps hold, resolved (no negative
            numbers), in order: index 0 of a map's first axis is ``layers[0]``.
        heads: the heads, in order: index 0 of a map's second axis is ``heads[0]``.
    """

    model: str
    model_version: str
    layers: tuple[int, ...]
    heads: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class TextAttention(_Maps):
    """A decoder-only text model (GPT): causal self-attention over the prompt.

    Attributes:
        tokens: each prompt token's text (its slice of the prompt), in order.
        attention: ``(layers, heads, T, T)``; row i is how token i spreads its attention over
            tokens 0..i (each row sums to 1; zero above the diagonal).
    """

    tokens: tuple[str, ...]
    attention: Any


@dataclass(frozen=True, slots=True)
class Text2TextAttention(_Maps):
    """An encoder-decoder: the encoder's, the decoder's and the cross attention.

    Attributes:
        source_tokens: the source's tokens (S).
        target_tokens: the decoder's input tokens (U): the start token, then each generated token
            but the last.
        generated_tokens: the tokens generated greedily (U); row i of the decoder's maps produced
            ``generated_tokens[i]``.
        output_text: the generated text.
        encoder_attention: ``(layers, heads, S, S)``.
        decoder_attention: ``(layers, heads, U, U)``, zero above the diagonal.
        cross_attention: ``(layers, heads, U, S)``: each generated token's attention over the source.
    """

    source_tokens: tuple[str, ...]
    target_tokens: tuple[str, ...]
    generated_tokens: tuple[str, ...]
    output_text: str
    encoder_attention: Any
    decoder_attention: Any
    cross_attention: Any


@dataclass(frozen=True, slots=True)
class VitAttention(_Maps):
    """A ViT: the class token's attention over the patches, and attention rollout.

    Attributes:
        grid: the patch grid ``(H/P, W/P)`` of the model's input.
        patch_size: the pixels (of the model's input) each patch covers, per side.
        class_attention: ``(layers, heads, grid_h, grid_w)``: the class token's attention over the
            patches (its attention on itself left out).
        rollout: ``(grid_h, grid_w)``: attention rollout (Abnar and Zuidema, 2020) over every layer
            and head, whichever were chosen.
    """

    grid: tuple[int, int]
    patch_size: int
    class_attention: Any
    rollout: Any


@dataclass(frozen=True, slots=True)
class SwinWindow:
    """Where the query's window lay in one Swin block (see ``SwinWindow`` in explain.proto).

    Attributes:
        block: the block, 0 .. blocks of the stage - 1.
        shift: the block's cyclic shift in tokens (0: a plain W-MSA block).
        window_size: the window's side, in tokens.
        window: the window's (row, col) in the block's grid of windows, after the shift and padding.
        patches: how many of the stage's patches share the query's window.
    """

    block: int
    shift: int
    window_size: int
    window: tuple[int, int]
    patches: int


@dataclass(frozen=True, slots=True)
class SwinAttention(_Maps):
    """A Swin: one query patch's attention, per head of each chosen block, in image coordinates.

    Attributes:
        stage: the stage the blocks belong to.
        query: the query patch's (row, col) on the stage's token grid.
        grid: the stage's token grid ``(grid_h, grid_w)``.
        cell_size: the pixels (of the model's input) each of the stage's tokens covers, per side.
        attention: ``(blocks, heads, grid_h, grid_w)``, the cyclic shift undone; zero outside the
            query's window.
        windows: one per chosen block, in order.
    """

    stage: int
    query: tuple[int, int]
    grid: tuple[int, int]
    cell_size: int
    attention: Any
    windows: tuple[SwinWindow, ...]


Explanation: TypeAlias = TextAttention | Text2TextAttention | VitAttention | SwinAttention
"""What ``explain`` returns: the result of the model's kind."""


def _numpy() -> Any:
    try:
        return importlib.import_module("numpy")
    except ImportError:
        return None


def _tensor(name: str, tensor: explain_pb2.Tensor, expected: Sequence[int | None], np: Any) -> Any:
    """The tensor as an array (or nested lists) after checking its shape; ``None`` in ``expected``: any size."""
    shape = tuple(tensor.shape)
    if len(shape) != len(expected) or any(size < 0 for size in shape):
        raise ServerError(f"the server's {name} has shape {list(shape)}; expected {len(expected)} dimensions")
    if any(want is not None and want != size for want, size in zip(expected, shape, strict=True)):
        wanted = ["*" if want is None else want for want in expected]
        raise ServerError(f"the server's {name} has shape {list(shape)}; expected {wanted}")
    if math.prod(shape) != len(tensor.values):
        raise ServerError(f"the server's {name} has shape {list(shape)} but {len(tensor.values)} values")
    if np is not None:
        return np.asarray(tensor.values, dtype=np.float32).reshape(shape)
    return _nested(list(tensor.values), shape)


def _nested(values: list[float], shape: tuple[int, ...]) -> Any:
    if len(shape) <= 1:
        return values
    step = math.prod(shape[1:])
    return [_nested(values[i * step : (i + 1) * step], shape[1:]) for i in range(shape[0])]


def to_explanation(response: explain_pb2.ExplainResponse, *, numpy: Any = "auto") -> Explanation:
    """The typed result of an Explain response (numpy arrays if numpy imports; ``numpy=None`` forces lists).

    Raises:
        ServerError: the response holds no maps, or a map's shape disagrees with its values or with
            the layers, heads and tokens the response names.
    """
    np = _numpy() if numpy == "auto" else numpy
    common: dict[str, Any] = {
        "model": response.model,
        "model_version": response.model_version,
        "layers": tuple(response.layers),
        "heads": tuple(response.heads),
    }
    lh = (len(response.layers), len(response.heads))
    kind = response.WhichOneof("maps")
    if kind == "text":
        text = response.text
        t = len(text.tokens)
        attention = _tensor("text attention", text.attention, (*lh, t, t), np)
        return TextAttention(**common, tokens=tuple(text.tokens), attention=attention)
    if kind == "text2text":
        t2t = response.text2text
        s, u = len(t2t.source_tokens), len(t2t.target_tokens)
        if len(t2t.generated_tokens) != u:
            raise ServerError(
                f"the server returned {len(t2t.generated_tokens)} generated tokens for {u} decoder input tokens"
            )
        return Text2TextAttention(
            **common,
            source_tokens=tuple(t2t.source_tokens),
            target_tokens=tuple(t2t.target_tokens),
            generated_tokens=tuple(t2t.generated_tokens),
            output_text=t2t.output_text,
            encoder_attention=_tensor("encoder attention", t2t.encoder_attention, (*lh, s, s), np),
            decoder_attention=_tensor("decoder attention", t2t.decoder_attention, (*lh, u, u), np),
            cross_attention=_tensor("cross attention", t2t.cross_attention, (*lh, u, s), np),
        )
    if kind == "vit":
        vit = response.vit
        grid = (vit.grid_height, vit.grid_width)
        return VitAttention(
            **common,
            grid=grid,
            patch_size=vit.patch_size,
            class_attention=_tensor("class attention", vit.class_attention, (*lh, *grid), np),
            rollout=_tensor("rollout", vit.rollout, grid, np),
        )
    if kind == "swin":
        swin = response.swin
        grid = (swin.grid_height, swin.grid_width)
        if len(swin.windows) != lh[0]:
            raise ServerError(f"the server returned {len(swin.windows)} Swin windows for {lh[0]} blocks")
        windows = tuple(
            SwinWindow(w.block, w.shift, w.window_size, (w.window_row, w.window_col), w.patches) for w in swin.windows
        )
        return SwinAttention(
            **common,
            stage=swin.stage,
            query=(swin.query_row, swin.query_col),
            grid=grid,
            cell_size=swin.cell_size,
            attention=_tensor("Swin attention", swin.attention, (*lh, *grid), np),
            windows=windows,
        )
    raise ServerError("the server's Explain response holds no maps")
